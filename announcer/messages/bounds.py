"""Size checks made *before* an operation of a template runs: what it would make is worked out from its
operands, and refused (LimitExceeded) when over a limit of `limits`. After the operation it is too late:
`(1,) * 10**9` has already taken gigabytes.

Covered: the operators `*`, `+`, `**`, `%` and `~`, printing a value (`{{ value }}`: a list of long
strings prints longer than any of them), `str.format`, the str/bytes methods that pad, repeat or replace,
`int.to_bytes`, `range`, `lipsum`, and the filters that grow their input (center, indent, wordwrap,
format, replace, join, batch, slice, sum, round, tojson). Everything else a call or a filter returns is
checked afterwards (`checked`): what remains can only grow its input by a small factor.
"""

from __future__ import annotations

import itertools
import math
import re
import string
from collections.abc import Callable, ItemsView, Iterable, KeysView, Mapping, ValuesView
from collections.abc import Set as AbstractSet
from types import BuiltinMethodType, MethodType
from typing import Any

from jinja2 import Undefined, pass_environment, pass_eval_context
from jinja2 import filters as jinja_filters
from jinja2.nodes import EvalContext
from jinja2.sandbox import SandboxedEscapeFormatter, SandboxedFormatter
from jinja2.utils import Namespace, generate_lorem_ipsum
from markupsafe import Markup

from announcer.messages.budget import current
from announcer.messages.limits import (
    MAX_INT_BITS,
    MAX_ITEMS,
    MAX_LIPSUM_PARAGRAPHS,
    MAX_LIPSUM_WORDS,
    MAX_PRODUCED_CHARS,
    MAX_STRING_CHARS,
    MAX_VALUE_DEPTH,
    LimitExceeded,
)

_TEXT = (str, bytes, bytearray)
_SEQUENCES = (str, bytes, bytearray, list, tuple)
_LOG10_2 = math.log10(2)
# Python's printf-style conversion specifier (`%(key)-08.3f`): key, flags, width, precision, type.
_PRINTF = re.compile(
    r"%(?:\((?P<key>[^)]*)\))?[-+ #0]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d*))?[hlL]?(?P<conv>.?)",
    re.DOTALL,
)
_DIGIT_RUNS = re.compile(r"\d+")
# Strings up to this long are not charged to the render's "characters made": most results are short, and
# the loop limit bounds how many a render makes (MAX_LOOP_ITERATIONS x this is a few MB at most).
_UNCHARGED = 256


# --- refusing -------------------------------------------------------------------------------------


def _too_long(size: int, what: str = "string") -> LimitExceeded:
    return LimitExceeded("string length", f"a {what} of {size:,} characters; at most {MAX_STRING_CHARS:,}")


def _too_many(size: int) -> LimitExceeded:
    return LimitExceeded("list length", f"a list of {size:,} items; at most {MAX_ITEMS:,}")


def _too_wide(size: int) -> LimitExceeded:
    return LimitExceeded("format width", f"a width or precision of {size:,}; at most {MAX_STRING_CHARS:,}")


def _charge(size: int) -> None:
    budget = current()
    if budget is not None:
        budget.produce(size)


def checked(value: Any) -> Any:
    """`value` as made by a call or a filter: refused when it is too long, else charged to the render."""
    budget = current()
    if budget is not None:
        budget.step()
    if isinstance(value, _TEXT):
        if len(value) > MAX_STRING_CHARS:
            raise _too_long(len(value))
        _charge(len(value))
    elif isinstance(value, (list, tuple, dict, set, frozenset)):
        if len(value) > MAX_ITEMS:
            raise _too_many(len(value))
        _charge(len(value))
    return value


# --- how long a value prints ----------------------------------------------------------------------


