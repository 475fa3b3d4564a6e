"""Durable execution (DESIGN.md section 4): the journal records every finished vertex
under a key of its code, arguments, input digests and context; a re-run reuses what is
recorded and runs exactly what changed; ``volatile`` vertices always run.

Every vertex of the pipelines here appends its name to an execution log (the file named
by the origin-context fact ``log``), so the tests count real executions, not only what
the RunResult says::

    a[0] --+                                   b: with { mode = env("SPT_MODE") }
    a[1] --+--> b --> c --+                    e: reads context["scale"]
                          +--> f (volatile)
    d ------> e ----------+
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from runtime_helpers import (
    ROOT,
    child_env,
    journaled_vertices,
    log_lines,
    run_cli,
    run_json,
    shared_servers,
    write_pipeline,
)

from serpytor.cli import main
from serpytor.runtime.api import run

ALL = ["a[0]", "a[1]", "b", "c", "d", "e", "f"]

PIPELINE = """\
pipeline journaled

use {module} as m

context {{ log = env("SPT_LOG", "/dev/null") scale = 2 }}

stage a = m.start(n = 1) x 2
node  b = m.step with {{ mode = env("SPT_MODE", "fast") }}
node  c = m.step
node  d = m.start(n = {n})
node  e = m.scaled
node  f = m.step volatile

