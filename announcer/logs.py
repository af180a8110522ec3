"""Logs that carry the call: every record names the call SID, the delivery and the (masked) number it is
about, set once where a webhook, a dial or a media session starts, never threaded by hand.

The context lives in `contextvars`: each aiohttp request and each asyncio task has its own copy (a task
copies its creator's context when it is made), so a value bound in a handler or a dial task is seen by
every record logged under it, and by nothing else. `ANNOUNCER_LOG_FORMAT=json` writes one JSON object per
line for log shippers; text (the default) appends the context in brackets.

What never reaches a log: secrets (settings are SecretStr), whole phone numbers (`mask`), and the SQL
driver's parameters (the engine is made with `hide_parameters`; aiosqlite's DEBUG lines, which print the
parameters of every statement, are kept off).
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from announcer.messages.phones import mask

LogFormat = Literal["text", "json"]

_call_sid: ContextVar[str | None] = ContextVar("call_sid", default=None)
_delivery_id: ContextVar[int | None] = ContextVar("delivery_id", default=None)
_phone: ContextVar[str | None] = ContextVar("phone", default=None)  # masked when bound

# Libraries whose INFO lines are noise for an operator (or worse): quieted to WARNING.
_QUIET = {
    "aiohttp.access": logging.WARNING,
    # the twilio SDK logs every request with its headers at INFO: numbers in URLs
    "twilio": logging.WARNING,
    # a line per job added and per run: 10,000 lines at a start with 10,000 schedules
    "apscheduler": logging.WARNING,
    # "Context impl SQLiteImpl." and "Will assume non-transactional DDL." at every start
    "alembic": logging.WARNING,
    # one "HTTP Request: POST .../text-to-speech/..." line per TTS request
    "httpx": logging.WARNING,
    "httpcore": logging.WARNING,
    # at DEBUG it logs each statement it executes with its parameters: numbers and message texts
    "aiosqlite": logging.INFO,
    # SQLAlchemy's own statement echo (parameters are hidden by the engine, statements have none)
    "sqlalchemy.engine": logging.WARNING,
}


def bind(*, call_sid: str | None = None, delivery_id: int | None = None, phone: str | None = None) -> None:
    """Name what the current request or task is about; what is not given is left as it was."""
    if call_sid is not None:
        _call_sid.set(call_sid)
    if delivery_id is not None:
        _delivery_id.set(delivery_id)
    if phone is not None:
        _phone.set(mask(phone))


def context() -> dict[str, Any]:
    """What is bound now (for a record, or a test)."""
    out: dict[str, Any] = {}
    if (sid := _call_sid.get()) is not None:
        out["call_sid"] = sid
    if (delivery := _delivery_id.get()) is not None:
        out["delivery_id"] = delivery
    if (phone := _phone.get()) is not None:
        out["phone"] = phone
    return out


class ContextFilter(logging.Filter):
    """Adds the bound context to every record (attributes `call_sid`, `delivery_id`, `phone`, and
    `context`: the text form, "" when nothing is bound)."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = context()
        for key in ("call_sid", "delivery_id", "phone"):
            setattr(record, key, bound.get(key))
        record.context = " [" + " ".join(f"{k}={v}" for k, v in bound.items()) + "]" if bound else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the call's context, and
    the exception's traceback as one string when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("call_sid", "delivery_id", "phone"):
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"


def setup(level: str, fmt: LogFormat = "text") -> None:
    """The process' logging, once, by `announcer serve` and the other commands."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, floor in _QUIET.items():
        logger = logging.getLogger(name)
        logger.setLevel(max(floor, logging.getLevelName(level)))
