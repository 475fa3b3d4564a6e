"""The context rules of DESIGN.md section 3, precomputed by the compiler.

The first tests are the cases of the SerPyTor paper's Figure 2 (section 4.1): the root,
a single independent origin, multiple independent origins, dependent origins forming a
union node A' = xi(A) ∪ xi(B) ∪ Psi(A) ∪ Psi(B), and the children of a union node.
Each graph is drawn in its docstring (dask's test_order style). ``plan.origins(v)``
lists the origins whose facts reach v ("context" is xi(0)); ``plan.static_context(v)``
is the resolved value of every key.

Then static conflicts: parallel branches that disagree are a ContextConflictError at
the vertex where they meet, unless that vertex declares the key itself.
"""

from __future__ import annotations

import pytest

import serpytor
from serpytor import ContextConflictError, SpgCompileError

H = 'pipeline p\nuse spg_test_missing.mod as m\ncontext { k = "origin" }\n'  # lines 1-3


def plan_of(body: str) -> serpytor.Plan:
    return serpytor.compile(H + body)


def origins(plan, name: str) -> set[str]:
    return set(plan.origins(plan.index_of(name)))


def context(plan, name: str) -> dict:
    return plan.static_context(plan.index_of(name))


# ---- Figure 2: the cases of context inheritance ------------------------------------
def test_root_context_is_origin_context_and_own_facts():
    """Rule 1, xi(R) = xi(0) ∪ Psi(R)::

        xi(0): k = "origin"
          |
          R     with { r = 1 }
    """
    plan = plan_of("node R = m.f with { r = 1 }\n")
    assert plan.origins(plan.index_of("R")) == ["context", "R"]
    assert context(plan, "R") == {"k": "origin", "r": 1}


def test_root_without_own_facts_sees_the_origin_context():
    plan = plan_of("node R = m.f\nnode S = m.f\n")
    for name in ("R", "S"):
        assert origins(plan, name) == {"context"}
        assert context(plan, name) == {"k": "origin"}


def test_root_overrides_the_origin_context():
    """Origin 0 precedes every vertex, so R's own k is nearest."""
    plan = plan_of('node R = m.f with { k = "root" }\n')
    assert context(plan, "R") == {"k": "root"}
    assert origins(plan, "R") == {"context", "R"}


def test_single_independent_origin():
    """G has one parent; xi(G) = xi(R) ∪ Psi(G)::

        R    with { r = 1 }
        |
        G    with { g = 2 }
        |
        H2   (no facts of its own)
    """
    plan = plan_of("node R = m.f with { r = 1 }\nnode G = m.f with { g = 2 }\nnode H2 = m.f\n"
                   "R -> G -> H2\n")
    assert origins(plan, "G") == {"context", "R", "G"}
    assert context(plan, "G") == {"k": "origin", "r": 1, "g": 2}
    assert origins(plan, "H2") == {"context", "R", "G"}
    assert context(plan, "H2") == context(plan, "G")
    assert context(plan, "R") == {"k": "origin", "r": 1}  # a child's facts never flow up


def test_child_overrides_its_ancestor_along_a_path():
    plan = plan_of("node R = m.f with { r = 1 }\nnode G = m.f with { r = 2 }\nnode H2 = m.f\n"
                   "R -> G -> H2\n")
    assert context(plan, "R")["r"] == 1
    assert context(plan, "G")["r"] == 2
    assert context(plan, "H2")["r"] == 2
    assert origins(plan, "H2") == {"context", "R", "G"}  # R's fact reaches H2, overridden


def test_multiple_independent_origins():
    """F has two independent parents; xi(F) = xi(P) ∪ xi(Q) ∪ Psi(F)::

             R          with { r = 1 }
            / \\
           P   Q        with { p = 2 }, with { q = 3 }
            \\ /
             F          with { f = 4 }
    """
    plan = plan_of("node R = m.f with { r = 1 }\nnode P = m.f with { p = 2 }\n"
                   "node Q = m.f with { q = 3 }\nnode F = m.f with { f = 4 }\n"
                   "R -> P -> F\nR -> Q -> F\n")
    assert origins(plan, "F") == {"context", "R", "P", "Q", "F"}
    assert context(plan, "F") == {"k": "origin", "r": 1, "p": 2, "q": 3, "f": 4}
    assert origins(plan, "P") == {"context", "R", "P"}
    assert origins(plan, "Q") == {"context", "R", "Q"}


