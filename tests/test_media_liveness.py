"""The media socket's liveness check (media.py, `MediaSession._check_alive`), which replaced aiohttp's
heartbeat: a stream that keeps sending stays, one that falls silent is dropped and its call ends."""

from __future__ import annotations

import asyncio
import json
import secrets

import aiohttp
import pytest

from announcer.telephony import media
from tests.conftest import Service, eventually
from tests.test_greeting_line import FakeTwilioStream, event_kinds, issue_token

SILENT_S = 0.5


async def test_a_talking_stream_stays_and_a_silent_one_is_dropped(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(media, "SILENT_S", SILENT_S)
    ws_url = service.base_url.replace("http", "ws", 1) + "/twilio/media"
    call_sid = "CA" + secrets.token_hex(16)
    async with aiohttp.ClientSession() as http:
        token = await issue_token(service, http, call_sid)
        async with http.ws_connect(ws_url) as ws:
            stream = FakeTwilioStream(ws, service.providers.account_sid, call_sid)
            await ws.send_str(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
            await ws.send_str(stream.start_message(token))
            frame = json.dumps(
                {"event": "media", "streamSid": stream.stream_sid, "media": {"payload": "/" * 212 + "w=="}}
            )
            loop = asyncio.get_running_loop()
            talked_until = loop.time() + 4 * SILENT_S
            while loop.time() < talked_until:  # Twilio's pace: a frame every 20 ms
                await ws.send_str(frame)
                await asyncio.sleep(0.02)
            assert not ws.closed
            silent_from = loop.time()
            async with asyncio.timeout(10):
                while (await ws.receive()).type not in (
                    aiohttp.WSMsgType.CLOSE,
                    aiohttp.WSMsgType.CLOSED,
                    aiohttp.WSMsgType.ERROR,
                ):
                    pass
            # Dropped one or two checks into the silence (the last frame may have landed just before a check):
            # never at once.
            assert loop.time() - silent_from >= SILENT_S / 2
    await eventually(lambda: _closed(service, call_sid))


async def _closed(service: Service, call_sid: str) -> bool:
    return "stream_closed" in await event_kinds(service, call_sid)
