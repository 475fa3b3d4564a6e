"""Pass: every parameter of every vertex function must be fillable.

A vertex function gets its parameters by dependency injection (DESIGN.md section 2):
a parent's name, ``inputs``, ``context``, ``partition``, ``partitions``, or a DSL
argument. This pass imports the pipeline's modules when it can; a module that cannot
be imported here (a dependency missing on this machine) is checked at run time.

Modules are looked up from the directory of the ``.spg`` file and its ancestors (the
first one that holds the module's top-level package) and the working directory; the
directories found are recorded in the plan so servers import the same code.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from ._errors import compile_error, did_you_mean
from .ir import IR, FunctionRef, Template

INJECTED_NAMES = ("inputs", "context", "partition", "partitions")


def module_search_roots(filename: str, module: str) -> list[str]:
    """Directories from which ``module`` can be imported, nearest first."""
    top = module.split(".")[0]
    start = Path(filename).resolve().parent if filename and not filename.startswith("<") \
        else Path.cwd()
    for directory in [start, *start.parents, Path.cwd()]:
        if (directory / top).is_dir() or (directory / f"{top}.py").is_file():
            return [str(directory)]
    return []


def import_module(module: str, roots: list[str]) -> Any | None:
    """Import ``module``; None when it (or something it needs) is not installed here."""
    for root in roots:
        if root not in sys.path:
            sys.path.insert(0, root)
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError:
        return None


def resolve_function(ir: IR, ref: FunctionRef, template: Template, modules: dict) -> Callable | None:
    """The function a reference names, or None if its module is not importable here."""
    if ref.module not in modules:
        roots = module_search_roots(ir.filename, ref.module)
        try:
            modules[ref.module] = import_module(ref.module, roots)
        except Exception as error:  # the user's module failed while importing
            raise compile_error(ir.source, f"importing module '{ref.module}' failed: "
                                f"{type(error).__name__}: {error}", template.span) from None
        if modules[ref.module] is not None:
            ir.module_paths = tuple(dict.fromkeys([*ir.module_paths, *roots]))
    target = modules[ref.module]
    if target is None:
        return None
    for part in ref.qualname.split("."):
        if not hasattr(target, part):
            names = [n for n in dir(target) if not n.startswith("_")]
            raise compile_error(ir.source, f"module '{ref.module}' has no function "
                                f"'{ref.qualname}'", template.span,
                                hint=did_you_mean(part, names))
        target = getattr(target, part)
    if not callable(target):
        raise compile_error(ir.source, f"'{ref}' is not callable", template.span)
    return target


def check_injection(ir: IR) -> IR:
    """Import what can be imported and check each function against what it will get."""
    modules: dict[str, Any] = {}
    parents = _parent_names(ir)
    for template in ir.templates:
        function = resolve_function(ir, template.function, template, modules)
        if function is not None:
            check_signature(ir, template, function, parents[template.index])
        for ref in (template.aggregate.functions.values() if template.aggregate else ()):
            resolve_function(ir, ref, template, modules)
    if ir.placement and "module" in ir.placement:  # a user's allocation function
        ref = FunctionRef(ir.placement["module"], ir.placement["function"])
        resolve_function(ir, ref, SimpleNamespace(span=ir.placement_span), modules)
    return ir


def _parent_names(ir: IR) -> list[set[str]]:
    parents: list[set[str]] = [set() for _ in ir.templates]
    for decl in ir.edge_decls:
        parents[decl.dst].add(ir.templates[decl.src].name)
    return parents


def check_signature(ir: IR, template: Template, function: Callable, parents: set[str]) -> None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # builtins without a signature are checked when they run
    params = signature.parameters
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    filled = _bind_arguments(ir, template, params, takes_kwargs)
    for name, param in params.items():
        if name in filled or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if name in parents or name in INJECTED_NAMES or param.default is not param.empty:
            continue
        choices = sorted(parents) + list(INJECTED_NAMES)
        raise compile_error(
            ir.source, f"parameter '{name}' of {template.function.qualname} cannot be "
            f"filled for '{template.name}'", template.span,
            hint=f"it must be named after a parent ({', '.join(sorted(parents)) or 'none'}), "
                 f"be one of {', '.join(INJECTED_NAMES)}, have a default, or be given "
                 f"as an argument" + (f"; {did_you_mean(name, choices)}"
                                      if did_you_mean(name, choices) else ""))


def _bind_arguments(ir: IR, template: Template, params, takes_kwargs: bool) -> set[str]:
    """Names the DSL arguments fill; unknown keyword arguments are errors."""
    positional = [n for n, p in params.items()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    filled: set[str] = set()
    count = sum(1 for name, _ in template.arguments if name is None)
    if count > len(positional) and not any(p.kind is p.VAR_POSITIONAL for p in params.values()):
        raise compile_error(ir.source, f"{template.function.qualname} takes at most "
                            f"{len(positional)} positional arguments, '{template.name}' "
                            f"gives {count}", template.span)
    filled.update(positional[:count])
    for name, _ in template.arguments:
        if name is None:
            continue
        if name in filled:
            raise compile_error(ir.source, f"argument '{name}' of '{template.name}' is given "
                                "both by position and by name", template.span)
        if name not in params and not takes_kwargs:
            raise compile_error(ir.source, f"{template.function.qualname} has no parameter "
                                f"'{name}'", template.span,
                                hint=did_you_mean(name, list(params)))
        filled.add(name)
    return filled


