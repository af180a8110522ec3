"""Abuse that found holes in an outside probe (issue 12): each answers a 4xx in the service's JSON error
shape (never a 500, never a traceback in the log), changes nothing, and a finished call gets no second life.

Holes 4 (500s), 5 (the media socket before `start`), 6 (replay after the end), 9 (options that
contradict each other) are here; 7 and 10 (files, a second instance) in test_instance.py."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
from typing import Any

import aiohttp
import pytest

from announcer.telephony import codec
from tests.conftest import AUTH, Service
from tests.test_greeting_line import FakeTwilioStream, call_row, issue_token, signed, voice_form

PHONE = "+15550100001"


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """The service logged no error and no traceback for what it refused."""
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == [], [r.getMessage() for r in bad]


async def request(
    service: Service, method: str, path: str, *, auth: bool = True, **kwargs: Any
) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
    headers = {**(AUTH if auth else {}), **kwargs.pop("headers", {})}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, service.base_url + path, headers=headers, **kwargs) as resp,
    ):
        assert resp.content_type == "application/json", (method, path, resp.status, await resp.text())
        return resp.status, await resp.json(), resp.headers


def alert(**options: Any) -> dict[str, Any]:
    return {"template_text": "Hello {{ name }}.", "recipients": [{"phone": PHONE}], "options": options}


# --- hole 4: no 500 from any input -----------------------------------------------------------------


async def test_undeclared_methods_are_405_with_allow_on_every_route(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    # Unauthenticated, as the probe's `curl -X POST /v1/openapi.json` was.
    for method in ("POST", "PUT", "DELETE", "TRACE"):
        status, body, headers = await request(service, method, "/v1/openapi.json", auth=False)
        assert status == 405, (method, body)
        assert body["error"] == "method_not_allowed"
        assert set(headers["Allow"].split(",")) >= {"GET"}
    status, body, headers = await request(service, "PUT", "/v1/alerts")
    assert status == 405 and headers["Allow"] == "GET,HEAD,POST"  # GET lists the alerts
    # TRACE on every route the app has
    for resource in service.app.router.resources():
        path = resource.canonical.replace("{alert_id}", "al_x").replace("{schedule_id}", "sc_x")
        path = path.replace("{delivery_id}", "1").replace("{call_sid}", "CA" + "0" * 32)
        path = path.replace("{phone}", "%2B15550100001")
        path = re.sub(r"\{[a-z_]+\}", "x1", path)  # any other id: the route matches it, whatever it names
        status, body, headers = await request(service, "TRACE", path)
        assert status == 405 and "Allow" in headers, (path, status, body)
    no_tracebacks(caplog)


async def test_unknown_route_is_a_json_404(service: Service) -> None:
    status, body, _ = await request(service, "GET", "/nothing/here")
    assert status == 404 and body["error"] == "not_found"


async def test_deep_or_non_json_numbers_are_refused(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    deep = "[" * 1000 + "]" * 1000
    raw = (
        '{"template_text": "x", "recipients": [{"phone": "+15550100001"}], "variables": {"v": ' + deep + "}}"
    )
    for body in (
        raw,
        '{"template_text": "x", "recipients": [], "variables": {"v": NaN}}',
        '{"template_text": "x", "recipients": [], "variables": {"v": 1e999}}',
    ):
        status, answer, _ = await request(
            service, "POST", "/v1/alerts", data=body, headers={"Content-Type": "application/json"}
        )
        assert status == 400 and answer["error"] == "malformed_json", answer
    nested: Any = "leaf"
    for _ in range(40):
        nested = {"n": nested}
    status, answer, _ = await request(service, "POST", "/v1/alerts", json={**alert(), "variables": nested})
    assert status == 422
    assert any("nested deeper" in p["reason"] for p in answer["problems"])
    no_tracebacks(caplog)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/deliveries/99999999999999999999/call", 404),  # past int64 (SQLite)
        ("/v1/deliveries/2147483648/call", 404),  # past int32 (PostgreSQL)
        ("/v1/deliveries/%D9%A1/call", 400),  # an Arabic-Indic 1 is not delivery 1
        ("/v1/deliveries/%C2%B2/call", 400),  # superscript two
        ("/v1/alerts/al_x/deliveries?after=9223372036854775808", 400),
        ("/v1/alerts/al_x/deliveries?after=2147483648", 400),
        ("/v1/alerts/al_x/deliveries?limit=0", 400),
        ("/v1/alerts/al_x/deliveries?after=%D9%A1", 400),
        ("/v1/alerts/al%00x", 404),
        ("/v1/schedules/sc%00x", 404),
        ("/v1/calls/CA%00", 404),
    ],
)
async def test_ids_and_numbers_out_of_range_are_4xx(
    service: Service, caplog: pytest.LogCaptureFixture, path: str, status: int
) -> None:
    got, body, _ = await request(service, "GET", path)
    assert got == status, body
    no_tracebacks(caplog)


async def test_nul_characters_are_refused_naming_the_field(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    cases = [
        (
            "/v1/alerts",
            {**alert(), "recipients": [{"phone": PHONE, "name": "A\x00da"}]},
            "recipients[0].name",
        ),
        ("/v1/alerts", {**alert(), "variables": {"x": "a\x00"}}, "variables.x"),
        ("/v1/alerts", {**alert(), "template_text": "Hi\x00"}, "template_text"),
        (
            "/v1/preview",
            {"template_text": "Hi", "recipient": {"phone": PHONE, "variables": {"k\x00": 1}}},
            "recipient.variables",
        ),
        (
            "/v1/schedules",
            {
                **alert(),
                "name": "weekly\x00",
                "when": {"cron": "0 8 * * mon", "timezone": "Europe/Berlin"},
            },
            "name",
        ),
    ]
    for path, body, field in cases:
        status, answer, _ = await request(service, "POST", path, json=body)
        assert status == 422, answer
        assert [p["field"] for p in answer["problems"]] == [field], answer
        assert "NUL" in answer["problems"][0]["reason"]
    status, answer, _ = await request(service, "GET", "/v1/schedules")
    assert answer["schedules"] == []
    no_tracebacks(caplog)


async def test_webhooks_with_bad_bytes_or_numbers_are_4xx(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    async with aiohttp.ClientSession() as http:
        # Unsigned, and not UTF-8: refused before (and without) the signature check's 500
        async with http.post(
            service.base_url + "/twilio/status",
            data=b"CallSid=\xff\xfe&CallStatus=completed",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        ) as resp:
            assert resp.status == 400 and (await resp.json())["field"] == "body"
        call = await service.sandbox.call_in("+15550123123")
        await call.wait_ended(timeout=60)
        form = {"CallSid": call.sid, "CallStatus": "completed", "SequenceNumber": "\u00b2"}
        async with http.post(
            service.base_url + "/twilio/status", data=form, headers=signed(service, "/twilio/status", form)
        ) as resp:
            assert resp.status == 400 and (await resp.json())["field"] == "SequenceNumber"
        form = {"CallSid": call.sid, "CallStatus": "completed", "SequenceNumber": "99"}
        path = "/twilio/status?call=99999999999999999999"
        async with http.post(service.base_url + path, data=form, headers=signed(service, path, form)) as resp:
            assert resp.status == 400 and (await resp.json())["field"] == "call"
        form = {**voice_form(service, "CA" + secrets.token_hex(16)), "CallerName": "Ada\x00"}
        async with http.post(
            service.base_url + "/twilio/voice", data=form, headers=signed(service, "/twilio/voice", form)
        ) as resp:
            assert resp.status == 400 and (await resp.json())["field"] == "CallerName"
    assert await service.store.find_by_sid(form["CallSid"]) is None
    no_tracebacks(caplog)


def test_media_codec_refuses_odd_numbers_and_marks_as_protocol_errors() -> None:
    sid = "MZ" + "0" * 32
    start = {
        "event": "start",
        "start": {
            "streamSid": sid,
            "callSid": "CA" + "0" * 32,
            "accountSid": "AC" + "0" * 32,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": "eight", "channels": 1},
        },
    }
    for raw in (
        json.dumps(start),
        json.dumps({"event": "media", "streamSid": sid, "media": {"payload": "", "chunk": "\u00b2"}}),
        json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "end\x00"}}),
        json.dumps({"event": "mark", "streamSid": sid, "mark": {"name": "x" * 200}}),
        "[" * 100_000,
    ):
        with pytest.raises(codec.ProtocolError):
            codec.parse(raw)


# --- hole 5: the media socket before `start` ---------------------------------------------------------


async def test_anything_before_start_counts_against_the_malformed_limit(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    ws_url = service.base_url.replace("http", "ws", 1) + "/twilio/media"
    media = json.dumps({"event": "media", "streamSid": "MZ" + "0" * 32, "media": {"payload": "/////w=="}})
    caplog.set_level(logging.WARNING, logger="announcer.telephony.media")
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url) as ws:
        await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        loop = asyncio.get_running_loop()
        began = loop.time()
        sent = 0
        while not ws.closed and sent < 20_000:
            await ws.send_str(media)
            sent += 1
            if sent % 50 == 0:
                await asyncio.sleep(0)  # let the close come in
        msg = await ws.receive(timeout=5)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
        assert loop.time() - began < 5  # not held for the 10 s start timeout
    lines = [r for r in caplog.records if r.name == "announcer.telephony.media"]
    assert len(lines) <= 5, [r.getMessage() for r in lines]


# --- hole 6: no second life for a finished call ------------------------------------------------------


async def test_a_replayed_voice_webhook_of_an_ended_call_gets_hangup_and_no_token(service: Service) -> None:
    call = await service.sandbox.call_in("+15550123124")
    await call.wait_ended(timeout=60)
    row = await call_row(service, call.sid)
    assert row.status == "completed"
    events_before = len(await service.store.events(row.id))
    form = voice_form(service, call.sid)
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            service.base_url + "/twilio/voice", data=form, headers=signed(service, "/twilio/voice", form)
        ) as resp,
    ):
        assert resp.status == 200
        twiml = await resp.text()
    assert "<Hangup" in twiml and "<Stream" not in twiml and "token" not in twiml
    await service.store.flush()
    assert len(await service.store.events(row.id)) == events_before


async def test_a_stream_token_is_valid_only_while_its_call_is_live(service: Service) -> None:
    call_sid = "CA" + secrets.token_hex(16)
    ws_url = service.base_url.replace("http", "ws", 1) + "/twilio/media"
    async with aiohttp.ClientSession() as http:
        token = await issue_token(service, http, call_sid)
        # The call ends (the caller hung up while the stream was being set up)
        status = {"CallSid": call_sid, "CallStatus": "completed", "SequenceNumber": "3", "CallDuration": "1"}
        async with http.post(
            service.base_url + "/twilio/status",
            data=status,
            headers=signed(service, "/twilio/status", status),
        ) as resp:
            assert resp.status == 204
        row = await call_row(service, call_sid)
        assert row.status == "completed"
        async with http.ws_connect(ws_url) as ws:
            stream = FakeTwilioStream(ws, service.providers.account_sid, call_sid)
            await ws.send_str(stream.start_message(token))
            frames = 0
            while True:
                msg = await ws.receive(timeout=10)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frames += 1
            assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
    # The stream was cut before it became the call's: nothing spoken, no outcome written into the record
    await service.store.flush()
    after = await call_row(service, call_sid)
    assert after.outcome is None
    kinds = [e.kind for e in await service.store.events(after.id)]
    assert "stream_started" not in kinds or "stream_token_reused" in kinds
    assert "speech_sent" not in kinds


# --- hole 9: options that contradict each other ------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "options", "fields"),
    [
        ("/v1/alerts", {"repeat_key": "0", "agent": {"after": "key", "key": "0"}}, ["options.agent.key"]),
        ("/v1/alerts", {"agent": {"after": "key", "key": "2"}}, ["options.agent.key"]),
        ("/v1/schedules", {"confirm": True, "repeat_key": "2"}, ["options.repeat_key"]),
        ("/v1/schedules", {"confirm": True, "repeat_key": "3"}, ["options.repeat_key"]),
        ("/v1/schedules", {"confirm": True, "agent": {"after": "key", "key": "3"}}, ["options.agent.key"]),
        ("/v1/alerts", {"retry_on": ["busy"] * 10_000}, ["options.retry_on"]),
        ("/v1/alerts", {"retry_on": ["busy", "busy"]}, ["options.retry_on"]),
    ],
)
async def test_options_whose_keys_clash_are_refused_naming_both(
    service: Service, path: str, options: dict[str, Any], fields: list[str]
) -> None:
    body = alert(**options)
    if path == "/v1/schedules":
        body["when"] = {"cron": "0 8 * * mon", "timezone": "Europe/Berlin"}
    status, answer, _ = await request(service, "POST", path, json=body)
    assert status == 422, answer
    assert [p["field"] for p in answer["problems"]] == fields
    if "key" in fields[0]:
        reason = answer["problems"][0]["reason"]
        assert "already key" in reason  # says what the key does already


async def test_keys_that_do_not_clash_are_accepted(service: Service) -> None:
    for path, options in (
        ("/v1/alerts", {"confirm": True, "repeat_key": "*", "agent": {"after": "key", "key": "0"}}),
        ("/v1/alerts", {"repeat_key": "2", "retry_on": ["busy", "no_answer", "failed"]}),
        ("/v1/schedules", {"confirm": True, "repeat_key": "4"}),
        ("/v1/schedules", {"confirm": False, "repeat_key": "3"}),
    ):
        body = alert(**options)
        if path == "/v1/schedules":
            body["when"] = {"cron": "0 8 * * mon", "timezone": "Europe/Berlin"}
        status, answer, _ = await request(service, "POST", path, json=body)
        assert status in (201, 202), answer
