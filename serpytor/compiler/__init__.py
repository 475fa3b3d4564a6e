"""AST -> IR -> passes -> Plan. Each pass is one module, joined here by plain functions.

    resolve -> injection check -> cycles -> groups -> expand -> aggregate
            -> context -> channels -> emit
"""

from __future__ import annotations

from pathlib import Path

from ..dsl import ast
from ..dsl.parser import parse, parse_file
from .aggregate import build_aggregation_trees
from .channels import colocation_gangs
from .context import compute_context
from .cycles import check_acyclic
from .emit import emit_plan
from .expand import expand
from .groups import check_groups
from .injection import check_injection
from .ir import IR
from .plan import Plan
from .resolve import resolve


def build_ir(pipeline: ast.Pipeline) -> IR:
    """Check a parsed pipeline and build its expanded IR (before the context pass)."""
    ir = resolve(pipeline)
    check_acyclic(ir)
    check_groups(ir)
    check_injection(ir)
    expand(ir)
    build_aggregation_trees(ir)
    return ir


def compile_ast(pipeline: ast.Pipeline) -> Plan:
    ir = build_ir(pipeline)
    context = compute_context(ir)
    return emit_plan(ir, context, colocation_gangs(ir))


def compile_source(text: str, filename: str = "<string>") -> Plan:
    """Compile ``.spg`` text into a :class:`Plan`."""
    return compile_ast(parse(text, filename))


def compile_path(path: str | Path) -> Plan:
    """Compile a ``.spg`` file into a :class:`Plan`."""
    return compile_ast(parse_file(path))


__all__ = ["IR", "Plan", "build_ir", "compile_ast", "compile_path", "compile_source"]