def size_of(value: Any, limit: int = MAX_STRING_CHARS, top: bool = True) -> int:
    """An upper bound on `len(str(value))` (`len(repr(value))` when not `top`), worked out without
    making it; once over `limit` it stops and returns what it has. A list holding one long string 1,000
    times is small in memory but prints 1,000 times as long: this is what catches it."""
    total = 0
    stack: list[tuple[Any, int, bool]] = [(value, 0, top)]
    while stack:
        item, depth, outer = stack.pop()
        if isinstance(item, str):
            n = len(item)
            # repr escapes: exact, and cheap while the string is within the limit
            total += n if outer and type(item) is str else (n if n > limit else len(repr(item)))
        elif isinstance(item, (bytes, bytearray)):
            total += 4 * len(item) + 14
        elif isinstance(item, bool) or item is None:
            total += 5
        elif isinstance(item, int):
            total += int(item.bit_length() * _LOG10_2) + 2
        elif isinstance(item, float):
            total += 24
        elif isinstance(item, Undefined):
            total += 1  # prints as "" or raises
        else:
            if depth >= MAX_VALUE_DEPTH:
                raise LimitExceeded("value depth", f"a value nested more than {MAX_VALUE_DEPTH} levels deep")
            if isinstance(item, Namespace):
                total += 13
                stack.append((object.__getattribute__(item, "_Namespace__attrs"), depth + 1, False))
            elif isinstance(item, (Mapping, ItemsView)):
                total += 2 + 4 * len(item)
                if total <= limit:
                    pairs = item.items() if isinstance(item, Mapping) else item
                    for key, val in pairs:
                        stack.append((key, depth + 1, False))
                        stack.append((val, depth + 1, False))
            elif isinstance(item, (list, tuple, AbstractSet, KeysView, ValuesView)):
                total += 16 + 2 * len(item)
                if total <= limit:
                    stack.extend((x, depth + 1, False) for x in item)
            else:  # a macro, a loop, a generator, a range, a date: their str is short
                total += 80
        if total > limit:
            return total
    return total


def check_printable(value: Any, what: str = "value") -> None:
    """Refuse `value` when printing it would make a string over the limit."""
    if type(value) is str:
        if len(value) > MAX_STRING_CHARS:
            raise _too_long(len(value), what)
        return
    size = size_of(value)
    if size > MAX_STRING_CHARS:
        raise LimitExceeded("string length", f"a {what} that prints as over {MAX_STRING_CHARS:,} characters")


def finalize(value: Any) -> Any:
    """Every `{{ ... }}` output, before Jinja prints it."""
    if type(value) is not str:
        check_printable(value, "printed value")
    return value


def join_values(values: tuple[Any, ...]) -> str:
    """The `~` operator (Jinja compiles `a ~ b ~ c` to one join of its operands)."""
    size = 0
    for value in values:
        size += len(value) if type(value) is str else size_of(value, MAX_STRING_CHARS - size)
        if size > MAX_STRING_CHARS:
            raise _too_long(size)
    _charge(size)
    return "".join(map(str, values))


# --- operators ------------------------------------------------------------------------------------


def binop(operator: str, left: Any, right: Any) -> Any:
    """The operators the sandbox intercepts, each checked before it runs."""
    if operator == "*":
        _check_mul(left, right)
        return left * right
    if operator == "+":
        _check_add(left, right)
        return left + right
    if operator == "**":
        _check_pow(left, right)
        return left**right
    if operator == "%":
        if isinstance(left, (bytes, bytearray)):
            raise TypeError("formatting bytes with % is not supported")
        if isinstance(left, str):
            printf_size(left, right)
        return left % right
    raise AssertionError(f"operator {operator} is not intercepted")


def _is_int(value: Any) -> bool:
    return isinstance(value, int)  # bool included: True * "x" is "x"


def _check_mul(left: Any, right: Any) -> None:
    if _is_int(left) and _is_int(right):
        bits = left.bit_length() + right.bit_length()
        if bits > MAX_INT_BITS:
            raise LimitExceeded("integer size", f"a product of about {bits:,} bits; at most {MAX_INT_BITS:,}")
        return
    if isinstance(left, _SEQUENCES) and _is_int(right):
        sequence, times = left, right
    elif _is_int(left) and isinstance(right, _SEQUENCES):
        sequence, times = right, left
    else:
        return
    size = len(sequence) * max(times, 0)
    if isinstance(sequence, _TEXT):
        if size > MAX_STRING_CHARS:
            raise _too_long(size)
    elif size > MAX_ITEMS:
        raise _too_many(size)
    _charge(size)


