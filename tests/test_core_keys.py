"""The journal-key kernel (serpytor._core keys), compiled and reference.

The key is a BLAKE2b-160 digest of a text the module docstring of ``_ref_keys`` writes
down, and the parts are JSON: checked here from those definitions (hashlib and json),
for both implementations, on texts of every length around BLAKE2b's 128-byte blocks
and names with every character JSON escapes.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from core_strategies import IMPLEMENTATIONS, both, implementation
from hypothesis import given, settings
from hypothesis import strategies as st

from serpytor.runtime.identity import vertex_key


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    return implementation(request.param)


def blake160(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


def expected(function: str, arguments: str, context: str, joined: str,
             name: str) -> tuple[str, dict]:
    inputs = blake160(joined)
    key = blake160(f"arguments={arguments}|context={context}|function={function}|"
                   f"inputs={inputs}|vertex={name}")
    return key, {"function": function, "arguments": arguments, "inputs": inputs,
                 "context": context, "vertex": name}


# texts: any character a str may hold in UTF-8 (no lone surrogates), short and long
texts = st.text(st.characters(exclude_categories=("Cs",)), max_size=300)
hexes = st.text("0123456789abcdef", min_size=0, max_size=64)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(texts, hexes, hexes, texts, texts), min_size=0, max_size=6))
def test_keys_and_parts_are_the_documented_digests_and_json(rows):
    for impl in both():
        keys, parts = impl.journal_keys(
            [(function, arguments, json.dumps(function, ensure_ascii=False))
             for function, arguments, *_ in rows],
            [context for _, _, context, _, _ in rows], [joined for *_, joined, _ in rows],
            [name for *_, name in rows])
        assert len(keys) == len(parts) == len(rows)
        for (function, arguments, context, joined, name), key, text in zip(rows, keys, parts):
            want_key, want_parts = expected(function, arguments, context, joined, name)
            assert key == want_key
            assert json.loads(text) == want_parts


@pytest.mark.parametrize("size", [0, 1, 63, 127, 128, 129, 255, 256, 257, 1000, 4096])
def test_texts_of_every_block_boundary_digest_as_hashlib_does(impl, size):
    """The inputs text alone is digested (its digest is the inputs part): lengths
    around BLAKE2b's 128-byte blocks, where a hand-written compression would slip."""
    joined = "".join(chr(97 + i % 26) for i in range(size))
    _, parts = impl.journal_keys([("f", "a", '"f"')], ["c"], [joined], ["v"])
    assert json.loads(parts[0])["inputs"] == blake160(joined)


def test_the_key_is_the_one_identity_makes_from_the_parts(impl):
    keys, parts = impl.journal_keys([("m:f:" + "1" * 40, "2" * 40, '"m:f:' + "1" * 40 + '"')],
                                    ["3" * 40], ["p=blake2b-256:" + "4" * 64], ["s[7]"])
    assert keys[0] == vertex_key(json.loads(parts[0]))


def test_a_name_is_escaped_as_orjson_escapes_it(impl):
    """Quotes, backslashes and control characters escaped (short forms where JSON has
    them), everything else as it is: the parts text is the one orjson would write."""
    import orjson
    name = 'a"b\\c\x00\x08\t\n\x0b\x0c\r\x1f\x7f/é\u2028😀'
    _, parts = impl.journal_keys([("f", "a", '"f"')], ["c"], [""], [name])
    assert parts[0].endswith(f'"vertex":{orjson.dumps(name).decode()}}}')


@pytest.mark.parametrize("bad, error", [
    (([("f", "a", '"f"')], ["c"], [""], []), ValueError),        # a list one short
    (([("f", "a", '"f"')], ["c"], [b""], ["v"]), TypeError),     # bytes, not str
    (([("f", "a")], ["c"], [""], ["v"]), TypeError),             # parts of two
    (([["f", "a", '"f"']], ["c"], [""], ["v"]), TypeError),      # a list, not a tuple
    ((("f", "a", '"f"'), ["c"], [""], ["v"]), TypeError),        # not a list
    (([("f", "a", '"f"')], [None], [""], ["v"]), TypeError),
])
def test_bad_arguments_are_the_same_error_in_both(impl, bad, error):
    with pytest.raises(error):
        impl.journal_keys(*bad)
