#!/usr/bin/env python3
"""Compile benchmark: "description -> plan ready to execute", SerPyTor against Dask.

Three workloads, all built in one run:

(a) stage form, ours: a ``.spg`` pipeline of 100 stages of width 100 (10,000 vertices).
    Consecutive stages ``s{i} -> s{i+1}`` are joined pointwise (``=>``), except every
    tenth pair (``i % 10 == 9``: s9>>s10, s19>>s20, ..., s89>>s90, 9 pairs) which is
    all-to-all (``>>``): 90 x 100 + 9 x 10,000 = 99,000 edges. Timed:
    ``serpytor.compile(text, filename)``, which parses, checks (names, cycles, groups,
    the injection check), expands, computes the context tables and emits the Plan.

    The vertex functions live in a real, importable module written into a temporary
    directory beside the ``.spg`` file (``use spgbench_ops as ops``), so the compiler
    imports it and runs the injection (signature) check for every template: the
    honest, slightly more expensive case. The module is imported by the first compile
    and cached in ``sys.modules`` afterwards, like in any long-running process; the
    first ("cold") compile is reported separately.

(b) stage form, Dask: the identical DAG as a Dask graph dict (keys ``('s17', 3)``,
    tasks ``(f, *dependency keys)`` with a trivial ``f``; the first stage's tasks are
    ``(f, partition)``), then ``dask.order.order(dsk)``. Timed: building the dict plus
    ordering it. Dask is a benchmark-only dependency (``pip install 'serpytor[bench]'``);
    it is imported lazily and the comparison is skipped, loudly, when it is missing.

    Both sides are checked to describe the same edge set (outside the timing).

(c) 1000 x 1000 all-to-all: two stages of width 1000 joined by ``>>`` (1,000,000
    edges). Timed in-process like (a); its peak memory is measured in a fresh
    subprocess that only imports SerPyTor, reads the ``.spg`` and compiles it. The
    peak is the kernel's high-water mark ``VmHWM`` of ``/proc/self/status``: absolute
    (the whole child, imports included) and as a delta over the child's ``VmRSS``
    right after the imports, with the high-water mark reset there (``clear_refs`` 5)
    so import transients do not hide the compile's own peak. ``ru_maxrss`` is only a
    fallback off Linux: after fork+exec it can carry the parent's RSS. The child then
    saves and loads the plan and reports the peak again. The plan save
    (``Plan.save``) and load (``serpytor.load_plan``) times are measured in-process.

Generating the ``.spg`` text is timed separately and is not part of any compile time.
Every timing is the best of N repeats (``time.perf_counter``, garbage collector on, a
``gc.collect()`` before each repeat); ours and Dask's repeats are interleaved.

Targets: (a) ``stage_form_speedup = dask_time / our_time >= 2``; (c) compile under 5 s
(best of N, warm process) and absolute peak RSS of the compiling process under 500 MB.

Usage::

    python benchmarks/compile_bench.py            # the full run
    python benchmarks/compile_bench.py --quick    # fewer repeats; well within 60 s
    python benchmarks/compile_bench.py --profile  # also print cProfile top functions

Human-readable lines go to stdout; the last line is one JSON object of the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if (REPO / "serpytor" / "__init__.py").is_file() and str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # benchmark the tree this file lives in

import serpytor  # noqa: E402
from benchmarks.machine import machine  # noqa: E402

STAGES, WIDTH, ALL_TO_ALL_EVERY = 100, 100, 10
BIG_WIDTH = 1000
MODULE = "spgbench_ops"
TARGET_SPEEDUP = 2.0
TARGET_BIG_SECONDS = 5.0
TARGET_BIG_RSS_MB = 500.0

VERTEX_MODULE = textwrap.dedent('''\
    """Trivial vertex functions for benchmarks/compile_bench.py (generated)."""


    def source(partition):
        return partition


    def step(inputs):
        return len(inputs)
    ''')


# ---- descriptions ---------------------------------------------------------------------
def is_all_to_all(i: int) -> bool:
    """Is the pair s{i} -> s{i+1} all-to-all? Every tenth pair: s9>>s10, s19>>s20, ..."""
    return i % ALL_TO_ALL_EVERY == ALL_TO_ALL_EVERY - 1


def stage_form_spg(stages: int = STAGES, width: int = WIDTH) -> str:
    lines = ["pipeline stage_form", f"use {MODULE} as ops", ""]
    for i in range(stages):
        lines.append(f"stage s{i} = ops.{'source' if i == 0 else 'step'} x {width}")
    lines.append("")
    for i in range(stages - 1):
        lines.append(f"s{i} {'>>' if is_all_to_all(i) else '=>'} s{i + 1}")
    return "\n".join(lines) + "\n"


def all_to_all_spg(width: int = BIG_WIDTH) -> str:
    return (f"pipeline all_to_all\nuse {MODULE} as ops\n\n"
            f"stage a = ops.source x {width}\nstage b = ops.step x {width}\n\na >> b\n")


def _dask_task(*args):
    return 0


def stage_form_dask(stages: int = STAGES, width: int = WIDTH) -> dict:
    """The stage-form DAG as a Dask graph dict (this is timed: it is Dask's description)."""
    f = _dask_task
    dsk: dict = {("s0", j): (f, j) for j in range(width)}
    for i in range(1, stages):
        prev, name = f"s{i - 1}", f"s{i}"
        if is_all_to_all(i - 1):
            deps = tuple((prev, k) for k in range(width))
            for j in range(width):
                dsk[(name, j)] = (f, *deps)
        else:
            for j in range(width):
                dsk[(name, j)] = (f, (prev, j))
    return dsk


# ---- timing ---------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def best_of(n: int, fn: Callable[[], Any]) -> tuple[float, Any]:
    best, result = float("inf"), None
    for _ in range(n):
        result = None
        seconds, result = timed(fn)
        best = min(best, seconds)
    return best, result


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds * 1e3:8.1f} ms" if seconds < 10 else f"{seconds:8.2f} s"


