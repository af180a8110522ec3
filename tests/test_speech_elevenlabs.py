"""ElevenLabsSynthesizer through the real `elevenlabs` SDK against SandboxElevenLabs (and the sandbox's
own wire behaviour: auth, validation, streaming knobs, failure injection)."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import aiohttp
import pytest

from announcer.sandbox.elevenlabs import SandboxElevenLabs
from announcer.speech.elevenlabs import ElevenLabsSynthesizer
from announcer.speech.engine import SpeechError
from announcer.speech.local import LocalSynthesizer

API_KEY = "sk-sandbox-test-key"
VOICE = "VOICE123"
MODEL = "eleven_flash_v2_5"
LOCAL = LocalSynthesizer()
SENTENCE = "This is a test announcement from the sandbox."


@pytest.fixture
async def sandbox() -> AsyncIterator[SandboxElevenLabs]:
    server = SandboxElevenLabs(API_KEY, LOCAL.synthesize)
    await server.start()
    yield server
    await server.close()


def engine(
    sandbox: SandboxElevenLabs,
    *,
    api_key: str = API_KEY,
    timeout_s: float = 5.0,
    voice_settings: dict[str, object] | None = None,
) -> ElevenLabsSynthesizer:
    assert sandbox.base_url is not None
    return ElevenLabsSynthesizer(api_key, sandbox.base_url, VOICE, MODEL, timeout_s, voice_settings)


async def collect(synth: ElevenLabsSynthesizer, text: str = SENTENCE, **kw: str | None) -> list[bytes]:
    try:
        return [chunk async for chunk in synth.stream(text, **kw)]
    finally:
        await synth.aclose()


async def test_request_shape_and_audio(sandbox: SandboxElevenLabs) -> None:
    synth = engine(
        sandbox, voice_settings={"stability": 0.5, "similarity_boost": 0.75, "use_speaker_boost": True}
    )
    sandbox.bytes_per_second = 80_000  # ten times real time: 800-byte pieces 10 ms apart
    chunks = await collect(synth, previous_text="Hello.", next_text="Goodbye.")

    [req] = sandbox.requests
    assert req.path == f"/v1/text-to-speech/{VOICE}/stream"
    assert (req.status, req.outcome, req.output_format) == (200, "completed", "ulaw_8000")
    assert (req.text, req.model_id, req.previous_text, req.next_text) == (
        SENTENCE,
        MODEL,
        "Hello.",
        "Goodbye.",
    )
    assert req.voice_settings == {"stability": 0.5, "similarity_boost": 0.75, "use_speaker_boost": True}
    audio = b"".join(chunks)
    assert len(audio) == req.bytes_sent > 8000  # over a second of 8 kHz mu-law
    # Handed on as they arrive (chunk_size=None), not regrouped nor held until the body is complete;
    # the speaker cuts them into frames.
    assert len(chunks) > 1 and all(chunks)


async def test_unset_context_is_left_out(sandbox: SandboxElevenLabs) -> None:
    await collect(engine(sandbox), text="Hi there.")
    [req] = sandbox.requests
    assert (req.previous_text, req.next_text, req.voice_settings) == (None, None, None)


def test_identity_names_everything_that_shapes_the_audio() -> None:
    synth = ElevenLabsSynthesizer(API_KEY, "http://127.0.0.1:9", VOICE, MODEL, 1.0, {"stability": 0.3})
    assert synth.identity() == {
        "provider": "elevenlabs",
        "voice": VOICE,
        "model": MODEL,
        "output_format": "ulaw_8000",
        "voice_settings": {"stability": 0.3},
    }
    assert API_KEY not in repr(synth) and API_KEY not in repr(synth.identity())


def test_voice_settings_are_checked_at_start() -> None:
    with pytest.raises(ValueError, match="stabilty"):
        ElevenLabsSynthesizer(API_KEY, "http://127.0.0.1:9", VOICE, MODEL, 1.0, {"stabilty": 0.5})
    with pytest.raises(ValueError):
        ElevenLabsSynthesizer(API_KEY, "http://127.0.0.1:9", VOICE, MODEL, 1.0, {"stability": "high"})


async def test_wrong_key_is_401(sandbox: SandboxElevenLabs) -> None:
    with pytest.raises(SpeechError) as caught:
        await collect(engine(sandbox, api_key="wrong"))
    assert caught.value.reason == "http 401 invalid_api_key"
    assert API_KEY not in str(caught.value) and "wrong" not in str(caught.value)
    assert sandbox.requests[0].status == 401


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("unauthorized", "http 401 invalid_api_key"),
        ("quota", "http 401 quota_exceeded"),
        ("rate_limited", "http 429 too_many_concurrent_requests"),
        ("server_error", "http 500"),
        ("timeout", "timeout"),
        ("cut", "stream cut"),
    ],
)
async def test_each_failure_is_a_speech_error_with_a_clear_reason(
    sandbox: SandboxElevenLabs, kind: str, reason: str
) -> None:
    sandbox.fail_next(kind, after_bytes=1000)
    started = time.monotonic()
    with pytest.raises(SpeechError) as caught:
        await collect(engine(sandbox, timeout_s=0.3))
    assert caught.value.reason == reason
    assert time.monotonic() - started < 3
    assert sandbox.requests[0].injected == kind
    if kind == "timeout":
        # The client gave up and hung up; the sandbox saw it go.
        await sandbox.wait_until(lambda: sandbox.requests[0].outcome == "client_gone", timeout=5)
    if kind == "cut":
        assert sandbox.requests[0].bytes_sent == 1000
    # Only the next request fails: the one after succeeds.
    assert await collect(engine(sandbox))


async def test_connection_refused() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    synth = ElevenLabsSynthesizer(API_KEY, f"http://127.0.0.1:{port}", VOICE, MODEL, 1.0)
    with pytest.raises(SpeechError) as caught:
        await collect(synth)
    assert caught.value.reason == "connect failed"


async def test_closing_the_stream_early_hangs_up_on_the_server(sandbox: SandboxElevenLabs) -> None:
    sandbox.bytes_per_second = 8000  # real time: the server is still sending when we leave
    synth = engine(sandbox)
    async with aclosing(synth.stream(SENTENCE)) as audio:
        async for _ in audio:
            break
    await sandbox.wait_until(lambda: sandbox.requests[0].outcome == "client_gone", timeout=5)
    assert sandbox.requests[0].bytes_sent < 8000
    await synth.aclose()


async def test_failures_queue_and_repeat(sandbox: SandboxElevenLabs) -> None:
    sandbox.fail_next("rate_limited", times=2)
    sandbox.fail_next("server_error")
    reasons = []
    for _ in range(4):
        try:
            await collect(engine(sandbox), text="Hi there.")
            reasons.append("ok")
        except SpeechError as err:
            reasons.append(err.reason)
    assert reasons == ["http 429 too_many_concurrent_requests"] * 2 + ["http 500", "ok"]
    with pytest.raises(ValueError):
        sandbox.fail_next("gremlins")


# --- the sandbox's own wire behaviour ---------------------------------------------------------------


async def post(
    sandbox: SandboxElevenLabs,
    body: object,
    *,
    path: str = f"/v1/text-to-speech/{VOICE}/stream",
    query: str = "?output_format=ulaw_8000",
    key: str | None = API_KEY,
) -> tuple[int, object, str]:
    """A raw request, to see the sandbox's answers the SDK would turn into exceptions."""
    headers = {"xi-api-key": key} if key is not None else {}
    url = f"{sandbox.base_url}{path}{query}"
    async with aiohttp.ClientSession() as http, http.post(url, json=body, headers=headers) as resp:
        content_type = resp.headers.get("Content-Type", "")
        payload = await resp.json() if "json" in content_type else await resp.read()
        return resp.status, payload, content_type


