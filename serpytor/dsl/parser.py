"""Text -> AST: the lark parser for ``.spg`` and the transformer that builds the AST.

The grammar ships as package data (``serpytor/grammars/spg.lark``) and is loaded
through the package, never from the working directory. Syntax errors become
:class:`~serpytor.errors.SpgSyntaxError` through :mod:`serpytor.dsl.diagnostics`.
"""

from __future__ import annotations

import ast as python_ast
import functools
import warnings
from importlib import resources
from pathlib import Path

import lark
from lark import Token, Transformer, v_args

from ..errors import SourceSpan, SpgSyntaxError
from . import ast
from .diagnostics import syntax_error_from_lark


@functools.lru_cache(maxsize=1)
def spg_parser() -> lark.Lark:
    """The LALR parser, built once per process."""
    grammar = resources.files("serpytor").joinpath("grammars/spg.lark").read_text("utf-8")
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=False)


def parse(text: str, filename: str = "<string>") -> ast.Pipeline:
    """Parse ``.spg`` text into a :class:`~serpytor.dsl.ast.Pipeline`.

    Raises :class:`SpgSyntaxError` naming the file, line and column.
    """
    try:
        tree = spg_parser().parse(text)
    except lark.exceptions.UnexpectedInput as error:
        raise syntax_error_from_lark(error, text, filename) from None
    try:
        return AstBuilder(filename, text).transform(tree)
    except lark.exceptions.VisitError as error:
        if isinstance(error.orig_exc, SpgSyntaxError):
            raise error.orig_exc from None
        raise


def parse_file(path: str | Path) -> ast.Pipeline:
    path = Path(path)
    return parse(path.read_text("utf-8"), str(path))


def _span(filename: str, item: Token | lark.Tree) -> SourceSpan | None:
    meta = item if isinstance(item, Token) else item.meta
    line = getattr(meta, "line", None)
    if line is None:
        return None
    return SourceSpan(filename, line, getattr(meta, "column", 1))


