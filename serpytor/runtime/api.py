"""``serpytor.run``: execute a Plan (or a ``.spg`` / ``.spgc`` path) and return a
:class:`RunResult`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..compiler import compile_path
from ..compiler.plan import Plan
from ..errors import SerpytorError
from .durable import Durability
from .inline import run_inline
from .journal import Journal
from .progress import Progress
from .protocol import json_data_problem
from .queues import QUEUE_KINDS
from .result import RunResult
from .store import OutputStore


class RunConfigError(SerpytorError):
    """The run was asked for something inconsistent (e.g. both --inline and --servers)."""


def load_pipeline(pipeline: Plan | str | Path) -> Plan:
    """A Plan from a Plan, a ``.spgc`` file or a ``.spg`` file."""
    if isinstance(pipeline, Plan):
        return pipeline
    path = Path(pipeline)
    if path.suffix == ".spgc":
        return Plan.load(path)
    return compile_path(path)


def default_journal_dir(plan: Plan, pipeline: Plan | str | Path) -> Path:
    """``.serpytor/`` beside the pipeline file (the working directory for a Plan)."""
    source = Path(pipeline) if not isinstance(pipeline, Plan) else Path(plan.meta.get("filename", ""))
    base = source.parent if source.name and not str(source).startswith("<") else Path.cwd()
    return base / ".serpytor"


def open_durability(plan: Plan, pipeline: Plan | str | Path, journal: str | Path | None | bool,
                    fresh: bool, durable: bool) -> Durability:
    if journal is False:
        return Durability(plan, None, None)
    directory = Path(journal) if journal not in (None, True) else default_journal_dir(plan, pipeline)
    return Durability(plan, Journal(directory), OutputStore(directory, durable), fresh)


def check_overrides(overrides: Mapping[str, Any] | None) -> None:
    """Overrides travel to servers as context facts: string keys, JSON values."""
    for key, value in (overrides or {}).items():
        if not isinstance(key, str):
            raise RunConfigError(f"override keys are strings, got {key!r}")
        problem = json_data_problem(value)
        if problem is not None:
            raise RunConfigError(f"override {key}={value!r} is not JSON data ({problem})")


def run(pipeline: Plan | str | Path, *, inline: bool = False, workers: int | None = None,
        servers: list[str] | None = None, journal: str | Path | None | bool = None,
        fresh: bool = False, durable: bool = False,
        overrides: Mapping[str, Any] | None = None, keep_going: bool = False,
        progress: bool = False, placement: str | None = None,
        queues: str = "single", keys: str | Path | None = None,
        gateway: str | None = None) -> RunResult:
    """Run a pipeline and return its :class:`RunResult`.

    ``inline=True`` runs in this process; otherwise the gateway runs here with
    ``workers`` local servers (default: the core count), or with ``servers`` started
    elsewhere. ``journal``: a directory, ``None`` for ``.serpytor/`` beside the
    pipeline, ``False`` for none. ``fresh`` ignores what the journal holds;
    ``durable`` fsyncs outputs; ``overrides`` replace origin-context facts;
    ``progress`` draws a progress bar on stderr when it is a terminal; ``placement``
    is the allocation policy (``locality``, ``least_loaded``, ``round_robin`` or
    ``MODULE:FUNCTION``; default: the pipeline's ``placement``, else ``locality``);
    ``queues``: ``single`` (one queue, by priority) or ``stage`` (one per stage,
    served in turn); ``keys``: a directory of CURVE keys (``serpytor keygen``);
    ``gateway``: the address of a gateway service (``serpytor gateway``) to submit to
    (the journal is then the gateway's: ``journal`` only turns it on or off).
    """
    plan = load_pipeline(pipeline)
    if sum(map(bool, (inline, servers, gateway))) > 1:
        raise RunConfigError("choose one of --inline, --servers and --gateway")
    if queues not in QUEUE_KINDS:
        raise RunConfigError(f"unknown queues {queues!r}; expected one of "
                             f"{', '.join(QUEUE_KINDS)}")
    check_overrides(overrides)
    bar = Progress(plan.n_vertices) if progress and Progress.wanted() else None
    if gateway:
        from .remote import run_on_gateway

        options = {"overrides": dict(overrides or {}), "keep_going": keep_going,
                   "fresh": fresh, "durable": durable, "journal": journal is not False,
                   "placement": placement, "queues": queues}
        try:
            return run_on_gateway(plan, gateway, options, str(keys) if keys else None, bar)
        finally:
            if bar is not None:
                bar.close()
    durability = open_durability(plan, pipeline, journal, fresh, durable)
    try:
        if inline:
            return run_inline(plan, durability, overrides, keep_going, bar)
        from .gateway import run_distributed

        return run_distributed(plan, durability, overrides, keep_going, workers=workers,
                               servers=servers, progress=bar, placement=placement,
                               queues=queues, keys=str(keys) if keys else None)
    finally:
        if bar is not None:
            bar.close()
