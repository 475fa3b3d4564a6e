"""Compiled kernels (scheduling, placement, context merge and journal keys), each beside
a pure-Python reference.

Layers: ``scheduler``, ``placement``, ``context`` and ``keys`` are Cython extension
modules; the ``_ref_*`` modules are their references, written for clarity, with the
same signatures and results (the test suite runs against both). This package picks one set and
re-exports its public names:

* by default the compiled modules; a missing build raises ``ImportError`` saying how
  to build, never a silent fallback to the slow references;
* the references when the environment variable ``SERPYTOR_PURE_PYTHON=1`` is set.

``COMPILED`` tells which set is in use. ``compiled`` and ``reference`` name both sets
explicitly (``compiled`` is ``None`` when pure-Python mode runs without a build).
``_core`` imports nothing else of SerPyTor.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

from . import _ref_context, _ref_keys, _ref_placement, _ref_scheduler
from ._ref_context import CONFLICT, MISSING
from ._ref_placement import POLICIES, policy_weights
from ._ref_scheduler import DONE, FAILED, READY, RUNNING, WAITING, VertexState

PURE_PYTHON: bool = os.environ.get("SERPYTOR_PURE_PYTHON", "") == "1"

BUILD_HINT = (
    "the compiled kernels of serpytor._core are not built; build them with "
    "`pip install -e .` or `python setup.py build_ext --inplace` in the source tree, "
    "or set SERPYTOR_PURE_PYTHON=1 to run on the (much slower) pure-Python references"
)


def _implementation(name: str, scheduler, placement, context, keys) -> SimpleNamespace:
    return SimpleNamespace(
        name=name,
        ReadyEngine=scheduler.ReadyEngine,
        longest_path_priority=scheduler.longest_path_priority,
        place=placement.place,
        propagate_origins=context.propagate_origins,
        resolve_nearest=context.resolve_nearest,
        merge_facts=context.merge_facts,
        lookup_fact=context.lookup_fact,
        journal_keys=keys.journal_keys,
    )


reference = _implementation("reference", _ref_scheduler, _ref_placement, _ref_context,
                            _ref_keys)

try:
    from . import context as _context
    from . import keys as _keys
    from . import placement as _placement
    from . import scheduler as _scheduler
except ImportError as error:
    if not PURE_PYTHON:
        raise ImportError(f"{BUILD_HINT} ({error})") from error
    compiled = None
else:
    compiled = _implementation("compiled", _scheduler, _placement, _context, _keys)

COMPILED: bool = not PURE_PYTHON
_active = reference if PURE_PYTHON else compiled

ReadyEngine = _active.ReadyEngine
longest_path_priority = _active.longest_path_priority
place = _active.place
propagate_origins = _active.propagate_origins
resolve_nearest = _active.resolve_nearest
merge_facts = _active.merge_facts
lookup_fact = _active.lookup_fact
journal_keys = _active.journal_keys

__all__ = [
    "BUILD_HINT", "COMPILED", "CONFLICT", "DONE", "FAILED", "MISSING", "POLICIES",
    "PURE_PYTHON", "READY", "RUNNING", "ReadyEngine", "VertexState", "WAITING",
    "compiled", "journal_keys", "longest_path_priority", "lookup_fact", "merge_facts",
    "place", "policy_weights", "propagate_origins", "reference", "resolve_nearest",
]
