"""Where vertices run (DESIGN.md section 4, Gateway): placement policies -- built in,
named in the ``.spg`` (``placement ...``), or a user's function from the command line
-- and the ready queues (one by priority, or a silo of one queue per stage)."""

from __future__ import annotations

import pytest
from runtime_helpers import log_lines, server_pool, write_pipeline

import serpytor
from serpytor.runtime.allocation import PlacementError

WIDE = """pipeline wide
use tests.runtime_fixtures.placemod as p
{placement}
context {{ log = "{log}" }}
stage a = p.logged x 6
stage b = p.logged x 2
"""


@pytest.fixture(scope="module")
def pair():
    with server_pool(2, "place") as servers:
        yield servers


pytestmark = pytest.mark.usefixtures("in_checkout")


def wide(tmp_path, placement: str = "") -> tuple:
    log = tmp_path / "runs.log"
    return write_pipeline(tmp_path, "wide", WIDE.format(placement=placement, log=log)), log


def servers_used(result) -> dict[str, str]:
    return {name: record.server for name, record in result.vertices.items()}


def test_a_placement_function_on_the_command_line(tmp_path, pair):
    path, _ = wide(tmp_path)
    result = serpytor.run(path, servers=[s.address for s in pair], journal=False,
                          placement="tests.runtime_fixtures.placemod:last_by_name")
    assert set(servers_used(result).values()) == {max(s.name for s in pair)}
    assert len(result.vertices) == 8


def test_a_placement_statement_in_the_pipeline(tmp_path, pair):
    path, _ = wide(tmp_path, "placement p.last_by_name")
    result = serpytor.run(path, servers=[s.address for s in pair], journal=False)
    assert set(servers_used(result).values()) == {max(s.name for s in pair)}


def test_the_command_line_overrides_the_pipeline(tmp_path, pair):
    path, _ = wide(tmp_path, "placement p.last_by_name")
    result = serpytor.run(path, servers=[s.address for s in pair], journal=False,
                          placement="round_robin")
    assert set(servers_used(result).values()) == {s.name for s in pair}


def test_a_function_may_leave_the_choice_to_locality(tmp_path, pair):
    path, _ = wide(tmp_path)
    result = serpytor.run(path, servers=[s.address for s in pair], journal=False,
                          placement="tests.runtime_fixtures.placemod:undecided")
    assert sorted(result.outputs.values()) == [0, 0, 1, 1, 2, 3, 4, 5]


def test_a_function_choosing_no_server_is_a_clear_error(tmp_path, pair):
    path, _ = wide(tmp_path)
    with pytest.raises(PlacementError, match="no-such-server"):
        serpytor.run(path, servers=[s.address for s in pair], journal=False,
                     placement="tests.runtime_fixtures.placemod:nowhere")


def test_an_unknown_placement_function_is_a_clear_error(tmp_path, pair):
    path, _ = wide(tmp_path)
    with pytest.raises(PlacementError, match="missing"):
        serpytor.run(path, servers=[s.address for s in pair], journal=False,
                     placement="tests.runtime_fixtures.placemod:missing")


@pytest.mark.parametrize("queues, first_stages", [("single", {"a"}), ("stage", {"a", "b"})])
def test_a_queue_silo_serves_the_stages_in_turn(tmp_path, queues, first_stages):
    """One server runs tasks in the order they come: with one queue (by priority, then
    id) the six a's come first; with a silo, a and b take turns from the start."""
    path, log = wide(tmp_path)
    with server_pool(1, "silo") as [server]:
        serpytor.run(path, servers=[server.address], journal=False, queues=queues)
    order = log_lines(log)
    assert sorted(order) == sorted([f"a[{i}]" for i in range(6)] + ["b[0]", "b[1]"])
    assert {name[0] for name in order[:3]} == first_stages
