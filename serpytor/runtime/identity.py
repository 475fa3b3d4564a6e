"""Journal keys: what makes a vertex's output reusable.

A vertex's key is a BLAKE2b digest of four parts, each kept so ``serpytor explain`` can
say which one changed:

* ``function``: module, qualified name and a digest of the function's source (its
  bytecode when the source is not available); for combiners, the aggregate's functions;
* ``arguments``: the ``.spg`` arguments;
* ``inputs``: each parent's name and the digest of its output, in partition order;
* ``context``: the facts the vertex sees (key, value, origin, nearest).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from typing import Any, Callable, Mapping

from ..compiler.plan import Plan
from .invoke import template_function


def digest(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.blake2b(data, digest_size=20).hexdigest()


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)


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


def vertex_key_parts(plan: Plan, vertex: int, input_digests: list[tuple[str, str]],
                     context_facts: list[Any]) -> dict[str, str]:
    template = plan.vertex_template(vertex)
    return {
        "function": function_identity(plan, vertex),
        "arguments": digest(canonical(template["arguments"])),
        "inputs": digest(canonical(input_digests)),
        "context": digest(canonical(sorted(
            [f.key, f.value, f.origin, f.nearest] for f in context_facts))),
        "partition": str(int(plan.arrays["vertex_partition"][vertex])),
    }


def vertex_key(parts: Mapping[str, str]) -> str:
    return digest(canonical(dict(parts)))
