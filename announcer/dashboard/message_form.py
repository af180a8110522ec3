"""The message part of the Send and Schedules forms (template or text, shared variables, recipients) read
into the body the /v1 API takes, and the API's problems placed back next to the field, row and cell they
name. Recipients are read by the CLI's CSV reader (`send --file`): pasted numbers are a CSV of one
`phone` column, an uploaded CSV's columns become each row's variables exactly as there."""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import web
from jinja2 import meta, nodes
from multidict import MultiDictProxy

from announcer.dashboard.options_form import OptionsError, OptionsForm
from announcer.deliveries.plan import Problem
from announcer.messages.render import MessageRenderer
from announcer.recipients import Recipient, RecipientsError, recipients_of_csv

SHOWN_ROWS = 200  # recipients a table shows (every row is checked; a 10,000-row list is not a page)
FORM_KEY = re.compile(r"^[0-9a-f]{32}$")  # a form's idempotency key (secrets.token_hex(16))
PASTED = "the pasted recipients"
UPLOADED = "the uploaded CSV"
_ROW_FIELD = re.compile(r"^recipients\[([0-9]+)\](?:\.(.*))?$")
FormData = MultiDictProxy[str | bytes | bytearray | web.FileField]


def template_names(templates_dir: Path) -> list[str]:
    """The message templates a form offers (templates/*.j2)."""
    try:
        return sorted(p.name for p in templates_dir.glob("*.j2") if p.is_file())
    except OSError:
        return []


def template_variables(templates_dir: Path, template: str, text: str) -> list[str]:
    """The variables a message reads that no recipient brings by itself (`name` and `phone` they do):
    what the shared variables (or a CSV's columns) must give. A hint only: the render is the judge."""
    if template:
        if template not in template_names(templates_dir):
            return []
        try:
            text = (templates_dir / template).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return []
    if not text:
        return []
    try:
        tree = _parser(templates_dir).parse(text)
        found = meta.find_undeclared_variables(tree)
    except jinja2.TemplateError:
        return []
    # a name the text sets itself (in a branch: `{% if %}{% set level = ... %}`) is not asked of anyone
    stored = {n.name for n in tree.find_all(nodes.Name) if n.ctx == "store"}
    return sorted(found - stored - {"name", "phone"})


@functools.cache
def _parser(templates_dir: Path) -> jinja2.Environment:
    """The messages' own environment (their filters), here only to parse: it never renders."""
    return MessageRenderer(templates_dir).env


def new_key() -> str:
    return secrets.token_hex(16)


