"""The ``.spgc`` plan format (serpytor/compiler/plan.py, README "The plan format"):

    b"SPGC"  u32 version (2)  u64 header length  UTF-8 JSON header  padding
    numpy arrays, each at a 64-byte aligned offset; the header's last member is a
    BLAKE2b digest of the rest of the header and the array bytes

A saved plan loads back equal, without the source and without parsing; a damaged file
is refused with PlanFormatError.
"""

from __future__ import annotations

import json
import shutil
import struct
import time
from pathlib import Path

import lark
import numpy as np
import pytest

import serpytor
from serpytor import PlanFormatError
from serpytor.cli import compiler_main
from serpytor.compiler.plan import ARRAY_NAMES, FORMAT_VERSION, Plan, _signed_header

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.spg"))
GROUPED = """\
pipeline grouped
use spg_test_missing.mod as m
context { k = "origin", nested = {a: [1, 2.5, null, true]} }
stage s = m.f(1, key = "v") x 3 with { w = 1 }
node  r = m.g aggregate(initial_reduce = m.i, combine = m.c, fan_in = 2) timeout 9
node  a = m.h with { owner = "x" } volatile
node  b = m.h
s >> r
r -> a [channel = shm]
r -> b [channel = tcp]
group pair { a, b }
"""


def assert_same_plan(a: Plan, b: Plan) -> None:
    assert sorted(a.arrays) == sorted(b.arrays) == sorted(ARRAY_NAMES)
    for name in ARRAY_NAMES:
        assert a.arrays[name].dtype == b.arrays[name].dtype, name
        assert a.arrays[name].shape == b.arrays[name].shape, name
        assert np.array_equal(a.arrays[name], b.arrays[name]), name
    assert a.meta == b.meta


@pytest.fixture
def grouped_plan() -> Plan:
    return serpytor.compile(GROUPED)


@pytest.fixture
def saved(tmp_path, grouped_plan) -> Path:
    path = tmp_path / "grouped.spgc"
    grouped_plan.save(path)
    return path


# ---- round trip -----------------------------------------------------------------------
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_round_trip_of_the_examples(path, tmp_path):
    plan = serpytor.compile_file(path)
    out = tmp_path / "plan.spgc"
    plan.save(out)
    loaded = serpytor.load_plan(out)
    assert_same_plan(plan, loaded)
    assert loaded.names == plan.names
    assert list(loaded.edges()) == list(plan.edges())
    assert loaded.summary() == plan.summary()


def test_round_trip_keeps_context_groups_and_queries(saved, grouped_plan):
    loaded = Plan.load(saved)
    assert_same_plan(grouped_plan, loaded)
    for v in range(grouped_plan.n_vertices):
        assert loaded.static_context(v) == grouped_plan.static_context(v)
        assert loaded.origins(v) == grouped_plan.origins(v)
        assert loaded.predecessors(v).tolist() == grouped_plan.predecessors(v).tolist()
    assert loaded.topological_order() == grouped_plan.topological_order()
    assert loaded.static_context(loaded.index_of("a")) == {
        "k": "origin", "nested": {"a": [1, 2.5, None, True]}, "w": 1, "owner": "x"}
    assert loaded.groups[0]["name"] == "pair"


def test_load_does_not_need_the_source_or_the_parser(tmp_path, monkeypatch):
    source = tmp_path / "copy.spg"
    shutil.copy(ROOT / "examples" / "wordcount.spg", source)
    plan = serpytor.compile_file(source)
    plan.save(tmp_path / "copy.spgc")
    source.unlink()

    def no_parsing(*args, **kwargs):
        raise AssertionError("loading a plan must not parse anything")

    monkeypatch.setattr(lark.Lark, "parse", no_parsing)
    monkeypatch.setattr("serpytor.dsl.parser.parse", no_parsing)
    monkeypatch.setattr("serpytor.compiler.compile_ast", no_parsing)
    loaded = serpytor.load_plan(tmp_path / "copy.spgc")
    assert_same_plan(plan, loaded)


def test_save_replaces_an_existing_file_and_leaves_no_temporary(tmp_path, grouped_plan):
    path = tmp_path / "p.spgc"
    path.write_bytes(b"old contents")
    grouped_plan.save(path)
    assert Plan.load(path).pipeline == "grouped"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.spgc"]


def test_a_million_edges_load_quickly(tmp_path):
    plan = serpytor.compile("pipeline big\nuse spg_test_missing.mod as m\n"
                            "stage a = m.f x 1000\nstage b = m.g x 1000\na >> b\n")
    assert plan.n_edges == 1_000_000
    path = tmp_path / "big.spgc"
    plan.save(path)
    start = time.perf_counter()
    loaded = Plan.load(path)
    elapsed = time.perf_counter() - start
    assert loaded.n_edges == 1_000_000
    assert np.array_equal(loaded.arrays["edge_dst"], plan.arrays["edge_dst"])
    assert elapsed < 2.0, f"loading took {elapsed:.2f}s"


