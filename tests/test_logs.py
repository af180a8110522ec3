"""Logs that carry the call (issue 13): every record names the call SID, the delivery and the masked
number it is about; `ANNOUNCER_LOG_FORMAT=json` writes one object per line; the SQL driver's logging never
prints a phone number or a message text, at any level."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
from pathlib import Path

import pytest

from announcer import logs
from announcer.messages.phones import mask
from tests.conftest import Service, eventually, free_port
from tests.test_cli import env_for, run_cli


def test_mask_keeps_only_the_last_three_digits() -> None:
    assert mask("+15551234567") == "***567"
    assert mask("12") == "***" and mask(None) == "***"


async def test_the_context_is_the_tasks_own_and_reaches_every_record() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("test.logs.context")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

    async def one_call(sid: str, delivery: int, phone: str) -> None:
        logs.bind(call_sid=sid, delivery_id=delivery, phone=phone)
        await asyncio.sleep(0)  # the other task runs in between: its binding must not leak here
        logger.info("dialing")

    try:
        await asyncio.gather(
            asyncio.create_task(one_call("CA" + "1" * 32, 1, "+15550100001")),
            asyncio.create_task(one_call("CA" + "2" * 32, 2, "+15550100002")),
        )
        logger.info("outside any call")
    finally:
        logger.removeHandler(handler)
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert {(r.get("call_sid"), r.get("delivery_id"), r.get("phone")) for r in records[:2]} == {
        ("CA" + "1" * 32, 1, "***001"),
        ("CA" + "2" * 32, 2, "***002"),
    }
    assert records[2] == {k: records[2][k] for k in ("time", "level", "logger", "message")}
    assert "+1555" not in stream.getvalue()


async def test_text_lines_end_with_the_context_in_brackets(service: Service) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    handler.setFormatter(logging.Formatter(logs.TEXT_FORMAT))
    voice = logging.getLogger("announcer.telephony.voice")
    voice.addHandler(handler)
    level = voice.level
    voice.setLevel(logging.INFO)
    try:
        call = await service.sandbox.call_in("+15550123456")
        await call.wait_ended(timeout=60)
    finally:
        voice.removeHandler(handler)
        voice.setLevel(level)
    line = next(x for x in stream.getvalue().splitlines() if "inbound call" in x)
    assert line.endswith(f"[call_sid={call.sid} phone=***456]"), line
    assert "5550123456" not in stream.getvalue()


@pytest.mark.timeout(180)
async def test_at_debug_no_line_holds_a_number_or_a_message_and_every_line_is_json(tmp_path: Path) -> None:
    env = env_for(
        tmp_path,
        PORT=str(free_port()),
        ANNOUNCER_SANDBOX_SPEED="20",
        ANNOUNCER_LOG_LEVEL="DEBUG",
        ANNOUNCER_LOG_FORMAT="json",
    )
    log_path = tmp_path / "serve.log"
    proc = await asyncio.create_subprocess_exec(
        "sh", "-c", f"exec {sys.executable} -m announcer.cli serve 2> {log_path}", env=env, cwd=tmp_path
    )
    try:
        # the greeting line: the caller's number goes through the database (calls.from_number)

        async def listening() -> bool:
            return log_path.exists() and "loopback Twilio" in log_path.read_text()

        await eventually(listening, timeout=60)
        code, _, err = await run_cli(env, "sandbox", "call-in", "--from", "+15551234567", timeout=120)
        assert code == 0, err
    finally:
        proc.terminate()
        await proc.wait()
    text = log_path.read_text()
    lines = [json.loads(line) for line in text.splitlines()]
    assert any(x.get("call_sid", "").startswith("CA") and x.get("phone") == "***567" for x in lines)
    assert "1234567" not in text  # not the caller's number, anywhere
    assert "Acme" not in text and "thank you for calling" not in text.lower()  # nor the greeting's text
