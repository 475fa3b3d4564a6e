"""The compiled Plan and its on-disk format (``.spgc``).

A Plan is what the runtime executes: vertices, edges with channel kinds, groups, a
topological order, and every vertex's origins and static context. Per-vertex and
per-edge data are numpy arrays; names are derived from templates on demand, so a plan
of a million edges loads in milliseconds without re-parsing anything.

Arrays (n vertices, m edges, c context nodes, W = ceil(origins / 64)):

=================  ==========  ===================================================
vertex_template    int32[n]    index into ``templates``
vertex_partition   int32[n]    replica index within the template
vertex_group       int32[n]    group index, -1 when none
vertex_gang        int32[n]    co-location gang (shm edges), -1 when none
vertex_flags       uint8[n]    :class:`~serpytor.compiler.kinds.VertexFlag`
vertex_context     int32[n]    index into ``contexts`` (resolved static context)
vertex_node        int32[n]    context node (a group's members share one)
node_reach         uint64[c,W] origins whose facts reach the node (bit o = origin o)
origin_vertex      int32[o]    vertex of each origin; -1 for origin 0 (``xi(0)``)
edge_src/edge_dst  int32[m]    endpoints
edge_decl          int32[m]    index into ``edge_decls``
edge_channel       uint8[m]    :class:`~serpytor.compiler.kinds.ChannelKind`
succ_indptr        int64[n+1]  CSR of successors: ``succ_indices[succ_indptr[v]:...]``
succ_indices       int32[m]
succ_edges         int64[m]    the edge id of each CSR successor entry
pred_indptr        int64[n+1]  CSR of predecessors, sources ascending (partition order)
pred_indices       int32[m]
pred_edges         int64[m]
topo_order         int32[n]    parents before children
=================  ==========  ===================================================

File layout (all integers little-endian)::

    b"SPGC"  u32 format version  u64 header length  header (UTF-8 JSON)  padding
    array bytes, each at a 64-byte aligned offset listed in the header

The header holds ``meta`` (pipeline, templates, edge declarations, groups, facts,
contexts, module paths) and ``arrays`` (``name -> {dtype, shape, offset}``), and, as its
last member, a BLAKE2b ``digest`` of the header without it followed by the array bytes,
so a file damaged anywhere is refused.
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..errors import PlanFormatError
from .kinds import ChannelKind, EdgeKind, VertexFlag

MAGIC = b"SPGC"
FORMAT_VERSION = 2  # 2: the digest covers the header too
ALIGN = 64
ARRAY_NAMES = (
    "vertex_template", "vertex_partition", "vertex_group", "vertex_gang", "vertex_flags",
    "vertex_context", "vertex_node", "node_reach", "origin_vertex",
    "edge_src", "edge_dst", "edge_decl", "edge_channel",
    "succ_indptr", "succ_indices", "succ_edges", "pred_indptr", "pred_indices", "pred_edges",
    "topo_order",
)
# batches up to this size are answered vertex by vertex: gathering from the arrays costs
# a conversion of the batch to an array first (the inline executor asks one at a time)
SMALL_BATCH = 8
_REPLICA = re.compile(r"^(.*)\[(\d+)\]$")


@dataclass
class Plan:
    """A compiled pipeline. ``meta`` is plain JSON data; ``arrays`` are numpy arrays."""

    meta: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(repr=False)
    # the encoded header, once made: a plan is sent to every server for every run, and
    # the JSON of a large plan's metadata costs more than the run's first hundred tasks
    header_json: bytes | None = field(default=None, init=False, repr=False, compare=False)
    # per template, its name, or a replica's name start ("s["), once a name is asked for:
    # names are asked for every task a server runs and every key the journal makes
    name_starts: list[str] | None = field(default=None, init=False, repr=False,
                                          compare=False)

    # ---- size and names ---------------------------------------------------------------
    @property
    def pipeline(self) -> str:
        return self.meta["pipeline"]

    @property
    def n_vertices(self) -> int:
        return int(self.arrays["vertex_template"].shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.arrays["edge_src"].shape[0])

    @property
    def templates(self) -> list[dict[str, Any]]:
        return self.meta["templates"]

    @property
    def groups(self) -> list[dict[str, Any]]:
        return self.meta["groups"]

    def __getattr__(self, name: str) -> np.ndarray:
        arrays = self.__dict__.get("arrays", {})
        if name in arrays:
            return arrays[name]
        raise AttributeError(name)

    def vertex_name(self, v: int) -> str:
        start = self._name_starts()[self.arrays["vertex_template"][v]]
        if start[-1] != "[":
            return start
        return f"{start}{self.arrays['vertex_partition'][v]}]"

    def vertex_names(self, vertices: list[int]) -> list[str]:
        """:meth:`vertex_name` of each of ``vertices`` (one call for a batch: the
        journal names every vertex it makes a key for)."""
        if len(vertices) <= SMALL_BATCH:
            return [self.vertex_name(v) for v in vertices]
        starts = self._name_starts()
        templates = self.arrays["vertex_template"][vertices].tolist()
        partitions = self.arrays["vertex_partition"][vertices].tolist()
        return [start if start[-1] != "[" else f"{start}{partition}]"
                for start, partition in zip([starts[t] for t in templates], partitions)]

    def template_indices(self, vertices: list[int]) -> list[int]:
        """The index into ``templates`` of each of ``vertices``."""
        array = self.arrays["vertex_template"]
        if len(vertices) <= SMALL_BATCH:
            return [int(array[v]) for v in vertices]
        return array[vertices].tolist()

    def _name_starts(self) -> list[str]:
        starts = self.name_starts
        if starts is None:
            starts = self.name_starts = [t["name"] if t["kind"] == "node" else t["name"] + "["
                                         for t in self.templates]
        return starts

    @property
    def names(self) -> list[str]:
        return [self.vertex_name(v) for v in range(self.n_vertices)]

    def index_of(self, name: str) -> int:
        """The vertex id of ``name`` (``s[i]`` for a replica). KeyError if unknown."""
        match = _REPLICA.match(name)
        base, partition = (match.group(1), int(match.group(2))) if match else (name, 0)
        for template in self.templates:
            if template["name"] == base and (match or template["kind"] == "node") \
                    and partition < template["width"]:
                return template["first"] + partition
        raise KeyError(f"no vertex named '{name}' in pipeline '{self.pipeline}'")

    # ---- graph ----------------------------------------------------------------------
    def vertex_template(self, v: int) -> dict[str, Any]:
        return self.templates[int(self.arrays["vertex_template"][v])]

    def successors(self, v: int) -> np.ndarray:
        a = self.arrays
        return a["succ_indices"][a["succ_indptr"][v]:a["succ_indptr"][v + 1]]

    def predecessors(self, v: int) -> np.ndarray:
        a = self.arrays
        return a["pred_indices"][a["pred_indptr"][v]:a["pred_indptr"][v + 1]]

    def edges(self) -> Iterator[tuple[str, str, ChannelKind]]:
        """Every edge as ``(src name, dst name, channel)``."""
        names = self.names
        a = self.arrays
        for s, d, c in zip(a["edge_src"].tolist(), a["edge_dst"].tolist(),
                           a["edge_channel"].tolist()):
            yield names[s], names[d], ChannelKind(c)

    def edge_kind(self, e: int) -> EdgeKind:
        return EdgeKind(self.meta["edge_decls"][int(self.arrays["edge_decl"][e])]["kind"])

    def topological_order(self) -> list[str]:
        return [self.vertex_name(int(v)) for v in self.arrays["topo_order"]]

    def flags(self, v: int) -> VertexFlag:
        return VertexFlag(int(self.arrays["vertex_flags"][v]))

    def sinks(self) -> np.ndarray:
        return np.flatnonzero(np.diff(self.arrays["succ_indptr"]) == 0).astype(np.int32)

    # ---- context --------------------------------------------------------------------
    def origins(self, v: int) -> list[str]:
        """Names of the origins whose facts reach vertex v (``"context"`` is xi(0))."""
        row = self.arrays["node_reach"][int(self.arrays["vertex_node"][v])]
        bits = np.unpackbits(row.view(np.uint8), bitorder="little")
        ids = np.flatnonzero(bits[: len(self.arrays["origin_vertex"])])
        return [self.origin_name(int(o)) for o in ids]

    def origin_name(self, origin: int) -> str:
        vertex = int(self.arrays["origin_vertex"][origin])
        return "context" if vertex < 0 else self.vertex_name(vertex)

    def static_context(self, v: int) -> dict[str, Any]:
        """The resolved static context of vertex v: ``{key: value}``."""
        facts = self.meta["facts"]
        context = self.meta["contexts"][int(self.arrays["vertex_context"][v])]
        return {key: facts[ids[0]]["value"] for key, ids in context.items()}

    def context_facts(self, v: int) -> dict[str, list[dict[str, Any]]]:
        """The nearest facts per key for vertex v, each with its origin and line."""
        facts = self.meta["facts"]
        context = self.meta["contexts"][int(self.arrays["vertex_context"][v])]
        return {key: [facts[i] for i in ids] for key, ids in context.items()}

    def reaching_facts(self, v: int) -> list[dict[str, Any]]:
        """Every fact whose origin reaches vertex v (nearest or overridden)."""
        origins = set(self.origins(v))
        return [f for f in self.meta["facts"] if self.origin_name(f["origin"]) in origins]

    # ---- summary --------------------------------------------------------------------
    def summary(self) -> str:
        stages = sum(1 for t in self.templates if t["kind"] == "stage")
        return (f"pipeline {self.pipeline}: {self.n_vertices} vertices, {self.n_edges} "
                f"edges, {stages} stages, {len(self.groups)} groups")

    def __repr__(self) -> str:
        return f"<Plan {self.summary()}>"

    # ---- files ----------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the plan to ``path`` in the ``.spgc`` format (atomically), streaming
        the arrays from memory without copying them."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as out:
            for chunk in plan_chunks(self):
                out.write(chunk)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        """Read a ``.spgc`` file; raises :class:`PlanFormatError` if it is not one."""
        data = Path(path).read_bytes()
        return decode_plan(data, str(path))


def plan_chunks(plan: Plan) -> Iterator[bytes | memoryview]:
    """The ``.spgc`` file as a sequence of chunks; arrays are views, not copies."""
    table, body, offset = {}, [], 0
    for name in ARRAY_NAMES:
        array = np.ascontiguousarray(plan.arrays[name])
        padding = b"\0" * (-offset % ALIGN)
        offset += len(padding)
        table[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "offset": offset}
        view = memoryview(array).cast("B")
        body += (padding, view)
        offset += array.nbytes
    if plan.header_json is None:
        plan.header_json = json.dumps({"meta": plan.meta, "arrays": table},
                                      separators=(",", ":")).encode()
    core = plan.header_json
    header = _signed_header(core, body)
    prefix = MAGIC + struct.pack("<IQ", FORMAT_VERSION, len(header)) + header
    yield prefix + b"\0" * (-len(prefix) % ALIGN)
    yield from body


def encode_plan(plan: Plan) -> bytes:
    """The ``.spgc`` file's bytes (see :func:`plan_chunks`)."""
    return b"".join(plan_chunks(plan))