def _check_add(left: Any, right: Any) -> None:
    if isinstance(left, _TEXT) and isinstance(right, _TEXT):
        size = len(left) + len(right)
        if size > MAX_STRING_CHARS:
            raise _too_long(size)
        _charge(size)
    elif isinstance(left, (list, tuple)) and isinstance(right, (list, tuple)):
        size = len(left) + len(right)
        if size > MAX_ITEMS:
            raise _too_many(size)
        _charge(size)


def _check_pow(base: Any, exponent: Any) -> None:
    # Floats need nothing: Python raises OverflowError at once rather than making a huge float.
    if _is_int(base) and _is_int(exponent) and exponent > 0 and abs(base) > 1:
        bits = exponent * math.log2(abs(base))
        if bits > MAX_INT_BITS:
            raise LimitExceeded(
                "integer size", f"a power of about {bits:,.0f} bits; at most {MAX_INT_BITS:,}"
            )


def printf_size(fmt: str, args: Any) -> int:
    """An upper bound on `len(fmt % args)`, refused over the limit. Where the format or the arguments
    do not fit, Python's own `%` raises before it makes anything large, so the estimate stops there."""
    positional: tuple[Any, ...] = args if isinstance(args, tuple) else (args,)
    mapping = args if isinstance(args, Mapping) else None
    total = index = pos = 0
    while (at := fmt.find("%", pos)) >= 0:
        total += at - pos
        spec = _PRINTF.match(fmt, at)
        assert spec is not None  # every part of the pattern is optional
        pos = spec.end()
        conv = spec["conv"]
        if conv == "%":
            total += 1
            continue
        try:
            width, index = _printf_number(spec["width"], positional, index)
            precision, index = _printf_number(spec["precision"], positional, index)
            if spec["key"] is not None:
                value = mapping[spec["key"]] if mapping is not None else None
            else:
                value = positional[index]
                index += 1
        except (LookupError, TypeError, ValueError):
            return total  # Python raises at this specifier
        total += max(width, _conversion_size(conv, value, precision if spec["precision"] else None))
        if total > MAX_STRING_CHARS:
            raise _too_long(total, "formatted string")
    total += len(fmt) - pos
    return total


def _printf_number(token: str | None, positional: tuple[Any, ...], index: int) -> tuple[int, int]:
    if not token:
        return 0, index
    if token == "*":
        value = positional[index]
        if not _is_int(value):
            raise TypeError("* wants int")
        number, index = abs(value), index + 1
    elif len(token) > 9:
        raise _too_wide(10 ** (len(token) - 1))
    else:
        number = int(token)
    if number > MAX_STRING_CHARS:
        raise _too_wide(number)
    return number, index


def _conversion_size(conv: str, value: Any, precision: int | None) -> int:
    if conv in ("s", "r", "a"):
        size = size_of(value, top=conv == "s") * (10 if conv == "a" else 1)
        return min(size, precision) if precision is not None and conv == "s" else size
    if conv == "c":
        return 1
    digits = 320 if isinstance(value, float) else size_of(value) if _is_int(value) else 0
    if conv in "diuxXo":
        return max(digits, precision or 0) + 4
    # e, f, g: a float has at most 309 digits before the point
    return 320 + (6 if precision is None else precision)


# --- str.format ------------------------------------------------------------------------------------


class BoundedFormatter(SandboxedFormatter):
    """`str.format` in the sandbox: widths and precisions checked before each field is formatted, and
    the fields' total after each."""

    _made = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._made = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion in ("r", "a") and size_of(value, top=False) > MAX_STRING_CHARS:
            raise _too_long(MAX_STRING_CHARS + 1, "formatted field")
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        for run in _DIGIT_RUNS.findall(format_spec):
            if len(run) > 9 or int(run) > MAX_STRING_CHARS:
                raise _too_wide(int(run) if len(run) <= 9 else 10 ** (len(run) - 1))
        check_printable(value, "formatted field")
        piece = super().format_field(value, format_spec)
        self._made += len(piece)
        if self._made > MAX_STRING_CHARS:
            raise _too_long(self._made, "formatted string")
        return piece


