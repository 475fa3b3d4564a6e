"""Journal keys: what makes a vertex's output reusable.

A vertex's key is a BLAKE2b digest of four parts, each kept so ``serpytor explain`` can
say which one changed:

* ``function``: module, qualified name and a digest of the function's source (its
  bytecode when the source is not available); for combiners, the aggregate's functions;
* ``arguments``: the ``.spg`` arguments;
* ``inputs``: each parent's name and the digest of its output, in partition order;
* ``context``: the facts the vertex sees (key, value, origin, nearest);
* ``vertex``: its name (replica index included).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from typing import Any, Callable, Iterable, Mapping

import orjson

from .. import _core
from ..compiler.plan import Plan
from .invoke import on_reload, template_function


KEY_BYTES = 20  # BLAKE2b-160: keys and the digests of their parts


def digest(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.blake2b(data, digest_size=KEY_BYTES).hexdigest()


def _json(text: str) -> str:
    """``text`` as a JSON string (orjson's text of it)."""
    return orjson.dumps(text).decode()


# one encoder, made once: json.dumps with these options makes one per call
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=repr).encode


def canonical(value: Any) -> str:
    return _canonical(value)


NO_ARGUMENTS = digest(canonical([]))  # the arguments part of most templates


@functools.lru_cache(maxsize=4096)
def function_digest(function: Callable) -> str:
    """Digest of a function's code: its source, or its bytecode and constants."""
    try:
        return digest(inspect.getsource(function))
    except (OSError, TypeError):
        code = getattr(function, "__code__", None)
        if code is not None:
            return digest(code.co_code + repr(code.co_consts).encode())
        return digest(repr(function))


on_reload(function_digest.cache_clear)


def function_identity(plan: Plan, vertex: int) -> str:
    template = plan.vertex_template(vertex)
    if template["kind"] == "combiner":
        root = plan.templates[template["serves"]]
        parts = [template["role"]] + [
            f"{module}:{name}:{function_digest(template_function(plan, root, option))}"
            for option, (module, name) in sorted(root["aggregate"]["functions"].items())]
        return "combiner:" + ":".join(parts)
    function = template_function(plan, template)
    return f"{template['module']}:{template['function']}:{function_digest(function)}"


class KeyMaker:
    """Journal keys of one plan's vertices. The parts that depend only on a vertex's
    template (function identity, arguments) are computed once per template (once per
    function for templates without arguments), and the context digest once per distinct
    static context; the per-vertex digests (inputs part and key) are made for a batch by
    the ``_core.journal_keys`` kernel."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.sharing: list[list[int] | None] | None = None  # see _same_function
        # per template index, its parts once known (a list: a plan may have a template
        # per vertex, and this is looked at for every key)
        self.by_template: list[tuple[str, str, str] | None] = [None] * len(plan.templates)
        self.context_digests: dict[Any, str] = {}

    def key(self, vertex: int, inputs: str, context: str, name: str) -> tuple[str, str]:
        """The vertex's key, and its parts as JSON text (what the journal records).
        ``inputs`` is :func:`inputs_text` of its parents, ``context`` the digest of its
        facts (:meth:`context_digest`)."""
        function, arguments, _ = self._template_parts(
            vertex, int(self.plan.arrays["vertex_template"][vertex]))
        # a vertex's records are its own: two vertices computing the same thing from the
        # same inputs still run (and are recorded) each
        parts = {"function": function, "arguments": arguments, "inputs": digest(inputs),
                 "context": context, "vertex": name}
        return vertex_key(parts), orjson.dumps(parts).decode()

    def keys_of(self, vertices: list[int], names: list[str], inputs: list[str],
                context_keys: list[Any], facts_for: Callable[[int], list[Any]],
                keys: dict[int, str], parts: dict[int, str]) -> None:
        """:meth:`key` of each vertex, into ``keys`` and ``parts``: the same keys and
        parts, the digests made by the ``_core.journal_keys`` kernel for the whole batch
        (the gateway makes a key for every vertex it dispatches). Per vertex, in the
        order of ``vertices``: its name, its :func:`joined_inputs` and its context key
        (see :meth:`context_digest`)."""
        by_template, contexts = self.by_template, self.context_digests
        template_parts = [by_template[template] or self._template_parts(vertex, template)
                          for vertex, template in zip(vertices,
                                                      self.plan.template_indices(vertices))]
        context_digests = [contexts.get(static) if static is not None else None
                           for static in context_keys]
        for i, context in enumerate(context_digests):
            if context is None:
                context_digests[i] = self.context_digest(vertices[i], facts_for,
                                                         context_keys[i])
        batch_keys, batch_parts = _core.journal_keys(template_parts, context_digests, inputs,
                                                     names)
        keys.update(zip(vertices, batch_keys))
        parts.update(zip(vertices, batch_parts))

    def context_digest(self, vertex: int, facts_for: Callable[[int], list[Any]],
                       context_key: Any) -> str:
        """Digest of the facts vertex sees. ``context_key`` (hashable) names a static
        context whose digest may be reused, None when published facts make it this
        vertex's own; ``facts_for(vertex)`` is called only when the digest is not known."""
        if context_key is not None:
            known = self.context_digests.get(context_key)
            if known is not None:
                return known
        facts = facts_for(vertex)
        value = digest(canonical(sorted([f.key, f.value, f.origin, f.nearest] for f in facts)))
        if context_key is not None:
            self.context_digests[context_key] = value
        return value

    def _template_parts(self, vertex: int, index: int) -> tuple[str, str, str]:
        """vertex's function and arguments parts, and the function part as JSON
        (``index``: its template's)."""
        parts = self.by_template[index]
        if parts is None:
            template = self.plan.templates[index]
            parts = self._parts(function_identity(self.plan, vertex), template)
            # templates calling one function without arguments (as a stage per vertex
            # does) share all three: they are known from now on
            for shared in self._same_function()[index] or (index,):
                self.by_template[shared] = parts
        return parts

    def _same_function(self) -> list[list[int] | None]:
        """Per template calling a function without arguments, every template that
        calls it so (one list per function, shared by its templates), else None;
        computed once."""
        if self.sharing is None:
            groups: dict[tuple[str, str], list[int]] = {}
            sharing: list[list[int] | None] = []
            for index, template in enumerate(self.plan.templates):
                group = None
                if template["kind"] != "combiner" and template["arguments"] == []:
                    group = groups.setdefault((template["module"], template["function"]), [])
                    group.append(index)
                sharing.append(group)
            self.sharing = sharing
        return self.sharing

    @staticmethod
    def _parts(function: str, template: dict[str, Any]) -> tuple[str, str, str]:
        arguments = template["arguments"]
        return (function, NO_ARGUMENTS if arguments == [] else digest(canonical(arguments)),
                _json(function))


def input_entry(name: str, output_digest: str) -> str:
    """One parent's share of the ``inputs`` part."""
    return f"{name}={output_digest}"


def joined_inputs(entries: list[str]) -> str:
    """The ``inputs`` part's text from its parents' :func:`input_entry`, in partition
    order."""
    return ";".join(entries)


def inputs_text(inputs: Iterable[tuple[str, str]]) -> str:
    """What the ``inputs`` part digests: each parent's name and output digest, in
    partition order."""
    return joined_inputs([input_entry(name, output) for name, output in inputs])


def vertex_key(parts: Mapping[str, str]) -> str:
    """The digest of ``name=part`` for each part, in the order of their names."""
    text = (f"arguments={parts['arguments']}|context={parts['context']}|"
            f"function={parts['function']}|inputs={parts['inputs']}|vertex={parts['vertex']}")
    return digest(text)