a >> b
b -> c
d -> e
c -> f
e -> f
"""

# the same functions as tests/runtime_fixtures/logmod.py, in a module the test edits
SOURCE_MODULE = '''\
def _log(context):
    with open(context["log"], "a", encoding="utf-8") as out:
        out.write(context.vertex + "\\n")


def start(context, partition, n=1):
    _log(context)
    return n * 100 + partition


def step(inputs, context):
    _log(context)
    return sum(_flat(inputs.values())) + 1


def scaled(inputs, context):
    _log(context)
    return sum(_flat(inputs.values())) * int(context["scale"])


def _flat(values):
    for value in values:
        if isinstance(value, list):
            yield from _flat(value)
        else:
            yield value
'''


class Pipeline:
    """The pipeline above in tmp_path, its journal directory and its execution log."""

    def __init__(self, directory: Path, module: str = "tests.runtime_fixtures.logmod",
                 n: int = 3) -> None:
        self.directory = directory
        self.module = module
        self.journal = directory / "journal"
        self.log = directory / "executions.log"
        self.seen = 0
        self.write(n)

    def write(self, n: int) -> None:
        self.path = write_pipeline(self.directory, "journaled",
                                   PIPELINE.format(module=self.module, n=n))

    def executed(self) -> list[str]:
        """Vertices that ran since the last call, sorted (repeats kept)."""
        lines = log_lines(self.log)
        new, self.seen = lines[self.seen:], len(lines)
        return sorted(new)

    def env(self, **extra: str) -> dict[str, str]:
        return child_env(SPT_LOG=str(self.log), **extra)


@pytest.fixture
def pipeline(tmp_path, monkeypatch) -> Pipeline:
    """The pipeline for in-process runs: the working directory is the checkout (where
    tests.runtime_fixtures is importable) and SPT_LOG names the log."""
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("SPT_MODE", raising=False)
    made = Pipeline(tmp_path)
    monkeypatch.setenv("SPT_LOG", str(made.log))
    return made


@pytest.fixture(scope="module")
def servers(request):
    return shared_servers(request.config)


def run_in(mode: str, path, servers=None, **options):
    if mode == "inline":
        return run(path, inline=True, **options)
    if mode == "embedded":
        return run(path, workers=2, **options)
    return run(path, servers=[s.address for s in servers], **options)


def cli(capsys, *argv) -> tuple[int, str, str]:
    """``serpytor ARGV`` in this process (the same code as the command, without the
    start-up cost of a new interpreter)."""
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def cli_json(capsys, *argv) -> dict:
    status, out, err = cli(capsys, "run", *argv, "--output", "json")
    assert status == 0, err
    return json.loads(out)


def statuses(result) -> dict[str, str]:
    return {name: record.status for name, record in result.vertices.items()}


# ---- reuse -----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ("inline", "embedded", "servers"))
def test_second_run_reuses_everything_but_volatile_vertices(mode, pipeline, servers):
    first = run_in(mode, pipeline.path, servers, journal=pipeline.journal)
    assert pipeline.executed() == ALL
    assert statuses(first) == dict.fromkeys(ALL, "executed")
    assert sorted(journaled_vertices(pipeline.journal)) == ALL

    second = run_in(mode, pipeline.path, servers, journal=pipeline.journal)
    assert pipeline.executed() == ["f"]
    assert second.stats["executed"] == 1 and second.stats["reused"] == 6
    assert statuses(second) == {**dict.fromkeys(ALL, "reused"), "f": "executed"}
    assert second.outputs == first.outputs == {"f": 1 + (201 + 1) + 300 * 2 + 1}


@pytest.mark.parametrize("order", (("inline", "servers"), ("servers", "inline")))
def test_the_journal_is_shared_by_the_modes(order, pipeline, servers):
    first = run_in(order[0], pipeline.path, servers, journal=pipeline.journal)
    second = run_in(order[1], pipeline.path, servers, journal=pipeline.journal)
    assert pipeline.executed() == sorted(ALL + ["f"])
    assert second.stats["reused"] == 6
    assert second.outputs == first.outputs


def test_no_journal_records_nothing_and_reuses_nothing(pipeline, capsys):
    default_journal = pipeline.directory / ".serpytor"
    data = cli_json(capsys, pipeline.path, "--inline", "--no-journal")
    assert data["stats"]["executed"] == 7
    assert not default_journal.exists()
    assert sorted(p.name for p in pipeline.directory.iterdir()) == [
        "executions.log", "journaled.spg"]
    # the default journal lives beside the pipeline; --no-journal ignores it
    assert cli_json(capsys, pipeline.path, "--inline")["stats"]["executed"] == 7
    assert (default_journal / "journal.sqlite3").is_file()
    assert cli_json(capsys, pipeline.path, "--inline", "--no-journal")["stats"]["executed"] == 7
    assert cli_json(capsys, pipeline.path, "--inline")["stats"]["reused"] == 6
    assert pipeline.executed() == sorted(ALL * 3 + ["f"])


def test_fresh_reruns_everything(pipeline, capsys):
    cli_json(capsys, pipeline.path, "--inline", "--journal", pipeline.journal)
    pipeline.executed()
    data = cli_json(capsys, pipeline.path, "--inline", "--journal", pipeline.journal, "--fresh")
    assert pipeline.executed() == ALL
    assert (data["stats"]["executed"], data["stats"]["reused"]) == (7, 0)
    # --fresh re-records: the next plain run reuses again
    data = cli_json(capsys, pipeline.path, "--inline", "--journal", pipeline.journal)
    assert (data["stats"]["executed"], data["stats"]["reused"]) == (1, 6)


# ---- what changed re-runs, nothing else ------------------------------------------------------
def test_changing_an_argument_reruns_exactly_the_affected_vertices(pipeline):
    run(pipeline.path, inline=True, journal=pipeline.journal)
    pipeline.executed()
    pipeline.write(n=4)
    result = run(pipeline.path, inline=True, journal=pipeline.journal)
    assert pipeline.executed() == ["d", "e", "f"]
    assert result.outputs == {"f": 1 + 202 + 400 * 2 + 1}


def test_changing_a_context_value_from_the_environment_reruns_its_descendants(pipeline,
                                                                             monkeypatch):
    run(pipeline.path, inline=True, journal=pipeline.journal)
    pipeline.executed()
    monkeypatch.setenv("SPT_MODE", "slow")  # b's static fact, inherited by c and f
    run(pipeline.path, inline=True, journal=pipeline.journal)
    assert pipeline.executed() == ["b", "c", "f"]
    monkeypatch.delenv("SPT_MODE")  # back to the recorded value: all reused
    run(pipeline.path, inline=True, journal=pipeline.journal)
    assert pipeline.executed() == ["f"]


@pytest.mark.parametrize("mode", ("inline", "servers"))
def test_overriding_an_origin_fact_reruns_every_vertex_that_sees_it(mode, pipeline, servers):
    first = run_in(mode, pipeline.path, servers, journal=pipeline.journal)
    pipeline.executed()
    changed = run_in(mode, pipeline.path, servers, journal=pipeline.journal,
                     overrides={"scale": 3})
    assert pipeline.executed() == ALL  # every vertex sees the origin context
    assert changed.outputs == {"f": 1 + 202 + 300 * 3 + 1} != first.outputs
    again = run_in(mode, pipeline.path, servers, journal=pipeline.journal,
                   overrides={"scale": 3})
    assert pipeline.executed() == ["f"] and again.outputs == changed.outputs
    same = run_in(mode, pipeline.path, servers, journal=pipeline.journal,
                  overrides={"scale": 2})  # the compiled value: the first run's records
    assert pipeline.executed() == ["f"] and same.outputs == first.outputs


def test_set_on_the_command_line_overrides_an_origin_fact(pipeline, capsys):
    base = cli_json(capsys, pipeline.path, "--inline", "--journal", pipeline.journal)
    pipeline.executed()
    data = cli_json(capsys, pipeline.path, "--inline", "--journal", pipeline.journal,
                    "--set", "scale=5")
    assert pipeline.executed() == ALL
    assert data["outputs"] == {"f": 1 + 202 + 300 * 5 + 1} != base["outputs"]


# ---- changing a function's source, and `serpytor explain` -------------------------------------
def explain(capsys, made: Pipeline, vertex: str, *extra: str) -> str:
    status, out, err = cli(capsys, "explain", made.path, vertex, "--journal", made.journal,
                           *extra)
    assert status == 0, err
    return out.strip()


def test_explain_after_a_clean_run(pipeline, capsys):
    run(pipeline.path, inline=True, journal=pipeline.journal)
    assert re.fullmatch(r"a\[0\]: would be reused \(recorded with key [0-9a-f]{12}\)",
                        explain(capsys, pipeline, "a[0]"))
    assert explain(capsys, pipeline, "e").startswith("e: would be reused")
    assert explain(capsys, pipeline, "f") == "f: would run: it is volatile"


def test_explain_without_a_journal_entry(pipeline, capsys):
    assert explain(capsys, pipeline, "a[1]") == "a[1]: would run: it has never been recorded"
    assert explain(capsys, pipeline, "c") == "c: would run: its inputs will be recomputed (b)"


def test_explain_names_the_part_that_changed(pipeline, capsys, monkeypatch):
    run(pipeline.path, inline=True, journal=pipeline.journal)
    pipeline.write(n=7)
    assert explain(capsys, pipeline, "d") == \
        "d: would run: its arguments changed since it was recorded"
    assert explain(capsys, pipeline, "e") == "e: would run: its inputs will be recomputed (d)"
    assert explain(capsys, pipeline, "b").startswith("b: would be reused")
    pipeline.write(n=3)
    monkeypatch.setenv("SPT_MODE", "slow")
    assert explain(capsys, pipeline, "b") == \
        "b: would run: its context changed since it was recorded"
    assert explain(capsys, pipeline, "c") == "c: would run: its inputs will be recomputed (b)"
    monkeypatch.delenv("SPT_MODE")
    assert explain(capsys, pipeline, "c").startswith("c: would be reused")
    # explaining runs nothing
    assert pipeline.executed() == ALL


def test_explain_with_fresh_and_without_a_journal(pipeline, capsys):
    run(pipeline.path, inline=True, journal=pipeline.journal)
    assert explain(capsys, pipeline, "c", "--fresh") == \
        "c: would run: --fresh ignores the journal"
    status, out, _ = cli(capsys, "explain", pipeline.path, "c", "--no-journal")
    assert (status, out.strip()) == (0, "c: would run (the journal is off)")


def test_explain_an_unknown_vertex_is_a_user_error(pipeline, capsys):
    status, out, err = cli(capsys, "explain", pipeline.path, "nosuch", "--journal",
                           pipeline.journal)
    assert status == 1 and out == ""
    assert "nosuch" in err and "Traceback" not in err


def test_changing_a_function_source_reruns_exactly_the_affected_vertices(tmp_path):
    """A module in tmp_path that the test rewrites; every run and explanation is its
    own process, so each imports the module afresh."""
    (tmp_path / "spt_editable.py").write_text(SOURCE_MODULE, encoding="utf-8")
    made = Pipeline(tmp_path, module="spt_editable")
    env = made.env()
    run_json(made.path, "--inline", "--journal", made.journal, env=env)
    made.executed()
    (tmp_path / "spt_editable.py").write_text(SOURCE_MODULE.replace(
        'return sum(_flat(inputs.values())) * int(context["scale"])',
        'return sum(_flat(inputs.values())) * int(context["scale"]) + 1000'))
    done = run_cli("explain", made.path, "e", "--journal", made.journal, env=env)
    assert done.stdout.strip() == "e: would run: its function's code changed since it was recorded"
    data = run_json(made.path, "--inline", "--journal", made.journal, env=env)
    assert made.executed() == ["e", "f"]
    assert data["outputs"] == {"f": 1 + 202 + 600 + 1000 + 1}
    assert (data["stats"]["executed"], data["stats"]["reused"]) == (2, 5)


# ---- keep going ----------------------------------------------------------------------------
KEEP_GOING = """\
pipeline keepgoing

