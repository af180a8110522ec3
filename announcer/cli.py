"""Command line: `announcer serve | render | send | schedule | db upgrade | sandbox call-in`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import re
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import aiohttp
from aiohttp import web

from announcer import logs
from announcer.config import ConfigError, Settings, load_settings
from announcer.instance import InstanceError, claim
from announcer.messages.render import MessageRenderer, RenderError
from announcer.recipients import Recipient, RecipientsError, recipients_of_csv


class CommandError(Exception):
    """Stop the command: each of `lines` goes to stderr and `code` is the exit status (2: nothing to do
    until the user fixes the command line, the input, the token or the URL)."""

    def __init__(self, *lines: str, code: int = 2) -> None:
        super().__init__(lines[0] if lines else "")
        self.lines = lines
        self.code = code


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


# The collector's thresholds while serving (CPython's default is 700, 10, 10). Each call's set-up allocates
# tens of thousands of container objects (SQLAlchemy rows and contexts, aiohttp requests, SDK objects) and
# each media message a few (a future, a coroutine, the message: 100,000 a second at 1,000 calls), all dead
# within milliseconds. At the default the young generation is collected every 700 of them, and what is
# alive at that instant (the calls in flight, every session's pending read) is promoted and scanned again
# by the older generations' collections: 13 % of the process's CPU at 60 set-ups a second, 8.6 % at 300
# streaming calls. Collected over ten times less often, most of it has died by then; a young collection
# then takes about a millisecond, within the media clock's slack.
GC_THRESHOLDS = (10_000, 20, 20)


async def _freeze_startup_heap(app: web.Application) -> None:
    """Once everything is imported and opened, move those objects out of the garbage collector's view,
    and turn the collector back on (`cmd_serve` turned it off: the CPython docs' "gc.disable() early,
    gc.freeze() later" pattern, "gc" module).

    A full collection scans every tracked object and stops the event loop while it does: with the SDKs,
    SQLAlchemy and aiohttp loaded that is tens of milliseconds, felt by every live call as a late frame.
    What exists at start lives for the whole process anyway. No collection first: it took 0.14 s of the
    start to free some 2,000 objects of import-time garbage, which are frozen with the rest instead; then
    the serving thresholds (GC_THRESHOLDS)."""
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    gc.enable()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    if args.host or args.port is not None:
        settings = settings.model_copy(
            update={
                "host": args.host or settings.host,
                "port": settings.port if args.port is None else args.port,
            }
        )
    # Whatever the shell's umask: what the service writes (database, cache, recordings, token) is the
    # owner's only. The writers set 0600 themselves too; this covers what a library creates.
    os.umask(0o077)
    if args.workers is not None and args.workers != 1:
        from announcer.workers import supervise  # N processes of this command (workers.py)

        logs.setup(settings.announcer_log_level, settings.announcer_log_format)
        return supervise(settings, args.workers)
    try:
        held = claim(settings.host, settings.port, settings.announcer_data_dir)
    except InstanceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    logs.setup(settings.announcer_log_level, settings.announcer_log_format)
    # Off while the service imports and opens everything: its heap grows by a million objects, and each
    # full collection on the way scans all of them again (0.15 s of a start). What is made at start
    # lives as long as the process; the collector is back on before the server listens.
    gc.disable()
    from announcer.app import create_app, public_url

    try:
        app = create_app(settings)
    except RenderError as err:
        held.release()
        print(f"error: template {err}", file=sys.stderr)
        return 2
    log = logging.getLogger("announcer")
    mode = "sandbox" if settings.twilio_sandbox or settings.tts_sandbox else "live"
    log.info(
        "announcer starting in %s mode on %s:%s (public URL %s)",
        mode,
        settings.host,
        settings.port,
        public_url(settings),
    )
    app.on_startup.append(_freeze_startup_heap)  # after the lifecycle contexts have opened everything
    from announcer.store.reachable import DatabaseUnavailable

    try:
        # The socket bound by `claim`: the port was ours before anything was opened or written.
        web.run_app(app, sock=held.sock, print=None, access_log=None, loop=_new_loop())
    except DatabaseUnavailable as err:  # raised by the lifecycle's first step, before anything else opened
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        held.release()
    return 0


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed: the same asyncio API with a third of the cost per socket event."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _parse_vars(items: Iterable[str]) -> dict[str, str]:
    variables: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CommandError(f"error: --var {item!r}: expected key=value")
        variables[key] = value
    return variables


def cmd_render(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    try:
        variables = _parse_vars(args.var)
    except CommandError as err:
        print(*err.lines, sep="\n", file=sys.stderr)
        return err.code
    try:
        said = MessageRenderer(settings.announcer_templates_dir).prepare(name=args.template).speech(variables)
        print(said.text)
        if said.voicemail is not None:  # the template's voicemail block: what an answering machine is told
            print(f"voicemail: {said.voicemail}")
    except RenderError as err:
        print(f"error: template {err}", file=sys.stderr)
        return 2
    return 0


# --- send: post an alert to the running service and follow it to the end -------------------------------

# A delivery in one of these states is still on its way; any other state is its outcome. Listed here rather
# than imported from announcer.store.models so that a client printing progress does not load SQLAlchemy.
IN_FLIGHT = frozenset({"pending", "queued", "dialing", "ringing", "in_progress"})
CALLING = frozenset({"dialing", "ringing", "in_progress"})
SUCCESS = frozenset({"heard", "confirmed"})  # a person heard it (a voicemail is not a person)
OUTCOME_ORDER = (
    "heard",
    "confirmed",
    "voicemail_left",
    "hung_up_early",
    "machine",
    "fax",
    "no_answer",
    "busy",
    "failed",
    "canceled",
    "opted_out",
)
# Who or what answered, in words (the API's names: voicemail_left, machine, fax)
OUTCOME_WORDS = {
    "voicemail_left": "voicemail left",
    "machine": "answering machine, no message left",
    "fax": "fax machine",
}
ANSWERED_BY_WORDS = {
    "human": "a person",
    "unknown": "unknown (taken for a person)",
    "machine_start": "an answering machine",
    "machine_end_beep": "an answering machine (after its beep)",
    "machine_end_silence": "an answering machine (no beep)",
    "machine_end_other": "an answering machine (no beep)",
    "fax": "a fax machine",
}
POLL_S = 0.5
POLL_RETRIES = 10  # consecutive failed polls (a service restarting) before giving up on following the alert
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 120.0  # accepting 10,000 recipients renders every message first
DELIVERIES_PAGE = 500
EXIT_STILL_ACTIVE = 3  # --timeout passed: the alert goes on, its outcome is not known yet
EXIT_INTERRUPTED = 130
# the flag of `schedule add` that gave each field of the body, named after a 422's problem with that field
SCHEDULE_FLAGS = {
    "name": "--name",
    "template": "--template",
    "template_text": "--text",
    "variables": "--var",
    "when.at": "--at",
    "when.cron": "--cron",
    "when.timezone": "--timezone",
    "when.start": "--start",
    "when.end": "--end",
    "options.misfire": "--misfire",
    "options.max_attempts": "--max-attempts",
    "options.retry_on": "--retry-on",
    "options.retry_backoff_s": "--retry-backoff",
    "options.callback_url": "--callback-url",
    "options.machine_detection": "--no-machine-detection",
    "options.on_machine": "--on-machine",
}


def read_recipients_csv(path: Path) -> list[Recipient]:
    """The recipients of a CSV file with a header row; CommandError listing every bad line (with its line
    number, as an editor shows it) before anything is sent."""
    try:
        # utf-8-sig: spreadsheets put a byte-order mark in front of the header, which would rename `phone`
        with path.open(newline="", encoding="utf-8-sig") as f:
            return recipients_of_csv(path.name, f, where=str(path))
    except RecipientsError as err:
        raise CommandError(*err.lines) from None
    except OSError as err:
        raise CommandError(f"error: cannot read {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise CommandError(f"error: {path} is not UTF-8 text ({err.reason} at byte {err.start})") from None


def _take_old_names(args: argparse.Namespace) -> None:
    """`send --name`, the first spelling of `--recipient-name`: still read (scripts use it), with a line
    saying so, since `schedule add --name` names the schedule."""
    old: list[str] = args.old_recipient_names
    if not old:
        return
    if args.recipient_names:
        raise CommandError("error: name the recipients with --recipient-name only (not with --name too)")
    print(
        "warning: `send --name` is deprecated, use --recipient-name (the same meaning; in `schedule add`, "
        "--name names the schedule)",
        file=sys.stderr,
    )
    args.recipient_names = old


def _recipients_of_args(args: argparse.Namespace) -> list[Recipient]:
    """--file and --to (with their names: --recipient-name, one per --to) as recipients."""
    name_flag = "--recipient-name"
    recipients = read_recipients_csv(args.file) if args.file is not None else []
    names: list[str] = args.recipient_names
    if names and len(names) != len(args.to):
        raise CommandError(
            f"error: {len(names)} {name_flag} for {len(args.to)} --to: give one {name_flag} per --to, "
            "in the same order"
        )
    recipients += [
        Recipient(phone=phone, variables={}, name=names[i] if names else None)
        for i, phone in enumerate(args.to)
    ]
    if not recipients:
        raise CommandError("error: no recipients: give --to PHONE (repeatable) or --file recipients.csv")
    return recipients


def _alert_body(args: argparse.Namespace, recipients: list[Recipient]) -> dict[str, Any]:
    """The POST /v1/alerts body; options the user did not give are left to the service's defaults."""
    given: dict[str, Any] = {}  # the request's JSON, as the service's API reads it
    if args.confirm:
        given["confirm"] = True
    if args.max_attempts is not None:
        given["max_attempts"] = args.max_attempts
    if args.retry_on is not None:
        # "no-answer" as Twilio spells it is accepted too; "" retries on nothing
        given["retry_on"] = [w.strip().replace("-", "_") for w in args.retry_on.split(",") if w.strip()]
    if args.retry_backoff is not None:
        given["retry_backoff_s"] = args.retry_backoff
    if args.callback_url is not None:
        given["callback_url"] = args.callback_url
    if args.no_machine_detection:
        given["machine_detection"] = False
    if args.on_machine is not None:
        given["on_machine"] = args.on_machine.replace("-", "_")
    template = {"template": args.template} if args.template is not None else {"template_text": args.text}
    return {
        **template,
        "variables": _parse_vars(args.var),
        "recipients": [r.as_json() for r in recipients],
        "options": given,
    }


def _url_and_token(args: argparse.Namespace) -> tuple[str, str]:
    """--url and --token, else what the service itself uses. Settings are read only when a flag is missing:
    with both given, a broken .env in the current directory does not matter."""
    if args.url and args.token:
        return _checked_url(args.url), str(args.token)
    settings = _settings_or_exit()
    return _checked_url(args.url or _default_url(settings)), args.token or _default_token(settings)


def _default_url(settings: Settings) -> str:
    """PUBLIC_URL, as the service announces itself; else HOST:PORT, where a wildcard means this machine."""
    if settings.public_url:
        return settings.public_url
    host = "127.0.0.1" if settings.host in ("", "0.0.0.0", "::") else settings.host
    return f"http://[{host}]:{settings.port}" if ":" in host else f"http://{host}:{settings.port}"


def _default_token(settings: Settings) -> str:
    """ANNOUNCER_API_TOKEN, else the one a running service without it wrote for this run (app._api_token)."""
    if settings.announcer_api_token is not None:
        return settings.announcer_api_token.get_secret_value()
    path = settings.announcer_data_dir / "api-token"
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        token = ""
    except OSError as err:
        raise CommandError(f"error: cannot read the API token in {path}: {err.strerror or err}") from None
    if not token:
        raise CommandError(
            f"error: no API token: pass --token, set ANNOUNCER_API_TOKEN, or start `announcer serve` here "
            f"(without ANNOUNCER_API_TOKEN it writes one to {path})"
        )
    return token


def _checked_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise CommandError(f"error: --url {url!r}: expected http://HOST:PORT or https://...")
    return url.rstrip("/")


def _client(token: str) -> aiohttp.ClientSession:
    """The HTTP session every command talking to the service uses: its bearer token and time limits."""
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S)
    return aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}, timeout=timeout)