def _text(form: FormData, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


@dataclass
class MessageForm:
    """What the person typed, kept as typed: a form shown again with its problems keeps every value."""

    template: str = ""  # a template's name; "" for the text below
    template_text: str = ""
    variables: str = ""  # "name=value", one a line
    recipients: str = ""  # numbers one a line, or CSV with a header row (an uploaded CSV lands here)
    options: OptionsForm = field(default_factory=OptionsForm)  # "More options", as typed
    key: str = field(default_factory=new_key)  # this form's idempotency key: a double submit sends once
    source: str = PASTED  # what the recipients' problems call the text they came from
    unread: list[Problem] = field(default_factory=list)  # an upload that could not be read

    @classmethod
    def read(cls, form: FormData) -> MessageForm:
        upload = form.get("csv")
        recipients, source = _text(form, "recipients"), PASTED
        unread = []
        if isinstance(upload, web.FileField):
            raw = upload.file.read()
            if raw:
                name = upload.filename or UPLOADED
                if recipients.strip():
                    # Both given: which one was meant is the person's call, not a silent pick (the
                    # pasted ones stay in the form; a file input cannot be refilled).
                    reason = (
                        f"numbers were pasted and {name} was uploaded too: clear the pasted "
                        "numbers to use the CSV, or upload nothing to use them"
                    )
                    unread.append(Problem("recipients", reason))
                    raw = b""
            if raw:
                try:
                    # utf-8-sig as `send --file`: a spreadsheet's byte-order mark would rename `phone`
                    recipients, source = raw.decode("utf-8-sig"), name
                except UnicodeDecodeError as err:
                    reason = f"{name} is not UTF-8 text ({err.reason} at byte {err.start})"
                    unread.append(Problem("recipients", reason))
        key = _text(form, "key")
        return cls(
            template=_text(form, "template").strip(),
            template_text=_text(form, "template_text").strip(),
            variables=_text(form, "variables"),
            recipients=recipients,
            options=OptionsForm.read(form),
            key=key if FORM_KEY.match(key) else new_key(),
            source=source,
            unread=unread,
        )

    def recipient_list(self) -> list[Recipient]:
        """The recipients, read as `announcer send --file` reads a CSV; FormError naming every bad line."""
        lines = self.recipients.strip().splitlines()
        if not lines:
            raise FormError([Problem("recipients", "give at least one phone number, or upload a CSV")])
        if not _is_header(lines[0]):  # plain numbers, as `send --to` takes them
            return [Recipient(phone=line.strip(), variables={}) for line in lines if line.strip()]
        try:
            return recipients_of_csv(self.source, lines)
        except RecipientsError as err:
            raise FormError(
                [Problem("recipients", line.removeprefix("error: ")) for line in err.lines]
            ) from None

    def shared_variables(self) -> dict[str, str]:
        variables: dict[str, str] = {}
        problems = []
        for number, line in enumerate(self.variables.splitlines(), start=1):
            if not line.strip():
                continue
            name, sep, value = line.partition("=")
            if not sep or not name.strip():
                problems.append(Problem("variables", f"line {number}: expected name=value"))
                continue
            variables[name.strip()] = value.strip()
        if problems:
            raise FormError(problems)
        return variables

    def body(self, *, schedule: bool = False) -> tuple[dict[str, Any], list[Recipient]]:
        """The /v1 body's message part, its options (`schedule`: a schedule's, which has more) and the
        recipients it was made of; FormError with every problem the form itself has (the API's own
        validation comes after, on the body)."""
        problems: list[Problem] = list(self.unread)
        recipients: list[Recipient] = []
        variables: dict[str, str] = {}
        try:
            if not self.unread:
                recipients = self.recipient_list()
        except FormError as err:
            problems += err.problems
        try:
            variables = self.shared_variables()
        except FormError as err:
            problems += err.problems
        if self.template and self.template_text:
            problems.append(Problem("template", "pick a template or write one, not both"))
        elif not self.template and not self.template_text:
            problems.append(Problem("template", "pick a template or write one"))
        options: dict[str, Any] = {}
        try:
            options = self.options.options(schedule=schedule)
        except OptionsError as err:
            problems += err.problems
        if problems:
            raise FormError(problems, recipients)
        which = {"template": self.template} if self.template else {"template_text": self.template_text}
        body = {
            **which,
            "variables": variables,
            "recipients": [r.as_json() for r in recipients],
            "options": options,
        }
        return body, recipients


def _is_header(line: str) -> bool:
    return any(cell.strip().lower() == "phone" for cell in line.split(","))


class FormError(Exception):
    """Problems found in the form before the API's validation ran (named like the API's)."""

    def __init__(self, problems: Sequence[Problem], recipients: Sequence[Recipient] = ()) -> None:
        super().__init__("; ".join(f"{p.field}: {p.reason}" for p in problems))
        self.problems = list(problems)
        self.recipients = list(recipients)


@dataclass
class Placed:
    """Problems by where the page shows them: a form field (`template`, `when.cron`, ...), or a row of the
    recipients table and its column (`phone`, `name`, `timezone`, a variable's name; "" for the row)."""

    problems: list[Problem] = field(default_factory=list)
    fields: dict[str, list[str]] = field(default_factory=dict)
    rows: dict[int, dict[str, list[str]]] = field(default_factory=dict)

    @classmethod
    def of(cls, problems: Sequence[Problem]) -> Placed:
        placed = cls(list(problems))
        for p in problems:
            row = _ROW_FIELD.match(p.field)
            if row is None:
                placed.fields.setdefault(p.field, []).append(p.reason)
                continue
            column = row.group(2) or ""
            column = column.removeprefix("variables.") if column != "variables" else ""
            placed.rows.setdefault(int(row.group(1)), {}).setdefault(column, []).append(p.reason)
        return placed

    def at(self, *prefixes: str) -> list[str]:
        """The reasons of the fields named `prefix` or inside it (`when` holds `when.cron`)."""
        return [
            f"{name}: {reason}" if name not in prefixes else reason
            for name, reasons in self.fields.items()
            if any(name == p or name.startswith((p + ".", p + "[")) for p in prefixes)
            for reason in reasons
        ]

    def cell(self, row: int, column: str) -> list[str]:
        return self.rows.get(row, {}).get(column, [])

    def row_rest(self, row: int, columns: Sequence[str]) -> list[str]:
        """A row's problems no shown column holds (the row itself, its variables as a whole)."""
        return [
            f"{column}: {reason}" if column else reason
            for column, reasons in self.rows.get(row, {}).items()
            if column not in columns
            for reason in reasons
        ]


def columns_of(recipients: Sequence[Recipient]) -> list[str]:
    """The recipients table's variable columns, in the CSV's order."""
    seen: dict[str, None] = {}
    for r in recipients:
        seen.update(dict.fromkeys(r.variables))
    return list(seen)


def has_timezones(recipients: Sequence[Recipient]) -> bool:
    return any(r.timezone for r in recipients)


def recipient_columns(recipients: Sequence[Recipient]) -> list[str]:
    """Every column the recipients table shows, as Placed names them."""
    fixed = ["phone", "name"] + (["timezone"] if has_timezones(recipients) else [])
    return fixed + columns_of(recipients)
