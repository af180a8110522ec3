"""Message templates: a bounded, sandboxed Jinja environment, strict about missing variables.

Templates are written for the ear: autoescape is off (the text is spoken, not shown; TwiML escaping
happens where TwiML is built) and every undefined variable is an error before a call is placed. Their
layout is for reading: every run of whitespace, line breaks included, is spoken as one space.

A template may say what an answering machine is told instead of the message: `{% block voicemail %}...{%
endblock %}`. Without inheritance Jinja renders a block where it stands, so the message would speak it;
here its output is set aside in the same render as the message: the message never holds it, the voicemail
is what it rendered (with the variables and the `{% set %}`s in force there). A block the render never
reached (inside a false `{% if %}`) is rendered on its own after it, so its missing variables are errors
like the message's. No block, or one that renders nothing: the machine is told the message itself.

A template may come from an API request, so no template can cost more than the limits of `limits`: its
shape is checked before it is compiled, its operations before they run (`sandbox`, `bounds`), its work
against a budget while it runs (`budget`), and its output while it is produced. Over a limit, or on any
other failure, rendering raises RenderError: never a stray exception, never a server path.
"""

from __future__ import annotations

import difflib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.runtime import Context

from announcer.messages.budget import Budget, swap
from announcer.messages.limits import MAX_OUTPUT_CHARS, RENDER_CPU_S, LimitExceeded
from announcer.messages.sandbox import BoundedEnvironment, bounded_join
from announcer.messages.shape import ShapeError
from announcer.messages.speakable import FILTERS

_SPACES = re.compile(r"\s+")
VOICEMAIL_BLOCK = "voicemail"
INLINE = "<inline>"  # the name a template given as text goes by in errors
_COMPILED_INLINE = 64  # inline templates kept compiled (a schedule's fires, a repeated request)


class RenderError(Exception):
    """A template could not be rendered: names the template, the line when known, and the reason.
    `limit` names the limit it went over, when that was the cause."""

    def __init__(self, template: str, reason: str, line: int | None = None, limit: str | None = None) -> None:
        self.template = template
        self.reason = reason
        self.line = line
        self.limit = limit
        where = f"{template}, line {line}" if line else template
        named = f" (limit: {limit})" if limit else ""
        super().__init__(f"{where}: {reason}{named}")


@dataclass(frozen=True, slots=True)
class Rendered:
    """A message as rendered: what is said to a person, and what a machine is told (None: `text`)."""

    text: str
    voicemail: str | None = None


def normalise(text: str) -> str:
    """Collapse whitespace: templates are laid out for reading; speech wants one clean line."""
    return _SPACES.sub(" ", text).strip()


def _line_of(err: BaseException, template: str) -> int | None:
    if isinstance(err, jinja2.TemplateSyntaxError):
        return err.lineno
    tb = err.__traceback__
    line = None
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_filename.endswith(template) or frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