# ---- (a) + (b) --------------------------------------------------------------------------
def plan_edge_set(plan) -> set:
    names = [t["name"] for t in plan.templates]
    tmpl, part = plan.arrays["vertex_template"].tolist(), plan.arrays["vertex_partition"].tolist()
    key = [(names[t], p) for t, p in zip(tmpl, part)]
    return {(key[s], key[d]) for s, d in zip(plan.arrays["edge_src"].tolist(),
                                            plan.arrays["edge_dst"].tolist())}


def dask_edge_set(dsk: dict) -> set:
    return {(dep, key) for key, task in dsk.items()
            for dep in task[1:] if isinstance(dep, tuple) and dep in dsk}


def bench_stage_form(workdir: Path, repeats: int, out: dict) -> None:
    print(f"(a)/(b) stage form: {STAGES} stages x {WIDTH}, '=>' except every "
          f"{ALL_TO_ALL_EVERY}th pair '>>'; best of {repeats}")
    gen_s, text = best_of(repeats, stage_form_spg)
    spg = workdir / "stage_form.spg"
    spg.write_text(text)
    filename = str(spg)
    compile_a = lambda: serpytor.compile(text, filename)  # noqa: E731

    first_s, plan = timed(compile_a)  # imports the vertex module, builds the parser
    out.update(stage_form_vertices=plan.n_vertices, stage_form_edges=plan.n_edges,
               stage_form_text_gen_s=gen_s, stage_form_text_bytes=len(text),
               stage_form_ours_first_s=first_s)
    print(f"    .spg text generation       {fmt_s(gen_s)}  ({len(text)} bytes, not timed "
          "below)")
    print(f"    ours, first compile        {fmt_s(first_s)}  (imports {MODULE}, builds the "
          f"parser; {plan.summary()})")

    try:
        import dask
        import dask.order
    except ImportError as error:
        warning = (f"!! Dask is NOT installed ({error}); the Dask baseline (b) is skipped "
                   "and the speedup target is not evaluated. Install it with: "
                   "pip install 'serpytor[bench]'")
        print("    " + warning)
        print(warning, file=sys.stderr)
        ours_s, _ = best_of(repeats, compile_a)
        out.update(stage_form_ours_s=ours_s, stage_form_dask_s=None, stage_form_speedup=None,
                   dask_version=None, dask_missing=True)
        print(f"    ours, compile(text)        {fmt_s(ours_s)}")
        return

    def dask_plan():
        dsk = stage_form_dask()
        return dsk, dask.order.order(dsk)

    dask_first_s, (dsk, order) = timed(dask_plan)
    if len(order) != len(dsk):
        raise SystemExit(f"dask.order ordered {len(order)} of {len(dsk)} tasks")
    ours_edges, dask_edges = plan_edge_set(plan), dask_edge_set(dsk)
    if ours_edges != dask_edges or plan.n_vertices != len(dsk):
        raise SystemExit(f"the two DAGs differ: ours {plan.n_vertices} vertices / "
                         f"{len(ours_edges)} edges, Dask {len(dsk)} tasks / "
                         f"{len(dask_edges)} edges")
    del plan, dsk, order, ours_edges, dask_edges

    ours, theirs = float("inf"), float("inf")
    for _ in range(repeats):  # interleaved, so drift hits both sides alike
        ours = min(ours, timed(compile_a)[0])
        theirs = min(theirs, timed(dask_plan)[0])
    dict_s, dsk = best_of(repeats, stage_form_dask)
    order_s, _ = best_of(repeats, lambda: dask.order.order(dsk))
    del dsk
    speedup = theirs / ours
    out.update(stage_form_ours_s=ours, stage_form_dask_s=theirs, stage_form_speedup=speedup,
               stage_form_dask_first_s=dask_first_s, stage_form_dask_dict_s=dict_s,
               stage_form_dask_order_s=order_s, dask_version=dask.__version__)
    print(f"    DAGs identical: {out['stage_form_vertices']} vertices, "
          f"{out['stage_form_edges']} edges")
    print(f"    ours, compile(text)        {fmt_s(ours)}")
    print(f"    dask, dict + order         {fmt_s(theirs)}  (dict {fmt_s(dict_s).strip()}, "
          f"order {fmt_s(order_s).strip()}; first run {fmt_s(dask_first_s).strip()}; "
          f"dask {dask.__version__})")
    print(f"    speedup dask/ours          {speedup:8.2f} x   (target >= {TARGET_SPEEDUP:g} x: "
          f"{'met' if speedup >= TARGET_SPEEDUP else 'NOT met'})")


