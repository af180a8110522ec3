"""Command line: `announcer serve | render | db upgrade | sandbox call-in`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys
import time
from typing import Any

import aiohttp
from aiohttp import web

from announcer.config import ConfigError, Settings, load_settings
from announcer.messages.render import MessageRenderer, RenderError


def _settings_or_exit() -> Settings:
    try:
        return load_settings()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


async def _freeze_startup_heap(app: web.Application) -> None:
    """Once everything is imported and opened, move those objects out of the garbage collector's view.

    A full collection scans every tracked object and stops the event loop while it does: with the SDKs,
    SQLAlchemy and aiohttp loaded that is tens of milliseconds, felt by every live call as a late frame.
    What exists at start lives for the whole process anyway (gc.freeze; CPython docs, "gc" module)."""
    gc.collect()
    gc.freeze()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    if args.host or args.port is not None:
        settings = settings.model_copy(
            update={
                "host": args.host or settings.host,
                "port": settings.port if args.port is None else args.port,
            }
        )
    _setup_logging(settings.announcer_log_level)
    from announcer.app import create_app, public_url

    try:
        app = create_app(settings)
    except RenderError as err:
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
    web.run_app(app, host=settings.host, port=settings.port, print=None, access_log=None)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    variables: dict[str, Any] = {}
    for item in args.var:
        key, sep, value = item.partition("=")
        if not sep or not key:
            print(f"error: --var {item!r}: expected key=value", file=sys.stderr)
            return 2
        variables[key] = value
    try:
        print(MessageRenderer(settings.announcer_templates_dir).render(args.template, variables))
    except RenderError as err:
        print(f"error: template {err}", file=sys.stderr)
        return 2
    return 0


def cmd_db_upgrade(_: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    from announcer.store.db import Database

    async def run() -> None:
        db = Database(settings.resolved_database_url)
        try:
            await db.upgrade()
        finally:
            await db.dispose()

    asyncio.run(run())
    print("database is up to date")
    return 0


def cmd_sandbox_call_in(args: argparse.Namespace) -> int:
    settings = _settings_or_exit()
    info_path = settings.announcer_data_dir / "sandbox.json"
    if not info_path.exists():
        print(
            f"error: no running sandbox found ({info_path} is missing): start `announcer serve` without "
            "Twilio credentials first",
            file=sys.stderr,
        )
        return 2
    info = json.loads(info_path.read_text())
    return asyncio.run(_call_in(info, args.from_number, args.timeout))


async def _call_in(info: dict[str, str], from_number: str, timeout: float) -> int:
    auth = aiohttp.BasicAuth(info["account_sid"], info["auth_token"])
    base = info["base_url"]
    async with aiohttp.ClientSession(auth=auth) as http:
        async with http.post(f"{base}/_sandbox/calls", json={"from": from_number}) as resp:
            if resp.status != 201:
                print(
                    f"error: the sandbox refused the call: {resp.status} {await resp.text()}", file=sys.stderr
                )
                return 1
            sid = (await resp.json())["sid"]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="announcer", description="Phone announcements with generated speech."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the service (sandbox mode without credentials)")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(func=cmd_serve)
    render = sub.add_parser("render", help="render a template to text")
    render.add_argument("template")
    render.add_argument("--var", action="append", default=[], metavar="KEY=VALUE")
    render.set_defaults(func=cmd_render)
    db = sub.add_parser("db", help="database maintenance").add_subparsers(dest="db_command", required=True)
    db.add_parser("upgrade", help="apply migrations").set_defaults(func=cmd_db_upgrade)
    sandbox = sub.add_parser("sandbox", help="the loopback phone network").add_subparsers(
        dest="sandbox_command", required=True
    )
    call_in = sandbox.add_parser("call-in", help="call the running sandbox greeting line")
    call_in.add_argument("--from", dest="from_number", default="+15550123456")
    call_in.add_argument("--timeout", type=float, default=120.0)
    call_in.set_defaults(func=cmd_sandbox_call_in)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
