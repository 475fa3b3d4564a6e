"""The context kernels (serpytor._core context), compiled and reference.

Origin 0 is xi(0); origin o >= 1 is owned by one context node (a union node owns the
origins of all its members). Hypothesis checks that both implementations agree, that
the run-time merge equals nearest-origin resolution, and the laws of DESIGN.md 3.
"""

from __future__ import annotations

import numpy as np
import pytest
from core_strategies import (
    IMPLEMENTATIONS,
    ContextProblem,
    both,
    context_problems,
    csr,
    fact_tables,
    implementation,
    predecessors,
    topological,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from serpytor._core import CONFLICT, MISSING
from serpytor._core._ref_context import from_bitset


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request):
    return implementation(request.param)


def propagate(impl, n, edges, owner):
    """Run propagate_origins on a DAG whose origin o >= 1 is owned by owner[o - 1]."""
    indptr, parents = predecessors(n, edges)
    own_indptr, own = csr(n, owner, range(1, len(owner) + 1))
    return impl.propagate_origins(indptr, parents, topological(n, edges), own_indptr, own,
                                  len(owner) + 1)


def origin_inherited(inherited, owner):
    rows = np.zeros((len(owner) + 1, inherited.shape[1]), np.uint64)
    rows[1:] = inherited[owner]
    return rows


def resolve(impl, n, edges, owner, facts, n_keys):
    reach, inherited = propagate(impl, n, edges, owner)
    facts = np.array(facts, np.int32).reshape(-1, 3)
    return impl.resolve_nearest(reach, origin_inherited(inherited, owner), facts[:, 0],
                                facts[:, 1], facts[:, 2], n_keys)


def entries_of(resolved, row):
    """{key: (value, [fact ids])} of one row."""
    entry_indptr, keys, values, fact_indptr, fact_ids = resolved
    return {int(keys[e]): (int(values[e]), fact_ids[fact_indptr[e]:fact_indptr[e + 1]].tolist())
            for e in range(entry_indptr[row], entry_indptr[row + 1])}


# ---- propagate_origins --------------------------------------------------------------

def test_a_root_inherits_the_origin_context(impl):
    reach, inherited = propagate(impl, 1, [], [0])
    assert from_bitset(inherited[0]) == {0} and from_bitset(reach[0]) == {0, 1}


def test_origins_flow_to_every_descendant(impl):
    """
        0 (owns 1)
       / \\
      1   2 (owns 2 and 3: a union node)
       \\ /
        3
    """
    edges = [(0, 1), (0, 2), (1, 3), (2, 3)]
    reach, inherited = propagate(impl, 4, edges, [0, 2, 2])
    assert [from_bitset(r) for r in inherited] == [{0}, {0, 1}, {0, 1}, {0, 1, 2, 3}]
    assert [from_bitset(r) for r in reach] == [{0, 1}, {0, 1}, {0, 1, 2, 3}, {0, 1, 2, 3}]
    assert reach.dtype == np.uint64 and reach.shape == (4, 1)


def test_bitsets_span_several_words(impl):
    owner = list(range(130))  # node c owns origin c + 1, a chain 0 -> 1 -> ... -> 129
    edges = [(c, c + 1) for c in range(129)]
    reach, _ = propagate(impl, 130, edges, owner)
    assert reach.shape == (130, 3)
    assert from_bitset(reach[129]) == set(range(131))
    assert from_bitset(reach[63]) == set(range(65))


# ---- resolve_nearest ----------------------------------------------------------------

DIAMOND = [(0, 1), (0, 2), (1, 3), (2, 3)]  # a -> b, a -> c, b -> d, c -> d


