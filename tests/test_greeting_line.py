"""The greeting line end to end: the sandbox phone calls in, the real twilio and elevenlabs SDKs talk to
the loopback Twilio and ElevenLabs, and we check what the caller heard and what the database says."""

from __future__ import annotations

import base64
import json
import secrets
import wave
from typing import Any

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from announcer.app import GREETING
from announcer.audio import FRAME_BYTES, rms
from announcer.store.models import Call
from tests.conftest import Service, eventually

CALLER = "+15550123456"


async def call_row(service: Service, sid: str) -> Call:
    call_id = await service.store.find_by_sid(sid)
    assert call_id is not None
    call = await service.store.get(call_id)
    assert call is not None
    return call


async def event_kinds(service: Service, sid: str) -> list[str]:
    call_id = await service.store.find_by_sid(sid)
    assert call_id is not None
    return [e.kind for e in await service.store.events(call_id)]


async def test_caller_hears_the_greeting_and_the_call_ends_cleanly(service: Service) -> None:
    # ElevenLabs streams in small chunks at a set rate (faster than the sandbox phone plays), so the
    # synthesis takes a while and the first frame can be seen to leave before it ends
    # (the first-byte delay is per sentence; scaled down like the phone's 25x clock)
    service.tts.first_byte_delay_s = 0.005
    service.tts.chunk_bytes = 800
    service.tts.bytes_per_second = 400_000
    call = await service.sandbox.call_in(CALLER)
    await call.wait_ended(timeout=60)

    assert call.application_errors == []
    assert call.protocol_errors == []  # every frame was valid base64 of exactly 160 bytes on our stream
    row = await call_row(service, call.sid)
    assert "thank you for calling Acme Clinic" in row.text
    assert "one five five five zero one two three four five six" in row.text

    # what the caller heard is the synthesized greeting, whole, and not silence
    clip = await service.speaker.synthesize(row.text)
    frames = -(-len(clip) // FRAME_BYTES)
    assert call.frames_received == frames
    assert abs(len(call.heard) - len(clip)) <= FRAME_BYTES
    assert rms(call.heard) > 500
    with wave.open(str(call.wav_path)) as wav:
        assert wav.getframerate() == 8000
        assert abs(wav.getnframes() - len(clip)) <= FRAME_BYTES
    assert call.underrun_frames == 0

    # streaming: the first frame reached the phone before ElevenLabs had finished the synthesis (its
    # last sentence's stream; synthesis starts at the voice webhook, so the first may be done already)
    last = max(r.finished_at for r in service.tts.requests if r.finished_at is not None)
    assert call.first_media_at is not None and call.first_media_at < last

    # the end mark came back, the call was hung up through the REST API
    assert call.marks_echoed and call.marks_echoed[-1].startswith("end:")
    hangups = [
        r
        for r in service.sandbox.rest_log
        if r.method == "POST" and r.path.endswith(f"/Calls/{call.sid}.json")
    ]
    assert hangups and ("Status", "completed") in list(hangups[0].form)

    # the sandbox delivers the `completed` callback (and we commit it) before the call counts as ended
    row = await call_row(service, call.sid)
    assert row.outcome == "heard"
    call_id = await service.store.find_by_sid(call.sid)
    assert call_id is not None
    statuses = [e.detail["status"] for e in await service.store.events(call_id) if e.kind == "status"]
    assert statuses == ["ringing", "in-progress", "completed"]
    kinds = await event_kinds(service, call.sid)
    assert kinds.index("stream_started") < kinds.index("speech_sent") < kinds.index("hangup")


async def test_second_call_is_a_cache_hit_with_no_tts_request(service: Service) -> None:
    first = await service.sandbox.call_in(CALLER)
    await first.wait_ended(timeout=60)
    requests_after_first = len(service.tts.requests)
    assert requests_after_first >= 1
    second = await service.sandbox.call_in(CALLER)
    await second.wait_ended(timeout=60)
    assert len(service.tts.requests) == requests_after_first
    assert second.heard == first.heard
    assert "speech_cache_hit" in await event_kinds(service, second.sid)


@pytest.mark.parametrize("kind", ["unauthorized", "rate_limited", "quota", "server_error", "timeout", "cut"])
async def test_tts_failure_before_audio_is_spoken_by_twilio_say(service: Service, kind: str) -> None:
    service.tts.fail_next(kind, after_bytes=0)
    call = await service.sandbox.call_in(CALLER)
    await call.wait_ended(timeout=60)
    row = await call_row(service, call.sid)
    assert call.said == [row.text]  # the caller still heard the message, in Twilio's own voice
    assert rms(call.heard) > 500
    assert call.frames_received == 0
    kinds = await event_kinds(service, call.sid)
    assert "speech_redirect_to_say" in kinds
    assert row.outcome == "said_by_twilio"


async def test_tts_cut_midway_is_finished_by_the_fallback_voice(service: Service) -> None:
    service.tts.fail_next("cut", after_bytes=4000)
    call = await service.sandbox.call_in(CALLER)
    await call.wait_ended(timeout=60)
    assert call.said == []
    assert call.protocol_errors == []
    assert call.frames_received > 4000 // FRAME_BYTES
    assert call.marks_echoed and call.marks_echoed[-1].startswith("end:")
    kinds = await event_kinds(service, call.sid)
    assert "speech_tts_failed_midway" in kinds and "speech_fallback_used" in kinds
    assert (await call_row(service, call.sid)).outcome == "heard"


# --- bad input ------------------------------------------------------------------------------------


def voice_form(service: Service, call_sid: str) -> dict[str, str]:
    return {
        "CallSid": call_sid,
        "AccountSid": service.providers.account_sid,
        "From": CALLER,
        "To": service.providers.phone_number,
        "CallStatus": "ringing",
        "Direction": "inbound",
        "ApiVersion": "2010-04-01",
    }


def signed(service: Service, path: str, form: dict[str, str]) -> dict[str, str]:
    url = service.base_url + path
    return {"X-Twilio-Signature": RequestValidator(service.providers.auth_token).compute_signature(url, form)}


async def test_forged_or_missing_signature_is_403_and_stores_nothing(service: Service) -> None:
    form = voice_form(service, "CA" + secrets.token_hex(16))
    async with aiohttp.ClientSession() as http:
        for headers in ({}, {"X-Twilio-Signature": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="}):
            for path in ("/twilio/voice", "/twilio/status"):
                async with http.post(service.base_url + path, data=form, headers=headers) as resp:
                    assert resp.status == 403
                    assert (await resp.json())["field"] == "X-Twilio-Signature"
        tampered = signed(service, "/twilio/voice", form)
        async with http.post(
            service.base_url + "/twilio/voice", data={**form, "From": "+15559999999"}, headers=tampered
        ) as resp:
            assert resp.status == 403
    assert await service.store.find_by_sid(form["CallSid"]) is None


async def test_signed_webhook_with_bad_fields_is_400_naming_the_field(service: Service) -> None:
    form = {**voice_form(service, "not-a-sid")}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            service.base_url + "/twilio/voice", data=form, headers=signed(service, "/twilio/voice", form)
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["field"] == "CallSid"
        status = {"CallSid": "CA" + secrets.token_hex(16), "CallStatus": "exploded", "SequenceNumber": "1"}
        async with http.post(
            service.base_url + "/twilio/status",
            data=status,
            headers=signed(service, "/twilio/status", status),
        ) as resp:
            assert resp.status == 400
            assert (await resp.json())["field"] == "CallStatus"


class FakeTwilioStream:
    """A hand-driven media stream, for what a well-behaved sandbox phone never sends."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, account_sid: str, call_sid: str) -> None:
        self.ws = ws
        self.account_sid = account_sid
        self.call_sid = call_sid
        self.stream_sid = "MZ" + secrets.token_hex(16)

    def start_message(self, token: str | None) -> str:
        params = {"token": token} if token is not None else {}
        return json.dumps(
            {
                "event": "start",
                "sequenceNumber": "1",
                "streamSid": self.stream_sid,
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": params,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
            }
        )

    async def next_json(self, timeout: float = 10.0) -> dict[str, Any] | None:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return None
        data: dict[str, Any] = json.loads(msg.data)
        return data


async def issue_token(service: Service, http: aiohttp.ClientSession, call_sid: str) -> str:
    form = voice_form(service, call_sid)
    async with http.post(
        service.base_url + "/twilio/voice", data=form, headers=signed(service, "/twilio/voice", form)
    ) as resp:
        assert resp.status == 200
        body = await resp.text()
    marker = 'name="token" value="'
    return body[body.index(marker) + len(marker) :].split('"', 1)[0]


async def test_replayed_unknown_or_missing_token_is_rejected(service: Service) -> None:
    call_sid = "CA" + secrets.token_hex(16)
    ws_url = service.base_url.replace("http", "ws", 1) + "/twilio/media"
    async with aiohttp.ClientSession() as http:
        token = await issue_token(service, http, call_sid)
        async with http.ws_connect(ws_url) as ws:
            stream = FakeTwilioStream(ws, service.providers.account_sid, call_sid)
            await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send_str(stream.start_message(token))
            first = await stream.next_json()
            assert first is not None and first["event"] == "media" and first["streamSid"] == stream.stream_sid
            assert len(base64.b64decode(first["media"]["payload"])) == FRAME_BYTES
        for bad_token in (token, "never-issued", None):
            async with http.ws_connect(ws_url) as ws:
                stream = FakeTwilioStream(ws, service.providers.account_sid, call_sid)
                await ws.send_str(stream.start_message(bad_token))
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.CLOSE
                assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION


async def test_garbage_on_one_stream_does_not_disturb_other_calls(service: Service) -> None:
    good = await service.sandbox.call_in("+15550111222")
    call_sid = "CA" + secrets.token_hex(16)
    ws_url = service.base_url.replace("http", "ws", 1) + "/twilio/media"
    async with aiohttp.ClientSession() as http:
        token = await issue_token(service, http, call_sid)
        async with http.ws_connect(ws_url) as ws:
            stream = FakeTwilioStream(ws, service.providers.account_sid, call_sid)
            media = json.dumps(
                {
                    "event": "media",
                    "streamSid": stream.stream_sid,
                    "media": {"payload": base64.b64encode(b"\xff" * 160).decode()},
                }
            )
            for garbage in ("{not json", '{"event": "explode"}', media, "[]", '{"event": "mark"}'):
                await ws.send_str(garbage)  # before start: all ignored
            await ws.send_bytes(b"\x00\x01")
            await ws.send_str(stream.start_message(token))
            first = await stream.next_json()
            assert first is not None and first["event"] == "media"
            await ws.send_str(stream.start_message(token))  # a second start: ignored
            await ws.send_str(
                '{"event": "dtmf", "streamSid": "' + stream.stream_sid + '", "dtmf": {"digit": "xx"}}'
            )
            await ws.send_str(
                '{"event": "mark", "streamSid": "MZ' + "0" * 32 + '", "mark": {"name": "end:1"}}'
            )
            still = await stream.next_json()
            assert still is not None and still["event"] == "media"  # the stream goes on
    await good.wait_ended(timeout=60)
    assert good.protocol_errors == [] and good.marks_echoed and good.said == []
    assert (await call_row(service, good.sid)).outcome == "heard"
    assert "protocol_error" in await event_kinds(service, call_sid)


async def test_healthz(service: Service) -> None:
    async with aiohttp.ClientSession() as http, http.get(service.base_url + "/healthz") as resp:
        assert resp.status == 200
        assert (await resp.json())["database"] == "ok"


async def test_caller_hanging_up_mid_message_ends_the_call(service: Service) -> None:
    service.tts.bytes_per_second = 16_000  # a slow stream: the caller leaves while it is still coming
    call = await service.sandbox.call_in(CALLER)
    await call.wait_for_media(timeout=30)
    await call.hang_up()
    assert call.marks_echoed == []

    async def settled() -> bool:
        row = await call_row(service, call.sid)
        return row.outcome is not None and "stream_closed" in await event_kinds(service, call.sid)

    await eventually(settled)
    row = await call_row(service, call.sid)
    assert row.outcome == "hung_up_early" and row.status == "completed"
    assert "hangup" in await event_kinds(service, call.sid)


async def test_synthesis_starts_at_the_voice_webhook_and_the_stream_tails_it(service: Service) -> None:
    """The TwiML answer and the TTS request go out together; when the stream connects it gets that
    synthesis (no second request), so the caller does not wait a whole TTS round trip after `start`."""
    form = voice_form(service, "CA" + secrets.token_hex(16))
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            service.base_url + "/twilio/voice", data=form, headers=signed(service, "/twilio/voice", form)
        ) as resp,
    ):
        assert resp.status == 200
    # No stream has connected (nobody runs this TwiML), yet the greeting is synthesized...
    text = service.app[GREETING].render(CALLER)

    async def synthesized() -> bool:
        return service.speaker.cached(text) is not None

    await eventually(synthesized)
    requests = len(service.tts.requests)
    assert requests > 0
    # ...and a real call from the same number is served from that synthesis, with no new request.
    call = await service.sandbox.call_in(CALLER)
    await call.wait_ended(30)
    assert call.frames_received > 0
    assert len(service.tts.requests) == requests
