"""ElevenLabs streaming text to speech through the official SDK, as 8 kHz mu-law.

`POST /v1/text-to-speech/{voice_id}/stream?output_format=ulaw_8000` (protocols.md, "ElevenLabs"): the
body streams raw mu-law as synthesis proceeds, so audio reaches the caller before the clip is done.
Facts relied on (sdk-notes.md section 1): the SDK's `stream()` is an async generator that raises
`ApiError` from its first `__anext__`; streaming is never retried by the SDK; the timeout is httpx's
per-operation timeout (the longest silence between reads, not a deadline for the clip); a stream left
unclosed keeps downloading, so it is always consumed under `contextlib.aclosing`.

The SDK is a fifth of a second of imports (its pydantic models): loaded by `warm()`, which the app runs
in the background once the service listens, not on the way to listening; else by the first synthesis.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

import httpx

from announcer.preload import Preload
from announcer.speech.engine import SpeechError

if TYPE_CHECKING:
    from elevenlabs.client import AsyncElevenLabs
    from elevenlabs.core.api_error import ApiError
    from elevenlabs.types.voice_settings import VoiceSettings

OUTPUT_FORMAT = "ulaw_8000"


class ElevenLabsSynthesizer:
    """One SDK client and one connection pool for the whole process; closed by `aclose()`.

    The API key goes to the SDK and nowhere else: it is not kept on this object, so no repr or log of
    it can leak the key.
    """

    name = "elevenlabs"

    def __init__(
        self,
        api_key: str,
        base_url: str,
        voice_id: str,
        model_id: str,
        timeout_s: float,
        voice_settings: dict[str, Any] | None = None,
    ) -> None:
        self._voice_id = voice_id
        self._model_id = model_id
        self._voice_settings = _voice_settings(voice_settings) if voice_settings else None
        self._sdk = LazyElevenLabs(api_key, base_url, timeout_s)

    async def warm(self) -> None:
        """Load the SDK in a worker thread (the event loop keeps serving meanwhile), then make the client.
        Every synthesis waits for this first."""
        await self._sdk.get()

    @property
    def loaded(self) -> bool:
        """Whether the SDK client is made (by `warm()`, or by a first use)."""
        return self._sdk.loaded

    def identity(self) -> dict[str, object]:
        settings = self._voice_settings.model_dump(exclude_none=True) if self._voice_settings else {}
        return {
            "provider": "elevenlabs",
            "voice": self._voice_id,
            "model": self._model_id,
            "output_format": OUTPUT_FORMAT,
            "voice_settings": settings,
        }

    async def stream(
        self, text: str, *, previous_text: str | None = None, next_text: str | None = None
    ) -> AsyncGenerator[bytes, None]:
        # Unset fields are left out of the body (the SDK omits them), rather than sent as null.
        extra: dict[str, Any] = {}
        if previous_text:
            extra["previous_text"] = previous_text
        if next_text:
            extra["next_text"] = next_text
        if self._voice_settings is not None:
            extra["voice_settings"] = self._voice_settings
        client = await self._sdk.get()
        from elevenlabs.core.api_error import ApiError  # loaded with the client: a lookup

        try:
            async with contextlib.aclosing(
                client.text_to_speech.stream(
                    self._voice_id,
                    text=text,
                    model_id=self._model_id,
                    output_format=OUTPUT_FORMAT,
                    # No regrouping: the SDK's default 1024 B pieces would hold back 128 ms of audio, and
                    # small fixed pieces cost a trip through four generators each. `None` hands on what
                    # the network delivered, when it arrives; the speaker cuts it into frames.
                    request_options={"chunk_size": None},
                    **extra,
                )
            ) as audio:
                async for chunk in audio:
                    yield chunk
        except ApiError as err:
            raise SpeechError(_api_reason(err)) from err
        except httpx.TimeoutException as err:  # before the headers or between two reads
            raise SpeechError("timeout") from err
        except httpx.ConnectError as err:
            raise SpeechError("connect failed") from err
        except (httpx.RemoteProtocolError, httpx.ReadError) as err:  # the connection dropped mid-body
            raise SpeechError("stream cut") from err
        except httpx.HTTPError as err:
            raise SpeechError(f"http error {type(err).__name__}") from err

    async def aclose(self) -> None:
        await self._sdk.aclose()


class LazyElevenLabs:
    """The SDK's client, made on first use after the SDK has loaded in a worker thread (preload.py), over
    an httpx client of our own (the SDK has no close()). Shared by speech and the agent connector.

    `timeout=` is passed to the SDK as well: `AsyncElevenLabs` defaults it to 240 s and sends that with
    every request, overriding the httpx client's own timeout (elevenlabs 2.78, client.py). The API key
    lives in a closure until the client is made: in no repr or log."""

    def __init__(self, api_key: str, base_url: str, timeout_s: float) -> None:
        self._http = httpx.AsyncClient(timeout=timeout_s)

        def make() -> AsyncElevenLabs:
            from elevenlabs.client import AsyncElevenLabs

            return AsyncElevenLabs(
                api_key=api_key, base_url=base_url, timeout=timeout_s, httpx_client=self._http
            )

        self._make: Callable[[], AsyncElevenLabs] | None = make
        self._client: AsyncElevenLabs | None = None
        self._preload = Preload("elevenlabs.client")

    @property
    def loaded(self) -> bool:
        return self._client is not None

    async def get(self) -> AsyncElevenLabs:
        if self._client is None:
            await self._preload()  # the app's warm-up has loaded it by now, in the common case
            if self._client is None:
                assert self._make is not None
                self._client, self._make = self._make(), None
        return self._client

    async def aclose(self) -> None:
        await self._http.aclose()


def _voice_settings(values: dict[str, Any]) -> VoiceSettings:
    """Checked at start, so a bad setting fails there and not on the first call. The SDK's model types
    the values but accepts any key, so unknown keys (a typo) are refused here."""
    from elevenlabs.types.voice_settings import VoiceSettings

    unknown = sorted(set(values) - set(VoiceSettings.model_fields))
    if unknown:
        raise ValueError(f"unknown ElevenLabs voice settings: {', '.join(unknown)}")
    return VoiceSettings(**values)


def _api_reason(err: ApiError) -> str:
    """The status and ElevenLabs' error code when the body has one: "http 429 too_many_concurrent_requests".

    Error bodies are `{"detail": {"status": ..., "message": ...}}`, or for 422 `{"detail": [{"loc": ...,
    "msg": ..., "type": ...}]}` (protocols.md); anything else (a proxy's HTML page) gives the status only.
    """
    reason = f"http {err.status_code}"
    detail = err.body.get("detail") if isinstance(err.body, dict) else None
    if isinstance(detail, dict) and isinstance(detail.get("status"), str):
        reason += f" {detail['status']}"
    elif isinstance(detail, list) and detail and isinstance(detail[0], dict):
        loc = ".".join(str(part) for part in detail[0].get("loc", []))
        reason += f" {loc}: {detail[0].get('msg', '')}".rstrip(": ")
    return reason