def test_a_child_overrides_its_ancestors(impl):
    """
        xi(0): k=1
        a: k=2           node 0, origin 1
       / \\
      b   c          b: k=3 (node 1, origin 2); c sets nothing
       \\ /
        d            d sees b's 3: a and xi(0) are ancestors of b
    """
    facts = [(0, 0, 1), (1, 0, 2), (2, 0, 3)]
    resolved = resolve(impl, 4, DIAMOND, [0, 1], facts, 1)
    assert entries_of(resolved, 0) == {0: (2, [1])}
    assert entries_of(resolved, 2) == {0: (2, [1])}
    assert entries_of(resolved, 3) == {0: (3, [2])}


def test_parallel_branches_that_disagree_conflict_where_they_meet(impl):
    facts = [(1, 0, 3), (2, 0, 4)]  # b: k=3, c: k=4
    resolved = resolve(impl, 4, DIAMOND, [1, 2], facts, 1)
    assert entries_of(resolved, 3) == {0: (CONFLICT, [0, 1])}
    agreeing = resolve(impl, 4, DIAMOND, [1, 2], [(1, 0, 3), (2, 0, 3)], 1)
    assert entries_of(agreeing, 3) == {0: (3, [0, 1])}


def test_the_meeting_vertex_settles_a_conflict(impl):
    facts = [(1, 0, 3), (2, 0, 4), (3, 0, 5)]  # d: k=5 overrides both branches
    resolved = resolve(impl, 4, DIAMOND, [1, 2, 3], facts, 1)
    assert entries_of(resolved, 3) == {0: (5, [2])}


def test_group_members_stand_side_by_side(impl):
    """One union node (0) owns origins 1 and 2; its child 1 sees both."""
    facts = [(0, 0, 7), (1, 0, 1), (2, 0, 2), (1, 1, 9)]
    resolved = resolve(impl, 2, [(0, 1)], [0, 0], facts, 2)
    assert entries_of(resolved, 0) == {0: (CONFLICT, [1, 2]), 1: (9, [3])}
    assert entries_of(resolved, 1) == entries_of(resolved, 0)


def test_keys_without_facts_have_no_entry_and_keys_ascend(impl):
    facts = [(0, 3, 0), (0, 1, 0)]
    resolved = resolve(impl, 2, [], [], facts, 5)
    assert list(entries_of(resolved, 0)) == [1, 3]
    assert resolved[0].tolist() == [0, 2, 4]


def test_equal_rows_get_equal_entries(impl):
    reach = np.array([[1], [3], [1], [3]], np.uint64)
    inherited = np.array([[0], [1]], np.uint64)
    resolved = impl.resolve_nearest(reach, inherited, [0, 1], [0, 0], [4, 5], 1)
    assert [entries_of(resolved, r) for r in range(4)] == \
        [{0: (4, [0])}, {0: (5, [1])}, {0: (4, [0])}, {0: (5, [1])}]


def test_no_facts_and_no_rows(impl):
    empty = impl.resolve_nearest(np.zeros((3, 1), np.uint64), np.zeros((1, 1), np.uint64),
                                 [], [], [], 0)
    assert empty[0].tolist() == [0, 0, 0, 0] and empty[3].tolist() == [0]
    none = impl.resolve_nearest(np.zeros((0, 1), np.uint64), np.zeros((1, 1), np.uint64),
                                [0], [0], [0], 1)
    assert none[0].tolist() == [0] and none[1].tolist() == []


# ---- merge_facts and lookup_fact ----------------------------------------------------

def table(rows):
    """A fact table from (origin, key, value, shadowed) tuples."""
    rows = list(rows)
    return (np.array([r[0] for r in rows], np.int64), np.array([r[1] for r in rows], np.int32),
            np.array([r[2] for r in rows], np.int32), np.array([r[3] for r in rows], np.bool_))


def rows_of(fact_table):
    origin, key, value, shadowed = fact_table
    return list(zip(origin.tolist(), key.tolist(), value.tolist(), shadowed.tolist()))


NO_OWN = ([], [], [])


