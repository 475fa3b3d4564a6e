"""Placement functions and a logging vertex for the placement tests."""

from __future__ import annotations


def last_by_name(vertex, servers):
    """Every vertex on the server whose name sorts last."""
    return max(servers, key=lambda s: s.name).name


def nowhere(vertex, servers):
    return "no-such-server"


def undecided(vertex, servers):
    return None


def logged(context, partition=0):
    """Appends its vertex name to the file named by context key ``log``."""
    with open(context["log"], "a", encoding="utf-8") as out:
        out.write(context.vertex + "\n")
    return partition
