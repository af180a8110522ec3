"""The bounded Jinja sandbox: Jinja's immutable sandbox, with every operation that can make something
large checked first (`bounds`), every loop turn, call and lookup charged to the render's budget
(`budget`), and the template's shape checked before it is compiled (`shape`).

Jinja's sandbox stops a template from reaching Python internals; it does not stop it from taking all the
memory or the CPU (`(1,) * 10**9`, nested loops). The hooks it offers are used where they exist
(`call_binop`, `call`, `getattr`, `getitem`, `finalize`, `concat`); where there is none, the code
generator is told to call one: every `{% for %}` iterates through `loop_items`, and `~` joins through
`join_values` (Jinja's `Concat` node is not an operator the sandbox can intercept).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from types import BuiltinMethodType, MethodType
from typing import Any

from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import Context, Macro
from jinja2.sandbox import ImmutableSandboxedEnvironment

from announcer.messages import bounds
from announcer.messages.budget import current
from announcer.messages.limits import MAX_OUTPUT_CHARS, LimitExceeded
from announcer.messages.shape import check_shape


class BoundedCodeGenerator(CodeGenerator):
    """Jinja's code generator, with the two hooks the sandbox lacks."""

    _loop_iterables: set[int] | None = None

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        if self._loop_iterables is None:
            self._loop_iterables = set()
        self._loop_iterables.add(id(node.iter))
        super().visit_For(node, frame)

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        if self._loop_iterables and id(node) in self._loop_iterables:
            self._loop_iterables.discard(id(node))
            self.write("environment.loop_items(")
            super().visit(node, *args, **kwargs)
            self.write(")")
            return None
        return super().visit(node, *args, **kwargs)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.join_values((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class BoundedEnvironment(ImmutableSandboxedEnvironment):
    """See the module docstring. Immutable: speech templates have no use for `list.append`, and a list
    that cannot grow in place cannot grow behind the size checks."""

    code_generator_class = BoundedCodeGenerator
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def __init__(self, **options: Any) -> None:
        super().__init__(finalize=bounds.finalize, **options)
        self.globals["range"] = bounds.bounded_range
        self.globals["lipsum"] = bounds.bounded_lipsum

    def bound_filters(self) -> None:
        """Wrap every filter registered so far (call after adding the service's own)."""
        self.filters.update(bounds.BOUNDED_FILTERS)
        self.filters.update({name: bounds.bounded_filter(name, f) for name, f in self.filters.items()})

    # -- compiling ---------------------------------------------------------------------------------
    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        # A template without a name is one given as text (`from_string`): it may not read others.
        check_shape(self.lexer, source, inline=name is None)
        return super()._parse(source, name, filename)

    # -- the hooks a compiled template calls -------------------------------------------------------
    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        budget = current()
        if budget is not None:
            budget.step()
        return bounds.binop(operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        budget = current()
        if budget is not None:
            budget.step()
        args = bounds.check_call(obj, args, kwargs)
        if budget is not None and isinstance(obj, Macro):
            with budget.macro_call():
                return bounds.checked(super().call(context, obj, *args, **kwargs))
        return bounds.checked(super().call(context, obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        budget = current()
        if budget is not None:
            budget.step()
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        budget = current()
        if budget is not None:
            budget.step()
        return super().getitem(obj, argument)

    def wrap_str_format(self, value: Any) -> Any:
        """`str.format` and `str.format_map`, reached as attributes of a string: Jinja wraps them in its
        sandboxed formatter; this one also bounds widths and the result."""
        if not isinstance(value, (MethodType, BuiltinMethodType)) or value.__name__ not in (
            "format",
            "format_map",
        ):
            return None
        owner = value.__self__
        if not isinstance(owner, str):
            return None
        formatter = bounds.formatter_for(owner, self)
        is_map = value.__name__ == "format_map"

        def format_(*args: Any, **kwargs: Any) -> str:
            if is_map:
                if kwargs or len(args) != 1:
                    raise TypeError("format_map() takes exactly one argument")
                return type(owner)(formatter.vformat(owner, (), args[0]))
            return type(owner)(formatter.vformat(owner, args, kwargs))

        return format_

    def loop_items(self, iterable: Iterable[Any]) -> Iterable[Any]:
        """Every `{% for %}`'s iterable: each turn counted against the render's budget."""
        budget = current()
        return iterable if budget is None else budget.iterate(iterable)

    def join_values(self, values: tuple[Any, ...]) -> str:
        """The `~` operator."""
        budget = current()
        if budget is not None:
            budget.step()
        return bounds.join_values(values)

    def concat(self, pieces: Iterable[str]) -> str:
        """Jinja joins the output of a macro, a `{% set %}` block, a `{% filter %}` block and `caller()`
        with this (it replaces `"".join`): counted while joined, never more than a render may output."""
        text = bounded_join(pieces, MAX_OUTPUT_CHARS)
        budget = current()
        if budget is not None:
            budget.produce(len(text))
        return text


_CHUNK = 32  # output pieces counted at a time: the count stays in C, the overshoot small


def bounded_join(pieces: Iterable[str], limit: int) -> str:
    """`"".join(pieces)`, refused (LimitExceeded) as soon as the pieces are longer than `limit`."""
    stream = iter(pieces)
    kept: list[str] = []
    size = 0
    while True:
        chunk = list(itertools.islice(stream, _CHUNK))
        size += sum(map(len, chunk))
        if size > limit:
            raise LimitExceeded("output length", f"the output is over {limit:,} characters")
        if len(chunk) < _CHUNK:  # the end (most renders: one short chunk)
            return "".join(kept + chunk if kept else chunk)
        kept += chunk