# ---- layout -----------------------------------------------------------------------------
def header_of(data: bytes) -> tuple[int, int, dict, int]:
    version, length = struct.unpack_from("<IQ", data, 4)
    header = json.loads(data[16:16 + length])
    body = 16 + length
    body += -body % 64
    return version, length, header, body


def test_file_layout(saved):
    data = saved.read_bytes()
    assert data[:4] == b"SPGC"
    version, length, header, body = header_of(data)
    assert version == FORMAT_VERSION == 2
    assert list(header) == ["meta", "arrays", "digest"]
    assert header["meta"]["format"] == FORMAT_VERSION
    assert body % 64 == 0
    assert sorted(header["arrays"]) == sorted(ARRAY_NAMES)
    for name, spec in header["arrays"].items():
        assert spec["offset"] % 64 == 0, name
        array = np.frombuffer(data, np.dtype(spec["dtype"]), int(np.prod(spec["shape"])),
                              body + spec["offset"])
        assert np.array_equal(array.reshape(spec["shape"]), Plan.load(saved).arrays[name])


def test_array_dtypes_are_as_documented(grouped_plan):
    dtypes = {name: grouped_plan.arrays[name].dtype for name in ARRAY_NAMES}
    int32 = ["vertex_template", "vertex_partition", "vertex_group", "vertex_gang",
             "vertex_context", "vertex_node", "origin_vertex", "edge_src", "edge_dst",
             "edge_decl", "succ_indices", "pred_indices", "topo_order"]
    assert {n: dtypes[n] for n in int32} == {n: np.dtype(np.int32) for n in int32}
    assert dtypes["vertex_flags"] == dtypes["edge_channel"] == np.dtype(np.uint8)
    for name in ("succ_indptr", "pred_indptr", "succ_edges", "pred_edges"):
        assert dtypes[name] == np.dtype(np.int64)
    assert dtypes["node_reach"] == np.dtype(np.uint64)
    n, m = grouped_plan.n_vertices, grouped_plan.n_edges
    assert grouped_plan.arrays["succ_indptr"].shape == (n + 1,)
    assert grouped_plan.arrays["pred_indices"].shape == (m,)
    assert grouped_plan.arrays["node_reach"].ndim == 2