class Api:
    """The few /v1 calls `send` and `schedule` make; every failure to talk to the service becomes one
    CommandError line that names the URL."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str) -> None:
        self.http = http
        self.base_url = base_url

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        url = self.base_url + path
        try:
            async with self.http.request(method, url, **kwargs) as resp:
                try:
                    return resp.status, await resp.json(content_type=None)
                except ValueError:
                    raise CommandError(
                        f"error: {url} answered {resp.status} {resp.reason} without JSON: "
                        "is this the announcer service (--url)?"
                    ) from None
        except aiohttp.ClientConnectorError as err:
            errno = err.os_error.errno
            reason = os.strerror(errno) if errno is not None and errno > 0 else err.strerror
            raise CommandError(
                f"error: cannot reach the announcer service at {self.base_url}: {reason} "
                "(is `announcer serve` running there? see --url)"
            ) from None
        except TimeoutError:
            raise CommandError(
                f"error: no answer from the announcer service at {self.base_url} in time"
            ) from None
        except aiohttp.ClientError as err:
            raise CommandError(
                f"error: talking to the announcer service at {self.base_url} failed: {err}"
            ) from None

    async def create_alert(
        self, body: dict[str, Any], headers: dict[str, str], recipients: list[Recipient]
    ) -> dict[str, Any]:
        status, answer = await self.request("POST", "/v1/alerts", json=body, headers=headers)
        if status != 202 or not isinstance(answer, dict) or "id" not in answer:
            raise CommandError(*_refusal(status, answer, recipients))
        return answer

    async def alert(self, alert_id: str) -> dict[str, Any]:
        status, answer = await self.request("GET", f"/v1/alerts/{alert_id}")
        if status != 200 or not isinstance(answer, dict):
            raise CommandError(*_refusal(status, answer))
        return answer

    async def deliveries(self, alert_id: str) -> list[dict[str, Any]]:
        """Every delivery of the alert, page by page (`next_after` is null on the last page)."""
        found: list[dict[str, Any]] = []
        after = -1
        while True:
            status, page = await self.request(
                "GET", f"/v1/alerts/{alert_id}/deliveries", params={"after": after, "limit": DELIVERIES_PAGE}
            )
            if status != 200 or not isinstance(page, dict):
                raise CommandError(*_refusal(status, page))
            found += page["deliveries"]
            if page.get("next_after") is None:
                return found
            after = int(page["next_after"])

    async def create_schedule(self, body: dict[str, Any], recipients: list[Recipient]) -> dict[str, Any]:
        status, answer = await self.request("POST", "/v1/schedules", json=body)
        if status != 201 or not isinstance(answer, dict) or "id" not in answer:
            raise CommandError(*_refusal(status, answer, recipients, SCHEDULE_FLAGS))
        return answer

    async def schedules(self) -> list[dict[str, Any]]:
        status, answer = await self.request("GET", "/v1/schedules")
        if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("schedules"), list):
            raise CommandError(*_refusal(status, answer))
        return [s for s in answer["schedules"] if isinstance(s, dict)]

    async def set_schedule_status(self, schedule_id: str, status: str) -> dict[str, Any]:
        """Pause ("paused") or resume ("active") a schedule; its view after the change."""
        code, answer = await self.request("PATCH", _schedule_path(schedule_id), json={"status": status})
        if code != 200 or not isinstance(answer, dict):
            raise CommandError(*_schedule_refusal(schedule_id, code, answer))
        return answer

    async def oncall(self, at: str | None) -> dict[str, Any]:
        """GET /v1/oncall (at `at`, ISO-8601 with its offset; else now)."""
        status, answer = await self.request("GET", "/v1/oncall", params={"at": at} if at else None)
        if status != 200 or not isinstance(answer, dict) or not isinstance(answer.get("rotations"), list):
            raise CommandError(*_refusal(status, answer))
        return answer

    async def delete_schedule(self, schedule_id: str) -> None:
        status, answer = await self.request("DELETE", _schedule_path(schedule_id))
        if status != 204:
            raise CommandError(*_schedule_refusal(schedule_id, status, answer))


def _schedule_path(schedule_id: str) -> str:
    return f"/v1/schedules/{quote(schedule_id, safe='')}"


def _schedule_refusal(schedule_id: str, status: int, answer: Any) -> list[str]:
    """As _refusal, with the schedule named: `error: schedule sc_x: the service answered 404 ...`."""
    first, *rest = _refusal(status, answer)
    return [first.replace("error: ", f"error: schedule {schedule_id}: ", 1), *rest]


def _refusal(
    status: int, answer: Any, recipients: Sequence[Recipient] = (), flags: Mapping[str, str] | None = None
) -> list[str]:
    """An API error as lines: the message, then each problem of a 422 as `recipients[3].phone: reason`
    (followed by where the user wrote that recipient: a CSV line or a --to; or the flag that gave the
    field, `when.cron: reason  [--cron]`, for the fields in `flags`)."""
    body: dict[str, Any] = answer if isinstance(answer, dict) else {}
    lines = [f"error: the service answered {status} {body.get('error', '')}: {body.get('message', answer)}"]
    problems = [p for p in body.get("problems") or [] if isinstance(p, dict)]
    for problem in problems:
        field = problem.get("field", "body")
        line = f"{field}: {problem.get('reason', '')}"
        index = problem.get("index")
        if isinstance(index, int) and 0 <= index < len(recipients):
            line += f"  [{recipients[index].origin}]"
        elif flags and field in flags:
            line += f"  [{flags[field]}]"
        lines.append(line)
    if not problems and body.get("field"):
        lines.append(f"{body['field']}: {body.get('message', '')}")
    if status == 401:
        lines.append("(the token comes from --token, ANNOUNCER_API_TOKEN, or the service's data/api-token)")
    return lines


def _outcomes(counts: dict[str, int]) -> str:
    order = {state: i for i, state in enumerate(OUTCOME_ORDER)}
    done = sorted(
        (s for s, n in counts.items() if n and s not in IN_FLIGHT), key=lambda s: (order.get(s, 99), s)
    )
    return ", ".join(f"{_word(state)} {counts[state]}" for state in done)


def _word(state: str) -> str:
    return OUTCOME_WORDS.get(state, state)


def _facts(d: dict[str, Any]) -> list[str]:
    """A delivery's call facts in words: who answered, how much of the message played, the keys."""
    parts = []
    if d.get("answered_by"):
        parts.append("answered by " + ANSWERED_BY_WORDS.get(d["answered_by"], d["answered_by"]))
    played, length = d.get("played_ms"), d.get("message_ms")
    if played is not None:
        parts.append(f"played {played / 1000:.1f} s" + (f" of {length / 1000:.1f} s" if length else ""))
    if d.get("keys"):
        parts.append("pressed " + " ".join(d["keys"]))
    return parts