def test_multiple_independent_roots():
    """Two roots, no common ancestor but xi(0)::

        P     Q
         \\   /
           F
    """
    plan = plan_of("node P = m.f with { p = 1 }\nnode Q = m.f with { q = 2 }\nnode F = m.f\n"
                   "P -> F\nQ -> F\n")
    assert origins(plan, "F") == {"context", "P", "Q"}
    assert context(plan, "F") == {"k": "origin", "p": 1, "q": 2}


FIGURE_GROUP = (
    "node X = m.f with { x = 1 }\n"
    "node Y = m.f with { y = 2 }\n"
    "node A = m.f with { a = 3 }\n"
    "node B = m.f with { b = 4 }\n"
    "node C = m.f\n"
    "node D = m.f with { d = 5 }\n"
    "node E = m.f\n"
    "node J = m.f\n"
    "X -> A\nY -> B\nA -> C\nB -> D -> E\nA -> J\nB -> J\n"
    "group AB { A, B }\n"
)


def test_dependent_origins_form_a_union_node():
    """A and B depend on each other (group AB): the union node A' has
    xi(A') = xi(X) ∪ xi(Y) ∪ Psi(A) ∪ Psi(B), and every member sees it::

        X (x=1)     Y (y=2)
          |           |
        +-A (a=3)-----B (b=4)-+    group AB = A'
        +---------------------+
    """
    plan = plan_of(FIGURE_GROUP)
    union = {"context", "X", "Y", "A", "B"}
    union_context = {"k": "origin", "x": 1, "y": 2, "a": 3, "b": 4}
    for member in ("A", "B"):
        assert origins(plan, member) == union
        assert context(plan, member) == union_context
    # Y is no parent of A, and X no parent of B: they reach through the union node
    assert "Y" in origins(plan, "A") and "X" in origins(plan, "B")
    assert plan.vertex_node[plan.index_of("A")] == plan.vertex_node[plan.index_of("B")]


def test_children_of_a_union_node_inherit_it_never_a_members_own_context():
    """Every child of A and/or B inherits xi(A'), never xi(A) or xi(B) alone::

        X           Y
        |           |
        A --- A' -- B          group AB { A, B }
        |  \\     /  |
        C    J      D (d=5)
                    |
                    E
    """
    plan = plan_of(FIGURE_GROUP)
    union = {"context", "X", "Y", "A", "B"}
    union_context = {"k": "origin", "x": 1, "y": 2, "a": 3, "b": 4}
    # C is a child of A only, yet sees B's and Y's facts
    assert origins(plan, "C") == union
    assert context(plan, "C") == union_context
    # J is a child of both
    assert origins(plan, "J") == union
    assert context(plan, "J") == union_context
    # D adds its own facts; its child E inherits everything
    assert origins(plan, "D") == union | {"D"}
    assert context(plan, "D") == {**union_context, "d": 5}
    assert origins(plan, "E") == union | {"D"}
    assert context(plan, "E") == context(plan, "D")
    # the outside parents are not affected by the group
    assert origins(plan, "X") == {"context", "X"}
    assert context(plan, "Y") == {"k": "origin", "y": 2}


def test_union_node_without_outside_parents_uses_the_origin_context():
    """Rule 3: with no outside parents, xi(0) stands in::

        A (a=1)   B (b=2)       group g { A, B }
           \\     /
              C
    """
    plan = plan_of("node A = m.f with { a = 1 }\nnode B = m.f with { b = 2 }\nnode C = m.f\n"
                   "A -> C\nB -> C\ngroup g { A, B }\n")
    for name in ("A", "B", "C"):
        assert origins(plan, name) == {"context", "A", "B"}
        assert context(plan, name) == {"k": "origin", "a": 1, "b": 2}


def test_edges_inside_a_group_do_not_change_what_members_see():
    """A -> B inside the group: B still sees exactly xi(A'), and A sees B's facts::

        A (a=1) -> B (b=2)      group g { A, B }
    """
    plan = plan_of("node A = m.f with { a = 1 }\nnode B = m.f with { b = 2 }\nA -> B\n"
                   "group g { A, B }\n")
    assert context(plan, "A") == context(plan, "B") == {"k": "origin", "a": 1, "b": 2}


def test_child_of_a_group_overrides_the_union_node():
    plan = plan_of(FIGURE_GROUP.replace("node C = m.f\n", "node C = m.f with { a = 30 }\n"))
    assert context(plan, "C")["a"] == 30
    assert context(plan, "A")["a"] == 3 and context(plan, "J")["a"] == 3