def decode_plan(data: bytes, where: str = "<bytes>") -> Plan:
    if len(data) < 16 or data[:4] != MAGIC:
        raise PlanFormatError(f"{where}: not a SerPyTor plan (no SPGC header)")
    version, header_len = struct.unpack_from("<IQ", data, 4)
    if version != FORMAT_VERSION:
        raise PlanFormatError(f"{where}: plan format {version}; this SerPyTor reads "
                              f"format {FORMAT_VERSION}. Recompile the .spg with serpytorc")
    raw = data[16:16 + header_len]
    start = 16 + header_len
    start += -start % ALIGN
    body = memoryview(data)[start:]
    if len(data) < start or not _signature_matches(raw, body):
        raise PlanFormatError(f"{where}: damaged plan (digest mismatch); recompile it")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise PlanFormatError(f"{where}: damaged plan header ({error})") from None
    try:
        arrays = {name: _array(body, header["arrays"][name]) for name in ARRAY_NAMES}
        meta = header["meta"]
        if not isinstance(meta, dict) or not isinstance(meta.get("templates"), list):
            raise ValueError("no templates in the metadata")
    except (KeyError, TypeError, ValueError) as error:
        raise PlanFormatError(f"{where}: damaged plan header ({type(error).__name__}: "
                              f"{error}); recompile it") from None
    return Plan(meta, arrays)