class Progress:
    """How the alert goes, as it goes: for one recipient a line per change of state; for several a
    progress bar redrawn in place on a terminal, or a plain line per change when piped to a file."""

    def __init__(self, recipients: list[Recipient], total: int, out: TextIO) -> None:
        self.single = recipients[0] if total == 1 and len(recipients) == 1 else None
        self.total = total
        self.out = out
        self.tty = out.isatty()
        self.started = time.monotonic()
        self.last = ""
        self.drawn = 0  # width of the bar on screen, to blank out what a shorter redraw leaves behind

    def update(self, counts: dict[str, int]) -> None:
        if self.single is not None:
            self._single(self.single, counts)
        elif self.tty:
            self._bar(counts)
        else:
            line = self._done(counts)
            if line != self.last:
                self.last = line
                print(line, file=self.out, flush=True)

    def close(self) -> None:
        if self.drawn:
            print(file=self.out, flush=True)
            self.drawn = 0

    def _single(self, recipient: Recipient, counts: dict[str, int]) -> None:
        state = next((s for s, n in counts.items() if n), "")
        if state and state != self.last:
            self.last = state
            who = recipient.phone + (f" ({recipient.name})" if recipient.name else "")
            print(
                f"{time.monotonic() - self.started:6.1f}s  {who}: {_word(state)}", file=self.out, flush=True
            )

    def _done(self, counts: dict[str, int]) -> str:
        done = sum(n for s, n in counts.items() if s not in IN_FLIGHT)
        outcomes = _outcomes(counts)
        return f"{done}/{self.total} done" + (f": {outcomes}" if outcomes else "")

    def _bar(self, counts: dict[str, int]) -> None:
        done = sum(n for s, n in counts.items() if s not in IN_FLIGHT)
        calling = sum(n for s, n in counts.items() if s in CALLING)
        width = 20
        filled = width * done // self.total if self.total else width
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self._done(counts)}"
        if calling:
            line += f" | calling {calling}"
        # a line wider than the terminal wraps, and \r then redraws only its last part
        line = line[: max(shutil.get_terminal_size().columns - 1, 20)]
        print("\r" + line.ljust(self.drawn), end="", file=self.out, flush=True)
        self.drawn = len(line)