def test_stage_replicas_each_are_origins():
    """Each replica of a stage with facts is an origin; they agree, so no conflict."""
    plan = plan_of("stage s = m.f x 3 with { w = 1 }\nnode n = m.f\ns >> n\n")
    assert origins(plan, "s[1]") == {"context", "s[1]"}
    assert origins(plan, "n") == {"context", "s[0]", "s[1]", "s[2]"}
    assert context(plan, "n") == {"k": "origin", "w": 1}
    assert len(plan.context_facts(plan.index_of("n"))["w"]) == 3


def test_values_of_every_kind_are_kept():
    plan = plan_of('node a = m.f with { s = "x", i = 2, f = 1.5, b = false, n = null, '
                   'l = [1, [2]], mp = {u: {v: [true]}} }\n')
    assert context(plan, "a") == {"k": "origin", "s": "x", "i": 2, "f": 1.5, "b": False,
                                  "n": None, "l": [1, [2]], "mp": {"u": {"v": [True]}}}


# ---- static conflicts ---------------------------------------------------------------
CONFLICT = """\
pipeline p
use spg_test_missing.mod as m

node  r    = m.f
node  a    = m.f with { owner = "x" }
node  b    = m.f with { owner = "y" }
r -> a
r -> b
node  join = m.f
a -> join
b -> join
node  after = m.f
join -> after
"""


def test_parallel_branches_that_disagree_are_a_conflict_at_the_meeting_vertex():
    r"""
            r
           / \
      a (x)   b (y)
           \ /
           join       <- owner is ambiguous here
             |
           after
    """
    with pytest.raises(ContextConflictError) as info:
        serpytor.compile(CONFLICT, "p.spg")
    error = info.value
    assert isinstance(error, SpgCompileError)
    assert error.message == ("context key 'owner' is ambiguous at 'join': parallel branches "
                             "disagree ('a' sets 'x', 'b' sets 'y')")
    assert (error.line, error.column) == (9, 7)
    assert [((s.line, s.column), note) for s, note in error.notes] == [
        ((5, 25), "'a' sets owner = 'x'"), ((6, 25), "'b' sets owner = 'y'")]
    assert error.hint == ("declare `owner = ...` in a with block on 'join', where the "
                          "branches meet; it then overrides both")
    assert str(error).splitlines() == [
        "p.spg:9:7: error: context key 'owner' is ambiguous at 'join': parallel branches "
        "disagree ('a' sets 'x', 'b' sets 'y')",
        "    node  join = m.f",
        "          ^",
        "p.spg:5:25: note: 'a' sets owner = 'x'",
        "p.spg:6:25: note: 'b' sets owner = 'y'",
        "hint: declare `owner = ...` in a with block on 'join', where the branches meet; "
        "it then overrides both",
    ]


def test_declaring_the_key_where_the_branches_meet_overrides_both():
    source = CONFLICT.replace("node  join = m.f", 'node  join = m.f with { owner = "z" }')
    plan = serpytor.compile(source)
    assert context(plan, "a")["owner"] == "x"
    assert context(plan, "b")["owner"] == "y"
    assert context(plan, "join")["owner"] == "z"
    assert context(plan, "after")["owner"] == "z"
    assert origins(plan, "after") == {"context", "a", "b", "join"}
    facts = plan.context_facts(plan.index_of("after"))["owner"]
    assert [(f["value"], plan.origin_name(f["origin"])) for f in facts] == [("z", "join")]


def test_parallel_branches_that_agree_are_no_conflict():
    plan = serpytor.compile(CONFLICT.replace('"y"', '"x"'))
    assert context(plan, "join")["owner"] == "x"
    facts = plan.context_facts(plan.index_of("join"))["owner"]
    assert sorted(plan.origin_name(f["origin"]) for f in facts) == ["a", "b"]
    assert [f["line"] for f in facts] == [5, 6]


def test_structured_values_that_agree_are_no_conflict():
    plan = plan_of("node a = m.f with { v = {x: [1, 2]} }\nnode b = m.f with { v = {x: [1, 2]} }\n"
                   "node j = m.f\na -> j\nb -> j\n")
    assert context(plan, "j")["v"] == {"x": [1, 2]}


