"""Admission hooks for ``serpytor server --admit MODULE:FUNCTION``."""

from __future__ import annotations


def refuse_all(plan, vertex):
    return f"full: no room for {plan.vertex_name(vertex)}"