async def _follow(api: Api, alert_id: str, progress: Progress, timeout: float | None) -> dict[str, Any]:
    """Poll the alert until it is no longer active (or `timeout` passes); its last view."""
    deadline = None if timeout is None else time.monotonic() + timeout
    failures = 0
    while True:
        try:
            view = await api.alert(alert_id)
        except CommandError as err:
            # a restarting service or a dropped connection is not the end of the alert: try again for a while
            failures += 1
            if failures >= POLL_RETRIES:
                raise CommandError(
                    *err.lines, f"(the alert {alert_id} was accepted and goes on without us)"
                ) from None
            await asyncio.sleep(POLL_S)
            continue
        failures = 0
        progress.update(view.get("counts") or {})
        if view.get("status") != "active" or (deadline is not None and time.monotonic() >= deadline):
            return view
        await asyncio.sleep(POLL_S)  # a person (or a script) waiting at a terminal: polling is fine here


def _delivery_line(d: dict[str, Any], recipients: list[Recipient]) -> str:
    who = str(d["phone"]) + (f" ({d['name']})" if d.get("name") else "")
    detail = ", ".join(
        part
        for part in (
            f"code {d['outcome_code']}" if d.get("outcome_code") is not None else "",
            str(d.get("outcome_reason") or ""),
            *_facts(d),
        )
        if part
    )
    outcome = _word(str(d.get("outcome") or d.get("state")))
    line = f"  #{d['index']} {who}: {outcome}" + (f" ({detail})" if detail else "")
    index = d["index"]
    if isinstance(index, int) and 0 <= index < len(recipients) and recipients[index].file_line:
        line += f"  [{recipients[index].file_line}]"
    return line


async def _report(api: Api, view: dict[str, Any], recipients: list[Recipient], started: float) -> int:
    """The per-outcome summary and a line for each recipient who did not hear the message; the exit code."""
    counts: dict[str, int] = view.get("counts") or {}
    status = view.get("status")
    print(f"{status} after {time.monotonic() - started:.1f} s: {_outcomes(counts) or 'nothing finished yet'}")
    if status == "active":
        print(
            f"error: the alert is still active after --timeout and goes on: "
            f"GET {api.base_url}/v1/alerts/{view['id']}",
            file=sys.stderr,
        )
        return EXIT_STILL_ACTIVE
    missed = [
        d
        for d in await api.deliveries(str(view["id"]))
        if (d.get("outcome") or d.get("state")) not in SUCCESS
    ]
    if not missed:
        return 0
    print(f"not heard ({len(missed)}):")
    for d in missed:
        print(_delivery_line(d, recipients))
    return 1


