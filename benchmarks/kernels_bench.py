"""Benchmark the ``serpytor._core`` kernels against their pure-Python references.

    python benchmarks/kernels_bench.py [--quick] [--seed N]

Prints one line per measurement, then, as its last line, one JSON object of figures
(speed-ups are reference time / kernel time on the same input). ``--quick`` (under a
minute) uses 100k-vertex graphs; the full run adds 1M-vertex graphs. Where the
reference would take minutes it runs on a smaller input and its time is extrapolated
per vertex (the 1M schedule uses the reference's rate on the 100k graph; placement
times the reference on the first vertices of the batch); each line says so.

Graphs (4 edges per vertex on average, vertex ids in topological order):

* layered: layers of 1000 vertices, each vertex draws 4 parents from the layer before
  (the shape of staged pipelines: stages x N joined by pointwise and all-to-all edges);
* uniform: each edge joins a uniformly random vertex to a uniformly random earlier one
  (no locality at all: the worst case for caches).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

# a benchmark of single-threaded kernels: keep BLAS worker threads from spinning
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import serpytor._core as core  # noqa: E402
from benchmarks.machine import machine  # noqa: E402

if core.compiled is None:
    sys.exit("kernels_bench: the compiled kernels are not built; run "
             "`python setup.py build_ext --inplace` first")
KERNEL, REFERENCE = core.compiled, core.reference

LAYER_WIDTH = 1000
DEGREE = 4
BATCH = 10_000          # pop_ready / complete_many batch size
N_FACTS = 64
N_KEYS = 8
SERVERS, HOSTS, READY_VERTICES, INPUTS_PER_VERTEX = 1000, 250, 10_000, 3


# ---- inputs -----------------------------------------------------------------------------

def layered_edges(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    m = DEGREE * n
    dst = rng.integers(min(LAYER_WIDTH, n - 1), n, m)
    src = (dst // LAYER_WIDTH - 1) * LAYER_WIDTH + rng.integers(0, LAYER_WIDTH, m)
    return src, dst


def uniform_edges(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    dst = rng.integers(1, n, DEGREE * n)
    src = (rng.random(dst.shape[0]) * dst).astype(np.int64)
    return src, dst


def csr(n: int, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(rows, kind="stable")
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return indptr, cols[order].astype(np.int32)


def timed(function, *args, repeat: int = 1, **kwargs):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best, result


def say(text: str) -> None:
    print(text, flush=True)


# ---- scheduling -------------------------------------------------------------------------

def drain(engine) -> int:
    """Run every vertex to completion in batches; returns how many ran."""
    done = 0
    while True:
        ready = engine.pop_ready(BATCH)
        if not len(ready):
            return done
        engine.complete_many(ready)
        done += len(ready)


def schedule(impl, indptr, indices, repeat: int = 1) -> tuple[float, float]:
    """(load seconds, run seconds): build the engine (default priority), then drain it."""
    best_load, best_run = float("inf"), float("inf")
    for _ in range(repeat):
        load, engine = timed(impl.ReadyEngine, indptr, indices)
        run, count = timed(drain, engine)
        assert count == indptr.shape[0] - 1 and engine.finished
        best_load, best_run = min(best_load, load), min(best_run, run)
    return best_load, best_run


def bench_schedule(kind: str, sizes: list[int], rng, figures: dict) -> None:
    edges = layered_edges if kind == "layered" else uniform_edges
    reference_rate = None
    for n in sizes:
        src, dst = edges(n, rng)
        indptr, indices = csr(n, src, dst)
        load, run = schedule(KERNEL, indptr, indices, repeat=3)
        rate = n / run
        say(f"schedule {kind:8s} {n:>9,} vertices {indices.shape[0]:>10,} edges: kernel "
            f"{run * 1e3:8.1f} ms ({rate / 1e6:5.1f} M vertices/s), load {load * 1e3:6.1f} ms")
        if n <= 100_000:
            ref_load, ref_run = schedule(REFERENCE, indptr, indices)
            reference_rate = n / ref_run
            say(f"schedule {kind:8s} {n:>9,} vertices: reference {ref_run:8.2f} s "
                f"({reference_rate / 1e3:6.1f} k vertices/s), load {ref_load:5.2f} s")
        else:
            say("    (reference rate per vertex taken from the 100k-vertex graph)")
        suffix = "" if kind == "layered" else "_uniform"
        figures[f"schedule{suffix}_vertices"] = n
        figures[f"schedule{suffix}_vertices_per_s"] = round(rate)
        figures[f"schedule{suffix}_speedup"] = round(rate / reference_rate, 1)
        figures[f"schedule{suffix}_load_s"] = round(load, 3)


def bench_memory(figures: dict, rng) -> None:
    """Memory of the engine for 1M vertices / 4M edges, beyond its input arrays."""
    n = 1_000_000
    indptr, indices = csr(n, *uniform_edges(n, rng))
    tracemalloc.start()
    engine = KERNEL.ReadyEngine(indptr, indices)
    kept, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    say(f"engine memory, {n:,} vertices {indices.shape[0]:,} edges: {kept / 2**20:.1f} MB "
        f"held, {peak / 2**20:.1f} MB peak while loading (tracemalloc)")
    figures["engine_memory_mb"] = round(kept / 2**20, 1)
    figures["engine_peak_load_memory_mb"] = round(peak / 2**20, 1)
    del engine


# ---- context ----------------------------------------------------------------------------

def context_inputs(n: int, src: np.ndarray, dst: np.ndarray, owners: np.ndarray,
                   values: np.ndarray):
    """Every vertex a context node; origin o = 1..64 is owned by vertex owners[o - 1]
    (-1: outside this graph) and has one fact, key (o - 1) % 8."""
    parent_indptr, parents = csr(n, dst, src)
    owned = owners >= 0
    origins = np.arange(1, N_FACTS + 1)[owned]
    own_indptr, own = csr(n, owners[owned], origins)
    facts = (origins.astype(np.int32), ((origins - 1) % N_KEYS).astype(np.int32),
             values[owned].astype(np.int32))
    topo = np.arange(n, dtype=np.int32)
    return (parent_indptr, parents, topo, own_indptr, own, N_FACTS + 1), facts


def run_context(impl, propagate_args, owners: np.ndarray, facts):
    """The compiler's two calls: propagate the origins, resolve the nearest facts."""
    reach, inherited = impl.propagate_origins(*propagate_args)
    origin_inherited = np.zeros((N_FACTS + 1, reach.shape[1]), np.uint64)
    owned = np.flatnonzero(owners >= 0)
    origin_inherited[owned + 1] = inherited[owners[owned]]
    return impl.resolve_nearest(reach, origin_inherited, *facts, N_KEYS)