# ---- (c) --------------------------------------------------------------------------------
CHILD = textwrap.dedent('''\
    import json, os, resource, sys, time
    import numpy, lark, serpytor, serpytor.compiler, serpytor.compiler.plan
    from benchmarks.machine import reset_peak_rss  # the repository root is on the path

    def status_mb(field):
        """VmRSS / VmHWM of this process in MB (None off Linux)."""
        try:
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) / 1024.0
        except OSError:
            return None

    def ru_maxrss_mb():
        # NOTE: after fork+exec ru_maxrss can carry the parent's RSS; VmHWM cannot
        raw = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return raw / 2**20 if sys.platform == "darwin" else raw / 1024.0

    spg, out = sys.argv[1], sys.argv[2]
    text = open(spg, encoding="utf-8").read()
    linux = status_mb("VmHWM") is not None
    import_peak = status_mb("VmHWM") if linux else ru_maxrss_mb()
    base = status_mb("VmRSS") if linux else ru_maxrss_mb()
    reset = linux and reset_peak_rss()
    start = time.perf_counter()
    plan = serpytor.compile(text, spg)
    seconds = time.perf_counter() - start
    compile_peak = status_mb("VmHWM") if linux else ru_maxrss_mb()
    after = status_mb("VmRSS") if linux else None
    edges = plan.n_edges
    plan.save(out)
    plan = None
    plan = serpytor.load_plan(out)
    io_peak = status_mb("VmHWM") if linux else ru_maxrss_mb()
    print(json.dumps({"seconds": seconds, "baseline_mb": base,
                      "peak_mb": max(import_peak, compile_peak),
                      "compile_peak_mb": compile_peak, "rss_after_mb": after,
                      "save_load_peak_mb": max(import_peak, compile_peak, io_peak),
                      "method": "VmHWM, reset after imports" if reset else
                                ("VmHWM" if linux else "ru_maxrss"),
                      "edges": edges}))
    ''')


