"""Last pass: IR + context tables -> :class:`~serpytor.compiler.plan.Plan`."""

from __future__ import annotations

from typing import Any

import numpy as np

from .context import ContextTables
from .cycles import topological_order
from .groups import vertex_groups
from .ir import IR, Template
from .plan import FORMAT_VERSION, Plan


def emit_plan(ir: IR, context: ContextTables, gangs: np.ndarray) -> Plan:
    """Assemble the plan's metadata and arrays."""
    arrays = {
        "vertex_template": ir.vertex_template,
        "vertex_partition": ir.vertex_partition,
        "vertex_group": vertex_groups(ir),
        "vertex_gang": gangs,
        "vertex_flags": np.array([int(t.flags) for t in ir.templates] or [0],
                                 np.uint8)[ir.vertex_template],
        "vertex_context": context.vertex_context,
        "vertex_node": context.vertex_node,
        "node_reach": context.node_reach,
        "origin_vertex": context.origin_vertex,
        "edge_src": ir.edge_src,
        "edge_dst": ir.edge_dst,
        "edge_decl": ir.edge_decl,
        "edge_channel": ir.edge_channel,
        "topo_order": topological_order(ir.n_vertices, ir.edge_src, ir.edge_dst),
    }
    arrays.update(csr(ir.n_vertices, ir.edge_src, ir.edge_dst, "succ"))
    arrays.update(csr(ir.n_vertices, ir.edge_dst, ir.edge_src, "pred"))
    return Plan(plan_meta(ir, context), arrays)


def csr(n: int, rows: np.ndarray, cols: np.ndarray, prefix: str) -> dict[str, np.ndarray]:
    """CSR of ``rows -> cols``, columns ascending within a row."""
    order = np.lexsort((cols, rows))
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    return {f"{prefix}_indptr": indptr,
            f"{prefix}_indices": cols[order].astype(np.int32),
            f"{prefix}_edges": order.astype(np.int64)}


def plan_meta(ir: IR, context: ContextTables) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "pipeline": ir.pipeline,
        "filename": ir.filename,
        "module_paths": list(ir.module_paths),
        "templates": [template_meta(t) for t in ir.templates],
        "edge_decls": [{"src": d.src, "dst": d.dst, "kind": int(d.kind),
                        "channel": int(d.channel), "line": _line(d.span)}
                       for d in ir.edge_decls],
        "groups": [{"name": g.name, "members": list(g.members), "line": _line(g.span)}
                   for g in ir.groups],
        "facts": [{"key": key, "value": value, "origin": origin, "line": _line(fact.span)}
                  for key, value, origin, fact in context.facts],
        "contexts": context.contexts,
        "placement": ir.placement,
    }


def template_meta(t: Template) -> dict[str, Any]:
    return {
        "name": t.name, "kind": t.kind, "module": t.function.module,
        "function": t.function.qualname,
        "arguments": [[name, value] for name, value in t.arguments],
        "width": t.width, "first": t.first, "flags": int(t.flags), "timeout": t.timeout,
        "facts": [{"key": f.key, "value": f.value, "line": _line(f.span)} for f in t.facts],
        "aggregate": None if t.aggregate is None else {
            "form": t.aggregate.form, "fan_in": t.aggregate.fan_in,
            "functions": {k: [r.module, r.qualname] for k, r in t.aggregate.functions.items()},
        },
        "serves": t.serves, "role": t.role, "inject_as": t.inject_as, "line": _line(t.span),
    }


def _line(span) -> int | None:
    return span.line if span is not None else None