async def _send(
    args: argparse.Namespace, body: dict[str, Any], recipients: list[Recipient], url: str, token: str
) -> int:
    async with _client(token) as http:
        api = Api(http, url)
        extra = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key is not None else {}
        accepted = await api.create_alert(body, extra, recipients)
        alert_id = str(accepted["id"])
        if args.no_wait:
            print(alert_id)  # alone on stdout: `id=$(announcer send --no-wait ...)`
            return 0
        replayed = " (replayed: this Idempotency-Key was used before; following that alert)"
        count = int(accepted.get("recipients", len(recipients)))
        print(
            f"alert {alert_id}: {count} recipient(s){replayed if accepted.get('replayed') else ''}",
            flush=True,
        )
        started = time.monotonic()
        progress = Progress(recipients, count, sys.stdout)
        try:
            view = await _follow(api, alert_id, progress, args.timeout)
        finally:
            progress.close()
        return await _report(api, view, recipients, started)


def cmd_send(args: argparse.Namespace) -> int:
    try:
        if args.timeout is not None and args.timeout <= 0:
            raise CommandError("error: --timeout must be more than 0 seconds")
        _take_old_names(args)
        recipients = _recipients_of_args(args)
        body = _alert_body(args, recipients)
        url, token = _url_and_token(args)
        return asyncio.run(_send(args, body, recipients, url, token))
    except CommandError as err:
        print(*err.lines, sep="\n", file=sys.stderr)
        return err.code
    except KeyboardInterrupt:
        # the service, not this command, places the calls: an accepted alert carries on without us
        print("\ninterrupted: an alert already accepted goes on (GET /v1/alerts/<id>)", file=sys.stderr)
        return EXIT_INTERRUPTED


# --- schedule: reminders the running service keeps (add, list, pause, resume, rm) -----------------------


def _schedule_body(args: argparse.Namespace, recipients: list[Recipient]) -> dict[str, Any]:
    """The POST /v1/schedules body: an alert's body (template, variables, recipients, options) with a
    `when`, the schedule's name and its own options; what the user did not give is left to the service."""
    body = _alert_body(args, recipients)
    at = None if args.at is None else _at(args.at, args.timezone)
    when: dict[str, Any] = {"at": at} if at is not None else {"cron": args.cron}
    for key in ("timezone", "start", "end"):
        if getattr(args, key) is not None:
            when[key] = getattr(args, key)
    body["when"] = when
    if args.name is not None:
        body["name"] = args.name
    if args.misfire is not None:
        body["options"]["misfire"] = args.misfire
    return body


_RELATIVE_DAY = re.compile(r"(today|tomorrow)[ T]+([0-9]{1,2}):([0-9]{2})", re.IGNORECASE)


def _at(value: str, timezone: str | None, today: date | None = None) -> str:
    """--at as the API reads it: `today HH:MM` and `tomorrow HH:MM` become that day's date in --timezone
    (read there by the service), or with this machine's offset without one; anything else is sent as
    given (ISO-8601)."""
    relative = _RELATIVE_DAY.fullmatch(value.strip())
    if relative is None:
        return value
    word, hour, minute = relative.group(1).lower(), int(relative.group(2)), int(relative.group(3))
    if hour > 23 or minute > 59:
        raise CommandError(f"error: --at {value!r}: no such time of day")
    try:
        zone = ZoneInfo(timezone) if timezone else None
    except (ZoneInfoNotFoundError, ValueError):
        raise CommandError(f"error: --timezone {timezone!r}: unknown time zone") from None
    day = (today or datetime.now(zone).date()) + timedelta(days=1 if word == "tomorrow" else 0)
    if zone is not None:
        return f"{day.isoformat()}T{hour:02d}:{minute:02d}"
    return datetime(day.year, day.month, day.day, hour, minute).astimezone().isoformat(timespec="minutes")


def _moment_text(value: Any) -> str:
    """An ISO-8601 time as a person reads it: `2026-11-30 09:00+01:00` (seconds only when there are)."""
    if not isinstance(value, str):
        return "-" if value is None else str(value)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return value
    return moment.isoformat(sep=" ", timespec="seconds" if moment.second else "minutes")


def _when_text(when: Any) -> str:
    """A schedule's `when` on one line: `once at 2026-11-30 09:00+01:00 (Europe/Berlin)` or
    `cron 0 8 * * mon-fri (Europe/Berlin) from ... until ...`."""
    if not isinstance(when, dict):
        return str(when)
    zone = f" ({when['timezone']})" if when.get("timezone") else ""
    if when.get("at"):
        return f"once at {_moment_text(when['at'])}{zone}"
    text = f"cron {when.get('cron')}{zone}"
    if when.get("start"):
        text += f" from {_moment_text(when['start'])}"
    if when.get("end"):
        text += f" until {_moment_text(when['end'])}"
    return text


def _cell(value: Any) -> str:
    """One table cell on one line, whatever the name holds (a tab, a newline)."""
    return "-" if value is None or value == "" else " ".join(str(value).split())


def _schedule_table(schedules: list[dict[str, Any]]) -> list[str]:
    header = ("ID", "NAME", "STATUS", "NEXT RUN", "WHEN")
    rows = [
        (
            _cell(s.get("id")),
            _cell(s.get("name")),
            _cell(s.get("status")),
            _moment_text(s.get("next_run_at")),
            _when_text(s.get("when")),
        )
        for s in schedules
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in [header, *rows]
    ]


def _next_run(view: dict[str, Any]) -> str:
    return f"next run {_moment_text(view['next_run_at'])}" if view.get("next_run_at") else "no next run"


def _failed(err: CommandError) -> int:
    print(*err.lines, sep="\n", file=sys.stderr)
    return err.code


async def _with_api(url: str, token: str, work: Callable[[Api], Awaitable[int]]) -> int:
    async with _client(token) as http:
        return await work(Api(http, url))