def measure_child(spg: Path, workdir: Path) -> dict:
    root = str(Path(serpytor.__file__).resolve().parents[1])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    proc = subprocess.run([sys.executable, "-c", CHILD, str(spg), str(workdir / "child.spgc")],
                          capture_output=True, text=True, env=env, cwd=str(workdir),
                          timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"the memory child failed (exit {proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_all_to_all(workdir: Path, repeats: int, out: dict) -> None:
    print(f"(c) all-to-all {BIG_WIDTH} x {BIG_WIDTH} (2 stages, '>>'); best of {repeats}")
    gen_s, text = best_of(repeats, all_to_all_spg)
    spg = workdir / "all_to_all.spg"
    spg.write_text(text)

    child = measure_child(spg, workdir)  # first, before this process grows
    compile_c = lambda: serpytor.compile(text, str(spg))  # noqa: E731
    seconds, plan = best_of(repeats, compile_c)
    if plan.n_edges != BIG_WIDTH * BIG_WIDTH:
        raise SystemExit(f"expected {BIG_WIDTH * BIG_WIDTH} edges, got {plan.n_edges}")
    path = workdir / "all_to_all.spgc"
    save_s, _ = best_of(repeats, lambda: plan.save(path))
    load_s, loaded = best_of(repeats, lambda: serpytor.load_plan(path))
    if loaded.n_edges != plan.n_edges:
        raise SystemExit("the loaded plan differs from the saved one")
    size_mb = path.stat().st_size / 2**20
    delta = child["compile_peak_mb"] - child["baseline_mb"]
    out.update(all_to_all_1m_text_gen_s=gen_s, all_to_all_1m_s=seconds,
               all_to_all_1m_cold_s=child["seconds"], all_to_all_1m_edges=plan.n_edges,
               all_to_all_1m_peak_rss_mb=child["peak_mb"],
               all_to_all_1m_peak_rss_delta_mb=delta,
               all_to_all_1m_baseline_rss_mb=child["baseline_mb"],
               all_to_all_1m_rss_after_compile_mb=child["rss_after_mb"],
               all_to_all_1m_rss_method=child["method"],
               all_to_all_1m_save_load_peak_rss_mb=child["save_load_peak_mb"],
               all_to_all_1m_save_s=save_s, all_to_all_1m_load_s=load_s,
               all_to_all_1m_save_load_s=save_s + load_s, all_to_all_1m_plan_file_mb=size_mb)
    print(f"    .spg text generation       {fmt_s(gen_s)}")
    print(f"    compile(text)              {fmt_s(seconds)}  (fresh process: "
          f"{fmt_s(child['seconds']).strip()}; {plan.summary()})")
    print(f"    peak RSS of the compile    {child['peak_mb']:8.1f} MB  (baseline after imports "
          f"{child['baseline_mb']:.1f} MB, delta {delta:.1f} MB; {child['method']})")
    print(f"    plan save / load           {fmt_s(save_s)} / {fmt_s(load_s).strip()}  "
          f"({size_mb:.1f} MB file; peak RSS with save+load "
          f"{child['save_load_peak_mb']:.1f} MB)")


# ---- profile --------------------------------------------------------------------------
def profile(workdir: Path, top: int) -> None:
    import cProfile
    import io
    import pstats

    for label, text, name in (("(a) stage form", stage_form_spg(), "stage_form.spg"),
                              ("(c) all-to-all 1M", all_to_all_spg(), "all_to_all.spg")):
        filename = str(workdir / name)
        serpytor.compile(text, filename)  # warm: module imported, parser built
        gc.collect()
        profiler = cProfile.Profile()
        profiler.enable()
        serpytor.compile(text, filename)
        profiler.disable()
        for order in ("cumulative", "tottime"):
            stream = io.StringIO()
            pstats.Stats(profiler, stream=stream).sort_stats(order).print_stats(top)
            print(f"---- cProfile {label}: top {top} by {order} time (warm compile) ----")
            print("\n".join(line for line in stream.getvalue().splitlines()
                            if line.strip() and not line.lstrip().startswith(
                                ("Ordered by", "List reduced"))))


# ---- machine ----------------------------------------------------------------------------


def kernels() -> dict:
    """Where the ``_core`` context kernels come from (compiled extension or Python)."""
    from serpytor import _core
    found: dict[str, Any] = {"compiled": getattr(_core, "COMPILED", None)}
    for name in ("propagate_origins", "resolve_nearest"):
        fn = getattr(_core, name, None)
        found[name] = None if fn is None else \
            f"{getattr(fn, '__module__', '?')} ({type(fn).__name__})"
    return found


# ---- main -------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats (< 60 s)")
    parser.add_argument("--repeats", type=int, help="override the number of repeats")
    parser.add_argument("--profile", action="store_true",
                        help="print cProfile's top functions for (a) and (c)")
    parser.add_argument("--top", type=int, default=10, help="functions per profile")
    args = parser.parse_args(argv)
    repeats_a = args.repeats or (3 if args.quick else 15)
    repeats_c = args.repeats or (2 if args.quick else 5)

    out: dict[str, Any] = {"mode": "quick" if args.quick else "full",
                           "repeats_stage_form": repeats_a, "repeats_all_to_all": repeats_c,
                           "vertex_module": "importable (injection check runs)"}
    info = machine('lark')
    core = kernels()
    missing = [name for name in ("propagate_origins", "resolve_nearest") if core[name] is None]
    if missing:
        message = (f"serpytor._core lacks the context kernels {missing}: build them with "
                   "`python setup.py build_ext --inplace` (from the repository root)")
        print(message, file=sys.stderr)
        print(json.dumps({"error": message, "kernels": core, "machine": info}))
        return 1
    print(f"SerPyTor compile benchmark ({out['mode']}) on {info['cpu']}, {info['cores']} "
          f"cores, Python {info['python']}")
    print(f"    context kernels: {core}")
    print(f"    vertex functions: module '{MODULE}' written beside the .spg, importable, "
          "so the injection check runs")
    started = time.perf_counter()
    load_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    with tempfile.TemporaryDirectory(prefix="spgbench-") as tmp:
        workdir = Path(tmp)
        (workdir / f"{MODULE}.py").write_text(VERTEX_MODULE)
        bench_stage_form(workdir, repeats_a, out)
        bench_all_to_all(workdir, repeats_c, out)
        if args.profile:
            profile(workdir, args.top)
    speedup = out.get("stage_form_speedup")
    out["targets_met"] = {
        "stage_form_speedup_ge_2x": None if speedup is None else speedup >= TARGET_SPEEDUP,
        "all_to_all_1m_under_5s": out["all_to_all_1m_s"] < TARGET_BIG_SECONDS,
        "all_to_all_1m_peak_rss_under_500mb":
            out["all_to_all_1m_peak_rss_mb"] < TARGET_BIG_RSS_MB,
    }
    verdicts = list(out["targets_met"].values())
    out["targets_met"]["all"] = False if False in verdicts else None if None in verdicts else True
    out["kernels"] = core
    out["machine"] = info
    if hasattr(os, "getloadavg"):  # other work on the machine makes timings noisy
        info["loadavg_1m_start"], info["loadavg_1m_end"] = load_start, os.getloadavg()[0]
    out["wall_s"] = time.perf_counter() - started
    met = out["targets_met"]
    print("targets: " + ", ".join(f"{k}={'n/a' if v is None else ('met' if v else 'NOT met')}"
                                  for k, v in met.items()) + f"; wall {out['wall_s']:.1f} s")
    print(json.dumps(out, sort_keys=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