# ---- damaged files ------------------------------------------------------------------------
def refuse(path: Path, data: bytes) -> PlanFormatError:
    path.write_bytes(data)
    with pytest.raises(PlanFormatError) as info:
        Plan.load(path)
    return info.value


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_flipped_byte_in_the_arrays_is_refused(saved, where):
    data = bytearray(saved.read_bytes())
    _, _, _, body = header_of(bytes(data))
    index = {"first": body, "middle": (body + len(data)) // 2, "last": len(data) - 1}[where]
    data[index] ^= 0x01
    error = refuse(saved, bytes(data))
    assert "digest" in str(error)
    assert str(saved) in str(error)


def test_wrong_magic_is_refused(saved):
    data = saved.read_bytes()
    error = refuse(saved, b"SPGX" + data[4:])
    assert "not a SerPyTor plan" in str(error)


@pytest.mark.parametrize("version", [0, 1, 3, 2**32 - 1])
def test_wrong_version_is_refused(saved, version):
    data = saved.read_bytes()
    error = refuse(saved, data[:4] + struct.pack("<I", version) + data[8:])
    assert f"format {version}" in str(error)
    assert "recompile" in str(error).lower()


@pytest.mark.parametrize("keep", [0, 3, 4, 15, 16, 100, "header-end", "half", "minus-1"])
def test_truncated_file_is_refused(saved, keep):
    data = saved.read_bytes()
    _, length, _, body = header_of(data)
    size = {"header-end": 16 + length, "half": (body + len(data)) // 2,
            "minus-1": len(data) - 1}.get(keep, keep)
    refuse(saved, data[:size])


def test_garbage_header_is_refused(saved):
    data = bytearray(saved.read_bytes())
    data[16] = ord("X")  # the header's opening '{'
    refuse(saved, bytes(data))


def test_huge_header_length_is_refused(saved):
    data = saved.read_bytes()
    refuse(saved, data[:8] + struct.pack("<Q", 2**63) + data[16:])


def _with_header(data: bytes, change, sign: bool = True) -> bytes:
    """The file with its JSON header edited by ``change``, its digest recomputed (so
    that what is tested is the check of the header's structure) unless not ``sign``."""
    _, _, header, body = header_of(data)
    digest = header.pop("digest")
    change(header)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    if sign:
        encoded = _signed_header(encoded, [memoryview(data)[body:]])
    else:
        encoded = encoded[:-1] + f',"digest":"{digest}"}}'.encode()
    prefix = b"SPGC" + struct.pack("<IQ", FORMAT_VERSION, len(encoded)) + encoded
    return prefix + b"\0" * (-len(prefix) % 64) + data[body:]


def test_rewritten_header_with_the_same_content_still_loads(saved, grouped_plan):
    """Sanity check of the helper used below: an unchanged header loads."""
    saved.write_bytes(_with_header(saved.read_bytes(), lambda header: None))
    assert_same_plan(grouped_plan, Plan.load(saved))


HEADER_DAMAGE = {
    "offset-past-end": lambda h: h["arrays"]["topo_order"].update(offset=10**7),
    "shape-too-big": lambda h: h["arrays"]["topo_order"].update(shape=[10**6]),
    "bad-dtype": lambda h: h["arrays"]["edge_src"].update(dtype="<zz"),
    "no-array-table": lambda h: h.pop("arrays"),
    "no-meta": lambda h: h.pop("meta"),
    "array-missing": lambda h: h["arrays"].pop("topo_order"),
    "header-not-an-object": lambda h: h.clear(),
}


def test_header_that_does_not_describe_the_file_is_refused(saved):
    """The digest covers the arrays; a header whose table does not fit them is a
    damaged plan too, refused with PlanFormatError rather than a numpy error or a
    KeyError (one test for all the damages, so one bug is one failure)."""
    data = saved.read_bytes()
    escaped = {}
    for name, damage in HEADER_DAMAGE.items():
        saved.write_bytes(_with_header(data, damage))
        try:
            Plan.load(saved)
        except PlanFormatError:
            continue
        except Exception as error:  # noqa: BLE001 - collecting what escapes
            escaped[name] = f"{type(error).__name__}: {error}"
        else:
            escaped[name] = "loaded"
    assert escaped == {}


def test_an_edited_header_is_refused_by_its_digest(saved):
    """A header edited without its digest (a renamed key a server would trip over
    later) is refused at once."""
    data = saved.read_bytes()
    renamed = _with_header(data, lambda h: h["meta"].update(edge_declz=h["meta"].pop(
        "edge_decls")), sign=False)
    assert "digest" in str(refuse(saved, renamed))
    saved.write_bytes(_with_header(data, lambda h: None, sign=False))
    assert "edge_decls" in Plan.load(saved).meta  # the helper itself keeps a good file good


def test_any_flipped_byte_is_refused(saved):
    """Flip every byte of a small plan file in turn (but the alignment padding after
    the header, which carries nothing): loading refuses it with PlanFormatError --
    never another exception, never a plan."""
    data = saved.read_bytes()
    _, length, _, body = header_of(data)
    unexpected = {}
    for index in [*range(16 + length), *range(body, len(data))]:
        damaged = bytearray(data)
        damaged[index] ^= 0x04
        try:
            serpytor.compiler.plan.decode_plan(bytes(damaged), "damaged.spgc")
        except PlanFormatError:
            continue
        except Exception as error:  # noqa: BLE001 - collecting what escapes
            unexpected.setdefault(type(error).__name__, index)
        else:
            unexpected.setdefault("loaded", index)
    assert unexpected == {}, f"outcome -> first byte offset: {unexpected}"


# ---- the CLI writes plans ------------------------------------------------------------------
def test_cli_writes_pipeline_spgc_beside_the_source(tmp_path, capsys):
    source = tmp_path / "wc.spg"
    shutil.copy(ROOT / "examples" / "wordcount.spg", source)
    assert compiler_main([str(source)]) == 0
    out = capsys.readouterr().out
    plan_path = tmp_path / "wc.spgc"
    assert out.startswith(f"{plan_path}: pipeline wordcount: 21 vertices")
    assert_same_plan(Plan.load(plan_path), serpytor.compile_file(source))


def test_cli_writes_to_the_output_path(tmp_path, capsys):
    source = tmp_path / "wc.spg"
    shutil.copy(ROOT / "examples" / "wordcount.spg", source)
    target = tmp_path / "elsewhere" / "plan.bin"
    target.parent.mkdir()
    assert compiler_main([str(source), "-o", str(target)]) == 0
    assert Plan.load(target).pipeline == "wordcount"
    assert not (tmp_path / "wc.spgc").exists()
    assert str(target) in capsys.readouterr().out
