"""Pass 6: an aggregate node's fan-in becomes a tree of combiner vertices (Dryad's
aggregation tree; DryadLINQ's decomposable aggregation).

For ``node m = f aggregate(...)`` with inputs ``x[0..k)`` (in partition order):

* ``combine = g``: when ``k > fan_in``, inputs are combined ``fan_in`` at a time by
  vertices ``m@1[i]`` running ``g(partials)``, then ``m@2[i]`` ..., until at most
  ``fan_in`` partials remain; the root ``m`` runs ``f`` on those partials.
* ``initial_reduce = f0, combine = g``: a first level ``m@1[i]`` always runs
  ``g([f0(x) for x in chunk])``; upper levels run ``g``.
* ``initialize = i, iterate = it, merge = mg``: a first level always folds its chunk
  into an accumulator ``it(... it(i(), x0) ..., xk)``; upper levels fold accumulators
  with ``mg``.

The root receives its partials under the name of the parent it aggregates, so the
function written for raw inputs works on partials too.
"""

from __future__ import annotations

import numpy as np

from ._errors import compile_error
from .expand import set_edges
from .ir import IR, EdgeDecl, Template
from .kinds import EdgeKind, VertexFlag

# the role the first level plays, per form; upper levels always "combine"
FIRST_LEVEL_ROLE = {"combine": "combine", "iterator": "initial", "accumulator": "initial"}


def build_aggregation_trees(ir: IR) -> IR:
    """Insert combiner vertices in front of every aggregate node with a wide fan-in."""
    for template in list(ir.templates):
        if template.aggregate is not None:
            check_single_source(ir, template)
            _build_tree(ir, template)
    return ir


def check_single_source(ir: IR, root: Template) -> None:
    sources = {d.src for d in ir.edge_decls if d.dst == root.index}
    if len(sources) > 1:
        names = ", ".join(sorted(ir.templates[s].name for s in sources))
        raise compile_error(ir.source, f"aggregate node '{root.name}' has inputs from "
                            f"several declarations ({names})", root.span,
                            hint="aggregate the outputs of one stage")
    root.flags |= VertexFlag.AGG_ROOT


def _build_tree(ir: IR, root: Template) -> None:
    spec = root.aggregate
    into_root = np.flatnonzero(ir.edge_dst == root.first)
    if not len(into_root):
        return
    source = ir.templates[ir.edge_decls[int(ir.edge_decl[into_root[0]])].src].name
    level, frontier = 1, into_root
    needs_first_level = spec.form != "combine"
    while len(frontier) > spec.fan_in or (needs_first_level and level == 1 and len(frontier)):
        frontier = _add_level(ir, root, level, frontier, source)
        level += 1


def _add_level(ir: IR, root: Template, level: int, edges: np.ndarray,
               source: str) -> np.ndarray:
    """Route ``edges`` (all into root) through a new level of combiners; return the
    new edges into root."""
    spec = root.aggregate
    width = -(-len(edges) // spec.fan_in)
    role = FIRST_LEVEL_ROLE[spec.form] if level == 1 else "combine"
    function = spec.functions["initial_reduce" if role == "initial" and spec.form == "iterator"
                              else "combine" if spec.form != "accumulator"
                              else "iterate" if role == "initial" else "merge"]
    flags = VertexFlag.COMBINER | (VertexFlag.INITIAL if role == "initial" else VertexFlag.NONE)
    combiner = Template(
        index=len(ir.templates), name=f"{root.name}@{level}", kind="combiner",
        function=function, width=width, first=ir.n_vertices, flags=flags,
        serves=root.index, role=role, span=root.span, inject_as=source,
        timeout=root.timeout,
    )
    ir.templates.append(combiner)
    ir.vertex_template = np.concatenate([ir.vertex_template, np.full(width, combiner.index, np.int32)])
    ir.vertex_partition = np.concatenate([ir.vertex_partition, np.arange(width, dtype=np.int32)])
    # each input edge now ends at its chunk's combiner; each combiner feeds the root
    chunk = np.arange(len(edges)) // spec.fan_in
    ir.edge_dst[edges] = combiner.first + chunk
    src_decl = ir.edge_decls[int(ir.edge_decl[edges[0]])]
    decl = EdgeDecl(len(ir.edge_decls), combiner.index, root.index, EdgeKind.TREE,
                    src_decl.channel, src_decl.span)
    ir.edge_decls.append(decl)
    new_src = combiner.first + np.arange(width, dtype=np.int64)
    parts = [(ir.edge_src.astype(np.int64), ir.edge_dst.astype(np.int64), ir.edge_decl.astype(np.int64)),
             (new_src, np.full(width, root.first, np.int64), np.full(width, decl.index, np.int64))]
    set_edges(ir, parts)
    return np.flatnonzero(ir.edge_dst == root.first)
