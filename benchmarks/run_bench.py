#!/usr/bin/env python3
"""Run benchmark: executing plans, SerPyTor against Dask and against itself.

Every figure is a ratio against a baseline measured in the same run, on the same
machine, with rounds of the two sides alternating (the order flips every round) and
medians reported, because the machine is shared. Plans are compiled, servers and the
Dask cluster started, before anything is timed; each timed round is one call
(``run(...)``, ``dask.local.get_sync(...)``, ``client.get(...)``) measured with
``time.perf_counter``, after a ``gc.collect()``. For each round the CPU seconds used by
this benchmark's processes (it, its servers, Dask's workers) and by everything else on
the machine are recorded too (``cpu_ours_s``, and ``others_cores``: how many cores
other jobs, and the hypervisor's steal, kept busy), so that a figure spoiled by other
work can be told apart.

The DAG (figures 1-3): 100 layers of 100 vertices (20 layers with ``--quick``); every
vertex of a layer but the first has 2 distinct parents drawn (``random.Random(SEED)``)
from the layer before. Two vertices of a layer may draw the same pair; their journal
keys (function, arguments, inputs, context, partition) are then equal. In SerPyTor the
DAG is written as explicit ``node`` declarations and ``a -> b`` edges; in Dask as a
graph dict with tuple keys ``("v", layer, index)`` (Dask's naming convention: one task
prefix) and tasks ``(dask_step, parent, parent)``. Tasks are trivial
(``benchmarks/run_tasks.py``: a sum of the parents' outputs plus one), so what is
measured is the cost of scheduling and running a task. The requested keys are all sinks
(vertices without children), so both sides compute every vertex, and both sides' sink
values are checked equal outside the timing.

1. ``--inline`` against Dask's synchronous scheduler: per-task time. Target: ours at
   least 4x faster.
2. 2 local servers (``LocalServers(2)``, passed with ``servers=``) against a Dask
   ``LocalCluster(n_workers=2, threads_per_worker=1, processes=True)`` and ``Client``
   (``client.get(graph, keys)``): tasks per second. Target: ours at least 10x.
   Also reported: the embedded default (``run(plan, workers=2)``, which starts and
   stops its own servers), end to end, since that is what a user running without
   ``--servers`` waits for.
3. Journal on (``journal=DIR``, ``fresh=True``, a new directory each round) against
   off (``journal=False``), 2 servers: slowdown. Target: at most 1.3x. Also measured
   on a DAG of the same shape whose vertices all have distinct journal keys, and
   inline (no targets); each beside the cost of creating one small file in the same
   directory, the floor for a journal storing one file per output. 7 rounds (the
   others take 3): a journal-off run of this DAG varies by up to 20% from round to
   round on a shared 2-core machine, and this figure is a small difference of two.
4. A word count over a generated corpus (200 MB; 32 MB with ``--quick``): 8 read
   replicas, each reading only its own line-aligned byte range, 8 counting replicas
   (lowercase, split, ``Counter``) fed pointwise, one merge fed all-to-all; 2 servers
   against 1 server: speed-up. Target: at least 1.7x.
5. Gateway memory: in a fresh subprocess, the resident memory of the gateway (the
   process calling ``run``) for a plan of 100,000 vertices (100 stages of 1000, chained
   pointwise; 20,000 with ``--quick``) on 2 local servers, ``journal=False``. Baseline:
   RSS after the imports and after compiling (and running) a small plan, so one-time
   set-up is not charged to the vertices. A background thread samples the RSS during
   the big run; the figure is (peak - baseline) / vertices. The growth due to the
   compiled Plan alone (RSS after compiling it, before running) is reported apart.
   Target: under 0.5 KB (512 bytes) per vertex.

Usage::

    python benchmarks/run_bench.py            # the full run (a few minutes)
    python benchmarks/run_bench.py --quick    # smaller sizes, fewer rounds; < 60 s

Plans, the corpus and journals are written under a new directory in the system's
temporary directory (``TMPDIR`` chooses it), removed at the end.

Human-readable lines go to stdout, one or more per figure; the last line is one JSON
object with every figure, the targets met and the machine. A figure whose run raises
or hangs (each run has a deadline: 120 s, 10 s with ``--quick``) is reported with its
error under ``errors`` and the benchmark goes on, with fresh servers.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # benchmark the tree this file lives in
# servers (and Dask's workers) are child processes: they import benchmarks.run_tasks
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])

import serpytor  # noqa: E402
from serpytor.runtime.api import run  # noqa: E402
from serpytor.runtime.local import LocalServers  # noqa: E402
from serpytor.runtime.timeouts import alarm  # noqa: E402

from benchmarks import run_tasks  # noqa: E402
from benchmarks.machine import machine, reset_peak_rss  # noqa: E402

TASKS = "benchmarks.run_tasks"
SEED = 20240601
PARENTS = 2
SIZES = {  # mode -> sizes and rounds
    "full": {"layers": 100, "width": 100, "rounds_inline": 5, "rounds_servers": 3,
             "rounds_journal": 7, "rounds_embedded": 2, "corpus_mb": 200,
             "rounds_wordcount": 3, "memory_stages": 100, "deadline_s": 120.0},
    "quick": {"layers": 20, "width": 100, "rounds_inline": 5, "rounds_servers": 2,
              "rounds_journal": 2, "rounds_embedded": 1, "corpus_mb": 32,
              "rounds_wordcount": 1, "memory_stages": 20, "deadline_s": 10.0},
}
UNMEASURABLE = ("ImportError", "ModuleNotFoundError")  # a baseline is not installed
MEMORY_WIDTH = 1000
READ_REPLICAS = 8
RAW_FILES = 1000  # small files created to price one (a mean; more only took longer)
TARGETS = {"inline_vs_dask_sync": 4.0, "servers_vs_dask_distributed": 10.0,
           "journal_slowdown": 1.3, "wordcount_speedup": 1.7, "memory_bytes_per_vertex": 512.0}


# ---- timing ---------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes (after a collection), and its result."""
    gc.collect()
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def cpu_snapshot() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its
    descendants: servers, Dask workers), for telling our work from other jobs'."""
    import psutil

    system = psutil.cpu_times()  # guest time is already part of user time on Linux
    busy = sum(getattr(system, field, 0.0) for field in
               ("user", "nice", "system", "irq", "softirq", "steal"))
    ours = 0.0
    me = psutil.Process()
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
            ours += times.user + times.system
        except psutil.Error:
            pass  # it exited meanwhile
    return busy, ours