use tests.runtime_fixtures.logmod as m

context { log = env("SPT_LOG", "/dev/null") flag = env("SPT_FLAG", "/nonexistent") }

stage a         = m.start x 2
node  bad       = m.fragile
node  after_bad = m.step
node  good      = m.step
node  good2     = m.step

a >> bad
bad -> after_bad
a >> good
good -> good2
"""


@pytest.mark.parametrize("mode", ("inline", "embedded", "servers"))
def test_keep_going_finishes_the_rest_and_journals_it(mode, pipeline, servers, tmp_path,
                                                       monkeypatch):
    flag = tmp_path / "broken"
    flag.write_text("")
    monkeypatch.setenv("SPT_FLAG", str(flag))
    path = write_pipeline(tmp_path, "keepgoing", KEEP_GOING)
    result = run_in(mode, path, servers, journal=pipeline.journal, keep_going=True)
    assert isinstance(result.error, ValueError) and result.error.vertex == "bad"
    assert pipeline.executed() == ["a[0]", "a[1]", "bad", "good", "good2"]
    assert statuses(result) == {"a[0]": "executed", "a[1]": "executed", "bad": "failed",
                                "good": "executed", "good2": "executed"}
    assert result.outputs == {"good2": 100 + 101 + 1 + 1}
    assert result.stats["failed_attempts"] == 1
    assert sorted(journaled_vertices(pipeline.journal)) == ["a[0]", "a[1]", "good", "good2"]

    flag.unlink()  # the fix; the flag's path is unchanged, so no key changes
    fixed = run_in(mode, path, servers, journal=pipeline.journal, keep_going=True)
    assert fixed.error is None
    assert pipeline.executed() == ["after_bad", "bad"]
    assert statuses(fixed) == {"a[0]": "reused", "a[1]": "reused", "bad": "executed",
                               "after_bad": "executed", "good": "reused", "good2": "reused"}
    assert fixed.outputs == {"good2": 203, "after_bad": 100 + 101 + 7 + 1}


def test_keep_going_on_the_command_line(pipeline, tmp_path, capsys, monkeypatch):
    flag = tmp_path / "broken"
    flag.write_text("")
    monkeypatch.setenv("SPT_FLAG", str(flag))
    path = write_pipeline(tmp_path, "keepgoing", KEEP_GOING)
    status, out, err = cli(capsys, "run", path, "--inline", "--keep-going", "--journal",
                           pipeline.journal)
    assert status == 1
    assert "good2: 203" in out
    assert "vertex bad" in err and "ValueError" in err
    assert "Traceback" not in err
    status, out, err = cli(capsys, "run", path, "--inline", "--journal", pipeline.journal)
    assert status == 1  # without --keep-going the failure stops the run
    assert pipeline.executed() == ["a[0]", "a[1]", "bad", "bad", "good", "good2"]


def test_a_missing_stored_output_is_recomputed(pipeline, capsys):
    """A record whose output file is gone runs again (the journal's docstring)."""
    run(pipeline.path, inline=True, journal=pipeline.journal)
    pipeline.executed()
    stored = pipeline.journal / "outputs"
    assert list(stored.rglob("*.pack"))  # small outputs are appended to a pack
    assert len(journaled_vertices(pipeline.journal)) == 7
    shutil.rmtree(stored)
    assert explain(capsys, pipeline, "d") == \
        "d: would run: its recorded output is missing from the store"
    result = run(pipeline.path, inline=True, journal=pipeline.journal)
    assert pipeline.executed() == ALL
    assert result.stats["executed"] == 7


def test_execution_counts_are_exact(pipeline):
    """Nothing runs twice in one run (the log would show it)."""
    run(pipeline.path, inline=True, journal=pipeline.journal)
    assert Counter(log_lines(pipeline.log)) == Counter(ALL)


# ---- long-lived servers and changed code ------------------------------------------------------
def test_long_lived_servers_run_the_code_the_journal_key_names(tmp_path, servers):
    """The gateway keys a vertex by its function's current source; a server that keeps
    an old import runs the old code and the journal then holds the old output under
    the new code's key (every later run, in any mode, reuses the wrong value)."""
    module = f"spt_stale_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{module}.py").write_text("def value():\n    return 1\n")
    path = write_pipeline(tmp_path, "stale", f"pipeline stale\nuse {module} as m\n"
                          "node v = m.value\n")
    journal = tmp_path / "journal"
    where = ("--servers", ",".join(s.address for s in servers), "--journal", journal)
    assert run_json(path, *where)["outputs"] == {"v": 1}
    (tmp_path / f"{module}.py").write_text("def value():\n    return 2\n")
    changed = run_json(path, *where)
    assert changed["stats"]["executed"] == 1
    assert changed["outputs"] == {"v": 2}
    assert run_json(path, "--inline", "--journal", journal)["outputs"] == {"v": 2}
