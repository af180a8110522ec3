"""Recipients as people write them: a CSV with a header row (`phone`, optional `name` and `timezone`,
every other column a variable of its row), read the same way by `announcer send --file` and the
dashboard's Send page. Every bad line is reported, with its line number as an editor shows it, before
anything is sent."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

CSV_COLUMNS = ("phone", "name", "timezone")  # every other column is a variable of that row's recipient
MAX_LISTED_PROBLEMS = 20


class RecipientsError(Exception):
    """What is wrong with a recipients file: a headline, then one line per problem."""

    def __init__(self, *lines: str) -> None:
        super().__init__(lines[0] if lines else "")
        self.lines = lines


@dataclass(frozen=True)
class Recipient:
    phone: str
    variables: dict[str, str]
    name: str | None = None
    timezone: str | None = None
    file_line: str | None = None  # "people.csv line 4", when the recipient came from --file

    @property
    def origin(self) -> str:
        """Where the user wrote this recipient, for messages about it."""
        return self.file_line or f"--to {self.phone}"

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"phone": self.phone, "variables": self.variables}
        if self.name is not None:
            body["name"] = self.name
        if self.timezone is not None:
            body["timezone"] = self.timezone
        return body


def _capped(problems: Sequence[str]) -> list[str]:
    """A 5,000-row file with a shifted column should not scroll the first problems off the screen."""
    shown = list(problems[:MAX_LISTED_PROBLEMS])
    if len(problems) > MAX_LISTED_PROBLEMS:
        shown.append(f"... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    return shown


def recipients_of_csv(label: str, lines: Iterable[str], where: str | None = None) -> list[Recipient]:
    """The recipients of CSV text with a header row (`label` names it in each problem, `where` in a
    problem of the CSV syntax itself); what `send --file` and the dashboard's Send page both read."""
    reader = csv.reader(lines)
    try:
        numbered = [(reader.line_num, row) for row in reader]
    except csv.Error as err:
        raise RecipientsError(f"error: {where or label} line {reader.line_num}: {err}") from None
    return _recipients_of_rows(label, [(n, row) for n, row in numbered if any(c.strip() for c in row)])


def _recipients_of_rows(label: str, rows: list[tuple[int, list[str]]]) -> list[Recipient]:
    if not rows:
        raise RecipientsError(f"error: {label} is empty: expected a header row with a phone column")
    header_line, header = rows[0]
    columns = [c.strip() for c in header]
    _check_header(label, header_line, columns)
    # phone/name/timezone whatever their case ("Phone" from a spreadsheet); variables keep theirs (Jinja's)
    role = {c.lower(): i for i, c in enumerate(columns) if c.lower() in CSV_COLUMNS}
    variable_columns = [(i, c) for i, c in enumerate(columns) if c.lower() not in CSV_COLUMNS]
    recipients: list[Recipient] = []
    problems: list[str] = []
    for line, row in rows[1:]:
        where = f"{label} line {line}"
        if len(row) != len(columns):
            problems.append(f"{where}: {len(row)} cells, the header has {len(columns)}")
            continue
        cells = [c.strip() for c in row]
        if not cells[role["phone"]]:
            problems.append(f"{where}: the phone cell is empty")
            continue
        recipients.append(
            Recipient(
                phone=cells[role["phone"]],
                # an empty cell is no value: the shared --var of that name (if any) applies instead
                variables={name: cells[i] for i, name in variable_columns if cells[i]},
                name=(cells[role["name"]] or None) if "name" in role else None,
                timezone=(cells[role["timezone"]] or None) if "timezone" in role else None,
                file_line=where,
            )
        )
    if problems:
        raise RecipientsError(
            f"error: {label}: {len(problems)} bad line(s); nothing was sent", *_capped(problems)
        )
    if not recipients:
        raise RecipientsError(f"error: {label} has a header but no recipients")
    return recipients


def _check_header(label: str, line: int, columns: list[str]) -> None:
    where = f"{label} line {line} (the header)"
    problems = [f"{where}: column {i + 1} has no name" for i, c in enumerate(columns) if not c]
    keys = [c.lower() if c.lower() in CSV_COLUMNS else c for c in columns if c]
    problems += [
        f"{where}: column {c!r} appears twice" for c in sorted({k for k in keys if keys.count(k) > 1})
    ]
    if "phone" not in keys:
        problems.append(f"{where}: no phone column (the columns are: {', '.join(columns)})")
    if problems:
        raise RecipientsError(f"error: {label}: bad header; nothing was sent", *problems)