class MessageRenderer:
    def __init__(self, templates_dir: Path) -> None:
        self.templates_dir = templates_dir
        self.env = BoundedEnvironment(
            loader=jinja2.FileSystemLoader(str(templates_dir)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            # Not `trim_blocks`: it removes the line break after every block tag, so a line that ends
            # in one ("{% if caller %}We see you.{% endif %}") ran into the next ("you.Our team") and
            # the voice read the two sentences as one. The text is spoken with its whitespace collapsed
            # (`normalise`), so the blank lines tags on their own lines leave behind cost nothing.
            trim_blocks=False,
            lstrip_blocks=True,
        )
        self.env.filters.update(FILTERS)
        self.env.bound_filters()
        # Compiling takes far longer than rendering: a text seen again (each fire of a schedule) is
        # compiled once. Renders run in several threads (the API's pool, the CLI, the event loop).
        self._inline: OrderedDict[str, jinja2.Template] = OrderedDict()
        self._inline_lock = threading.Lock()
        # Errors never show where the server keeps its templates (a message may carry a file name).
        # A bare relative name ("templates") says nothing of where it is, and would scrub the word itself.
        paths = {str(templates_dir), str(templates_dir.resolve())}
        self._paths = sorted((p for p in paths if "/" in p), key=len, reverse=True)

    def prepare(self, name: str | None = None, source: str | None = None) -> PreparedTemplate:
        """A template loaded (or compiled) once, for rendering many recipients."""
        label = INLINE if source is not None else name
        assert label is not None, "a template name or source"
        try:
            template = self._compiled(source) if source is not None else self._named(label)
        except jinja2.TemplateNotFound as err:
            raise RenderError(label, self._scrub(f"no such template: {err.message or err.name}")) from None
        except jinja2.TemplateSyntaxError as err:
            # its message only: str(err) names the file
            raise RenderError(label, self._scrub(f"syntax error: {err.message}"), err.lineno) from None
        except ShapeError as err:
            raise RenderError(label, err.reason, err.line, err.limit) from None
        except (RecursionError, SyntaxError, MemoryError) as err:
            # the shape check keeps templates well inside Python's limits; this is the backstop
            raise RenderError(
                label, f"the template is too complex to compile ({type(err).__name__})"
            ) from None
        except (ValueError, OverflowError) as err:  # e.g. a number literal of 5,000 digits
            raise RenderError(label, self._scrub(f"syntax error: {str(err).split(':')[0]}")) from None
        except OSError:
            raise RenderError(label, "the template could not be read") from None
        return PreparedTemplate(self, template.name or label, template, inline=source is not None)

    def _named(self, name: str) -> jinja2.Template:
        """The template of that name; without its extension (`alert`) when one template alone has that
        stem. Else TemplateNotFound whose message offers the nearest name and lists the templates."""
        try:
            return self.env.get_template(name)
        except jinja2.TemplateNotFound as err:
            if err.name != name:  # a template it extends or imports at compile time is missing
                raise
        try:
            names = sorted(self.env.list_templates())
        except OSError:
            raise jinja2.TemplateNotFound(name) from None
        same_stem = [n for n in names if n.rsplit(".", 1)[0] == name]
        if len(same_stem) == 1:
            return self.env.get_template(same_stem[0])
        raise jinja2.TemplateNotFound(name, _not_found(name, names)) from None

    def _compiled(self, source: str) -> jinja2.Template:
        with self._inline_lock:
            template = self._inline.get(source)
            if template is not None:
                self._inline.move_to_end(source)
                return template
        template = self.env.from_string(source)
        with self._inline_lock:
            self._inline[source] = template
            if len(self._inline) > _COMPILED_INLINE:
                self._inline.popitem(last=False)
        return template

    def render(self, name: str, variables: Mapping[str, Any]) -> str:
        """The message (a voicemail block left out)."""
        return self.prepare(name=name).render(variables)

    def render_text(self, source: str, variables: Mapping[str, Any]) -> str:
        return self.prepare(source=source).render(variables)

    def _run(
        self,
        name: str,
        template: jinja2.Template,
        variables: Mapping[str, Any],
        cpu_s: float,
        cpu_now: float | None,
    ) -> Rendered:
        try:
            outer = swap(Budget(cpu_s, cpu_now))
            try:
                text, voicemail = _output(template, variables)
            finally:
                swap(outer)
        except LimitExceeded as err:
            raise RenderError(name, err.reason, _line_of(err, name), err.limit) from None
        except jinja2.UndefinedError as err:
            raise RenderError(name, f"missing variable: {err.message}", _line_of(err, name)) from err
        except jinja2.TemplateNotFound as err:
            raise RenderError(
                name, self._scrub(f"no such template: {err.name}"), _line_of(err, name)
            ) from None
        except jinja2.TemplateSyntaxError as err:  # in a template included or imported while rendering
            reason = self._scrub(f"syntax error in {err.name}: {err.message}")
            raise RenderError(name, reason, _line_of(err, name)) from None
        except jinja2.TemplateError as err:
            raise RenderError(name, self._scrub(str(err)), _line_of(err, name)) from err
        except (ValueError, TypeError, ArithmeticError, LookupError) as err:
            reason = self._scrub(f"{type(err).__name__}: {err}")
            raise RenderError(name, reason, _line_of(err, name)) from err
        except RecursionError:
            raise RenderError(name, "the template recurses too deeply") from None
        except MemoryError:
            raise RenderError(name, "the template needs too much memory") from None
        except Exception as err:  # anything else a template can provoke is its error, never a 500
            reason = self._scrub(f"{type(err).__name__}: {err}")
            raise RenderError(name, reason, _line_of(err, name)) from err
        text = normalise(text)
        if not text:
            aside = " (a voicemail block is not part of the message)" if voicemail else ""
            raise RenderError(name, f"renders to empty text{aside}")
        return Rendered(text, normalise(voicemail) or None if voicemail is not None else None)

    def _scrub(self, message: str) -> str:
        for path in self._paths:
            message = message.replace(path, "<templates>")
        return message


def _not_found(name: str, names: list[str]) -> str:
    """`alrt (did you mean alert.j2? the templates are alert.j2, greeting.j2)`."""
    stems = {n.rsplit(".", 1)[0]: n for n in names}
    near = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
    if not near:  # `alrt` is nearer `alert` than `alert.j2`
        near = [stems[s] for s in difflib.get_close_matches(name.rsplit(".", 1)[0], stems, n=1, cutoff=0.6)]
    hint = f"did you mean {near[0]}? " if near else ""
    listed = f"the templates are {', '.join(names)}" if names else "there are no templates"
    return f"{name} ({hint}{listed})"


def _output(template: jinja2.Template, variables: Mapping[str, Any]) -> tuple[str, str | None]:
    """The template's output and its voicemail block's (None: it has none; see the module docstring), each
    refused as soon as it is longer than a render may output. As `Template.render` does, without its join:
    an error is raised again with the template's lines."""
    context = template.new_context(dict(variables))
    aside: list[str] = []

    def voicemail(ctx: Context) -> Iterator[str]:
        # In the block's place: the block (the next in the chain, a parent's when a child has none) is
        # rendered into `aside`, and the message gets nothing. `super()` inside it still finds its parent.
        chain = ctx.blocks[VOICEMAIL_BLOCK]
        aside.append(bounded_join(chain[chain.index(voicemail) + 1](ctx), MAX_OUTPUT_CHARS))
        return iter(())

    # First in the chain before the render starts: `{% extends %}` appends the parents' blocks after it.
    chain = context.blocks.setdefault(VOICEMAIL_BLOCK, [])
    chain.insert(0, voicemail)
    try:
        text = bounded_join(template.root_render_func(context), MAX_OUTPUT_CHARS)
        if len(chain) == 1:
            return text, None  # no voicemail block in the template or its parents
        if not aside:  # never reached: rendered on its own, with what the render left in force
            voicemail(context)
    except Exception:
        template.environment.handle_exception()  # raises it again
    # each time the block was rendered (a loop), a word apart
    return text, bounded_join([piece + " " for piece in aside], MAX_OUTPUT_CHARS + len(aside))


class PreparedTemplate:
    __slots__ = ("_renderer", "_template", "inline", "name")

    def __init__(self, renderer: MessageRenderer, name: str, template: jinja2.Template, inline: bool) -> None:
        self._renderer = renderer
        self._template = template
        self.name = name
        self.inline = inline  # given as text in a request, not a template of the server

    def render(
        self, variables: Mapping[str, Any], cpu_s: float = RENDER_CPU_S, cpu_now: float | None = None
    ) -> str:
        """The message for `variables` (a voicemail block left out); at most `cpu_s` of this thread's CPU
        time. `cpu_now`: this thread's CPU time now, when the caller has just read it (it saves reading it
        again)."""
        return self.speech(variables, cpu_s, cpu_now).text

    def speech(
        self, variables: Mapping[str, Any], cpu_s: float = RENDER_CPU_S, cpu_now: float | None = None
    ) -> Rendered:
        """The message and the voicemail for `variables`, in one render (as `render`)."""
        return self._renderer._run(self.name, self._template, variables, cpu_s, cpu_now)
