"""What one template may cost: every limit of the template sandbox, in one place.

A template comes from an API user (`template_text`) or from the operator's templates directory, and is
rendered once per recipient. Without bounds a 20-character template can make gigabytes (`(1,) * 10**9`)
or run for minutes (nested loops), and one request would stall every live call of the process. So each
operation that can make something large is checked *before* it runs, against the limits below; every
render has a CPU deadline and a step budget; compiled shapes are limited before Jinja's recursive parser
sees them. Over any limit the render fails with `LimitExceeded`, which names the limit.

The values are generous for a spoken message (the message itself is at most ANNOUNCER_MAX_TEXT_CHARS,
2,000 by default) and small enough that one render stays within a few MB and tens of milliseconds. They
are constants, not settings: no operator needs a template that is bigger than these to say something on
the phone. (How the render thread shares the interpreter with the event loop, its pauses and priority,
is in `budget` and `workers`.)
"""

from __future__ import annotations

# --- what a render may make ------------------------------------------------------------------------

# Any one string (or bytes) an operation of a template makes: `*`, `+`, `~`, `%`, a filter, a method.
# The same as the longest `template_text` the API takes: a template never needs a longer value.
MAX_STRING_CHARS = 20_000
# Everything one render outputs, counted while it is produced (before whitespace is collapsed; the
# message limit ANNOUNCER_MAX_TEXT_CHARS applies to the collapsed text afterwards).
MAX_OUTPUT_CHARS = 50_000
# Any one list, tuple, dict or range an operation makes (jinja's own `range` allows 100,000).
MAX_ITEMS = 10_000
# Integers made by `*` and `**`: 8,192 bits is ~2,466 digits (Python refuses to print more than 4,300).
MAX_INT_BITS = 8_192
# All the characters (and items) the operations of one render make together: bounds memory churn, e.g.
# a loop that makes a new 20,000-character string on every turn.
MAX_PRODUCED_CHARS = 1_000_000
# `lipsum(n, html, min, max)`: at most this many paragraphs and words per paragraph.
MAX_LIPSUM_PARAGRAPHS = 10
MAX_LIPSUM_WORDS = 100
# How deep a value is walked to size it (a list of lists of ...), e.g. before `{{ value }}` prints it.
MAX_VALUE_DEPTH = 32

# --- how much work a render may do -----------------------------------------------------------------

# Turns of every `{% for %}` loop of one render together.
MAX_LOOP_ITERATIONS = 20_000
# Calls, filters, attribute and item lookups and checked operators of one render together.
MAX_STEPS = 200_000
# Macro calls inside macro calls (a macro that calls itself).
MAX_MACRO_DEPTH = 20
# Thread CPU time of one render (one recipient). An ordinary message takes ~20 microseconds.
RENDER_CPU_S = 0.025
# Thread CPU time of rendering every recipient of one request: 10,000 ordinary recipients take ~0.2 s.
REQUEST_RENDER_CPU_S = 5.0

# --- the shape of a template, checked before it is compiled ----------------------------------------

# Tokens of one template (Jinja's lexer; the biggest shipped template has 138). Compiling takes ~25
# microseconds per token: this many take ~50 ms (once per text: compiled templates are kept).
MAX_TEMPLATE_TOKENS = 2_000
# Brackets ( [ { open inside each other.
MAX_BRACKET_DEPTH = 20
# Block tags ({% if %}, {% for %}, {% macro %}, ...) open inside each other.
MAX_BLOCK_DEPTH = 10
# Operators, filters, tests, attribute/item lookups and calls in one tag ({{ ... }} or {% ... %}):
# each nests the expression one level deeper in Jinja's compiler.
MAX_EXPRESSION_OPERATORS = 60


class LimitExceeded(Exception):
    """A template went over one of the limits above; `limit` names it, `reason` says what happened.

    Deliberately not a ValueError/TypeError/LookupError: code inside Jinja and inside the sandbox that
    catches those (an attribute lookup falling back to an item lookup) must not swallow it."""

    def __init__(self, limit: str, reason: str) -> None:
        self.limit = limit
        self.reason = reason
        super().__init__(reason)