@dataclass
class Rounds:
    """Per side: wall seconds of each round, and the CPU seconds this benchmark's
    processes and everything else on the machine used during it."""

    seconds: dict[str, list[float]]
    ours_cpu: dict[str, list[float]]
    others_cpu: dict[str, list[float]]
    last: dict[str, Any]

    def median(self, side: str) -> float:
        return statistics.median(self.seconds[side])

    def others_cores(self, side: str) -> float:
        """Median number of cores other jobs kept busy during this side's rounds."""
        return statistics.median(o / s for o, s in zip(self.others_cpu[side],
                                                       self.seconds[side]))

    def summary(self, side: str) -> dict[str, Any]:
        return {"s": self.seconds[side], "median_s": self.median(side),
                "cpu_ours_s": self.ours_cpu[side], "others_cores": self.others_cores(side)}


def alternate(rounds: int, sides: dict[str, Callable[[], Any]]) -> Rounds:
    """Time each side ``rounds`` times, alternating, the order reversed every round,
    so that drift on the shared machine hits every side alike."""
    names = list(sides)
    result = Rounds({n: [] for n in names}, {n: [] for n in names}, {n: [] for n in names}, {})
    for index in range(rounds):
        for name in (names if index % 2 == 0 else names[::-1]):
            gc.collect()
            busy0, ours0 = cpu_snapshot()
            start = time.perf_counter()
            result.last[name] = sides[name]()
            seconds = time.perf_counter() - start
            busy1, ours1 = cpu_snapshot()
            result.seconds[name].append(seconds)
            result.ours_cpu[name].append(ours1 - ours0)
            result.others_cpu[name].append(max(0.0, (busy1 - busy0) - (ours1 - ours0)))
    return result


class DeadlineExceeded(Exception):
    """A timed call did not finish within its deadline (the runtime hung or crawled)."""


def deadline(seconds: float, what: str) -> ContextManager[None]:
    """Raise DeadlineExceeded in this (main) thread if the block outlives ``seconds``."""
    return alarm(seconds, lambda: DeadlineExceeded(f"{what} did not finish within "
                                                   f"{seconds:g} s"))


def bounded(fn: Callable[[], Any], seconds: float, what: str) -> Callable[[], Any]:
    """``fn`` wrapped in a deadline."""
    def call() -> Any:
        with deadline(seconds, what):
            return fn()
    return call


