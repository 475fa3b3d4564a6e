"""Pure-Python reference of the context kernels in ``context.pyx`` (DESIGN.md section 3).

Context nodes are the vertices of the compiler's context DAG (each group already
collapsed into one union node). Origins are numbered: 0 is the origin context xi(0);
1 .. n_origins-1 are vertices with facts. Origin sets are bitsets of W = ceil(n_origins
/ 64) uint64 words per row, bit o of row r being word o // 64, bit o % 64.

propagate_origins (n nodes, m parent links, k owned origins)::

    parent_indptr  int64[n+1]   parents of c: parent_indices[parent_indptr[c]:...[c+1]]
    parent_indices int32[m]
    topo_order     int32[n]     every node once, parents before children
    own_indptr     int64[n+1]   origins owned by c: own_origins[own_indptr[c]:...[c+1]]
    own_origins    int32[k]     (a union node owns the origins of all its members)
    -> reach       uint64[n, W] inherited | own
       inherited   uint64[n, W] OR of reach(p) over the parents p; {0} for a root

resolve_nearest (n rows, F facts, E entries)::

    reach            uint64[n, W]          one origin set per row (node)
    origin_inherited uint64[n_origins, W]  inherited() of the node owning origin o
                                           (all zeros for origin 0)
    fact_origin      int32[F]   fact f = (fact_key[f], fact_value[f]) of origin
    fact_key         int32[F]   fact_origin[f]; keys in [0, n_keys), values are
    fact_value       int32[F]   interned ids >= 0; at most one fact per (origin, key)
    -> entry_indptr  int64[n+1] entries of row r: entry_indptr[r] .. entry_indptr[r+1]
       entry_key     int32[E]   keys ascending within a row
       entry_value   int32[E]   the value when every nearest fact agrees, else -1
       fact_indptr   int64[E+1] nearest facts of entry e, ascending:
       fact_ids      int32[..]  fact_ids[fact_indptr[e]:fact_indptr[e+1]]

    The candidates of (row, key) are the facts with that key whose origin is in the
    row; the nearest are the candidates whose origin is in no candidate's
    origin_inherited (not an ancestor of another candidate). Rows with equal bits are
    resolved once.

merge_facts, the run-time merge (R rows in, Q own facts)::

    origin    int64[R]   the parents' fact tables, concatenated (order is irrelevant:
    key       int32[R]   the merge is a union); a fact's identity is (origin, key) and
    value     int32[R]   every row of one identity carries the same value
    shadowed  bool[R]
    own_origin int64[Q]  the facts the node adds (static or published); identities
    own_key    int32[Q]  unique
    own_value  int32[Q]
    peers      int64[P]  origins standing side by side with the own facts (the members
                         of the node's group); their facts are not shadowed
    -> (origin, key, value, shadowed), one row per identity, sorted by (key, origin)

    live = union of live rows minus every identity shadowed in any row (a fact shadowed
    on one path is shadowed: its origin is an ancestor of the shadowing origin); each
    own fact replaces its identity and is live; then every live fact with an own key
    whose origin is neither an own origin nor a peer becomes shadowed. Looking up a key
    in the result (lookup_fact) equals resolve_nearest without the ancestor relation.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._checks import csr_arrays, integer_array, scalar_index

CONFLICT = -1  # entry_value / lookup value when the nearest facts disagree
MISSING = -2   # lookup value when no live fact has the key

FactTable = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


# ---- boundary checks (shared with the kernel) ----------------------------------------

def words_for(n_origins: int) -> int:
    return (n_origins + 63) // 64


def bitset_array(name: str, value: Any, rows: int | None, words: int) -> np.ndarray:
    """A C-contiguous uint64[rows, words] array (``rows=None``: any number of rows)."""
    shape = f"({'n' if rows is None else rows}, {words})"
    array = np.asarray(value)
    if array.dtype != np.uint64 or array.ndim != 2 or array.shape[1] != words or \
            (rows is not None and array.shape[0] != rows):
        raise ValueError(f"{name}: expected a uint64 array of shape {shape}, got "
                         f"{array.dtype} array of shape {array.shape}")
    return np.ascontiguousarray(array)


def _check_spare_bits(name: str, bits: np.ndarray, n_origins: int) -> None:
    """Bits at or past n_origins in the last word must be clear: they name no origin."""
    if n_origins % 64 and bits.shape[0]:
        spare = np.uint64(~((1 << (n_origins % 64)) - 1) & (2**64 - 1))
        bad = np.flatnonzero(bits[:, -1] & spare)
        if bad.size:
            raise ValueError(f"{name}: row {int(bad[0])} has bits set at or past "
                             f"n_origins = {n_origins}")


def check_propagate_inputs(parent_indptr: Any, parent_indices: Any, topo_order: Any,
                           own_indptr: Any, own_origins: Any, n_origins: Any):
    n_origins = scalar_index("n_origins", n_origins)
    if n_origins < 1:
        raise ValueError(f"n_origins: expected an integer >= 1 (origin 0 is xi(0)), got "
                         f"{n_origins}")
    indptr, parents = csr_arrays("parent_indptr", "parent_indices", parent_indptr,
                                 parent_indices, None, None)
    n = indptr.shape[0] - 1
    # that the order lists every node once, parents first, is checked while propagating
    topo = integer_array("topo_order", topo_order, length=n, lower=0, upper=n)
    own_ptr, own = csr_arrays("own_indptr", "own_origins", own_indptr, own_origins,
                              n, n_origins)
    return indptr, parents, topo, own_ptr, own, n_origins


def check_resolve_inputs(reach: Any, origin_inherited: Any, fact_origin: Any,
                         fact_key: Any, fact_value: Any, n_keys: Any):
    inherited_shape = np.shape(origin_inherited)
    if len(inherited_shape) != 2:
        raise ValueError("origin_inherited: expected a uint64 array of shape (n_origins, "
                         f"W), got shape {inherited_shape}")
    n_origins = inherited_shape[0]
    words = words_for(n_origins)
    origin_inherited = bitset_array("origin_inherited", origin_inherited, n_origins, words)
    reach = bitset_array("reach", reach, None, words)
    _check_spare_bits("reach", reach, n_origins)
    _check_spare_bits("origin_inherited", origin_inherited, n_origins)
    n_keys = scalar_index("n_keys", n_keys)
    if n_keys < 0:
        raise ValueError(f"n_keys: expected an integer >= 0, got {n_keys}")
    fact_origin = integer_array("fact_origin", fact_origin, lower=0, upper=n_origins)
    n_facts = fact_origin.shape[0]
    fact_key = integer_array("fact_key", fact_key, length=n_facts, lower=0, upper=n_keys)
    fact_value = integer_array("fact_value", fact_value, length=n_facts, lower=0)
    identity = fact_origin.astype(np.int64) * max(n_keys, 1) + fact_key
    distinct, counts = np.unique(identity, return_counts=True)
    if n_facts and counts.max() > 1:
        twice = int(distinct[np.argmax(counts)])
        raise ValueError(f"fact_origin/fact_key: origin {twice // max(n_keys, 1)} has "
                         f"several facts for key {twice % max(n_keys, 1)}; expected at "
                         "most one per (origin, key)")
    return reach, origin_inherited, fact_origin, fact_key, fact_value, n_keys


def check_merge_inputs(origin: Any, key: Any, value: Any, shadowed: Any, own_origin: Any,
                       own_key: Any, own_value: Any, peers: Any):
    origin = integer_array("origin", origin, np.int64, lower=0)
    rows = origin.shape[0]
    key = integer_array("key", key, length=rows, lower=0)
    value = integer_array("value", value, length=rows, lower=0)
    shadowed = _flag_array("shadowed", shadowed, rows)
    own_origin = integer_array("own_origin", own_origin, np.int64, lower=0)
    own_key = integer_array("own_key", own_key, length=own_origin.shape[0], lower=0)
    own_value = integer_array("own_value", own_value, length=own_origin.shape[0], lower=0)
    peers = integer_array("peers", [] if peers is None else peers, np.int64, lower=0)
    return origin, key, value, shadowed, own_origin, own_key, own_value, peers


def _flag_array(name: str, value: Any, length: int) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype == np.bool_ and array.ndim == 1 and array.shape[0] == length:
        return np.ascontiguousarray(array.view(np.uint8))
    flags = integer_array(name, array, np.int32, length=length, lower=0, upper=2)
    return flags.astype(np.uint8)


# ---- propagate_origins --------------------------------------------------------------

def propagate_origins(parent_indptr: Any, parent_indices: Any, topo_order: Any,
                      own_indptr: Any, own_origins: Any,
                      n_origins: int) -> tuple[np.ndarray, np.ndarray]:
    """``(reach, inherited)``, uint64[n, W] each (see the module docstring)."""
    indptr, parents, topo, own_ptr, own, n_origins = check_propagate_inputs(
        parent_indptr, parent_indices, topo_order, own_indptr, own_origins, n_origins)
    n = indptr.shape[0] - 1
    parents_of = [parents[indptr[c]:indptr[c + 1]].tolist() for c in range(n)]
    own_of = [set(own[own_ptr[c]:own_ptr[c + 1]].tolist()) for c in range(n)]
    reach: list[set[int]] = [set() for _ in range(n)]
    inherited: list[set[int]] = [set() for _ in range(n)]
    done = [False] * n
    for c in topo.tolist():
        _check_order(c, parents_of[c], done)
        done[c] = True
        from_parents = [reach[p] for p in parents_of[c]]
        inherited[c] = set().union(*from_parents) if from_parents else {0}
        reach[c] = inherited[c] | own_of[c]
    words = words_for(n_origins)
    return to_bitsets(reach, words), to_bitsets(inherited, words)


def _check_order(c: int, parents: list[int], done: list[bool]) -> None:
    if done[c]:
        raise ValueError(f"topo_order: node {c} appears twice; expected every node once")
    for p in parents:
        if not done[p]:
            raise ValueError(f"topo_order: node {c} comes before its parent {p} (or is its "
                             "own parent); expected parents before children")


def to_bitsets(sets: list[set[int]], words: int) -> np.ndarray:
    """uint64[len(sets), words] with bit o of row r set when o is in sets[r]."""
    bits = np.zeros((len(sets), words), np.uint64)
    sizes = [len(s) for s in sets]
    if sum(sizes):
        rows = np.repeat(np.arange(len(sets)), sizes)
        members = np.fromiter((o for s in sets for o in s), np.int64, sum(sizes))
        np.bitwise_or.at(bits, (rows, members >> 6),
                         np.left_shift(np.uint64(1), (members & 63).astype(np.uint64)))
    return bits


def from_bitset(row: np.ndarray) -> set[int]:
    """The origins whose bits are set in one bitset row."""
    bits = int.from_bytes(np.ascontiguousarray(row).tobytes(), "little")
    origins = set()
    while bits:
        low = bits & -bits
        origins.add(low.bit_length() - 1)
        bits ^= low
    return origins


# ---- resolve_nearest ----------------------------------------------------------------

def resolve_nearest(reach: Any, origin_inherited: Any, fact_origin: Any, fact_key: Any,
                    fact_value: Any, n_keys: int):
    """Nearest facts per (row, key); see the module docstring for the five arrays."""
    reach, origin_inherited, fact_origin, fact_key, fact_value, n_keys = \
        check_resolve_inputs(reach, origin_inherited, fact_origin, fact_key, fact_value,
                             n_keys)
    origins, keys, values = fact_origin.tolist(), fact_key.tolist(), fact_value.tolist()
    facts_by_key: dict[int, list[int]] = {}
    for f, k in enumerate(keys):
        facts_by_key.setdefault(k, []).append(f)
    ancestors_of = [from_bitset(row) for row in origin_inherited]
    resolved: dict[bytes, list[tuple[int, int, list[int]]]] = {}
    rows = []
    for row in reach:
        signature = row.tobytes()
        if signature not in resolved:
            resolved[signature] = _resolve_row(from_bitset(row), facts_by_key, origins,
                                               values, ancestors_of)
        rows.append(resolved[signature])
    return _entry_arrays(rows)


def _resolve_row(reaching: set[int], facts_by_key: dict[int, list[int]],
                 origins: list[int], values: list[int],
                 ancestors_of: list[set[int]]) -> list[tuple[int, int, list[int]]]:
    entries = []
    for k in sorted(facts_by_key):
        candidates = [f for f in facts_by_key[k] if origins[f] in reaching]
        if not candidates:
            continue
        ancestors = set().union(*(ancestors_of[origins[f]] for f in candidates))
        nearest = [f for f in candidates if origins[f] not in ancestors]
        distinct = {values[f] for f in nearest}
        entries.append((k, distinct.pop() if len(distinct) == 1 else CONFLICT, nearest))
    return entries


def _entry_arrays(rows: list[list[tuple[int, int, list[int]]]]):
    entry_indptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum([len(r) for r in rows], out=entry_indptr[1:])
    entries = [e for r in rows for e in r]
    fact_indptr = np.zeros(len(entries) + 1, np.int64)
    np.cumsum([len(e[2]) for e in entries], out=fact_indptr[1:])
    return (entry_indptr,
            np.array([e[0] for e in entries], np.int32),
            np.array([e[1] for e in entries], np.int32),
            fact_indptr,
            np.array([f for e in entries for f in e[2]], np.int32))


# ---- run-time merge -------------------------------------------------------------------

def merge_facts(origin: Any, key: Any, value: Any, shadowed: Any, own_origin: Any,
                own_key: Any, own_value: Any, peers: Any = None) -> FactTable:
    """Merge the parents' fact tables and add the node's own facts (module docstring).

    Raises ``ValueError`` when an own (origin, key) appears twice or when rows of one
    identity disagree on its value (the first such identity in (key, origin) order).
    """
    origin, key, value, shadowed, own_origin, own_key, own_value, peers = \
        check_merge_inputs(origin, key, value, shadowed, own_origin, own_key, own_value,
                           peers)
    values: dict[tuple[int, int], set[int]] = {}
    hidden: set[tuple[int, int]] = set()
    for o, k, v, s in zip(origin.tolist(), key.tolist(), value.tolist(), shadowed.tolist()):
        values.setdefault((k, o), set()).add(v)
        if s:
            hidden.add((k, o))
    own: dict[tuple[int, int], list[int]] = {}
    for o, k, v in zip(own_origin.tolist(), own_key.tolist(), own_value.tolist()):
        own.setdefault((k, o), []).append(v)
    _check_identities(values, own)
    table = {i: (vs.pop(), i in hidden) for i, vs in values.items()}
    table.update({i: (vs[0], False) for i, vs in own.items()})
    exempt = set(peers.tolist()) | set(own_origin.tolist())
    own_keys = {k for k, _ in own}
    for (k, o), (v, is_hidden) in table.items():
        if k in own_keys and o not in exempt and not is_hidden:
            table[(k, o)] = (v, True)
    return _table_arrays(table)


def _check_identities(values: dict[tuple[int, int], set[int]],
                      own: dict[tuple[int, int], list[int]]) -> None:
    for identity in sorted(set(values) | set(own)):
        k, o = identity
        if len(own.get(identity, ())) > 1:
            raise ValueError(f"own_origin/own_key: fact (origin {o}, key {k}) appears "
                             "twice; expected each own (origin, key) once")
        if len(values.get(identity, ())) > 1:
            a, b = sorted(values[identity])[:2]
            raise ValueError(f"origin/key/value: fact (origin {o}, key {k}) has two "
                             f"values, {a} and {b}; expected one value per (origin, key)")


def _table_arrays(table: dict[tuple[int, int], tuple[int, bool]]) -> FactTable:
    identities = sorted(table)
    return (np.array([o for _, o in identities], np.int64),
            np.array([k for k, _ in identities], np.int32),
            np.array([table[i][0] for i in identities], np.int32),
            np.array([table[i][1] for i in identities], np.bool_))


def lookup_fact(origin: Any, key: Any, value: Any, shadowed: Any,
                wanted_key: int) -> tuple[int, np.ndarray]:
    """Look ``wanted_key`` up in a fact table: ``(value, origins)`` where value is the
    one value of the live facts with that key, :data:`CONFLICT` when they disagree, or
    :data:`MISSING` when there are none; ``origins`` (int64, ascending) are theirs."""
    origin, key, value, shadowed, *_ = check_merge_inputs(
        origin, key, value, shadowed, [], [], [], None)
    wanted_key = scalar_index("wanted_key", wanted_key)
    live = sorted((o, v) for o, k, v, s in zip(origin.tolist(), key.tolist(),
                                                value.tolist(), shadowed.tolist())
                  if k == wanted_key and not s)
    distinct = {v for _, v in live}
    found = MISSING if not live else (distinct.pop() if len(distinct) == 1 else CONFLICT)
    return found, np.array([o for o, _ in live], np.int64)
