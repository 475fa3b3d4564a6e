"""The error classes of SerPyTor.

Every error the project raises on purpose derives from :class:`SerpytorError`, so a
caller can catch "anything SerPyTor rejected" in one clause. Errors about a ``.spg``
source carry its location and render as ``file:line:col: error: message`` followed by
the source line and a caret.
"""

from __future__ import annotations

from dataclasses import dataclass


class SerpytorError(Exception):
    """Root of every error SerPyTor raises on purpose."""


@dataclass(frozen=True)
class SourceSpan:
    """A place in a source file: 1-based line and column."""

    filename: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.filename}:{self.line}:{self.column}"


class SpgError(SerpytorError):
    """A user error in a ``.spg`` pipeline, found by the parser or the compiler.

    ``span`` is where the error is; ``source_line`` is the text of that line (if known);
    ``notes`` are extra ``(span, message)`` lines, such as the other location of a
    duplicate definition. ``str()`` gives the full diagnostic.
    """

    kind = "error"

    def __init__(
        self,
        message: str,
        span: SourceSpan | None = None,
        source_line: str | None = None,
        notes: tuple[tuple[SourceSpan | None, str], ...] = (),
        hint: str | None = None,
    ) -> None:
        self.message = message
        self.span = span
        self.source_line = source_line
        self.notes = tuple(notes)
        self.hint = hint
        super().__init__(self.render())

    @property
    def line(self) -> int | None:
        return self.span.line if self.span else None

    @property
    def column(self) -> int | None:
        return self.span.column if self.span else None

    def render(self) -> str:
        where = f"{self.span}: " if self.span else ""
        lines = [f"{where}{self.kind}: {self.message}"]
        if self.source_line is not None and self.span is not None:
            text = self.source_line.rstrip("\n")
            lines.append(f"    {text}")
            lines.append("    " + " " * (self.span.column - 1) + "^")
        for note_span, note in self.notes:
            prefix = f"{note_span}: " if note_span else ""
            lines.append(f"{prefix}note: {note}")
        if self.hint:
            lines.append(f"hint: {self.hint}")
        return "\n".join(lines)


class SpgSyntaxError(SpgError, SyntaxError):
    """The text is not valid ``.spg``. Also a :class:`SyntaxError` carrying
    ``(filename, lineno, offset, text)`` so tools that know Python's errors can show it.
    """

    def __init__(self, message: str, span: SourceSpan, source_line: str | None = None,
                 expected: tuple[str, ...] = (), hint: str | None = None) -> None:
        self.expected = tuple(expected)
        full_hint = hint
        if expected:
            exp = "expected one of: " + ", ".join(expected)
            full_hint = f"{hint}; {exp}" if hint else exp
        SpgError.__init__(self, message, span, source_line, hint=full_hint)
        self.filename = span.filename
        self.lineno = span.line
        self.offset = span.column
        self.text = source_line
        self.msg = message

    def __str__(self) -> str:
        return self.render()


class SpgCompileError(SpgError):
    """The pipeline parses but is not a valid program (undefined or duplicate names,
    bad replication counts, parameters nothing can fill, ...). Fix the named line."""


class CycleError(SpgCompileError):
    """The data edges form a cycle. ``cycle`` is the list of vertex names, first
    repeated at the end (``a -> b -> c -> a``); ``edge_spans`` the line of each edge."""

    def __init__(self, cycle: list[str], edge_spans: list[SourceSpan | None],
                 message: str | None = None, source_line: str | None = None) -> None:
        self.cycle = list(cycle)
        self.edge_spans = list(edge_spans)
        path = " -> ".join(cycle)
        notes = tuple(
            (span, f"edge {a} -> {b}")
            for span, a, b in zip(edge_spans, cycle, cycle[1:])
        )
        super().__init__(message or f"cycle in the pipeline: {path}",
                         edge_spans[0] if edge_spans else None, source_line, notes)


class ContextConflictError(SpgCompileError):
    """Two parallel branches give the same context key different static values, and
    a vertex inherits both. Declare the key on the vertex where the branches meet."""


class AmbiguousContextError(SerpytorError, KeyError):
    """A context lookup found several nearest facts for one key with different values.

    ``key`` is the key; ``candidates`` the ``(origin, value)`` pairs that disagree.
    Publish or declare the key on the vertex where the branches meet to settle it.
    """

    def __init__(self, key: str, candidates: list[tuple[str, object]]) -> None:
        self.key = key
        self.candidates = list(candidates)
        shown = ", ".join(f"{origin}={value!r}" for origin, value in self.candidates)
        super().__init__(
            f"context key {key!r} is ambiguous: parallel origins disagree ({shown}); "
            f"set {key!r} on the vertex where the branches meet"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class PlanFormatError(SerpytorError):
    """A ``.spgc`` file is not a plan this version can read (wrong magic, version or
    a damaged array). Recompile the ``.spg`` with ``serpytorc``."""


class RemoteTaskError(SerpytorError):
    """A vertex function raised. The exception is also an instance of the original
    exception's type (when that type allows it), so ``except ValueError`` still works;
    ``vertex``, ``line`` and ``remote_traceback`` say where and why."""

    vertex: str = ""
    line: int | None = None
    remote_traceback: str = ""
    original_type: str = ""

    def __str__(self) -> str:
        where = f" (line {self.line})" if self.line else ""
        return (f"vertex {self.vertex}{where} failed: {self.original_type}: "
                f"{self.args[0] if self.args else ''}")


_REMOTE_TYPES: dict[type, type] = {}


def _message_only_init(self: BaseException, message: str) -> None:
    BaseException.__init__(self, message)


def remote_task_error(original: type[BaseException], message: str, vertex: str,
                      line: int | None, traceback_text: str,
                      type_name: str | None = None) -> RemoteTaskError:
    """Build an exception that is both a RemoteTaskError and an ``original``."""
    cls = _REMOTE_TYPES.get(original)
    if cls is None:
        try:
            # the original's own __init__ may want other arguments (AmbiguousContextError
            # takes a key and candidates): the remote copy carries only the message
            cls = type(f"Remote{original.__name__}", (RemoteTaskError, original),
                       {"__init__": _message_only_init})
            cls(message)
        except TypeError:  # incompatible layouts (some C exception types)
            cls = RemoteTaskError
        _REMOTE_TYPES[original] = cls
    error = cls(message)
    error.vertex = vertex
    error.line = line
    error.remote_traceback = traceback_text
    error.original_type = type_name or original.__name__
    return error


class VertexTimeoutError(SerpytorError, TimeoutError):
    """A vertex ran past its ``timeout``. Raise the timeout in the .spg or make the
    function faster."""