def _on_service(args: argparse.Namespace, work: Callable[[Api], Awaitable[int]]) -> int:
    """Run `work` against the service of --url and --token (else the one of this machine's settings)."""
    try:
        url, token = _url_and_token(args)
        return asyncio.run(_with_api(url, token, work))
    except CommandError as err:
        return _failed(err)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: a request already sent may have taken effect (see `announcer schedule list`)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


def cmd_schedule_add(args: argparse.Namespace) -> int:
    try:
        if args.cron is not None and args.timezone is None:
            raise CommandError(
                "error: --cron needs --timezone ZONE (an IANA zone, e.g. Europe/Berlin): "
                "8 o'clock is not the same moment everywhere"
            )
        recipients = _recipients_of_args(args)
        body = _schedule_body(args, recipients)
    except CommandError as err:
        return _failed(err)

    async def add(api: Api) -> int:
        created = await api.create_schedule(body, recipients)
        print(f"schedule {created['id']}: {created.get('status')}, {_next_run(created)}")
        return 0

    return _on_service(args, add)


def cmd_schedule_list(args: argparse.Namespace) -> int:
    async def listing(api: Api) -> int:
        schedules = await api.schedules()
        if not schedules:
            print("no schedules")
        for line in _schedule_table(schedules):
            print(line.rstrip())
        return 0

    return _on_service(args, listing)


def _set_status(args: argparse.Namespace, status: str) -> int:
    schedule_id: str = args.schedule_id

    async def change(api: Api) -> int:
        view = await api.set_schedule_status(schedule_id, status)
        state = str(view.get("status"))
        print(f"schedule {schedule_id}: {state}" + (f", {_next_run(view)}" if state == "active" else ""))
        return 0

    return _on_service(args, change)


def cmd_schedule_pause(args: argparse.Namespace) -> int:
    return _set_status(args, "paused")


def cmd_schedule_resume(args: argparse.Namespace) -> int:
    return _set_status(args, "active")


def cmd_schedule_rm(args: argparse.Namespace) -> int:
    schedule_id: str = args.schedule_id

    async def remove(api: Api) -> int:
        await api.delete_schedule(schedule_id)
        print(f"schedule {schedule_id}: deleted")
        return 0

    return _on_service(args, remove)