@pytest.mark.parametrize("left, right", [("1", '"1"'), ("true", "1"), ("[1, 2]", "[2, 1]"),
                                         ("null", "false"), ("{a: 1}", "{a: 2}")])
def test_values_of_different_kinds_conflict(left, right):
    with pytest.raises(ContextConflictError):
        plan_of(f"node a = m.f with {{ v = {left} }}\nnode b = m.f with {{ v = {right} }}\n"
                "node j = m.f\na -> j\nb -> j\n")


def test_a_vertex_overrides_the_origin_context_even_where_branches_meet():
    """xi(0) precedes every vertex: a's k shadows the origin's k at j, no conflict::

        a (k = "a")    b
              \\      /
                 j
    """
    plan = plan_of('node a = m.f with { k = "a" }\nnode b = m.f\nnode j = m.f\na -> j\nb -> j\n')
    assert context(plan, "b")["k"] == "origin"
    assert context(plan, "j")["k"] == "a"


def test_an_ancestor_on_one_path_is_shadowed_by_a_descendant_on_another():
    """a's fact is an ancestor of b's: at c the nearest fact is b's alone::

        a (v=1) ---> b (v=2)
           \\          |
            +-------> c
    """
    plan = plan_of("node a = m.f with { v = 1 }\nnode b = m.f with { v = 2 }\nnode c = m.f\n"
                   "a -> b -> c\na -> c\n")
    assert context(plan, "c")["v"] == 2


def test_conflict_far_from_the_branches():
    """The branches meet two edges below the facts::

        a (v=1)   b (v=2)
          |         |
          p         q
           \\       /
               j      <- reported here, not at its child
               |
               z
    """
    source = H + ("node a = m.f with { v = 1 }\nnode b = m.f with { v = 2 }\nnode p = m.f\n"
                  "node q = m.f\nnode j = m.f\nnode z = m.f\na -> p -> j\nb -> q -> j\nj -> z\n")
    with pytest.raises(ContextConflictError) as info:
        serpytor.compile(source)
    assert "ambiguous at 'j'" in info.value.message
    assert info.value.line == 8
    assert [s.line for s, _ in info.value.notes] == [4, 5]


def test_conflict_between_members_of_a_group():
    """Members stand side by side in the union node: their facts are parallel::

        A (v=1)   B (v=2)      group g { A, B }
    """
    source = H + "node A = m.f with { v = 1 }\nnode B = m.f with { v = 2 }\ngroup g { A, B }\n"
    with pytest.raises(ContextConflictError) as info:
        serpytor.compile(source)
    error = info.value
    assert "context key 'v' is ambiguous at group 'g'" in error.message
    assert "'A' sets 1" in error.message and "'B' sets 2" in error.message
    assert (error.line, error.column) == (6, 1)
    assert [(s.line, note) for s, note in error.notes] == [(4, "'A' sets v = 1"),
                                                           (5, "'B' sets v = 2")]
    assert error.hint


def test_group_members_that_agree_are_no_conflict():
    plan = plan_of("node A = m.f with { v = 1 }\nnode B = m.f with { v = 1 }\n"
                   "group g { A, B }\n")
    assert context(plan, "A")["v"] == context(plan, "B")["v"] == 1


def test_group_conflict_is_reported_even_when_a_child_overrides_the_key():
    """C's own fact is nearest at C, but the members themselves still see both."""
    with pytest.raises(ContextConflictError):
        plan_of("node A = m.f with { v = 1 }\nnode B = m.f with { v = 2 }\n"
                "node C = m.f with { v = 3 }\nA -> C\ngroup g { A, B }\n")


def test_conflict_in_a_stage_whose_replicas_meet():
    """Two stages with different values both feed an all-to-all join."""
    with pytest.raises(ContextConflictError) as info:
        plan_of("stage s = m.f x 2 with { v = 1 }\nstage t = m.f x 2 with { v = 2 }\n"
                "node j = m.f\ns >> j\nt >> j\n")
    assert "ambiguous at 'j'" in info.value.message


def test_explain_data_matches_the_resolution():
    plan = serpytor.compile(CONFLICT.replace("node  join = m.f",
                                             'node  join = m.f with { owner = "z" }'))
    join = plan.index_of("join")
    reaching = {(f["key"], f["value"], plan.origin_name(f["origin"]))
                for f in plan.reaching_facts(join)}
    assert reaching == {("owner", "x", "a"), ("owner", "y", "b"), ("owner", "z", "join")}