async def test_sandbox_validates_like_elevenlabs(sandbox: SandboxElevenLabs) -> None:
    status, body, _ = await post(sandbox, {"text": "hi"}, key=None)
    assert (status, body) == (401, {"detail": {"status": "invalid_api_key", "message": "Invalid API key"}})

    status, body, _ = await post(sandbox, {"text": "hi"}, query="?output_format=mp3_44100_128")
    assert status == 422
    assert isinstance(body, dict)
    assert [d["loc"] for d in body["detail"]] == [["query", "output_format"]]

    settings = {"stability": "high", "use_speaker_boost": 1, "x": 1}
    bad = {"text": "", "model_id": 5, "voice_settings": settings, "seed": 3}
    status, body, _ = await post(sandbox, bad)
    assert status == 422
    assert isinstance(body, dict)
    problems = {tuple(d["loc"]): d["type"] for d in body["detail"]}
    assert problems == {
        ("body", "text"): "string_too_short",
        ("body", "model_id"): "string_type",
        ("body", "voice_settings", "stability"): "float_type",
        ("body", "voice_settings", "use_speaker_boost"): "bool_type",
        ("body", "voice_settings", "x"): "extra_forbidden",
        ("body", "seed"): "extra_forbidden",
    }
    status, body, _ = await post(sandbox, ["not", "an", "object"])
    assert status == 422
    status, body, _ = await post(sandbox, {"model_id": None})
    assert status == 422 and isinstance(body, dict) and body["detail"][0]["type"] == "missing"
    assert [r.status for r in sandbox.requests] == [401, 422, 422, 422, 422]


async def test_sandbox_streams_both_routes_as_audio_basic(sandbox: SandboxElevenLabs) -> None:
    for path in (f"/v1/text-to-speech/{VOICE}/stream", f"/v1/text-to-speech/{VOICE}"):
        status, audio, content_type = await post(
            sandbox, {"text": "Hello.", "language_code": None}, path=path
        )
        assert (status, content_type) == (200, "audio/basic")
        assert isinstance(audio, bytes) and len(audio) > 1000


async def test_sandbox_paces_and_delays(sandbox: SandboxElevenLabs) -> None:
    sandbox.first_byte_delay_s = 0.2
    sandbox.bytes_per_second = 40000  # 5x real time
    sandbox.chunk_bytes = 400
    chunks = await collect(engine(sandbox))
    [req] = sandbox.requests
    assert req.first_byte_at is not None and req.finished_at is not None
    assert req.first_byte_at - req.received_at >= 0.2
    total = len(b"".join(chunks))
    # the last chunk leaves when its audio "exists" at the pace: total / 40000 s after the headers
    assert req.finished_at - req.first_byte_at >= (total - 400) / 40000 * 0.9