def cmd_db_upgrade(_: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    from announcer.store.db import Database
    from announcer.store.reachable import DatabaseUnavailable

    async def run() -> None:
        db = Database(settings.resolved_database_url, setting=settings.database_setting)
        try:
            await db.upgrade()
        finally:
            await db.dispose()

    try:
        asyncio.run(run())
    except DatabaseUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("database is up to date")
    return 0


def cmd_sandbox_call_in(args: argparse.Namespace) -> int:
    try:
        info = _sandbox_info(args)
    except CommandError as err:
        return _failed(err)
    lines: list[str] = []
    if args.agent:
        if not info.get("greeting_agent"):
            print(
                "error: the greeting line does not hand callers to the agent: restart the service with "
                "GREETING_AGENT=1 (e.g. `GREETING_AGENT=1 make run`)",
                file=sys.stderr,
            )
            return 2
        lines = args.say or list(DEFAULT_CALLER_LINES)
    code = asyncio.run(_call_in(info, args.from_number, args.timeout, lines))
    if code != 0 or not args.agent:
        return code
    sid = info["last_sid"]
    return _on_service(args, lambda api: _print_transcript(sid, api))


def _sandbox_info(args: argparse.Namespace) -> dict[str, Any]:
    """Where the running sandbox is: asked of the service at --url (or with --token), whatever its data
    directory; else read from this machine's `<ANNOUNCER_DATA_DIR>/sandbox.json`."""
    if args.url is None and args.token is None:
        settings = _settings_or_exit()
        info_path = settings.announcer_data_dir / "sandbox.json"
        if info_path.exists():
            found: dict[str, Any] = json.loads(info_path.read_text())
            return found
        raise CommandError(
            f"error: no running sandbox found ({info_path} is missing): start `announcer serve` without "
            "Twilio credentials first, or point --url and --token at the service"
        )

    async def ask(api: Api) -> dict[str, Any]:
        status, answer = await api.request("GET", "/v1/sandbox")
        if status == 404:
            raise CommandError(
                f"error: the service at {api.base_url} runs no sandbox (it calls through Twilio)"
            )
        if status != 200 or not isinstance(answer, dict):
            raise CommandError(*_refusal(status, answer))
        return answer

    url, token = _url_and_token(args)

    async def asked() -> dict[str, Any]:
        async with _client(token) as http:
            return await ask(Api(http, url))

    return asyncio.run(asked())


# What the sandbox caller says to the agent, one line per reply, unless `--say` gives others.
DEFAULT_CALLER_LINES = ("Hello, what are your opening hours?", "Thank you, goodbye.")


async def _print_transcript(call_sid: str, api: Api) -> int:
    status, view = await api.request("GET", f"/v1/calls/{call_sid}")
    if status != 200:
        raise CommandError(f"error: the service has no record of call {call_sid} ({status})")
    print("transcript:")
    for turn in view["transcript"]:
        who = "agent " if turn["role"] == "agent" else "caller"
        cut = ""
        if turn["interrupted"]:
            cut = f"  [cut by the caller after {turn['played_ms'] / 1000:.1f} s]"
        print(f"  {who}: {turn['text']}{cut}")
    if not view["transcript"]:
        reasons = [e.get("reason") for e in view["events"] if e["kind"] == "agent_end"]
        print(f"  (no conversation: {reasons[0] if reasons else 'the agent was not reached'})")
    return 0


async def _call_in(info: dict[str, Any], from_number: str, timeout: float, lines: list[str]) -> int:
    auth = aiohttp.BasicAuth(info["account_sid"], info["auth_token"])
    base = info["base_url"]
    async with aiohttp.ClientSession(auth=auth) as http:
        body = {"from": from_number, "lines": lines}
        async with http.post(f"{base}/_sandbox/calls", json=body) as resp:
            if resp.status != 201:
                print(
                    f"error: the sandbox refused the call: {resp.status} {await resp.text()}", file=sys.stderr
                )
                return 1
            sid = info["last_sid"] = (await resp.json())["sid"]
        print(f"calling {info['phone_number']} from {from_number}: call {sid}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            async with http.get(f"{base}/_sandbox/calls/{sid}") as resp:
                state = await resp.json()
            if state.get("ended") and state.get("wav_path"):
                print(f"call ended ({state['status']}); heard {state['heard_seconds']:.1f} s of audio")
                for text in state.get("said") or []:
                    print(f"  <Say>: {text}")
                print(f"recording: {state['wav_path']}")
                return 0
            await asyncio.sleep(0.25)  # a person waiting at a terminal: polling is fine here
    print(f"error: the call did not end within {timeout:.0f} s", file=sys.stderr)
    return 1


def _add_message_arguments(parser: argparse.ArgumentParser) -> None:
    """What an alert says and to whom, and how it calls: the arguments `send` and `schedule add` share
    (read by _recipients_of_args and _alert_body). `--recipient-name` names a recipient in both."""
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--template", metavar="NAME", help="a template of the service (templates/NAME)")
    what.add_argument("--text", metavar="JINJA", help="the message as inline Jinja text")
    parser.add_argument("--to", action="append", default=[], metavar="PHONE", help="a recipient (repeatable)")
    parser.add_argument(
        "--recipient-name",
        dest="recipient_names",
        action="append",
        default=[],
        metavar="NAME",
        help="the --to recipient's name (one per --to)",
    )
    parser.add_argument(
        "--file",
        type=Path,
        metavar="CSV",
        help="recipients: a header row with a phone column; name and timezone optional; every other column "
        "is that recipient's variable",
    )
    parser.add_argument("--var", action="append", default=[], metavar="KEY=VALUE", help="shared by everyone")
    parser.add_argument("--confirm", action="store_true", help='ask "press 1 to confirm"')
    parser.add_argument("--max-attempts", type=int, metavar="N", help="calls per recipient at most")
    parser.add_argument(
        "--retry-on",
        metavar="OUTCOMES",
        help="comma-separated: busy,no_answer,failed,machine,voicemail_left (default busy,no_answer)",
    )
    parser.add_argument("--retry-backoff", type=float, metavar="S", help="seconds before the first retry")
    parser.add_argument("--callback-url", metavar="URL", help="signed outcome webhooks go here")
    parser.add_argument(
        "--no-machine-detection",
        action="store_true",
        help="do not ask Twilio whether a person or an answering machine answered",
    )
    parser.add_argument(
        "--on-machine",
        choices=["leave-message", "hang-up"],
        help="an answering machine: leave the message after its beep (default), or hang up",
    )


def _oncall_at(value: str | None) -> str | None:
    """--at as an instant: ISO-8601 with its offset as given; without one, in this machine's zone."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise CommandError(
            f"error: --at {value!r}: expected ISO-8601, e.g. 2026-12-24T09:00 or 2026-12-24T09:00+01:00"
        ) from None
    return (moment if moment.tzinfo is not None else moment.astimezone()).isoformat()


def _who(stretch: Any) -> str:
    """`Ada`, `Ada (override)`, or `nobody`."""
    if not isinstance(stretch, dict):
        return "-"
    person = stretch.get("person")
    if not isinstance(person, dict):
        return "nobody"
    name = _cell(person.get("name") or person.get("id"))
    return f"{name} (override)" if stretch.get("override") else name


def _oncall_table(rotations: list[dict[str, Any]]) -> list[str]:
    """One row per rotation: who is on call, since and until when, who is next and until when."""
    header = ("ROTATION", "ON CALL", "SINCE", "UNTIL", "NEXT", "NEXT UNTIL")
    rows = []
    for r in rotations:
        now: dict[str, Any] = r["now"] if isinstance(r.get("now"), dict) else {}
        after: dict[str, Any] | None = r["next"] if isinstance(r.get("next"), dict) else None
        rows.append(
            (
                _cell(r.get("name")),
                _who(now),
                _moment_text(now.get("since")) if now.get("since") else "-",
                _moment_text(now.get("until")) if now.get("until") else "-",
                _who(after) if after is not None else "-",
                _moment_text(after.get("until")) if after and after.get("until") else "-",
            )
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    return [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in [header, *rows]
    ]


def cmd_oncall(args: argparse.Namespace) -> int:
    try:
        at = _oncall_at(args.at)
    except CommandError as err:
        return _failed(err)

    async def show(api: Api) -> int:
        answer = await api.oncall(at)
        rotations = [r for r in answer["rotations"] if isinstance(r, dict)]
        print(f"on call at {_moment_text(answer.get('at'))}")
        if not rotations:
            print("no rotations")
            return 0
        for line in _oncall_table(rotations):
            print(line.rstrip())
        return 0

    return _on_service(args, show)


def _add_oncall_parser(sub: Any) -> None:
    oncall = sub.add_parser(
        "oncall",
        help="who is on call in each rotation of the running service, and who is next",
        description="Exit status: 0 done; 2 a bad --at, a request the service refused, or no service at "
        "the URL.",
    )
    oncall.add_argument(
        "--at",
        metavar="ISO",
        help="at this time instead of now: ISO-8601 with an offset (+01:00), or without one in this "
        "machine's zone",
    )
    _add_service_arguments(oncall)
    oncall.set_defaults(func=cmd_oncall)


def _add_service_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the running service is (read by _url_and_token)."""
    parser.add_argument("--url", help="the service (default: PUBLIC_URL, else http://HOST:PORT)")
    parser.add_argument(
        "--token", help="the API token (default: ANNOUNCER_API_TOKEN, else DATA_DIR/api-token)"
    )


def _add_send_parser(sub: Any) -> None:
    send = sub.add_parser(
        "send",
        help="phone an alert through the running service and follow it to the end",
        description="Exit status: 0 every recipient heard (or confirmed) the message; 1 the alert ended and "
        "some did not (a voicemail left is not a person hearing it); 2 a usage error, a bad CSV, a request "
        "the service refused, or no service at the URL; "
        f"{EXIT_STILL_ACTIVE} still active when --timeout passed.",
    )
    _add_message_arguments(send)
    send.add_argument(
        "--name",
        dest="old_recipient_names",
        action="append",
        default=[],
        metavar="NAME",
        help="deprecated: the same as --recipient-name (in `schedule add`, --name names the schedule)",
    )
    send.add_argument(
        "--idempotency-key", metavar="KEY", help="sending again with it replays, never re-calls"
    )
    _add_service_arguments(send)
    send.add_argument("--no-wait", action="store_true", help="print the alert id and exit")
    send.add_argument("--timeout", type=float, metavar="S", help="stop waiting after S seconds")
    send.set_defaults(func=cmd_send)


def _add_schedule_parser(sub: Any) -> None:
    exit_status = (
        "Exit status: 0 done; 2 a usage error, a bad CSV, a request the service refused (an unknown ID too), "
        "or no service at the URL."
    )
    commands = sub.add_parser(
        "schedule",
        help="reminders the running service places at a time, once or repeating",
        description=exit_status,
    ).add_subparsers(dest="schedule_command", required=True)
    add = commands.add_parser(
        "add",
        help="schedule an alert: once (--at) or repeating (--cron)",
        description="Every recipient is rendered when the schedule is made: a missing variable, a bad time "
        f"or zone is refused now, not at 8 am. {exit_status}",
    )
    _add_message_arguments(add)
    when = add.add_mutually_exclusive_group(required=True)
    when.add_argument(
        "--at",
        metavar="ISO",
        help='once, at this time: "tomorrow 09:00", "today 17:30" or 2026-11-30T09:00 (read in --timezone, '
        "else this machine's zone) or ISO with an offset (+01:00)",
    )
    when.add_argument(
        "--cron",
        metavar="LINE",
        help='repeating, by a crontab line with days by name: "0 8 * * mon-fri" (needs --timezone)',
    )
    add.add_argument("--timezone", metavar="ZONE", help="the IANA zone of the times, e.g. Europe/Berlin")
    add.add_argument("--start", metavar="ISO", help="with --cron: no fire before this time")
    add.add_argument("--end", metavar="ISO", help="with --cron: no fire after this time")
    add.add_argument("--name", help="the schedule's name, as `schedule list` shows it")
    add.add_argument(
        "--misfire",
        choices=("run", "skip"),
        help="a fire missed while the service was down: run it once if not too late (the default), "
        "or skip it",
    )
    _add_service_arguments(add)
    add.set_defaults(func=cmd_schedule_add)
    listing = commands.add_parser(
        "list", help="the schedules: id, name, status, next run, when", description=exit_status
    )
    _add_service_arguments(listing)
    listing.set_defaults(func=cmd_schedule_list)
    for name, func, what in (
        ("pause", cmd_schedule_pause, "stop a schedule firing until it is resumed"),
        ("resume", cmd_schedule_resume, "let a paused schedule fire again"),
        ("rm", cmd_schedule_rm, "delete a schedule: nothing of it fires after this"),
    ):
        command = commands.add_parser(name, help=what, description=exit_status)
        command.add_argument("schedule_id", metavar="ID", help="as `announcer schedule list` shows it")
        _add_service_arguments(command)
        command.set_defaults(func=func)


def build_parser() -> argparse.ArgumentParser:
    """Every command and option, each with its help text (a test holds them to that)."""
    parser = argparse.ArgumentParser(
        prog="announcer", description="Phone announcements with generated speech."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the service (sandbox mode without credentials)",
        description='Settings come from the environment and .env (README, "Going live"); a bad one stops '
        "the start with one line naming it.",
    )
    serve.add_argument("--host", help="the address to listen on (default: HOST, else 127.0.0.1)")
    serve.add_argument("--port", type=int, help="the port to listen on (default: PORT, else 8080)")
    serve.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="N processes on ports PORT..PORT+N-1, for a load balancer in front (PostgreSQL only)",
    )
    serve.set_defaults(func=cmd_serve)
    render = sub.add_parser("render", help="render a template to text")
    render.add_argument(
        "template", help="a template in ANNOUNCER_TEMPLATES_DIR (templates/), e.g. alert.j2 or alert"
    )
    render.add_argument(
        "--var", action="append", default=[], metavar="KEY=VALUE", help="a template variable (repeatable)"
    )
    render.set_defaults(func=cmd_render)
    _add_send_parser(sub)
    _add_schedule_parser(sub)
    _add_oncall_parser(sub)
    db = sub.add_parser("db", help="database maintenance").add_subparsers(dest="db_command", required=True)
    db.add_parser(
        "upgrade",
        help="apply migrations to DATABASE_URL's database (also done at start)",
        description="Applies the database migrations up to the newest (DATABASE_URL, else the SQLite file "
        "in ANNOUNCER_DATA_DIR).",
    ).set_defaults(func=cmd_db_upgrade)
    sandbox = sub.add_parser("sandbox", help="the loopback phone network").add_subparsers(
        dest="sandbox_command", required=True
    )
    call_in = sandbox.add_parser(
        "call-in",
        help="call the running sandbox greeting line",
        description="Places a call from the sandbox phone to the greeting line of the service at --url "
        "(which must run in sandbox mode) and prints the recording's path.",
    )
    call_in.add_argument(
        "--from", dest="from_number", default="+15550123456", help="the caller's number (default %(default)s)"
    )
    call_in.add_argument(
        "--timeout", type=float, default=120.0, help="give up after this many seconds (default %(default)s)"
    )
    call_in.add_argument(
        "--agent", action="store_true", help="talk with the agent (the service runs with GREETING_AGENT=1)"
    )
    call_in.add_argument(
        "--say", action="append", metavar="LINE", help="with --agent: a line the caller says (repeatable)"
    )
    _add_service_arguments(call_in)  # --agent reads the transcript from the service
    call_in.set_defaults(func=cmd_sandbox_call_in)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