class AstBuilder(Transformer):
    """Builds AST dataclasses from the lark tree, one method per rule."""

    def __init__(self, filename: str, source: str) -> None:
        super().__init__()
        self.filename = filename
        self.source = source

    def _at(self, item: Token | lark.Tree) -> SourceSpan | None:
        return _span(self.filename, item)

    # ---- values ---------------------------------------------------------------
    def string(self, children):
        return _unquote(children[0], self.filename, self.source)

    def integer(self, children):
        return int(children[0])

    def float(self, children):
        return float(children[0])

    def true(self, _):
        return True

    def false(self, _):
        return False

    def null(self, _):
        return None

    def list(self, children):
        return list(children)

    def map(self, children):
        return dict(children)

    def map_item(self, children):
        key, value = children
        if key.type == "STRING":
            key = _unquote(key, self.filename, self.source)
        return (str(key), value)

    @v_args(meta=True)
    def env(self, meta, children):
        name = _unquote(children[0], self.filename, self.source)
        default = children[1] if len(children) > 1 else None
        return ast.Env(name, default, self._span_of_meta(meta), has_default=len(children) > 1)

    def __default_token__(self, token):
        return token

    # ---- names ----------------------------------------------------------------
    @v_args(meta=True)
    def dotted(self, meta, children):
        return ast.Dotted(tuple(str(c) for c in children), self._span_of_meta(meta))

    def _span_of_meta(self, meta) -> SourceSpan | None:
        if getattr(meta, "empty", True):
            return None
        return SourceSpan(self.filename, meta.line, meta.column)

    # ---- declarations -----------------------------------------------------------
    def pipeline_decl(self, children):
        return ("pipeline", str(children[0]), self._at(children[0]))

    @v_args(meta=True)
    def use_decl(self, meta, children):
        module = children[0]
        alias_name = str(children[1]) if len(children) > 1 else module.parts[-1]
        return ast.Use(module, alias_name, self._span_of_meta(meta))

    @v_args(meta=True)
    def assignment(self, meta, children):
        key, value = children
        return ast.Assignment(str(key), value, self._at(key))

    def context_decl(self, children):
        return ("context", tuple(children))

    @v_args(meta=True)
    def keyword_argument(self, meta, children):
        name, value = children
        return ast.Argument(str(name), value, self._at(name))

    @v_args(meta=True)
    def positional_argument(self, meta, children):
        return ast.Argument(None, children[0], self._span_of_meta(meta))

    def arguments(self, children):
        return tuple(children)

    def call(self, children):
        function = children[0]
        return (function, children[1] if len(children) > 1 else ())

    @v_args(meta=True)
    def replicate(self, meta, children):
        return ast.Replicate(int(children[0]), self._at(children[0]))

    def with_block(self, children):
        return tuple(children)

    @v_args(meta=True)
    def aggregate_option(self, meta, children):
        name, value = children
        if isinstance(value, Token):
            value = int(value)
        return ast.AggregateOption(str(name), value, self._at(name))

    @v_args(meta=True)
    def aggregate(self, meta, children):
        return ast.Aggregate(tuple(children), self._span_of_meta(meta))

    def volatile(self, _):
        return _VOLATILE

    @v_args(meta=True)
    def timeout(self, meta, children):
        return ast.Timeout(float(children[0]), self._span_of_meta(meta))

    @v_args(meta=True)
    def stage_decl(self, meta, children):
        return self._vertex_decl("stage", meta, children)

    @v_args(meta=True)
    def node_decl(self, meta, children):
        return self._vertex_decl("node", meta, children)

    def _vertex_decl(self, kind, meta, children):
        name, (function, arguments), *modifiers = children
        fields: dict = {"arguments": arguments}
        for modifier in modifiers:
            fields.update(_modifier_field(modifier))
        return ast.VertexDecl(kind, str(name), function, span=self._span_of_meta(meta),
                              name_span=self._at(name), **fields)

    @v_args(meta=True)
    def edge_attribute(self, meta, children):
        name, value = children
        if isinstance(value, Token):
            value = ast.BareName(str(value))
        return ast.EdgeAttribute(str(name), value, self._at(name))

    def edge_attributes(self, children):
        return tuple(children)

    @v_args(meta=True)
    def edge_chain(self, meta, children):
        attributes = ()
        if children and isinstance(children[-1], tuple):
            attributes = children[-1]
            children = children[:-1]
        names = tuple(str(c) for c in children if c.type == "NAME")
        operators = tuple(str(c) for c in children if c.type == "EDGE_OP")
        spans = tuple(self._at(c) for c in children if c.type == "NAME")
        return ast.EdgeChain(names, operators, attributes, self._span_of_meta(meta), spans)

    @v_args(meta=True)
    def group_decl(self, meta, children):
        name, *members = children
        return ast.GroupDecl(str(name), tuple(str(m) for m in members),
                             self._span_of_meta(meta), tuple(self._at(m) for m in members))

    @v_args(meta=True)
    def placement_decl(self, meta, children):
        return ast.Placement(children[0], self._span_of_meta(meta))

    @v_args(meta=True)
    def start(self, meta, children):
        _, name, span = children[0]
        parts: dict[type, list] = {ast.Use: [], ast.VertexDecl: [], ast.EdgeChain: [],
                                   ast.GroupDecl: [], ast.Placement: []}
        context: list[ast.Assignment] = []
        for child in children[1:]:
            if isinstance(child, tuple) and child[0] == "context":
                context.extend(child[1])
            else:
                parts[type(child)].append(child)
        return ast.Pipeline(
            name, tuple(parts[ast.Use]), tuple(context), tuple(parts[ast.VertexDecl]),
            tuple(parts[ast.EdgeChain]), tuple(parts[ast.GroupDecl]),
            self.filename, self.source, span, tuple(parts[ast.Placement]),
        )


_VOLATILE = ("volatile", True)


def _modifier_field(modifier) -> dict:
    if isinstance(modifier, ast.Replicate):
        return {"replicate": modifier}
    if isinstance(modifier, ast.Aggregate):
        return {"aggregate": modifier}
    if isinstance(modifier, ast.Timeout):
        return {"timeout": modifier}
    if modifier is _VOLATILE:
        return {"volatile": True}
    return {"with_block": modifier}


def _unquote(token: Token, filename: str, source: str) -> str:
    """Decode a string literal with Python's escape rules; a bad escape is a syntax error."""
    try:
        with warnings.catch_warnings():
            # an unknown escape such as "\q" is only a warning in Python; here it is an error
            warnings.simplefilter("error")
            value = python_ast.literal_eval(str(token))
    except (ValueError, SyntaxError, Warning) as error:
        span = SourceSpan(filename, token.line, token.column)
        line = source.splitlines()[token.line - 1]
        reason = str(error).split(" (<unknown>")[0]
        raise SpgSyntaxError(f"invalid string literal: {reason}", span, line) from None
    return value