def fmt_s(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 10 else f"{seconds:.2f} s"


# ---- the DAG --------------------------------------------------------------------------
@dataclass
class Dag:
    """Layer-by-layer parents: ``parents[i][j]`` are the indices, in layer ``i - 1``,
    of vertex ``(i, j)``'s parents (empty for the first layer)."""

    layers: int
    width: int
    parents: list[list[list[int]]]

    @property
    def vertices(self) -> int:
        return self.layers * self.width

    def sinks(self) -> list[tuple[int, int]]:
        """Vertices without children, in (layer, index) order."""
        fed = {(i - 1, p) for i, layer in enumerate(self.parents) for ps in layer for p in ps}
        return [(i, j) for i in range(self.layers) for j in range(self.width)
                if (i, j) not in fed]


def make_dag(layers: int, width: int, seed: int = SEED, distinct_pairs: bool = False) -> Dag:
    """The layered DAG; with ``distinct_pairs`` no two vertices of a layer share both
    parents (so every vertex has its own journal key)."""
    rng = random.Random(seed)
    parents = [[[] for _ in range(width)]]
    pairs = list(itertools.combinations(range(width), PARENTS))
    for _ in range(1, layers):
        if distinct_pairs:
            parents.append([list(pair) for pair in rng.sample(pairs, width)])
        else:
            parents.append([sorted(rng.sample(range(width), PARENTS)) for _ in range(width)])
    return Dag(layers, width, parents)


def vertex_name(i: int, j: int) -> str:
    return f"v{i}_{j}"


def dag_spg(dag: Dag) -> str:
    """The DAG as explicit ``node`` declarations and ``a -> b`` edges."""
    lines = ["pipeline run_bench_dag", f"use {TASKS} as t", ""]
    for i in range(dag.layers):
        for j in range(dag.width):
            call = f"t.source({j})" if i == 0 else "t.step"
            lines.append(f"node {vertex_name(i, j)} = {call}")
    lines.append("")
    for i in range(1, dag.layers):
        for j, parents in enumerate(dag.parents[i]):
            lines.extend(f"{vertex_name(i - 1, p)} -> {vertex_name(i, j)}" for p in parents)
    return "\n".join(lines) + "\n"


def dag_dask(dag: Dag) -> tuple[dict, list[tuple[str, int, int]]]:
    """The same DAG as a Dask graph dict, and its sink keys. Keys are tuples, as Dask
    names them: with string keys such as ``"v3_4"`` every task is a task prefix of its
    own, and Dask's per-prefix bookkeeping on the workers grows with the prefixes held,
    which would make the baseline several times slower than Dask used as intended."""
    graph: dict = {("v", 0, j): (run_tasks.dask_source, j) for j in range(dag.width)}
    for i in range(1, dag.layers):
        for j, parents in enumerate(dag.parents[i]):
            graph[("v", i, j)] = (run_tasks.dask_step, *(("v", i - 1, p) for p in parents))
    return graph, [("v", i, j) for i, j in dag.sinks()]


def same_sinks(ours: dict[str, Any], keys: list, theirs: Any) -> bool:
    """Do our sink outputs equal Dask's results for the same keys?"""
    expected = {vertex_name(k[1], k[2]): value for k, value in zip(keys, list(theirs))}
    return ours == expected


def compile_text(workdir: Path, name: str, text: str) -> Any:
    path = workdir / f"{name}.spg"
    path.write_text(text)
    return serpytor.compile(text, str(path))


def small_dag_plan(workdir: Path) -> Any:
    """A 3 x 10 version of the DAG, for warming servers up (imports, first job)."""
    return compile_text(workdir, "warm_dag", dag_spg(make_dag(3, 10)))


# ---- servers --------------------------------------------------------------------------
class ServerPool:
    """Local servers started on first use, warmed up (one small job, so that they have
    imported the task module) and reused; after a failed figure, whose servers may be
    left in a bad state, new ones are started on the next use."""

    def __init__(self, count: int, warm_plan: Any) -> None:
        self.count = count
        self.warm_plan = warm_plan
        self.local: LocalServers | None = None
        self.started_s = 0.0

    def addresses(self) -> list[str]:
        if self.local is None:
            self.started_s, self.local = timed(lambda: LocalServers(self.count))
            run(self.warm_plan, servers=self.local.addresses, journal=False)
        return self.local.addresses

    def close(self) -> None:
        if self.local is not None:
            local, self.local = self.local, None
            local.close()


# ---- figure 1 ---------------------------------------------------------------------------
def bench_inline(dag: Dag, plan: Any, sizes: dict, out: dict) -> None:
    """Per-task time of ``--inline`` against ``dask.local.get_sync`` on the same DAG:
    both run every task in the calling thread, so the difference is the per-task cost
    of each scheduler (dependency tracking, argument injection, bookkeeping)."""
    import dask
    import dask.local

    graph, keys = dag_dask(dag)
    limit = sizes["deadline_s"]
    rounds = alternate(sizes["rounds_inline"], {
        "ours": bounded(lambda: run(plan, inline=True, journal=False), limit, "inline run"),
        "dask": bounded(lambda: dask.local.get_sync(graph, keys), limit, "dask get_sync")})
    result = rounds.last["ours"]
    if not same_sinks(result.outputs, keys, rounds.last["dask"]):
        raise AssertionError("inline sink outputs differ from dask.get_sync's")
    n = dag.vertices
    ours_us, dask_us = rounds.median("ours") / n * 1e6, rounds.median("dask") / n * 1e6
    out["inline"] = {"per_task_us": ours_us, "dask_sync_per_task_us": dask_us,
                     "speedup_vs_dask_sync": dask_us / ours_us, "ours": rounds.summary("ours"),
                     "dask_sync": rounds.summary("dask"),
                     "ours_internal_s": result.stats["seconds"]}
    print(f"1. inline vs dask get_sync, {n} tasks: ours {ours_us:.1f} us/task, dask "
          f"{dask_us:.1f} us/task -> {dask_us / ours_us:.2f}x faster (target >= "
          f"{TARGETS['inline_vs_dask_sync']:g}x); medians of {sizes['rounds_inline']}, "
          f"sinks equal; other jobs busy on {rounds.others_cores('ours'):.1f} cores")


# ---- figure 2 ---------------------------------------------------------------------------
@contextmanager
def dask_cluster(workers: int, directory: Path) -> Iterator[Any]:
    """A Dask LocalCluster of ``workers`` single-threaded worker processes (scratch space
    in ``directory``), and a Client; both closed on the way out, whatever happens."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"temporary-directory": str(directory)}):
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=None, local_directory=str(directory))
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def rounds_vs_dask(plan: Any, dag: Dag, addresses: list[str], rounds: int, limit: float,
                   workdir: Path, on_cluster: Callable[[], None] = lambda: None
                   ) -> tuple[Rounds, float]:
    """Alternating rounds of the whole DAG on our servers at ``addresses`` and on a Dask
    cluster of as many single-threaded worker processes (started, then warmed up with a
    small graph, before the timing); the rounds and the cluster's start-up seconds. The
    sinks of the last rounds must be equal. ``on_cluster`` runs once the cluster is up."""
    warm_graph, warm_keys = dag_dask(make_dag(3, 10))
    graph, keys = dag_dask(dag)
    started = time.perf_counter()
    with dask_cluster(len(addresses), workdir / "dask") as client:
        cluster_s = time.perf_counter() - started
        on_cluster()
        client.get(warm_graph, warm_keys)
        timed_rounds = alternate(rounds, {
            "ours": bounded(lambda: run(plan, servers=addresses, journal=False), limit,
                            f"run on {len(addresses)} servers"),
            "dask": bounded(lambda: client.get(graph, keys), limit, "dask client.get")})
    if not same_sinks(timed_rounds.last["ours"].outputs, keys, timed_rounds.last["dask"]):
        raise AssertionError(f"sink outputs on {len(addresses)} servers differ from Dask "
                             f"distributed's")
    return timed_rounds, cluster_s


def bench_servers(dag: Dag, plan: Any, pool: ServerPool, workdir: Path, sizes: dict,
                  out: dict) -> None:
    """Tasks per second on 2 local servers against Dask distributed with 2 worker
    processes. Both sides start before the timing and are warmed up with a small graph
    (workers import the task module); a round is one run of the whole DAG: dispatch,
    execution, transfers between the 2 processes, and collecting the sinks."""
    rounds, cluster_s = rounds_vs_dask(plan, dag, pool.addresses(), sizes["rounds_servers"],
                                       sizes["deadline_s"], workdir)
    n = dag.vertices
    ours_rate, dask_rate = n / rounds.median("ours"), n / rounds.median("dask")
    out["servers"] = {"tasks_per_s": ours_rate, "dask_distributed_tasks_per_s": dask_rate,
                      "ratio_vs_dask_distributed": ours_rate / dask_rate,
                      "ours": rounds.summary("ours"), "dask_distributed": rounds.summary("dask"),
                      "servers_start_s": pool.started_s, "dask_cluster_start_s": cluster_s}
    print(f"2. 2 servers vs dask distributed (2 workers), {n} tasks: ours "
          f"{ours_rate:,.0f} tasks/s, dask {dask_rate:,.0f} tasks/s -> "
          f"{ours_rate / dask_rate:.2f}x (target >= "
          f"{TARGETS['servers_vs_dask_distributed']:g}x); medians of {sizes['rounds_servers']}; "
          f"start-up (not timed): servers {fmt_s(pool.started_s)}, cluster {fmt_s(cluster_s)}; "
          f"other jobs busy on {rounds.others_cores('ours'):.1f} / "
          f"{rounds.others_cores('dask'):.1f} cores")


def bench_embedded(dag: Dag, plan: Any, sizes: dict, out: dict) -> None:
    """End-to-end time of the embedded default, ``run(plan, workers=2)``: it starts 2
    local servers, runs, and stops them, so start-up is part of what a user waits for."""
    call = bounded(lambda: run(plan, workers=2, journal=False), sizes["deadline_s"],
                   "embedded run")
    rounds = alternate(sizes["rounds_embedded"], {"embedded": call})
    fig: dict[str, Any] = rounds.summary("embedded")
    passed = out.get("servers", {}).get("ours", {}).get("median_s")
    if passed:
        fig["overhead_vs_started_servers_s"] = fig["median_s"] - passed
    out["embedded"] = fig
    extra = (f"; {fmt_s(fig['overhead_vs_started_servers_s'])} more than with servers "
             "started beforehand" if passed else "")
    print(f"   embedded default run(plan, workers=2), {dag.vertices} tasks: "
          f"{fmt_s(fig['median_s'])} end to end (median of {sizes['rounds_embedded']}{extra})")


# ---- figure 3 ---------------------------------------------------------------------------
class JournalDirs:
    """Fresh, empty journal directories made before the timing, one per run, all
    removed at the end, so neither making nor removing them is timed."""

    def __init__(self, workdir: Path, count: int) -> None:
        self.dirs = [Path(tempfile.mkdtemp(prefix="journal-", dir=workdir))
                     for _ in range(count)]
        self.next = 0

    def take(self) -> str:
        directory = self.dirs[self.next]
        self.next += 1
        return str(directory)

    def remove(self) -> None:
        for directory in self.dirs:
            shutil.rmtree(directory, ignore_errors=True)


def journal_rounds(plan: Any, where: dict[str, Any], workdir: Path, rounds: int,
                   limit: float, label: str) -> Rounds:
    """Alternating rounds with the journal off and on (``fresh=True``, a new directory
    each run); checks the journalled run executed every vertex."""
    dirs = JournalDirs(workdir, rounds)
    try:
        result = alternate(rounds, {
            "off": bounded(lambda: run(plan, journal=False, **where), limit,
                           f"{label}, journal off"),
            "on": bounded(lambda: run(plan, journal=dirs.take(), fresh=True, **where), limit,
                          f"{label}, journal on")})
    finally:
        dirs.remove()
    stats = result.last["on"].stats
    if stats["executed"] != plan.n_vertices:
        raise AssertionError(f"journal on, {label}: {stats} (fresh=True runs every vertex)")
    return result


def raw_file_seconds(workdir: Path, count: int) -> float:
    """Seconds to create ``count`` small files the way an output store must at least:
    in 256 fan-out folders, each written under a temporary name and hard-linked into
    place; the floor of a one-file-per-output journal on this file system."""
    root = Path(tempfile.mkdtemp(prefix="raw-files-", dir=workdir))
    try:
        start = time.perf_counter()
        for index in range(count):
            folder = root / f"{index % 256:02x}"
            folder.mkdir(exist_ok=True)
            temp = folder / f".{index}.tmp"
            with open(temp, "xb") as handle:
                handle.write(b"\0" * 64)
            os.link(temp, folder / f"{index}.chan")
            temp.unlink()
        return time.perf_counter() - start
    finally:
        shutil.rmtree(root, ignore_errors=True)


def bench_journal(dag: Dag, plan: Any, where: dict[str, Any], label: str, workdir: Path,
                  sizes: dict, out: dict) -> None:
    """Slowdown from the journal: every vertex's output stored and journalled
    (``fresh=True``: nothing reused) against ``journal=False``, on the same DAG; on 2
    servers (the target) or inline (reported for comparison). The cost per vertex is set
    beside the cost of creating one small file in the same place, since file systems
    differ by an order of magnitude in that."""
    rounds = journal_rounds(plan, where, workdir, sizes["rounds_journal"],
                            sizes["deadline_s"], label)
    n = plan.n_vertices
    raw_files = min(n, RAW_FILES)
    raw_ms = raw_file_seconds(workdir, raw_files) / raw_files * 1e3
    slowdown = rounds.median("on") / rounds.median("off")
    extra_ms = (rounds.median("on") - rounds.median("off")) / n * 1e3
    out.setdefault("journal", {})[label] = {
        "slowdown": slowdown, "extra_ms_per_vertex": extra_ms, "raw_file_ms": raw_ms,
        "on": rounds.summary("on"), "off": rounds.summary("off")}
    target = {"servers": f" (target <= {TARGETS['journal_slowdown']:g}x)",
              "servers_distinct_keys": " (all journal keys distinct; no target)"}.get(
                  label, " (no target)")
    print(f"3. journal on vs off, {label}, {n} tasks: {fmt_s(rounds.median('on'))} vs "
          f"{fmt_s(rounds.median('off'))} -> {slowdown:.2f}x slower{target}; +{extra_ms:.2f} "
          f"ms/vertex (creating a small file here: {raw_ms:.2f} ms); medians of "
          f"{sizes['rounds_journal']}")


def bench_journal_distinct(pool: ServerPool, workdir: Path, sizes: dict, out: dict) -> None:
    """Figure 3 on 2 servers again, on a DAG of the same shape whose vertices all have
    distinct journal keys (no two vertices of a layer share both parents): the journal's
    cost when no two outputs of a run are stored under the same key."""
    dag = make_dag(sizes["layers"], sizes["width"], distinct_pairs=True)
    plan = compile_text(workdir, "dag_distinct", dag_spg(dag))
    bench_journal(dag, plan, {"servers": pool.addresses()}, "servers_distinct_keys", workdir,
                  sizes, out)


# ---- figure 4 ---------------------------------------------------------------------------
def corpus_block(seed: int, lines: int = 50_000, words_per_line: int = 12) -> str:
    """About 4 MB of text: Zipf-distributed words of a fixed 20,000-word vocabulary,
    some capitalised or upper-case (so lowercasing does work)."""
    import numpy as np

    rng = random.Random(SEED)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = []
    for index in range(20_000):
        word = "".join(rng.choices(letters, k=rng.randint(2, 10)))
        vocab.append(word.upper() if index % 17 == 0 else
                     word.capitalize() if index % 5 == 0 else word)
    weights = 1.0 / np.arange(1, len(vocab) + 1)
    chosen = np.random.default_rng(seed).choice(len(vocab), size=(lines, words_per_line),
                                                p=weights / weights.sum())
    return "\n".join(map(" ".join, np.array(vocab, dtype=object)[chosen].tolist())) + "\n"


def write_corpus(path: Path, megabytes: int, unique_blocks: int = 4) -> int:
    """Write ``megabytes`` MB of text at ``path`` (``unique_blocks`` distinct blocks in a
    seeded order; the counting cost does not depend on repetition); its word count."""
    blocks = [corpus_block(SEED + b) for b in range(unique_blocks)]
    words = [len(b.split()) for b in blocks]
    rng = random.Random(SEED)
    total_words, written = 0, 0
    with open(path, "w", encoding="utf-8") as corpus:
        while written < megabytes * 1_000_000:
            index = rng.randrange(unique_blocks)
            corpus.write(blocks[index])
            written += len(blocks[index])
            total_words += words[index]
    return total_words


def wordcount_spg(corpus: Path, replicas: int = READ_REPLICAS) -> str:
    return (f"pipeline run_bench_wordcount\nuse {TASKS} as t\n\n"
            f"stage read  = t.read_part(path = {json.dumps(str(corpus))}) x {replicas}\n"
            f"stage count = t.count_words x {replicas}\n"
            f"node  merge = t.merge_counts\n\n"
            f"read => count\ncount >> merge\n")


def bench_wordcount(pool: ServerPool, workdir: Path, sizes: dict, out: dict) -> None:
    """Scaling of a CPU-bound pipeline: the same word count on 2 servers against 1
    server. Each read replica reads only its byte range, so reading is a small part;
    counting (lowercase, split, Counter) is pure-Python CPU work, so the ideal is 2x on 2
    cores; what is lost is the gateway, transfers of partial counts, imbalance, and
    whatever other jobs on the machine take (reported as ``others_cores``)."""
    corpus = workdir / "corpus.txt"
    gen_s, words = timed(lambda: write_corpus(corpus, sizes["corpus_mb"]))
    megabytes = corpus.stat().st_size / 1e6
    plan = compile_text(workdir, "wordcount", wordcount_spg(corpus))
    addresses = pool.addresses()
    limit = sizes["deadline_s"]
    rounds = alternate(sizes["rounds_wordcount"], {
        "one": bounded(lambda: run(plan, servers=addresses[:1], journal=False), limit,
                       "word count on 1 server"),
        "two": bounded(lambda: run(plan, servers=addresses, journal=False), limit,
                       "word count on 2 servers")})
    for side, result in rounds.last.items():
        counted = sum(result.outputs["merge"].values())
        if counted != words:
            raise AssertionError(f"{side} server(s) counted {counted} words, wrote {words}")
    one, two = rounds.median("one"), rounds.median("two")
    ceiling = machine_ceiling(corpus, sizes["rounds_wordcount"])
    out["wordcount"] = {"corpus_mb": megabytes, "words": words, "corpus_write_s": gen_s,
                        "speedup_2_vs_1": one / two, "machine_ceiling_2_vs_1": ceiling,
                        "one_server": rounds.summary("one"),
                        "two_servers": rounds.summary("two"),
                        "one_server_mb_per_s": megabytes / one,
                        "two_servers_mb_per_s": megabytes / two}
    print(f"4. word count, {megabytes:.0f} MB ({words:,} words, {READ_REPLICAS} replicas): "
          f"1 server {fmt_s(one)} ({megabytes / one:.1f} MB/s), 2 servers {fmt_s(two)} "
          f"({megabytes / two:.1f} MB/s) -> {one / two:.2f}x (target >= "
          f"{TARGETS['wordcount_speedup']:g}x); medians of {sizes['rounds_wordcount']}; "
          f"CPU used by us {statistics.median(rounds.ours_cpu['one']):.1f} / "
          f"{statistics.median(rounds.ours_cpu['two']):.1f} s, other jobs busy on "
          f"{rounds.others_cores('one'):.1f} / {rounds.others_cores('two'):.1f} cores; "
          f"this machine's own ceiling: {ceiling:.2f}x (two plain processes counting an "
          f"eighth each vs one counting both)")


def machine_ceiling(corpus: Path, rounds: int, parts: int = 2) -> float:
    """What ``parts`` processes gain here over one on the same counting (a quarter of
    the corpus), with nothing of ours around them: the speed-up the word count could
    reach on this machine (two busy vCPUs may share a core, other jobs take a share)."""
    import multiprocessing

    pieces = [(str(corpus), p, 4 * parts) for p in range(parts)]
    with multiprocessing.get_context("spawn").Pool(parts) as processes:
        processes.map(run_tasks.count_part, [(str(corpus), 0, 1024)] * parts)  # warm
        serial, parallel = [], []
        for _ in range(rounds):
            serial.append(timed(lambda: [run_tasks.count_part(p) for p in pieces])[0])
            parallel.append(timed(lambda: processes.map(run_tasks.count_part, pieces,
                                                        chunksize=1))[0])
    return statistics.median(serial) / statistics.median(parallel)


# ---- figure 5 ---------------------------------------------------------------------------
def chain_spg(stages: int, width: int) -> str:
    """``stages`` stages of ``width`` relays, consecutive stages joined pointwise."""
    lines = ["pipeline run_bench_memory", f"use {TASKS} as t", ""]
    lines += [f"stage s{i} = t.relay x {width}" for i in range(stages)]
    lines += [""] + [f"s{i} => s{i + 1}" for i in range(stages - 1)]
    return "\n".join(lines) + "\n"


def rss() -> int:
    import psutil
    return psutil.Process().memory_info().rss


def vm_hwm() -> int | None:
    """The kernel's high-water mark of this process's RSS, in bytes (None off Linux)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class PeakSampler:
    """A thread sampling this process's RSS every ``interval`` seconds; ``peak``."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = rss()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def settled_rss() -> int:
    gc.collect()
    return rss()


def memory_child(stages: int, workdir: Path, deadline_s: float) -> dict[str, Any]:
    """Runs in a fresh process (``--memory-child``): the gateway's RSS figures."""
    import serpytor.runtime.gateway  # noqa: F401  (imported lazily by run)

    after_imports = settled_rss()
    with LocalServers(2) as local:
        small = compile_text(workdir, "memory_small", chain_spg(2, 10))
        after_small_compile = settled_rss()
        run(small, servers=local.addresses, journal=False)
        del small
        baseline = settled_rss()
        compile_s, plan = timed(lambda: compile_text(workdir, "memory_big",
                                                     chain_spg(stages, MEMORY_WIDTH)))
        after_compile = settled_rss()
        hwm_reset = reset_peak_rss()
        with PeakSampler() as sampler, deadline(deadline_s, "memory run"):
            run_s, result = timed(lambda: run(plan, servers=local.addresses, journal=False))
        hwm = vm_hwm() if hwm_reset else None
    n = plan.n_vertices
    if result.stats["executed"] != n or len(result.outputs) != MEMORY_WIDTH:
        raise AssertionError(f"memory run: {result.stats}, {len(result.outputs)} sinks")
    return {"vertices": n, "edges": plan.n_edges, "rss_after_imports": after_imports,
            "rss_after_small_compile": after_small_compile, "rss_baseline": baseline,
            "rss_after_plan_compile": after_compile, "rss_peak_sampled": sampler.peak,
            "rss_peak_hwm": hwm, "samples": sampler.samples, "compile_s": compile_s,
            "run_s": run_s, "plan_arrays_bytes": int(sum(a.nbytes for a in plan.arrays.values()))}


def bench_memory(workdir: Path, sizes: dict, out: dict) -> None:
    """Gateway memory per vertex, in a fresh subprocess so nothing else this benchmark
    holds is counted: growth of the RSS from the baseline to its peak during the run,
    divided by the vertices; and the growth due to the compiled Plan alone."""
    stages = sizes["memory_stages"]
    command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(stages),
               "--workdir", str(workdir), "--deadline", str(sizes["deadline_s"])]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=str(REPO),
                          timeout=sizes["deadline_s"] + 60)
    if proc.returncode != 0:
        raise RuntimeError(f"the memory child failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    n = child["vertices"]
    per_vertex = (child["rss_peak_sampled"] - child["rss_baseline"]) / n
    plan_per_vertex = (child["rss_after_plan_compile"] - child["rss_baseline"]) / n
    hwm = child["rss_peak_hwm"]
    out["memory"] = {**child, "bytes_per_vertex": per_vertex,
                     "plan_bytes_per_vertex": plan_per_vertex,
                     "hwm_bytes_per_vertex":
                         None if hwm is None else (hwm - child["rss_baseline"]) / n,
                     "reduced_for_quick": stages != SIZES["full"]["memory_stages"]}
    mb = 2 ** 20
    print(f"5. gateway memory, {n:,} vertices ({stages} stages x {MEMORY_WIDTH}, pointwise"
          f"{'; reduced for --quick' if out['memory']['reduced_for_quick'] else ''}), 2 servers: "
          f"{per_vertex / 1024:.3f} KB/vertex over the baseline (target < "
          f"{TARGETS['memory_bytes_per_vertex'] / 1024:g} KB); baseline "
          f"{child['rss_baseline'] / mb:.1f} MB, peak {child['rss_peak_sampled'] / mb:.1f} MB"
          f"{'' if hwm is None else f' (VmHWM {hwm / mb:.1f} MB)'}; the Plan alone "
          f"{plan_per_vertex / 1024:.3f} KB/vertex "
          f"({(child['rss_after_plan_compile'] - child['rss_baseline']) / mb:.1f} MB); "
          f"run {fmt_s(child['run_s'])} ({n / child['run_s']:,.0f} tasks/s)")


# ---- machine and verdicts -----------------------------------------------------------------


def target_values(out: dict) -> dict[str, tuple[str, float | None, Callable[[float], bool]]]:
    """Per target: the figure (``guarded`` name) it comes from, its value, its test."""
    def get(*path: str) -> float | None:
        node: Any = out
        for key in path:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        return node if isinstance(node, (int, float)) else None

    return {
        "inline_ge_4x_faster_than_dask_sync": (
            "inline", get("inline", "speedup_vs_dask_sync"),
            lambda v: v >= TARGETS["inline_vs_dask_sync"]),
        "servers_ge_10x_dask_distributed_tasks_per_s": (
            "servers", get("servers", "ratio_vs_dask_distributed"),
            lambda v: v >= TARGETS["servers_vs_dask_distributed"]),
        "journal_slowdown_le_1_3x": (
            "journal_servers", get("journal", "servers", "slowdown"),
            lambda v: v <= TARGETS["journal_slowdown"]),
        "wordcount_2_vs_1_server_ge_1_7x": (
            "wordcount", get("wordcount", "speedup_2_vs_1"),
            lambda v: v >= TARGETS["wordcount_speedup"]),
        "gateway_memory_lt_0_5_kb_per_vertex": (
            "memory", get("memory", "bytes_per_vertex"),
            lambda v: v < TARGETS["memory_bytes_per_vertex"]),
    }


def targets_text(met: dict[str, bool | None]) -> str:
    """``name=met, name=NOT met, ...`` (``n/a`` where a baseline is not installed)."""
    return ", ".join(f"{k}={'n/a' if v is None else ('met' if v else 'NOT met')}"
                     for k, v in met.items())


def verdicts(out: dict) -> dict[str, bool | None]:
    """Each target met or not; a figure whose run failed or hung is not met, one that
    could not be measured (a baseline not installed) is None."""
    errors = out.get("errors", {})
    met: dict[str, bool | None] = {}
    for name, (figure, value, test) in target_values(out).items():
        error = errors.get(figure)
        if value is not None:
            met[name] = bool(test(value))
        else:
            met[name] = None if error is None or error.startswith(UNMEASURABLE) else False
    values = list(met.values())
    met["all"] = False if False in values else None if None in values else True
    return met


def guarded(name: str, fn: Callable[[], None], out: dict, pool: ServerPool | None) -> None:
    """Run one figure; on an error record it (type, message), stop the servers (new ones
    start on the next use) and go on with the next figure. Its seconds are recorded in
    ``out["section_s"]`` (what keeps ``--quick`` within its minute)."""
    started = time.perf_counter()
    try:
        fn()
    except Exception as error:  # noqa: BLE001 - reported, the benchmark goes on
        text = f"{type(error).__name__}: {error}"
        if isinstance(error, ImportError):
            text += " (the Dask baselines need: pip install 'serpytor[bench]')"
        out.setdefault("errors", {})[name] = text
        print(f"!! {name}: FAILED: {text}")
        print(f"!! {name}: {text}", file=sys.stderr)
        if pool is not None:
            pool.close()  # new servers start on the next use
    finally:
        out.setdefault("section_s", {})[name] = round(time.perf_counter() - started, 2)


# ---- main -------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (< 60 s)")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=600.0, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run_figures(sizes: dict, workdir: Path, out: dict) -> None:
    dag = make_dag(sizes["layers"], sizes["width"])
    compile_s, plan = timed(lambda: compile_text(workdir, "dag", dag_spg(dag)))
    out["dag"] = {"layers": dag.layers, "width": dag.width, "vertices": plan.n_vertices,
                  "edges": plan.n_edges, "sinks": len(dag.sinks()), "parents": PARENTS,
                  "seed": SEED, "compile_s": compile_s}
    reduced = "; reduced for --quick" if dag.layers != SIZES["full"]["layers"] else ""
    print(f"DAG: {dag.layers} layers x {dag.width}, {plan.n_vertices} vertices, "
          f"{plan.n_edges} edges, {len(dag.sinks())} sinks (explicit nodes; compiled in "
          f"{fmt_s(compile_s)}, not timed below{reduced})")
    pool = ServerPool(2, small_dag_plan(workdir))
    try:
        guarded("inline", lambda: bench_inline(dag, plan, sizes, out), out, None)
        guarded("servers", lambda: bench_servers(dag, plan, pool, workdir, sizes, out), out, pool)
        guarded("embedded", lambda: bench_embedded(dag, plan, sizes, out), out, None)
        guarded("journal_servers", lambda: bench_journal(
            dag, plan, {"servers": pool.addresses()}, "servers", workdir, sizes, out), out, pool)
        guarded("journal_servers_distinct_keys", lambda: bench_journal_distinct(
            pool, workdir, sizes, out), out, pool)
        guarded("journal_inline", lambda: bench_journal(
            dag, plan, {"inline": True}, "inline", workdir, sizes, out), out, None)
        guarded("wordcount", lambda: bench_wordcount(pool, workdir, sizes, out), out, pool)
    finally:
        pool.close()
    guarded("memory", lambda: bench_memory(workdir, sizes, out), out, None)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.memory_child is not None:
        print(json.dumps(memory_child(args.memory_child, Path(args.workdir), args.deadline)))
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so every finally runs
    mode = "quick" if args.quick else "full"
    sizes = SIZES[mode]
    info = machine('zmq', 'dask', 'distributed', 'psutil')
    print(f"SerPyTor run benchmark ({mode}) on {info['cpu']}, {info['cores']} cores, "
          f"Python {info['python']}, dask {info['dask']}")
    out: dict[str, Any] = {"mode": mode, "sizes": sizes}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="run-bench-") as tmp:
        run_figures(sizes, Path(tmp), out)
    out["targets_met"] = verdicts(out)
    info["loadavg_1m_end"] = os.getloadavg()[0]
    out["machine"] = info
    out["wall_s"] = time.perf_counter() - started
    print(f"targets: {targets_text(out['targets_met'])}; wall {out['wall_s']:.1f} s")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
