"""``serpytorc`` / ``serpytor compile``: what it prints, what it writes, exit statuses.

Exit status 0 on success, 1 on an error in the pipeline (one diagnostic, no Python
traceback unless -v), 2 on a bad command line (argparse).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import serpytor
from serpytor.cli import compiler_main, main

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
WORDCOUNT = ROOT / "examples" / "wordcount.spg"
OVERRIDE = FIXTURES / "override.spg"
UNDECLARED = FIXTURES / "undeclared.spg"
UNCLOSED = FIXTURES / "unclosed.spg"


@pytest.fixture(autouse=True)
def _default_corpus(monkeypatch):
    monkeypatch.delenv("CORPUS", raising=False)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = compiler_main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def files_under(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


# ---- --emit ---------------------------------------------------------------------------------
def test_emit_plan_json(capsys):
    status, out, err = run(capsys, "--emit", "plan", WORDCOUNT)
    assert (status, err) == (0, "")
    data = json.loads(out)
    assert set(data) == {"vertices", "edges"}
    for vertex in data["vertices"]:
        assert set(vertex) == {"name", "function", "partition", "group"}
    for edge in data["edges"]:
        assert set(edge) == {"src", "dst", "channel"}
    vertices = {v["name"]: v for v in data["vertices"]}
    assert len(vertices) == 21
    assert vertices["read[3]"] == {"name": "read[3]", "function": "examples.wordcount:read_lines",
                                   "partition": 3, "group": None}
    assert vertices["audit"]["group"] == vertices["notify"]["group"] == "review"
    assert vertices["report"]["group"] is None
    edges = {(e["src"], e["dst"]): e["channel"] for e in data["edges"]}
    assert len(edges) == 20
    assert edges[("merge", "report")] == "tcp"
    assert edges[("read[5]", "count[5]")] == "auto"
    assert ("read[5]", "count[4]") not in edges


def test_emit_context_json(capsys):
    status, out, _ = run(capsys, "--emit", "context", WORDCOUNT)
    assert status == 0
    contexts = json.loads(out)
    plan = serpytor.compile_file(WORDCOUNT)
    assert set(contexts) == set(plan.names)
    assert contexts["read[0]"] == {"corpus": "examples/data/corpus.txt", "lowercase": True}
    assert contexts["archive"] == {"corpus": "examples/data/corpus.txt", "lowercase": True,
                                   "owner": "analytics"}


def test_emit_dot(capsys):
    status, out, _ = run(capsys, "--emit", "dot", WORDCOUNT)
    assert status == 0
    assert out.startswith('digraph "wordcount" {')
    assert 'subgraph "cluster_review" {' in out
    cluster = out[out.index('subgraph "cluster_review"'):]
    cluster = cluster[:cluster.index("}")]
    assert '"audit";' in cluster and '"notify";' in cluster and '"report"' not in cluster
    plan = serpytor.compile_file(WORDCOUNT)
    edge_lines = [line.strip() for line in out.splitlines() if "->" in line]
    assert len(edge_lines) == plan.n_edges
    for src, dst, channel in plan.edges():
        assert any(line.startswith(f'"{src}" -> "{dst}"') for line in edge_lines), (src, dst)
    assert '"merge" -> "report" [label="tcp"];' in edge_lines


@pytest.mark.parametrize("stage", ["ast", "ir"])
def test_emit_ast_and_ir_name_the_pipeline(capsys, stage):
    status, out, _ = run(capsys, "--emit", stage, WORDCOUNT)
    assert status == 0
    assert "wordcount" in out
    assert "read" in out and "review" in out


def test_emit_ir_prints_dsl_like_text(capsys):
    _, out, _ = run(capsys, "--emit", "ir", WORDCOUNT)
    assert out.splitlines()[0] == "pipeline wordcount"
    assert "stage read = examples.wordcount:read_lines x 8" in out
    assert "merge -> report [channel = tcp]" in out
    assert "group review { audit, notify }" in out


def test_emit_writes_no_plan(tmp_path, capsys):
    source = tmp_path / "wc.spg"
    shutil.copy(WORDCOUNT, source)
    for stage in ("ast", "ir", "plan", "dot", "context"):
        assert run(capsys, "--emit", stage, source)[0] == 0
    assert files_under(tmp_path) == ["wc.spg"]


# ---- --explain ------------------------------------------------------------------------------
def test_explain_lists_facts_with_origin_line_and_status(capsys):
    status, out, _ = run(capsys, "--explain", "sink", OVERRIDE)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "sink: 3 fact(s) reach it from context, team"
    facts = lines[1:]
    assert len(facts) == 3
    ops = next(line for line in facts if "'ops'" in line)
    team = next(line for line in facts if "'team'" in line)
    region = next(line for line in facts if "'eu'" in line)
    assert "from context" in ops and f"{OVERRIDE}:6" in ops and "overridden by team" in ops
    assert "from team" in team and f"{OVERRIDE}:9" in team and team.endswith("used")
    assert "from context" in region and f"{OVERRIDE}:6" in region and region.endswith("used")


def test_explain_a_vertex_above_the_override(capsys):
    _, out, _ = run(capsys, "--explain", "source", OVERRIDE)
    assert out.splitlines()[0] == "source: 2 fact(s) reach it from context"
    assert "'team'" not in out and "overridden" not in out


def test_explain_an_unknown_vertex_is_a_user_error(capsys):
    status, out, err = run(capsys, "--explain", "nobody", OVERRIDE)
    assert status == 1
    assert "no vertex named 'nobody'" in err
    assert "Traceback" not in err


# ---- writing and checking -----------------------------------------------------------------
def test_check_writes_nothing(tmp_path, capsys):
    source = tmp_path / "wc.spg"
    shutil.copy(WORDCOUNT, source)
    status, out, _ = run(capsys, "--check", source)
    assert status == 0
    assert out == f"{source}: ok: pipeline wordcount: 21 vertices, 20 edges, 2 stages, 1 groups\n"
    assert files_under(tmp_path) == ["wc.spg"]


def test_several_pipelines_each_get_a_plan(tmp_path, capsys):
    for name in ("wordcount", "average"):
        shutil.copy(ROOT / "examples" / f"{name}.spg", tmp_path / f"{name}.spg")
    status, out, _ = run(capsys, tmp_path / "wordcount.spg", tmp_path / "average.spg")
    assert status == 0
    assert files_under(tmp_path) == ["average.spg", "average.spgc", "wordcount.spg",
                                     "wordcount.spgc"]
    assert serpytor.load_plan(tmp_path / "average.spgc").pipeline == "average"
    assert len(out.splitlines()) == 2


def test_serpytor_compile_is_the_same_command(tmp_path, capsys):
    source = tmp_path / "wc.spg"
    shutil.copy(WORDCOUNT, source)
    assert main(["compile", "--check", str(source)]) == 0
    assert "ok: pipeline wordcount" in capsys.readouterr().out
    assert main(["compile", str(source), "-o", str(tmp_path / "x.spgc")]) == 0
    assert serpytor.load_plan(tmp_path / "x.spgc").pipeline == "wordcount"


# ---- user errors: one diagnostic, status 1, no traceback -------------------------------------
@pytest.mark.parametrize("path, location, message", [
    (UNDECLARED, "7:10", "edge to undeclared name 'alpah'"),
    (UNCLOSED, "5:18", "unclosed '{'"),
])
def test_pipeline_error_prints_one_diagnostic(capsys, path, location, message):
    status, out, err = run(capsys, path)
    assert status == 1
    assert out == ""
    assert err.startswith(f"{path}:{location}: error: {message}")
    assert "^" in err
    assert "Traceback" not in err


def test_context_conflict_is_a_user_error(tmp_path, capsys):
    source = tmp_path / "conflict.spg"
    source.write_text("pipeline c\nuse spg_test_missing.mod as m\n"
                      "node a = m.f with { k = 1 }\nnode b = m.f with { k = 2 }\n"
                      "node j = m.f\na -> j\nb -> j\n")
    status, _, err = run(capsys, source)
    assert status == 1
    assert err.startswith(f"{source}:5:6: error: context key 'k' is ambiguous at 'j'")
    assert "hint: declare `k = ...`" in err
    assert "Traceback" not in err
    assert files_under(tmp_path) == ["conflict.spg"]


def test_verbose_shows_the_traceback(capsys):
    status, _, err = run(capsys, "-v", UNDECLARED)
    assert status == 1
    assert "Traceback" in err
    assert "edge to undeclared name 'alpah'" in err


def test_missing_file_is_a_user_error(tmp_path, capsys):
    status, _, err = run(capsys, tmp_path / "nope.spg")
    assert status == 1
    assert "cannot read the pipeline" in err and "nope.spg" in err
    assert "Traceback" not in err


def test_a_file_that_is_not_utf8_is_a_user_error(tmp_path, capsys):
    source = tmp_path / "latin1.spg"
    source.write_bytes("pipeline p\ncontext { k = 'caf\u00e9' }\n".encode("latin-1"))
    status, _, err = run(capsys, source)
    assert status == 1
    assert "not UTF-8" in err and "Traceback" not in err


def test_a_directory_is_a_user_error(tmp_path, capsys):
    status, _, err = run(capsys, tmp_path)
    assert status == 1 and "Traceback" not in err


# ---- usage errors: status 2 -------------------------------------------------------------------
@pytest.mark.parametrize("argv", [
    ["--emit", "bytecode", str(WORDCOUNT)],
    [str(WORDCOUNT), str(OVERRIDE), "-o", "out.spgc"],
    [],
    ["--no-such-option", str(WORDCOUNT)],
])
def test_usage_error_exits_2(capsys, argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        compiler_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err
    assert files_under(tmp_path) == []


# ---- a real process --------------------------------------------------------------------------
def run_module(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CORPUS", None)
    return subprocess.run([sys.executable, "-m", "serpytor", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def test_python_m_serpytor_compile_reports_a_user_error(tmp_path):
    result = run_module("compile", str(UNDECLARED), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(f"{UNDECLARED}:7:10: error: edge to undeclared name")
    assert "did you mean 'alpha'?" in result.stderr
    assert result.stdout == ""


def test_python_m_serpytor_compile_reports_a_syntax_error(tmp_path):
    result = run_module("compile", str(UNCLOSED), cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert f"{UNCLOSED}:5:18: error: unclosed '{{'" in result.stderr


def test_python_m_serpytor_usage_error(tmp_path):
    result = run_module("compile", "--emit", "bytecode", str(UNDECLARED), cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "invalid choice" in result.stderr
    assert files_under(tmp_path) == []