def test_own_facts_shadow_inherited_facts_with_the_same_key(impl):
    inherited = table([(0, 0, 1, False), (0, 1, 2, False)])
    merged = impl.merge_facts(*inherited, [5], [0], [9])
    assert rows_of(merged) == [(0, 0, 1, True), (5, 0, 9, False), (0, 1, 2, False)]
    assert impl.lookup_fact(*merged, 0)[0] == 9
    assert impl.lookup_fact(*merged, 1)[0] == 2
    assert impl.lookup_fact(*merged, 2)[0] == MISSING


def test_a_fact_shadowed_on_any_path_stays_shadowed(impl):
    left = table([(0, 0, 1, True), (3, 0, 4, False)])
    right = table([(0, 0, 1, False)])
    merged = impl.merge_facts(*(np.concatenate(c) for c in zip(left, right)), *NO_OWN)
    assert rows_of(merged) == [(0, 0, 1, True), (3, 0, 4, False)]


def test_parallel_live_facts_conflict_on_lookup(impl):
    merged = impl.merge_facts(*table([(3, 0, 4, False), (2, 0, 5, False)]), *NO_OWN)
    value, origins = impl.lookup_fact(*merged, 0)
    assert value == CONFLICT and origins.tolist() == [2, 3]


def test_peers_are_not_shadowed(impl):
    """A group member publishes after another: their facts stand side by side."""
    state = table([(0, 0, 1, False), (7, 0, 2, False)])  # 7 is a fellow member
    merged = impl.merge_facts(*state, [8], [0], [3], peers=[7, 8])
    assert rows_of(merged) == [(0, 0, 1, True), (7, 0, 2, False), (8, 0, 3, False)]
    assert impl.lookup_fact(*merged, 0)[0] == CONFLICT


def test_republishing_replaces_the_value(impl):
    merged = impl.merge_facts(*table([(7, 0, 2, False)]), [7], [0], [5], peers=[7])
    assert rows_of(merged) == [(7, 0, 5, False)]


BAD_PROPAGATE = [
    (dict(parent_indptr=[0.0, 0.0]), "parent_indptr: expected a 1-D integer"),
    (dict(parent_indices=[5]), r"parent_indices: value 5 .*outside \[0, 1\]"),
    (dict(topo_order=[0]), r"topo_order: expected a 1-D integer array of shape \(2,\)"),
    (dict(topo_order=[0, 0]), "topo_order: node 0 appears twice"),
    (dict(topo_order=[1, 1]), "topo_order: node 1 comes before its parent 0"),
    (dict(parent_indices=[1]), "topo_order: node 1 comes before its parent 1 .or is its own"),
    (dict(topo_order=[1, 0]), "topo_order: node 1 comes before its parent 0"),
    (dict(own_origins=[3]), r"own_origins: value 3 .*outside \[0, 2\]"),
    (dict(own_indptr=[0, 1]), r"own_indptr: expected a 1-D integer array of shape \(3,\)"),
    (dict(own_indptr=[0, 2, 1]), "own_indptr: must start at 0, never decrease"),
    (dict(n_origins=0), "n_origins: expected an integer >= 1"),
    (dict(n_origins="3"), "n_origins: expected an integer"),
]


@pytest.mark.parametrize("change, message", BAD_PROPAGATE)
def test_bad_propagate_input_is_a_value_error(impl, change, message):
    kwargs = dict(parent_indptr=[0, 0, 1], parent_indices=[0], topo_order=[0, 1],
                  own_indptr=[0, 1, 1], own_origins=[1], n_origins=3)
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        impl.propagate_origins(**kwargs)


