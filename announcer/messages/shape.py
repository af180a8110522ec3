"""The shape of a template, checked from its tokens before Jinja parses it.

Jinja's parser and code generator recurse once per level of nesting, and the Python code they make nests
as deep: 100 parentheses, 500 nested `{% if %}`s or 3,000 chained filters end in RecursionError (or
Python's "too many levels of indentation") instead of an answer, after seconds of work. One pass over the
lexer's tokens (linear, no recursion) measures the nesting first and refuses what is too deep.
"""

from __future__ import annotations

from jinja2.lexer import Lexer

from announcer.messages.limits import (
    MAX_BLOCK_DEPTH,
    MAX_BRACKET_DEPTH,
    MAX_EXPRESSION_OPERATORS,
    MAX_TEMPLATE_TOKENS,
    LimitExceeded,
)

_OPENING = frozenset("([{")
_CLOSING = frozenset(")]}")
# Each of these nests the expression one level deeper in the parsed tree (`a|f|g` is f inside g; `a.b.c`,
# `a[0][1]`, `f()()`, `not not a`, `a if b else c if ...` likewise); `~` and comparisons stay flat.
_NESTING_OPERATORS = frozenset({"|", ".", "(", "[", "+", "-", "*", "/", "//", "**", "%"})
_NESTING_NAMES = frozenset({"and", "or", "not", "is", "if", "else"})
# Tags that open a block closed by `end<tag>`; `set` only without `=` (`{% set x %}...{% endset %}`).
_BLOCK_TAGS = frozenset({"if", "for", "macro", "call", "filter", "block", "with", "autoescape", "trans"})
# Tags that read another template file: not for inline templates (see `check_shape`).
_FILE_TAGS = frozenset({"include", "import", "from", "extends"})


class ShapeError(LimitExceeded):
    """A template too big or too deeply nested to compile; `line` is where it went over."""

    def __init__(self, limit: str, reason: str, line: int) -> None:
        super().__init__(limit, reason)
        self.line = line


def check_shape(lexer: Lexer, source: str, inline: bool) -> None:
    """Refuse (ShapeError) a template over a limit of its shape. An `inline` template (one given as text
    in a request) may not read other template files: `{% include %}`, `{% import %}`, `{% from %}` and
    `{% extends %}` would let a request read any template of the server, and their errors name files."""
    tokens = brackets = blocks = operators = 0
    tag: str | None = None  # the block tag being read ("" until its name is seen)
    assigns = False
    for line, kind, value in lexer.tokeniter(source, None):
        if kind == "whitespace":
            continue
        tokens += 1
        if tokens > MAX_TEMPLATE_TOKENS:
            raise ShapeError(
                "template size", f"the template has more than {MAX_TEMPLATE_TOKENS:,} tokens", line
            )
        if kind in ("block_begin", "variable_begin"):
            operators = 0
            tag = "" if kind == "block_begin" else None
            assigns = False
        elif kind == "block_end":
            if tag == "set" and not assigns:
                blocks = _open(blocks, line)
            tag = None
        elif kind == "name" and tag == "":
            tag = value
            if inline and value in _FILE_TAGS:
                raise ShapeError(
                    "template files",
                    f"an inline template cannot {value} other templates; give `template` to use a "
                    "template of the server",
                    line,
                )
            if value.startswith("end"):
                blocks -= 1
            elif value in _BLOCK_TAGS:
                blocks = _open(blocks, line)
        elif kind == "operator":
            if value in _OPENING:
                brackets += 1
                if brackets > MAX_BRACKET_DEPTH:
                    raise ShapeError(
                        "bracket depth", f"brackets nested more than {MAX_BRACKET_DEPTH} deep", line
                    )
            elif value in _CLOSING:
                brackets -= 1
            elif value == "=" and brackets == 0:
                assigns = True
            if value in _NESTING_OPERATORS:
                operators = _chain(operators, line)
        elif kind == "name" and value in _NESTING_NAMES:
            operators = _chain(operators, line)


def _open(blocks: int, line: int) -> int:
    blocks += 1
    if blocks > MAX_BLOCK_DEPTH:
        raise ShapeError("block depth", f"blocks nested more than {MAX_BLOCK_DEPTH} deep", line)
    return blocks


def _chain(operators: int, line: int) -> int:
    operators += 1
    if operators > MAX_EXPRESSION_OPERATORS:
        raise ShapeError(
            "expression length",
            f"more than {MAX_EXPRESSION_OPERATORS} operators, filters and lookups in one tag",
            line,
        )
    return operators
