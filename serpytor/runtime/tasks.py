"""Task messages: what the gateway asks a server to run, validated field by field.

A task (one element of a ``tasks`` message's ``tasks`` list)::

    {"v": int,                    the vertex
     "attempt": int,              so a late result of a superseded attempt is ignored
     "inputs": [source, ...],     one per parent, in partition order (default: none)
     "context": [fact, ...],      optional: every fact reaching v when some vertex has
                                  published; absent: the plan's static context
     "key": str}                  optional: journal key; the output is then stored

    source = {"v": int,           the parent
              "at": str,          data address of the server holding its output, or
              "path": str, "digest": str,   where the store keeps it, or neither: this
                                  server holds it
              "ch": int}          the edge's channel hint (ChannelKind, default auto)
    fact   = [key: str, value, origin: str, nearest: bool]

Anything else is a :class:`ProtocolError` naming the field, raised before the task is
queued, so a malformed batch is rejected whole and the server keeps serving.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..compiler.plan import Plan
from .context import ContextFact
from .protocol import ProtocolError

MAX_ATTEMPT = 2**31 - 1  # attempts are counted in int32 (status blocks, results)
ENDPOINT = re.compile(r"(tcp://[^\s:]+:\d{1,5}|ipc://\S+)\Z")


@dataclass(slots=True)  # not frozen: a frozen dataclass is ~3x slower to build
class Source:
    vertex: int
    at: str | None = None
    path: str | None = None
    digest: str | None = None
    hint: int = 0


@dataclass(slots=True)
class Task:
    vertex: int
    attempt: int
    inputs: tuple[Source, ...]
    context: tuple[ContextFact, ...] | None
    key: str | None


def parse_tasks(value: Any, plan: Plan) -> list[Task]:
    """The tasks of a ``tasks`` message, or ProtocolError."""
    if not isinstance(value, list):
        raise ProtocolError("tasks must be a list")
    return [parse_task(task, plan) for task in value]


def parse_task(task: Any, plan: Plan) -> Task:
    if not isinstance(task, dict):
        raise ProtocolError("a task must be a JSON object")
    vertex = _vertex(task.get("v"), "task", plan)
    attempt = _int(task.get("attempt", 1), "task field 'attempt'")
    if not 0 <= attempt <= MAX_ATTEMPT:
        raise ProtocolError(f"task field 'attempt' must be in 0..{MAX_ATTEMPT}, got {attempt}")
    inputs = task.get("inputs", [])
    if not isinstance(inputs, list):
        raise ProtocolError("task field 'inputs' must be a list")
    context = task.get("context")
    key = task.get("key")
    if key is not None and not isinstance(key, str):
        raise ProtocolError("task field 'key' must be a string")
    return Task(vertex, attempt, tuple(_source(s, plan) for s in inputs),
                None if context is None else _facts(context), key)


def _source(source: Any, plan: Plan) -> Source:
    if not isinstance(source, dict):
        raise ProtocolError("a task input must be a JSON object")
    vertex = _vertex(source.get("v"), "input", plan)
    texts = {name: source.get(name) for name in ("at", "path", "digest")}
    for name, text in texts.items():
        if text is not None and not isinstance(text, str):
            raise ProtocolError(f"input field {name!r} must be a string")
    if texts["at"] is not None and not ENDPOINT.match(texts["at"]):
        raise ProtocolError(f"input field 'at' must be a ZeroMQ tcp:// or ipc:// address, "
                            f"got {texts['at'][:80]!r}")
    hint = _int(source.get("ch", 0), "input field 'ch'")
    if not 0 <= hint <= 3:
        raise ProtocolError(f"input field 'ch' must be a channel kind, got {hint}")
    return Source(vertex, texts["at"], texts["path"], texts["digest"], hint)


def _facts(context: Any) -> tuple[ContextFact, ...]:
    if not isinstance(context, list):
        raise ProtocolError("task field 'context' must be a list")
    facts = []
    for fact in context:
        if not (isinstance(fact, list) and len(fact) == 4 and isinstance(fact[0], str)
                and isinstance(fact[2], str) and isinstance(fact[3], bool)):
            raise ProtocolError("context facts must be [key, value, origin, nearest]")
        facts.append(ContextFact(*fact))
    return tuple(facts)


def _vertex(value: Any, kind: str, plan: Plan) -> int:
    vertex = _int(value, f"{kind} field 'v'")
    if not 0 <= vertex < plan.n_vertices:
        raise ProtocolError(f"{kind} vertex {vertex} is not in the plan")
    return vertex


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise ProtocolError(f"{what} must be an integer, got {type(value).__name__}")
    return value


def task_message(task: Task) -> dict[str, Any]:
    """The JSON form of a task (the inverse of :func:`parse_task`)."""
    message: dict[str, Any] = {"v": task.vertex, "attempt": task.attempt,
                               "inputs": [_source_message(s) for s in task.inputs]}
    if task.context is not None:
        message["context"] = [[f.key, f.value, f.origin, f.nearest] for f in task.context]
    if task.key is not None:
        message["key"] = task.key
    return message


def _source_message(source: Source) -> dict[str, Any]:
    message: dict[str, Any] = {"v": source.vertex}
    for name in ("at", "path", "digest"):
        if getattr(source, name) is not None:
            message[name] = getattr(source, name)
    if source.hint:
        message["ch"] = source.hint
    return message
