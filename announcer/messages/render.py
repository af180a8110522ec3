"""Message templates: a sandboxed Jinja environment, strict about missing variables.

Templates are written for the ear: autoescape is off (the text is spoken, not shown; TwiML escaping
happens where TwiML is built) and every undefined variable is an error before a call is placed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from announcer.messages.speakable import FILTERS

_SPACES = re.compile(r"\s+")


class RenderError(Exception):
    """A template could not be rendered: names the template, the line when known, and the reason."""

    def __init__(self, template: str, reason: str, line: int | None = None) -> None:
        self.template = template
        self.reason = reason
        self.line = line
        where = f"{template}, line {line}" if line else template
        super().__init__(f"{where}: {reason}")


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
        self.env = SandboxedEnvironment(
            loader=jinja2.FileSystemLoader(str(templates_dir)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(FILTERS)

    def prepare(self, name: str | None = None, source: str | None = None) -> PreparedTemplate:
        """A template loaded (or compiled) once, for rendering many recipients."""
        label = "<inline>" if source is not None else name
        assert label is not None, "a template name or source"
        try:
            template = self.env.from_string(source) if source is not None else self.env.get_template(label)
        except jinja2.TemplateNotFound as err:
            raise RenderError(label, "no such template") from err
        except jinja2.TemplateSyntaxError as err:
            raise RenderError(label, f"syntax error: {err.message}", err.lineno) from err
        return PreparedTemplate(self, label, template)

    def render(self, name: str, variables: Mapping[str, Any]) -> str:
        return self.prepare(name=name).render(variables)

    def render_text(self, source: str, variables: Mapping[str, Any]) -> str:
        return self.prepare(source=source).render(variables)

    def _run(self, name: str, template: jinja2.Template, variables: Mapping[str, Any]) -> str:
        try:
            text = normalise(template.render(**variables))
        except jinja2.UndefinedError as err:
            raise RenderError(name, f"missing variable: {err.message}", _line_of(err, name)) from err
        except jinja2.TemplateError as err:
            raise RenderError(name, str(err), _line_of(err, name)) from err
        except (ValueError, TypeError, ArithmeticError, LookupError) as err:
            raise RenderError(name, f"{type(err).__name__}: {err}", _line_of(err, name)) from err
        if not text:
            raise RenderError(name, "renders to empty text")
        return text


class PreparedTemplate:
    __slots__ = ("_renderer", "_template", "name")

    def __init__(self, renderer: MessageRenderer, name: str, template: jinja2.Template) -> None:
        self._renderer = renderer
        self._template = template
        self.name = name

    def render(self, variables: Mapping[str, Any]) -> str:
        return self._renderer._run(self.name, self._template, variables)
