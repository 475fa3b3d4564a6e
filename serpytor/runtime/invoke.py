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
import linecache
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np

from ..compiler.kinds import EdgeKind, VertexFlag
from ..compiler.plan import Plan
from ..errors import SerpytorError

INJECTED = ("inputs", "context", "partition", "partitions")


class FunctionNotFoundError(SerpytorError, ImportError):
    """A vertex's function cannot be imported where the vertex runs. Install the module
    on that machine or put it on the plan's module paths."""


@functools.lru_cache(maxsize=None)
def load_function(module: str, qualname: str, paths: tuple[str, ...] = ()) -> Callable:
    """Import ``module`` and return its attribute ``qualname`` (cached per process;
    :func:`refresh_modules` drops the cache when a module's source changes)."""
    for path in paths:
        if path not in sys.path:
            sys.path.append(path)
    try:
        target: Any = importlib.import_module(module)
    except ImportError as error:
        raise FunctionNotFoundError(f"cannot import module '{module}': {error}") from None
    _stamps.setdefault(module, _stamp(target))
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise FunctionNotFoundError(f"module '{module}' has no '{qualname}'") from None
    return target


# module name -> (mtime_ns, size) of its source file when this process imported it
_stamps: dict[str, tuple[int, int] | None] = {}


def _stamp(module: Any) -> tuple[int, int] | None:
    path = getattr(module, "__file__", None)
    try:
        stat = os.stat(path) if path else None
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size) if stat else None


def plan_modules(plan: Plan) -> set[str]:
    """Every module whose functions the plan's vertices call."""
    modules = {t["module"] for t in plan.templates if t.get("module")}
    for template in plan.templates:
        if template.get("aggregate"):
            modules |= {m for m, _ in template["aggregate"]["functions"].values()}
    return modules


def refresh_modules(plan: Plan) -> None:
    """Reload the plan's modules whose source file changed since this process imported
    them, so a long-lived server (or a notebook) runs the code the journal key names."""
    changed = False
    for name in plan_modules(plan):
        module = sys.modules.get(name)
        if module is None or name not in _stamps:
            continue
        stamp = _stamp(module)
        if stamp != _stamps[name]:
            try:
                importlib.reload(module)
            except Exception as error:  # a syntax error in the edited file, say
                raise FunctionNotFoundError(f"cannot reload module '{name}': "
                                            f"{type(error).__name__}: {error}") from None
            linecache.checkcache(getattr(module, "__file__", None) or "")
            _stamps[name] = stamp
            changed = True
    if changed:
        load_function.cache_clear()
        parameters_of.cache_clear()
        for hook in _reload_hooks:
            hook()


_reload_hooks: list[Callable[[], None]] = []


def on_reload(hook: Callable[[], None]) -> None:
    """Call ``hook`` (a cache of code identity to drop) whenever a module is reloaded."""
    _reload_hooks.append(hook)


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


@dataclass(frozen=True)
class TemplateCall:
    """How every vertex of one template calls its function (computed once)."""

    function: Callable
    args: tuple[Any, ...]          # positional arguments written in the .spg
    kwargs: dict[str, Any]         # keyword arguments written in the .spg
    fill: tuple[str, ...]          # parameters left to fill by injection, in order
    takes_kwargs: bool             # **kwargs: every parent's output goes in by name
    width: int                     # partitions