BAD_RESOLVE = [
    (dict(reach=np.array([[1]], np.int64)),
     r"reach: expected a uint64 array of shape \(n, 1\)"),
    (dict(reach=np.zeros((1, 2), np.uint64)),
     r"reach: expected a uint64 array of shape \(n, 1\)"),
    (dict(reach=np.array([[16]], np.uint64)),
     "reach: row 0 has bits set at or past n_origins = 3"),
    (dict(origin_inherited=np.zeros(3, np.uint64)),
     "origin_inherited: expected a uint64 array of shape"),
    (dict(origin_inherited=np.array([[0], [0], [8]], np.uint64)),
     "origin_inherited: row 2 has bits"),
    (dict(fact_origin=[3]), r"fact_origin: value 3 .*outside \[0, 2\]"),
    (dict(fact_key=[2]), r"fact_key: value 2 .*outside \[0, 1\]"),
    (dict(fact_key=[0, 0]), r"fact_key: expected a 1-D integer array of shape \(1,\)"),
    (dict(fact_value=[-1]), "fact_value: value -1"),
    (dict(fact_origin=[1, 1], fact_key=[0, 0], fact_value=[0, 1]),
     "origin 1 has several facts for key 0"),
    (dict(n_keys=-1), "n_keys: expected an integer >= 0"),
]


@pytest.mark.parametrize("change, message", BAD_RESOLVE)
def test_bad_resolve_input_is_a_value_error(impl, change, message):
    kwargs = dict(reach=np.array([[3]], np.uint64), origin_inherited=np.zeros((3, 1), np.uint64),
                  fact_origin=[1], fact_key=[0], fact_value=[0], n_keys=2)
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        impl.resolve_nearest(**kwargs)


BAD_MERGE = [
    (dict(origin=[-1]), "origin: value -1"),
    (dict(key=[0, 1]), r"key: expected a 1-D integer array of shape \(1,\)"),
    (dict(value=[0.5]), "value: expected a 1-D integer array"),
    (dict(shadowed=[2]), r"shadowed: value 2 .*outside \[0, 1\]"),
    (dict(own_origin=[4, 4], own_key=[1, 1], own_value=[0, 1]),
     r"own_origin/own_key: fact \(origin 4, key 1\) appears twice"),
    (dict(origin=[3, 3], key=[0, 0], value=[2, 1], shadowed=[True, False]),
     r"origin/key/value: fact \(origin 3, key 0\) has two values, 1 and 2"),
    (dict(own_key=[]), r"own_key: expected a 1-D integer array of shape \(1,\)"),
    (dict(peers=[[1]]), "peers: expected a 1-D integer array"),
]


@pytest.mark.parametrize("change, message", BAD_MERGE)
def test_bad_merge_input_is_a_value_error(impl, change, message):
    kwargs = dict(origin=[3], key=[0], value=[2], shadowed=[False], own_origin=[4],
                  own_key=[0], own_value=[1], peers=None)
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        impl.merge_facts(**kwargs)


def test_bad_lookup_is_a_value_error(impl):
    with pytest.raises(ValueError, match="wanted_key: expected an integer"):
        impl.lookup_fact(*table([]), "k")


# ---- compiled == reference, and the laws ---------------------------------------------

def problem_resolution(impl, problem: ContextProblem):
    reach, inherited = impl.propagate_origins(*problem.propagate_args())
    origin, key, value = problem.fact_arrays()
    owners = np.array(problem.owner, np.int64)
    resolved = impl.resolve_nearest(reach, origin_inherited(inherited, owners), origin, key,
                                    value, problem.n_keys)
    return reach, inherited, resolved


@settings(max_examples=80, deadline=None)
@given(problem=context_problems())
def test_compiled_matches_reference(problem):
    compiled, reference = both()
    ours = problem_resolution(compiled, problem)
    theirs = problem_resolution(reference, problem)
    for a, b in zip(ours[:2] + ours[2], theirs[:2] + theirs[2]):
        assert a.dtype == b.dtype and a.tolist() == b.tolist()


@settings(max_examples=40, deadline=None)
@given(problem=context_problems())
def test_a_parent_context_is_part_of_its_childs(problem):
    compiled, _ = both()
    reach, inherited, _ = problem_resolution(compiled, problem)
    for parent, child in problem.dag.edges:
        assert (reach[parent] & ~reach[child]).sum() == 0
        assert (reach[parent] & ~inherited[child]).sum() == 0


