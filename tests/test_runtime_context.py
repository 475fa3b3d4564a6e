"""Context at run time (DESIGN.md section 3): what a vertex sees is the compiler's
static context plus the facts its ancestors published, by nearest origin.

Fixture pipelines (tests/runtime_fixtures):

``published.spg``::

    top --> mid* --> leaf --> deep --> under        * mid publishes owner = "mid"
     |                                              top: owner = "top"; deep: owner = "deep"
     +--> side
     +--> x1 --> x2 --> gm1*                         * gm1 publishes team = "blue"
     +--> gm2 --> gchild                             { gm1, gm2 } form group crew

``ambiguous.spg``::

    root --> p1* --> join        * p1 publishes owner = "one", p2 owner = "two";
      +----> p2* ----^             join looks owner up
"""

from __future__ import annotations

import pytest
from runtime_helpers import (MODES, ROOT, fixture_pipeline, run_in_mode, shared_servers,
                             write_pipeline)

import serpytor
from serpytor.errors import AmbiguousContextError, RemoteTaskError


@pytest.fixture(scope="module")
def servers(request):
    return shared_servers(request.config)


@pytest.fixture(params=MODES)
def runner(request, servers):
    return lambda pipeline, **options: run_in_mode(pipeline, request.param, servers, **options)


@pytest.fixture(params=("inline", "servers"))
def quick_runner(request, servers):
    """The two modes that cost no process start-up."""
    return lambda pipeline, **options: run_in_mode(pipeline, request.param, servers, **options)


def expected_contexts(plan) -> dict[str, dict]:
    """The compiler's precomputation plus mid's published owner (nearest origin: it
    overrides top's static fact for mid's descendants until deep declares its own)."""
    expected = {name: plan.static_context(plan.index_of(name)) for name in plan.names}
    expected["leaf"]["owner"] = "mid"
    return expected


def test_published_facts_override_ancestors_by_nearest_origin(runner):
    plan = serpytor.compile_file(fixture_pipeline("published"))
    seen = runner(plan).outputs["report"]
    expected = expected_contexts(plan)
    for name in ("top", "mid", "leaf", "deep", "under", "side", "x1", "x2", "gm1", "gm2"):
        assert seen[name] == expected[name], name
    # spelled out: the child of the publisher sees the published value, a sibling
    # branch does not, and a static fact further down overrides the published one
    assert seen["mid"]["owner"] == "top"
    assert seen["leaf"] == {"owner": "mid", "region": "eu"}
    assert seen["side"] == {"owner": "top", "region": "eu"}
    assert seen["deep"]["owner"] == seen["under"]["owner"] == "deep"


def test_group_member_publication_reaches_children_of_every_member(quick_runner):
    """Rule 3: every child of any member inherits xi(U), which holds the facts every
    member publishes. gchild (a child of gm2) must see gm1's published team; gm1 sits
    behind a longer chain, so a scheduler that only follows data edges runs gchild
    first."""
    plan = serpytor.compile_file(fixture_pipeline("published"))
    seen = quick_runner(plan).outputs["report"]
    expected = plan.static_context(plan.index_of("gchild")) | {"team": "blue"}
    assert seen["gchild"] == expected


def test_disagreeing_parallel_publishers_make_the_lookup_ambiguous(runner):
    with pytest.raises(RemoteTaskError) as caught:
        runner(fixture_pipeline("ambiguous"))
    error = caught.value
    assert error.vertex == "join"
    assert "owner" in str(error) and "p1" in str(error) and "p2" in str(error)
    assert "AmbiguousContextError" in error.remote_traceback or \
        "AmbiguousContextError" in str(error)
    # the documented contract: a remote failure is also an instance of the original type
    assert isinstance(error, AmbiguousContextError), type(error).__mro__
    assert isinstance(error, KeyError)


def test_agreeing_parallel_publishers_are_not_ambiguous(quick_runner, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    text = fixture_pipeline("ambiguous").read_text().replace('"two"', '"one"')
    result = quick_runner(write_pipeline(tmp_path, "agree", text))
    assert result.outputs == {"join": "one"}


def test_overrides_replace_origin_facts_and_add_new_ones(quick_runner):
    plan = serpytor.compile_file(fixture_pipeline("published"))
    seen = quick_runner(plan, overrides={"region": "apac", "tier": 3}).outputs["report"]
    assert seen["top"] == {"owner": "top", "region": "apac", "tier": 3}
    assert seen["leaf"] == {"owner": "mid", "region": "apac", "tier": 3}


def test_publishing_a_value_that_is_not_json_fails_the_vertex(quick_runner, tmp_path,
                                                                monkeypatch):
    monkeypatch.chdir(ROOT)
    path = write_pipeline(tmp_path, "badpublish", "pipeline badpublish\n"
                          "use tests.runtime_fixtures.ctxmod as c\n"
                          "node handle = c.publish_unjsonable\n")
    with pytest.raises(RemoteTaskError) as caught:
        quick_runner(path)
    assert caught.value.vertex == "handle"
    assert isinstance(caught.value, TypeError)
    assert "not JSON" in str(caught.value)


RELOADED = """\
pipeline reloaded
use tests.runtime_fixtures.ctxmod as c
context { owner = "origin" }
node mid  = c.publish(key = "owner", value = "mid")
node leaf = c.show volatile
mid -> leaf
"""


def test_published_facts_of_a_reused_vertex_still_reach_its_descendants(quick_runner,
                                                                         tmp_path,
                                                                         monkeypatch):
    """mid is reused from the journal on the second run; the volatile leaf runs again
    and must still see what mid published the first time."""
    monkeypatch.chdir(ROOT)
    path = write_pipeline(tmp_path, "reloaded", RELOADED)
    journal = tmp_path / "journal"
    first = quick_runner(path, journal=journal)
    second = quick_runner(path, journal=journal)
    assert first.outputs == second.outputs == {"leaf": {"owner": "mid"}}
    assert second.vertices["mid"].status == "reused"
    assert second.vertices["leaf"].status == "executed"