def bench_context(sizes: list[int], rng, figures: dict) -> None:
    """The compiler's context pass on graphs of 64 facts: kernel and reference on the
    100k-node graph (outputs compared), the kernel alone on larger graphs."""
    for n in sizes:
        src, dst = layered_edges(n, rng)
        owners = rng.choice(n, N_FACTS, replace=False)
        values = rng.integers(0, 4, N_FACTS)
        args, facts = context_inputs(n, src, dst, owners, values)
        kernel, resolved = timed(run_context, KERNEL, args, owners, facts, repeat=3)
        line = (f"context  {n:>9,} nodes, {N_FACTS} facts on {N_KEYS} keys, "
                f"{resolved[1].shape[0]:>9,} resolved entries: kernel {kernel * 1e3:8.1f} ms")
        if n <= 100_000:
            reference, expected = timed(run_context, REFERENCE, args, owners, facts)
            assert all((a == b).all() for a, b in zip(resolved, expected))
            figures["context_speedup"] = round(reference / kernel, 1)
            line += f", reference {reference:6.2f} s -> {reference / kernel:6.1f}x"
        say(line)
        figures["context_nodes"] = n
        figures["context_nodes_per_s"] = round(n / kernel)


def bench_merge(rng, figures: dict) -> None:
    """Run-time merge of 4 parents' tables of 2500 published facts each."""
    parents = 4
    tables = []
    for _ in range(parents):
        origin = rng.choice(50_000, 2500, replace=False).astype(np.int64)
        tables.append((origin, (origin % 64).astype(np.int32), (origin % 7).astype(np.int32),
                       rng.random(2500) < 0.2))
    rows = [np.concatenate(column) for column in zip(*tables)]
    own = (np.array([60_000, 60_001], np.int64), np.array([1, 2], np.int32),
           np.array([0, 1], np.int32))
    kernel, merged = timed(KERNEL.merge_facts, *rows, *own, repeat=5)
    reference, expected = timed(REFERENCE.merge_facts, *rows, *own)
    assert all((a == b).all() for a, b in zip(merged, expected))
    say(f"merge    {rows[0].shape[0]:>9,} parent rows: kernel {kernel * 1e3:8.2f} ms, "
        f"reference {reference * 1e3:8.2f} ms -> {reference / kernel:6.1f}x")
    figures["merge_speedup"] = round(reference / kernel, 1)