def merged_tables(impl, problem: ContextProblem, member_by_member: bool):
    """Every node's fact table, built by merge_facts in topological order."""
    origin, key, value = problem.fact_arrays()
    root = tuple(a[origin == 0] for a in (origin.astype(np.int64), key, value)) + \
        (np.zeros(int((origin == 0).sum()), np.bool_),)
    tables = {}
    for node in topological(problem.dag.n, problem.dag.edges).tolist():
        parents = [tables[p] for p in problem.dag.parents(node)] or [root]
        state = tuple(np.concatenate(column) for column in zip(*parents))
        own = problem.origins_of(node)
        steps = [[o] for o in own] if member_by_member and own else [own]
        for step in steps:
            mine = np.isin(origin, step)
            state = impl.merge_facts(*state, origin[mine], key[mine], value[mine],
                                     peers=own if member_by_member else None)
        tables[node] = state
    return tables


@settings(max_examples=100, deadline=None)
@given(problem=context_problems(), member_by_member=st.booleans())
def test_the_run_time_merge_equals_nearest_origin_resolution(problem, member_by_member):
    for impl in both():
        reach, _, resolved = problem_resolution(impl, problem)
        tables = merged_tables(impl, problem, member_by_member)
        origin, key, _ = problem.fact_arrays()
        for node, fact_table in tables.items():
            reaching = from_bitset(reach[node])
            # every fact whose origin reaches the node is in its table, once
            assert sorted((o, k) for o, k, _, _ in rows_of(fact_table)) == \
                sorted((int(o), int(k)) for o, k in zip(origin, key) if int(o) in reaching)
            expected = entries_of(resolved, node)
            for k in range(problem.n_keys):
                found, origins = impl.lookup_fact(*fact_table, k)
                if k not in expected:
                    assert found == MISSING
                    continue
                entry_value, fact_ids = expected[k]
                assert found == entry_value
                assert origins.tolist() == sorted(int(origin[f]) for f in fact_ids)


@settings(max_examples=100, deadline=None)
@given(tables=st.lists(fact_tables(), min_size=1, max_size=3), own=fact_tables(max_rows=4),
       peers=st.lists(st.integers(0, 6), max_size=3), data=st.data())
def test_merge_compiled_matches_reference_and_union_laws(tables, own, peers, data):
    compiled, reference = both()
    own_origin, own_key, own_value, _ = own
    if len(set(zip(own_origin.tolist(), own_key.tolist()))) != len(own_origin):
        own_origin, own_key, own_value = own_origin[:0], own_key[:0], own_value[:0]
    rows = [np.concatenate(c) for c in zip(*tables)]
    outcomes = []
    for impl in (compiled, reference):
        try:
            merged = impl.merge_facts(*rows, own_origin, own_key, own_value, peers)
            outcomes.append(("ok", rows_of(merged)))
        except ValueError as error:
            outcomes.append(("error", str(error)))
    assert outcomes[0] == outcomes[1]
    if outcomes[0][0] == "error":
        return
    # commutative: any order of the parents' rows; idempotent: a table twice
    order = data.draw(st.permutations(range(len(rows[0]))))
    shuffled = [column[list(order)] for column in rows]
    assert rows_of(compiled.merge_facts(*shuffled, own_origin, own_key, own_value,
                                        peers)) == outcomes[0][1]
    doubled = [np.concatenate([column, column]) for column in rows]
    assert rows_of(compiled.merge_facts(*doubled, own_origin, own_key, own_value,
                                        peers)) == outcomes[0][1]
    # associative: merging a merged table again with nothing changes nothing
    once = compiled.merge_facts(*rows, [], [], [])
    assert rows_of(compiled.merge_facts(*once, [], [], [])) == rows_of(once)
