"""A call's page: its timeline (status changes, stream events, keys, fallback, agent handoff: every call
event, in order), the agent transcript, and its audio through authenticated routes: the sandbox phone's
recording (what was heard on the line), and the message audio that was sent, read from the speech cache
(never synthesized here: a page does not wait on ElevenLabs). Both are 16-bit PCM WAV (announcer.audio
`wav_bytes`), which every browser's <audio> plays; mu-law WAV is not certain to."""

from __future__ import annotations

import os

from aiohttp import web

from announcer.audio import wav_bytes
from announcer.dashboard.routes import Page, Routes
from announcer.store import transcripts
from announcer.store.models import Call, CallOutcome
from announcer.telephony.voice import CALL_SID

routes = Routes()


async def _call(page: Page) -> Call:
    sid = page.request.match_info["call_sid"]
    if not CALL_SID.match(sid):
        raise page.fail(404, "No such call (a Call SID is CA and 32 hex digits).")
    store = page.services.calls.store
    call_id = await store.find_by_sid(sid)
    call = None if call_id is None else await store.get(call_id)
    if call is None:
        raise page.fail(404, "No such call.")
    return call


def _recording(page: Page, call: Call) -> str | None:
    """The sandbox phone's WAV of the call, when there is one (sandbox mode, once the call has ended).
    One stat on the local data directory, as the speech cache does on the loop."""
    folder = page.services.recordings_dir
    if folder is None or call.call_sid is None:
        return None
    path = os.path.join(folder, f"{call.call_sid}.wav")
    return path if os.path.isfile(path) else None


async def _message_text(page: Page, call: Call) -> str:
    """The text whose audio the call played: the voicemail message where one was left, else its message."""
    if call.outcome == CallOutcome.VOICEMAIL_LEFT and call.delivery_id is not None:
        brief = await page.services.alerts.store.delivery_brief(call.delivery_id)
        if brief is not None and brief.voicemail_text:
            return brief.voicemail_text
    return call.text


@routes.get("/calls/{call_sid}", name="call")
async def call_page(request: web.Request, page: Page) -> web.StreamResponse:
    call = await _call(page)
    store = page.services.calls.store
    events = await store.events(call.id)
    turns = await transcripts.turns(store.sessions, call.id)
    brief = None
    if call.delivery_id is not None:
        brief = await page.services.alerts.store.delivery_brief(call.delivery_id)
    text = await _message_text(page, call)
    cached = await page.services.alerts.speaker.cached_audio(text) if text else None
    return page.render(
        "call.html",
        call=call,
        brief=brief,
        events=[(e.at, e.kind, e.detail) for e in events],
        turns=turns,
        text=text,
        has_recording=_recording(page, call) is not None,
        has_message_audio=cached is not None,
    )


@routes.get("/calls/{call_sid}/recording.wav", name="call_recording")
async def recording(request: web.Request, page: Page) -> web.StreamResponse:
    call = await _call(page)
    path = _recording(page, call)
    if path is None:
        raise page.fail(404, "This call has no recording (only the sandbox phone records calls).")
    # FileResponse answers Range requests: the <audio> element seeks without fetching the whole file.
    return web.FileResponse(path, headers={"Content-Type": "audio/wav"})


@routes.get("/calls/{call_sid}/message.wav", name="call_message")
async def message_audio(request: web.Request, page: Page) -> web.StreamResponse:
    call = await _call(page)
    text = await _message_text(page, call)
    audio = await page.services.alerts.speaker.cached_audio(text) if text else None
    if audio is None:
        raise page.fail(404, "The speech cache no longer holds this call's message audio.")
    return web.Response(body=wav_bytes(audio), content_type="audio/wav")