# ---- placement --------------------------------------------------------------------------

def placement_inputs(rng, n_vertices: int):
    t = n_vertices * INPUTS_PER_VERTEX
    return dict(load=rng.random(SERVERS) * 8, capacity=rng.integers(4, 17, SERVERS) * 1.0,
                server_host=np.arange(SERVERS, dtype=np.int32) % HOSTS,
                input_vertex=np.repeat(np.arange(n_vertices), INPUTS_PER_VERTEX),
                input_host=rng.integers(0, HOSTS, t),
                input_bytes=rng.integers(1, 1 << 30, t) * 1.0, n_vertices=n_vertices,
                locality_weight=0.5, load_weight=0.5)


def bench_placement(rng, figures: dict, ref_vertices: int) -> None:
    problem = placement_inputs(rng, READY_VERTICES)
    kernel, placed = timed(KERNEL.place, **problem, repeat=3)
    subset = dict(problem, n_vertices=ref_vertices,
                  input_vertex=problem["input_vertex"][:ref_vertices * INPUTS_PER_VERTEX],
                  input_host=problem["input_host"][:ref_vertices * INPUTS_PER_VERTEX],
                  input_bytes=problem["input_bytes"][:ref_vertices * INPUTS_PER_VERTEX])
    reference, expected = timed(REFERENCE.place, **subset)
    assert (placed[:ref_vertices] == expected).all()
    speedup = (reference / ref_vertices) / (kernel / READY_VERTICES)
    say(f"place    {READY_VERTICES:>9,} ready vertices x {SERVERS} servers: kernel "
        f"{kernel * 1e3:8.1f} ms, reference {reference:6.2f} s on the first "
        f"{ref_vertices:,} vertices -> {speedup:6.1f}x")
    say("    (reference extrapolated per vertex: each vertex scores every server)")
    figures["placement_pairs_per_s"] = round(READY_VERTICES * SERVERS / kernel)
    figures["placement_speedup"] = round(speedup, 1)


# ---- journal keys -----------------------------------------------------------------------

def key_inputs(n: int) -> tuple[list, list, list, list]:
    """A batch of n vertices as a journaled run of the 100 x 100 benchmark DAG has them:
    one function, no arguments, one static context, two parents each."""
    function = "benchmarks.run_tasks:step:" + "5" * 40
    parts = [(function, "6" * 40, f'"{function}"')] * n
    inputs = [f"v3_{i % 100}=blake2b-256:{i:064x};v3_{(i + 7) % 100}=blake2b-256:{i + 1:064x}"
              for i in range(n)]
    return parts, ["7" * 40] * n, inputs, [f"v4_{i}" for i in range(n)]


def bench_keys(figures: dict) -> None:
    batch = key_inputs(BATCH)
    kernel, made = timed(KERNEL.journal_keys, *batch, repeat=5)
    reference, expected = timed(REFERENCE.journal_keys, *batch, repeat=3)
    assert made == expected
    say(f"keys     {BATCH:>9,} journal keys: kernel {kernel / BATCH * 1e6:8.2f} us/key, "
        f"reference {reference / BATCH * 1e6:8.2f} us/key -> {reference / kernel:6.1f}x")
    figures["journal_key_us"] = round(kernel / BATCH * 1e6, 2)
    figures["journal_keys_speedup"] = round(reference / kernel, 1)


# ---- main -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="100k graphs only, < 1 minute")
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    sizes = [100_000] if args.quick else [100_000, 1_000_000]
    figures: dict = {"quick": args.quick, **machine()}
    say(f"serpytor._core kernels: compiled={core.COMPILED}, python {figures['python']}, "
        f"{figures['cpu']}, {figures['cores']} cores")
    started = time.perf_counter()
    bench_schedule("layered", sizes, rng, figures)
    bench_schedule("uniform", sizes, rng, figures)
    bench_memory(figures, rng)
    bench_context(sizes, rng, figures)
    bench_merge(rng, figures)
    bench_placement(rng, figures, ref_vertices=500 if args.quick else 1000)
    bench_keys(figures)
    figures["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