class BoundedEscapeFormatter(BoundedFormatter, SandboxedEscapeFormatter):
    """The same for `Markup.format` (a value marked safe)."""


# --- methods ---------------------------------------------------------------------------------------


def _width(s: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    width = args[0] if args else kwargs.get("width", 0)
    if _is_int(width) and width > MAX_STRING_CHARS:
        raise _too_wide(width)


def _expandtabs(s: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    tab = args[0] if args else kwargs.get("tabsize", 8)
    if _is_int(tab):
        size = len(s) + s.count("\t" if isinstance(s, str) else b"\t") * max(tab, 0)
        if size > MAX_STRING_CHARS:
            raise _too_long(size)


def _replace(s: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    if len(args) < 2 or not isinstance(args[0], _TEXT) or not isinstance(args[1], _TEXT):
        return
    old, new = args[0], args[1]
    count = args[2] if len(args) > 2 else kwargs.get("count", -1)
    times = s.count(old) if old else len(s) + 1
    if _is_int(count) and count >= 0:
        times = min(times, count)
    size = len(s) + times * (len(new) - len(old))
    if size > MAX_STRING_CHARS:
        raise _too_long(size)


def _translate(s: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    table = args[0] if args else None
    if isinstance(table, Mapping):
        longest = max((len(v) for v in table.values() if isinstance(v, _TEXT)), default=1)
        size = len(s) * max(longest, 1)
        if size > MAX_STRING_CHARS:
            raise _too_long(size)


def _take(iterable: Iterable[Any]) -> list[Any]:
    """At most MAX_ITEMS items of `iterable`, as a list (it may be a one-pass iterator)."""
    items = list(itertools.islice(iterable, MAX_ITEMS + 1))
    if len(items) > MAX_ITEMS:
        raise _too_many(len(items))
    return items


def _joined_size(separator: Any, items: list[Any]) -> int:
    size = len(separator) * max(len(items) - 1, 0)
    for item in items:
        size += len(item) if isinstance(item, _TEXT) else size_of(item, MAX_STRING_CHARS - size)
        if size > MAX_STRING_CHARS:
            raise _too_long(size)
    return size


_STR_METHODS: dict[str, Callable[[Any, tuple[Any, ...], dict[str, Any]], None]] = {
    "center": _width,
    "ljust": _width,
    "rjust": _width,
    "zfill": _width,
    "expandtabs": _expandtabs,
    "replace": _replace,
    "translate": _translate,
}


def check_call(obj: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, ...]:
    """Before a call from a template: refuse the methods that would make too much; returns the
    arguments to call with (a one-pass iterator given to `join` is read here, so it is passed on as a
    list)."""
    if not isinstance(obj, (BuiltinMethodType, MethodType)):
        return args
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if isinstance(owner, _TEXT):
        if name == "join" and args:
            items = _take(args[0])
            _joined_size(owner, items)
            return (items, *args[1:])
        check = _STR_METHODS.get(name)
        if check is not None:
            check(owner, args, kwargs)
    elif _is_int(owner) and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        if _is_int(length) and length > MAX_STRING_CHARS:
            raise _too_long(length, "bytes value")
    return args


# --- globals ---------------------------------------------------------------------------------------


def bounded_range(*args: int) -> range:
    """`range`, at most MAX_ITEMS long (Jinja's own sandbox allows 100,000)."""
    numbers = range(*args)
    try:
        size = len(numbers)
    except OverflowError:
        size = MAX_ITEMS + 1
    if size > MAX_ITEMS:
        raise LimitExceeded("range", f"a range of more than {MAX_ITEMS:,} numbers")
    return numbers


def bounded_lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:
    """`lipsum`, at most MAX_LIPSUM_PARAGRAPHS paragraphs of MAX_LIPSUM_WORDS words."""
    if n > MAX_LIPSUM_PARAGRAPHS or max > MAX_LIPSUM_WORDS or min > MAX_LIPSUM_WORDS:
        raise LimitExceeded(
            "lipsum",
            f"lipsum of more than {MAX_LIPSUM_PARAGRAPHS} paragraphs of {MAX_LIPSUM_WORDS} words",
        )
    text: str = checked(generate_lorem_ipsum(n, html, min, max))
    return text


# --- filters ---------------------------------------------------------------------------------------


def _center(value: Any, width: int = 80) -> str:
    _width(value, (width,), {})
    return jinja_filters.do_center(value, width)


def _indent(s: Any, width: int | str = 4, first: bool = False, blank: bool = False) -> str:
    text = s if isinstance(s, str) else str(s)
    if isinstance(width, str):
        step = len(width)
    elif _is_int(width):
        if width > MAX_STRING_CHARS:
            raise _too_wide(width)
        step = width
    else:
        step = 0
    size = len(text) + (text.count("\n") + 1) * step
    if size > MAX_STRING_CHARS:
        raise _too_long(size)
    return jinja_filters.do_indent(text, width, first, blank)


@pass_environment
def _wordwrap(
    environment: Any,
    s: Any,
    width: int = 79,
    break_long_words: bool = True,
    wrapstring: str | None = None,
    break_on_hyphens: bool = True,
) -> str:
    text = s if isinstance(s, str) else str(s)
    joint = len(wrapstring) if isinstance(wrapstring, str) else len(environment.newline_sequence)
    if _is_int(width) and width > 0:
        lines = len(text) // width + text.count("\n") + 1
        size = len(text) + lines * joint
        if size > MAX_STRING_CHARS:
            raise _too_long(size)
    return jinja_filters.do_wordwrap(environment, text, width, break_long_words, wrapstring, break_on_hyphens)


def _format(value: Any, *args: Any, **kwargs: Any) -> str:
    fmt = value if isinstance(value, str) else str(value)
    if args and kwargs:
        return jinja_filters.do_format(fmt, *args, **kwargs)  # refuses both, as Jinja does
    printf_size(fmt, kwargs or args)
    return jinja_filters.do_format(fmt, *args, **kwargs)


@pass_eval_context
def _replace_filter(eval_ctx: EvalContext, s: Any, old: Any, new: Any, count: int | None = None) -> str:
    text = s if isinstance(s, str) else str(s)
    _replace(text, (str(old), str(new), -1 if count is None else count), {})
    return jinja_filters.do_replace(eval_ctx, text, old, new, count)


@pass_eval_context
def _join(
    eval_ctx: EvalContext, value: Iterable[Any], d: str = "", attribute: str | int | None = None
) -> str:
    items = _take(value)
    if attribute is not None:
        items = list(map(jinja_filters.make_attrgetter(eval_ctx.environment, attribute), items))
    _joined_size(d, items)
    return jinja_filters.sync_do_join(eval_ctx, items, d)


def _batch(value: Iterable[Any], linecount: int, fill_with: Any = None) -> Any:
    if fill_with is not None and _is_int(linecount) and linecount > MAX_ITEMS:
        raise _too_many(linecount)
    return jinja_filters.do_batch(value, linecount, fill_with)


def _slice(value: Any, slices: int, fill_with: Any = None) -> Any:
    if _is_int(slices) and slices > MAX_ITEMS:
        raise _too_many(slices)
    return jinja_filters.sync_do_slice(value, slices, fill_with)


@pass_environment
def _sum(
    environment: Any, iterable: Iterable[Any], attribute: str | int | None = None, start: Any = 0
) -> Any:
    items = _take(iterable)
    if attribute is not None:
        items = list(map(jinja_filters.make_attrgetter(environment, attribute), items))
    if isinstance(start, _SEQUENCES) or any(isinstance(item, _SEQUENCES) for item in items):
        # sequences add up by copying: the total is made once per item (quadratic)
        size = (len(start) if isinstance(start, _SEQUENCES) else 0) + sum(
            len(item) for item in items if isinstance(item, _SEQUENCES)
        )
        if size > MAX_ITEMS or size * len(items) > MAX_PRODUCED_CHARS:
            raise _too_many(size)
    return sum(items, start)


def _round(value: float, precision: int = 0, method: str = "common") -> float:
    if _is_int(precision) and abs(precision) > 1000:  # 10**precision is made
        raise LimitExceeded("round precision", f"round to {precision:,} places; at most 1,000")
    return jinja_filters.do_round(value, precision, method)  # type: ignore[arg-type]


@pass_eval_context
def _tojson(eval_ctx: EvalContext, value: Any, indent: int | None = None) -> Markup:
    if indent is not None and not (_is_int(indent) and 0 <= indent <= 16):
        raise LimitExceeded("tojson indent", "tojson's indent must be 0 to 16")
    check_printable(value)
    return jinja_filters.do_tojson(eval_ctx, value, indent)


# Filters that grow their input by more than a small factor: replaced by checked versions.
BOUNDED_FILTERS: dict[str, Callable[..., Any]] = {
    "center": _center,
    "indent": _indent,
    "wordwrap": _wordwrap,
    "format": _format,
    "replace": _replace_filter,
    "join": _join,
    "batch": _batch,
    "slice": _slice,
    "sum": _sum,
    "round": _round,
    "tojson": _tojson,
}

# Filters that take a collection and do not print it whole; every other filter prints its input, so a
# value that would print too long is refused before it is called.
_COLLECTION_FILTERS = frozenset(
    {
        "abs",
        "attr",
        "batch",
        "count",
        "d",
        "default",
        "dictsort",
        "first",
        "float",
        "groupby",
        "int",
        "items",
        "join",
        "last",
        "length",
        "list",
        "map",
        "max",
        "min",
        "random",
        "reject",
        "rejectattr",
        "reverse",
        "round",
        "select",
        "selectattr",
        "slice",
        "sort",
        "sum",
        "unique",
    }
)


# Filters that compare, and may copy (lower-case), every item: a list of one long string 10,000 times
# over is cheap to make and expensive to sort, so the items together are held to MAX_PRODUCED_CHARS.
_SORTING_FILTERS = frozenset({"dictsort", "groupby", "max", "min", "sort", "unique"})


def _check_items(value: Any, name: str) -> None:
    if size_of(value, MAX_PRODUCED_CHARS) > MAX_PRODUCED_CHARS:
        raise LimitExceeded(
            "characters made", f"{name} of values over {MAX_PRODUCED_CHARS:,} characters in all"
        )


class OutsideRender(Exception):
    """A filter called with no render's budget in force. Jinja calls the filters of constant arguments
    while it compiles, to fold them; refused, they run when the template renders, within its budget
    (else 300 `"x"|center(20000)` joined by `~` would make 6 MB as the template compiles)."""


def bounded_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """`func` with its input checked (when it prints or sorts it) and its result checked and charged.
    Runs for every filter of every render, so the common case (a short string) takes the shortest path."""
    pass_arg = getattr(func, "jinja_pass_arg", None)
    prints = name not in _COLLECTION_FILTERS
    sorts = name in _SORTING_FILTERS
    what = f"value given to {name}"

    def bounded(value: Any, *args: Any, **kwargs: Any) -> Any:
        if current() is None:
            raise OutsideRender(name)
        if prints and type(value) is not str:
            check_printable(value, what)
        result = func(value, *args, **kwargs)
        if type(result) is str and len(result) <= _UNCHARGED:
            return result
        return checked(result)

    def bounded_with(first: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        if current() is None:
            raise OutsideRender(name)
        if prints and type(value) is not str:
            check_printable(value, what)
        elif sorts:
            _check_items(value, name)
        result = func(first, value, *args, **kwargs)
        if type(result) is str and len(result) <= _UNCHARGED:
            return result
        return checked(result)

    wrapper: Callable[..., Any] = bounded
    if pass_arg is not None:  # Jinja passes the context, eval context or environment first
        wrapper = bounded_with
        wrapper.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
    wrapper.__name__ = getattr(func, "__name__", name)
    wrapper.__doc__ = func.__doc__
    return wrapper


def formatter_for(owner: str, env: Any) -> string.Formatter:
    """The formatter `owner.format(...)` uses in the sandbox."""
    if isinstance(owner, Markup):
        return BoundedEscapeFormatter(env, escape=owner.escape)
    return BoundedFormatter(env)
