"""Run one vertex: load its function and call it with its inputs injected by name.

Dependency injection (DESIGN.md section 2): a parameter named after a parent receives
that parent's output — a list in partition order when the edge is all-to-all, when
several replicas of the parent feed this vertex, or when the vertex is an aggregate
root (it receives partials); ``inputs`` receives ``{parent name: output}``;
``context``, ``partition`` and ``partitions`` the vertex's context and replica index and
count; the ``.spg`` arguments fill the rest.

Combiner vertices of an aggregation tree run the aggregate's functions (see
:mod:`serpytor.compiler.aggregate`) on their inputs in partition order.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from typing import Any, Callable, Mapping

from ..compiler.kinds import EdgeKind, VertexFlag
from ..compiler.plan import Plan
from ..errors import SerpytorError

INJECTED = ("inputs", "context", "partition", "partitions")


class FunctionNotFoundError(SerpytorError, ImportError):
    """A vertex's function cannot be imported where the vertex runs. Install the module
    on that machine or put it on the plan's module paths."""


@functools.lru_cache(maxsize=None)
def load_function(module: str, qualname: str, paths: tuple[str, ...] = ()) -> Callable:
    """Import ``module`` and return its attribute ``qualname`` (cached per process)."""
    for path in paths:
        if path not in sys.path:
            sys.path.append(path)
    try:
        target: Any = importlib.import_module(module)
    except ImportError as error:
        raise FunctionNotFoundError(f"cannot import module '{module}': {error}") from None
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise FunctionNotFoundError(f"module '{module}' has no '{qualname}'") from None
    return target


@functools.lru_cache(maxsize=4096)
def parameters_of(function: Callable) -> tuple[tuple[str, ...], bool]:
    """(parameter names, takes **kwargs)."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return (), True
    names = tuple(n for n, p in params.items()
                  if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    return names, any(p.kind is p.VAR_KEYWORD for p in params.values())


def template_function(plan: Plan, template: Mapping[str, Any], option: str | None = None) -> Callable:
    paths = tuple(plan.meta.get("module_paths", ()))
    if option is None:
        return load_function(template["module"], template["function"], paths)
    module, qualname = template["aggregate"]["functions"][option]
    return load_function(module, qualname, paths)


def parent_inputs(plan: Plan, vertex: int, outputs: Mapping[int, Any]) -> dict[str, Any]:
    """``{parent name: output or list of outputs}`` for vertex, in partition order."""
    a = plan.arrays
    start, stop = int(a["pred_indptr"][vertex]), int(a["pred_indptr"][vertex + 1])
    groups: dict[str, list[Any]] = {}
    as_list: set[str] = set()
    root = bool(plan.flags(vertex) & VertexFlag.AGG_ROOT)
    for parent, edge in zip(a["pred_indices"][start:stop].tolist(),
                            a["pred_edges"][start:stop].tolist()):
        template = plan.vertex_template(parent)
        name = template.get("inject_as") or template["name"]
        groups.setdefault(name, []).append(outputs[parent])
        if root or plan.edge_kind(edge) is EdgeKind.ALL:
            as_list.add(name)
    return {name: values if (name in as_list or len(values) > 1) else values[0]
            for name, values in groups.items()}


def call_arguments(plan: Plan, vertex: int, function: Callable, inputs: dict[str, Any],
                   context: Any) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments for the vertex's function."""
    template = plan.vertex_template(vertex)
    names, takes_kwargs = parameters_of(function)
    args = [value for key, value in template["arguments"] if key is None]
    kwargs = {key: value for key, value in template["arguments"] if key is not None}
    injectable = dict(inputs)
    injectable.update(inputs=inputs, context=context,
                      partition=int(plan.arrays["vertex_partition"][vertex]),
                      partitions=int(template["width"]))
    taken = set(names[: len(args)]) | set(kwargs)
    for name in names:
        if name not in taken and name in injectable:
            kwargs[name] = injectable[name]
    if takes_kwargs:
        for name, value in inputs.items():
            kwargs.setdefault(name, value)
    return args, kwargs


def run_vertex(plan: Plan, vertex: int, outputs: Mapping[int, Any], context: Any) -> Any:
    """Compute vertex's output from its parents' outputs (``outputs[parent]``)."""
    template = plan.vertex_template(vertex)
    inputs = parent_inputs(plan, vertex, outputs)
    if template["kind"] == "combiner":
        return run_combiner(plan, template, _ordered_values(plan, vertex, outputs))
    function = template_function(plan, template)
    args, kwargs = call_arguments(plan, vertex, function, inputs, context)
    return function(*args, **kwargs)


def _ordered_values(plan: Plan, vertex: int, outputs: Mapping[int, Any]) -> list[Any]:
    return [outputs[p] for p in plan.predecessors(vertex).tolist()]


def run_combiner(plan: Plan, template: Mapping[str, Any], values: list[Any]) -> Any:
    """One vertex of an aggregation tree (see serpytor.compiler.aggregate)."""
    root = plan.templates[template["serves"]]
    form = root["aggregate"]["form"]
    fn = functools.partial(template_function, plan, root)
    if form == "accumulator":
        if template["role"] == "initial":
            accumulator = fn("initialize")()
            iterate = fn("iterate")
            for value in values:
                accumulator = iterate(accumulator, value)
            return accumulator
        return functools.reduce(fn("merge"), values)
    if template["role"] == "initial":  # iterator form: InitialReduce each input first
        initial = fn("initial_reduce")
        values = [initial(value) for value in values]
    return fn("combine")(values)