class Invoker:
    """Calls the vertex functions of one plan. What does not change from call to call
    (functions, their parameters, which parents feed which parameter and as a list or
    not) is worked out once per template and kept in plain lists, so a call costs a few
    dictionary operations."""

    def __init__(self, plan: Plan) -> None:
        a = plan.arrays
        self.plan = plan
        self.pred_indptr = a["pred_indptr"].tolist()
        self.pred_indices = a["pred_indices"].tolist()
        all_decls = np.array([d["kind"] for d in plan.meta["edge_decls"]] or [-1]) == \
            EdgeKind.ALL
        self.pred_all = all_decls[a["edge_decl"][a["pred_edges"]]].tolist() \
            if plan.n_edges else []
        self.template_of = a["vertex_template"].tolist()
        self.partition = a["vertex_partition"].tolist()
        self.aggregate_root = ((a["vertex_flags"] & VertexFlag.AGG_ROOT) != 0).tolist()
        self.inject_name = [t.get("inject_as") or t["name"] for t in plan.templates]
        self.calls: dict[int, TemplateCall] = {}
        self.shared: dict[tuple[str, str, int], TemplateCall] = {}

    def inputs(self, vertex: int, outputs: Mapping[int, Any]) -> dict[str, Any]:
        """``{parent name: output or list of outputs}`` for vertex, in partition order: a
        list when the edge is all-to-all, several replicas feed it, or vertex is an
        aggregate root (it receives partials)."""
        start, stop = self.pred_indptr[vertex], self.pred_indptr[vertex + 1]
        if stop - start == 1 and not self.pred_all[start] and not self.aggregate_root[vertex]:
            parent = self.pred_indices[start]  # the common case: one plain parent
            return {self.inject_name[self.template_of[parent]]: outputs[parent]}
        groups: dict[str, list[Any]] = {}
        as_list: set[str] = set()
        root = self.aggregate_root[vertex]
        for i in range(start, stop):
            parent = self.pred_indices[i]
            name = self.inject_name[self.template_of[parent]]
            groups.setdefault(name, []).append(outputs[parent])
            if root or self.pred_all[i]:
                as_list.add(name)
        return {name: values if (name in as_list or len(values) > 1) else values[0]
                for name, values in groups.items()}

    def template_call(self, template_index: int) -> TemplateCall:
        call = self.calls.get(template_index)
        if call is None:
            call = self.calls[template_index] = self._make_call(self.plan.templates[template_index])
        return call

    def _make_call(self, template: Mapping[str, Any]) -> TemplateCall:
        arguments = template["arguments"]
        shared_key = (template["module"], template["function"], int(template["width"]))
        if not arguments and shared_key in self.shared:
            return self.shared[shared_key]  # templates that differ only by name
        function = template_function(self.plan, template)
        names, takes_kwargs = parameters_of(function)
        args = tuple(value for key, value in arguments if key is None)
        kwargs = {key: value for key, value in arguments if key is not None}
        taken = set(names[:len(args)]) | set(kwargs)
        call = TemplateCall(function, args, kwargs, tuple(n for n in names if n not in taken),
                            takes_kwargs, int(template["width"]))
        if not arguments:
            self.shared[shared_key] = call
        return call

    def run(self, vertex: int, outputs: Mapping[int, Any], context: Any) -> Any:
        """Compute vertex's output from its parents' outputs (``outputs[parent]``)."""
        template_index = self.template_of[vertex]
        template = self.plan.templates[template_index]
        if template["kind"] == "combiner":
            start, stop = self.pred_indptr[vertex], self.pred_indptr[vertex + 1]
            values = [outputs[p] for p in self.pred_indices[start:stop]]
            return run_combiner(self.plan, template, values)
        call = self.template_call(template_index)
        inputs = self.inputs(vertex, outputs)
        kwargs = dict(call.kwargs)
        for name in call.fill:
            if name in INJECTED:
                kwargs[name] = self._injected(name, vertex, inputs, context, call)
            elif name in inputs:
                kwargs[name] = inputs[name]
        if call.takes_kwargs:
            for name, value in inputs.items():
                kwargs.setdefault(name, value)
        return call.function(*call.args, **kwargs)

    def _injected(self, name: str, vertex: int, inputs: dict[str, Any], context: Any,
                  call: TemplateCall) -> Any:
        if name == "inputs":
            return inputs
        if name == "context":
            return context
        return self.partition[vertex] if name == "partition" else call.width


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
