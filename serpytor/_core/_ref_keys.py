"""Pure-Python reference of the journal-key kernel in ``keys.pyx``.

A journaled run makes a key for every vertex it dispatches; the gateway gathers a
batch's parts and this kernel digests them, in one call per batch. Inputs, one entry
per vertex (V vertices)::

    template_parts  list[tuple[str, str, str]]  (function, arguments, function as JSON)
    contexts        list[str]                   the digest of the facts it sees
    inputs          list[str]                   its parents' ``name=digest``, joined by ";"
    names           list[str]                   its name

Outputs, per vertex: its key and its parts as JSON text::

    inputs digest = BLAKE2b-160(inputs), hex
    key           = BLAKE2b-160("arguments=A|context=C|function=F|inputs=I|vertex=N"), hex
    parts         = {"function":F_json,"arguments":"A","inputs":"I","context":"C","vertex":N_json}

with texts encoded as UTF-8 and ``N_json`` the name as orjson writes a JSON string
(``"``, ``\\`` and control characters escaped, nothing else). These are the key and the
parts of ``serpytor.runtime.identity`` (``vertex_key`` and ``KeyMaker.key``); the
digests, contexts and arguments are hex, so they need no escaping.
"""

from __future__ import annotations

import hashlib

import orjson

KEY_BYTES = 20  # BLAKE2b-160


def check_keys_inputs(template_parts: list, contexts: list, inputs: list,
                      names: list) -> int:
    """V, after checking that the four lists are lists of one length (ValueError)."""
    lists = (template_parts, contexts, inputs, names)
    if not all(type(values) is list for values in lists):
        raise TypeError("journal_keys takes four lists")
    count = len(template_parts)
    if any(len(values) != count for values in lists):
        raise ValueError(f"journal_keys: lists of {[len(v) for v in lists]} entries; "
                         "one entry per vertex in each")
    return count


def journal_keys(template_parts: list[tuple[str, str, str]], contexts: list[str],
                 inputs: list[str], names: list[str]) -> tuple[list[str], list[str]]:
    """Per vertex, its key and its parts as JSON text (see the module docstring)."""
    check_keys_inputs(template_parts, contexts, inputs, names)
    keys: list[str] = []
    parts: list[str] = []
    for parts_of, context, joined, name in zip(template_parts, contexts, inputs, names):
        if type(parts_of) is not tuple or len(parts_of) != 3:
            raise TypeError("journal_keys: template parts are (function, arguments, "
                            "function JSON) tuples")
        function, arguments, function_json = parts_of
        for text in (function, arguments, function_json, context, joined, name):
            if type(text) is not str:
                raise TypeError(f"journal_keys: {type(text).__name__} where a str belongs")
        digest_of_inputs = _hex(joined)
        keys.append(_hex(f"arguments={arguments}|context={context}|function={function}|"
                         f"inputs={digest_of_inputs}|vertex={name}"))
        parts.append(f'{{"function":{function_json},"arguments":"{arguments}",'
                     f'"inputs":"{digest_of_inputs}","context":"{context}",'
                     f'"vertex":{orjson.dumps(name).decode()}}}')
    return keys, parts


def _hex(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=KEY_BYTES).hexdigest()


__all__ = ["KEY_BYTES", "check_keys_inputs", "journal_keys"]