_DIGEST_TAIL = re.compile(rb',"digest":"[0-9a-f]{32}"\}\Z')
_TAIL_LEN = len(',"digest":"') + 32 + 2


def _digest(core: bytes, body: Any) -> str:
    """BLAKE2b of the header without its digest, then of the array bytes."""
    digest = hashlib.blake2b(core, digest_size=16)
    for chunk in body if isinstance(body, list) else (body,):
        digest.update(chunk)
    return digest.hexdigest()


def _signed_header(core: bytes, body: list) -> bytes:
    """The header JSON object ``core`` with the digest of it and the arrays appended as
    its last member, where :func:`_signature_matches` finds it without parsing."""
    return core[:-1] + b',"digest":"' + _digest(core, body).encode() + b'"}'


def _signature_matches(header: bytes, body: memoryview) -> bool:
    if not _DIGEST_TAIL.search(header):
        return False
    core = header[:-_TAIL_LEN] + b"}"
    return _digest(core, body) == header[-34:-2].decode()


def _array(body: memoryview, spec: dict[str, Any]) -> np.ndarray:
    """One array of the body, checked against the body's size."""
    dtype = np.dtype(spec["dtype"])
    shape = [int(s) for s in spec["shape"]]
    offset = int(spec["offset"])
    if dtype.hasobject or any(s < 0 for s in shape) or offset < 0:
        raise ValueError(f"bad array spec {spec}")
    count = int(np.prod(shape, dtype=np.int64))
    if offset + count * dtype.itemsize > len(body):
        raise ValueError(f"array at {offset} runs past the end of the file")
    return np.frombuffer(body, dtype, count, offset).reshape(shape)
