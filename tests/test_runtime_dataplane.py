"""The data plane between servers (DESIGN.md section 4): how an input reaches the
server that runs its consumer, per channel kind, and what happens when a server that
held outputs restarts.

Two servers and ``--placement round_robin`` put a producer and its consumer on
different servers of one host::

    big (server 0) --[hint]--> look (server 1)      look reports how its input arrived

``RunResult.channels`` counts each input by the kind that brought it: ``shm`` (a
read-only view on a shared segment), ``tcp``, ``file`` or ``memory`` (same server).
"""

from __future__ import annotations

import pytest
from runtime_helpers import log_lines, start_servers, stop_all, write_pipeline

from serpytor.runtime.api import run
from serpytor.runtime.transfer import SHM_MIN_BYTES, STREAM_MIN_BYTES

ELEMENTS = 1_000_000          # 8 MB of float64: above the shm threshold
EXPECTED_SUM = float(ELEMENTS * (ELEMENTS - 1) / 2)


@pytest.fixture(scope="module")
def pair():
    servers = start_servers(2, prefix="plane")
    try:
        yield [s.address for s in servers]
    finally:
        stop_all(servers)


pytestmark = pytest.mark.usefixtures("in_checkout")


def two_vertices(tmp_path, hint: str = "", size: int = ELEMENTS) -> str:
    channel = f" [channel = {hint}]" if hint else ""
    return write_pipeline(tmp_path, "plane", f"""pipeline plane
use tests.runtime_fixtures.planemod as p
node big  = p.array(size = {size})
node look = p.describe
big -> look{channel}
""")


def run_apart(path, addresses, **options):
    return run(path, servers=addresses, placement="round_robin", journal=False, **options)


def test_a_large_array_on_one_host_arrives_as_a_read_only_view(tmp_path, pair):
    result = run_apart(two_vertices(tmp_path), pair)
    assert result.outputs["look"] == {"sum": EXPECTED_SUM, "size": ELEMENTS,
                                      "writeable": False, "owndata": False}
    items, nbytes = result.channels["shm"]
    assert items == 1 and nbytes >= 8 * ELEMENTS


def test_a_small_output_travels_inline_over_tcp(tmp_path, pair):
    size = SHM_MIN_BYTES // 8 // 4
    result = run_apart(two_vertices(tmp_path, size=size), pair)
    assert result.outputs["look"]["sum"] == float(size * (size - 1) / 2)
    assert "shm" not in result.channels and result.channels["tcp"][0] == 1


def test_a_tcp_hint_keeps_a_large_array_off_shared_memory(tmp_path, pair):
    result = run_apart(two_vertices(tmp_path, "tcp"), pair)
    assert result.outputs["look"]["sum"] == EXPECTED_SUM
    assert "shm" not in result.channels and result.channels["tcp"][0] == 1


def test_an_array_above_the_stream_threshold_goes_by_a_tcp_channel(tmp_path, pair):
    size = STREAM_MIN_BYTES // 8 + 1000
    result = run_apart(two_vertices(tmp_path, "tcp", size=size), pair)
    assert result.outputs["look"]["sum"] == float(size * (size - 1) / 2)
    items, nbytes = result.channels["tcp"]
    assert items == 1 and nbytes >= STREAM_MIN_BYTES


def test_a_file_hint_writes_the_output_to_a_file_the_consumer_reads(tmp_path, pair):
    result = run_apart(two_vertices(tmp_path, "file"), pair)
    assert result.outputs["look"]["sum"] == EXPECTED_SUM
    assert result.channels["file"][0] == 1


def test_an_shm_hint_puts_both_ends_on_one_server(tmp_path, pair):
    """Round robin would split them; the shm edge makes them a gang, placed together."""
    result = run_apart(two_vertices(tmp_path, "shm"), pair)
    assert result.outputs["look"]["sum"] == EXPECTED_SUM
    assert result.vertices["big"].server == result.vertices["look"].server
    assert result.channels == {"memory": [1, 0]}


@pytest.mark.parametrize("hint", ("auto", "shm", "tcp", "file"))
def test_every_channel_gives_the_inline_result(tmp_path, pair, hint):
    path = two_vertices(tmp_path, hint)
    inline = run(path, inline=True, journal=False).outputs["look"]
    assert run_apart(path, pair).outputs["look"]["sum"] == inline["sum"] == EXPECTED_SUM


RESTART = """pipeline restart
use tests.runtime_fixtures.planemod as p
context {{ log = "{log}" }}
node src   = p.source
node stuck = p.wedge timeout 1
node after = p.total
node late  = p.count_runs
src -> stuck -> after
src -> late
"""


def test_outputs_lost_with_a_restarted_server_are_recomputed(tmp_path):
    """One server: src runs and its output stays there; stuck wedges the server, which
    restarts itself and loses src's output; late, queued behind stuck, must still run,
    so src runs again first (Dryad's re-execution of a lost input)."""
    log = tmp_path / "runs.log"
    path = write_pipeline(tmp_path, "restart", RESTART.format(log=log))
    [server] = start_servers(1, prefix="restarts")
    try:
        result = run(path, servers=[server.address], journal=False, keep_going=True)
    finally:
        stop_all([server])
    assert result.outputs == {"late": 45.0}
    assert result.vertices["stuck"].status == "failed"
    assert sorted(log_lines(log)) == ["late", "src", "src"]
    assert result.lost_attempts >= 1
