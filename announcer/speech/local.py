"""The local voice: espeak-ng from the `espeakng-loader` wheel (no system package, no network).

It speaks in sandbox mode and is the fallback when the primary engine fails mid-message. libespeak-ng
is driven through ctypes in synchronous mode, where the synth callback receives 22050 Hz s16le mono
(sdk-notes.md section 5); soxr resamples to 8 kHz and `announcer.audio.lin2ulaw` encodes G.711.
libespeak-ng keeps global state (one voice, one callback, one output buffer), so every synthesis in
the process goes through one lock, and the library is initialised once, on first use.
"""

from __future__ import annotations

import asyncio
import ctypes
import importlib.metadata
import threading
from collections.abc import AsyncGenerator
from typing import Any

import espeakng_loader
import numpy as np
import soxr

from announcer.audio import SAMPLE_RATE, lin2ulaw
from announcer.speech.engine import SpeechError

# speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1
_EE_OK = 0

# int callback(short *wav, int numsamples, espeak_EVENT *events)
_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

DEFAULT_VOICE = "en-us"


class _Espeak:
    """The process-wide libespeak-ng. Only used with `_lock` held."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CALLBACK]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.POINTER(ctypes.c_uint),
            ctypes.c_void_p,
        ]
        lib.espeak_Synth.restype = ctypes.c_int
        data_path = espeakng_loader.get_data_path().encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, 0)
        if rate <= 0:
            raise SpeechError(f"local voice: espeak_Initialize failed ({rate})")
        self.rate: int = rate
        self._lib = lib
        self._pcm = bytearray()
        # ctypes only holds a raw pointer to the callback: keep the Python object alive with the library.
        self._callback = _SYNTH_CALLBACK(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)
        self._voice = ""

    def _on_audio(self, wav: Any, numsamples: int, events: Any) -> int:
        if numsamples > 0:
            self._pcm += ctypes.string_at(wav, numsamples * 2)
        return 0  # 0 = go on synthesising

    def synth(self, text: str, voice: str) -> bytes:
        """22050 Hz s16le mono PCM for `text`."""
        if voice != self._voice:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != _EE_OK:
                raise SpeechError(f"local voice: unknown voice {voice!r}")
            self._voice = voice
        self._pcm = bytearray()
        data = text.encode("utf-8") + b"\0"
        rc = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None)
        if rc != _EE_OK:
            raise SpeechError(f"local voice: espeak_Synth failed ({rc})")
        pcm, self._pcm = self._pcm, bytearray()
        return bytes(pcm)


_lock = threading.Lock()
_espeak: _Espeak | None = None


def _synth_pcm(text: str, voice: str) -> tuple[bytes, int]:
    global _espeak
    with _lock:
        if _espeak is None:
            try:
                _espeak = _Espeak()
            except OSError as err:  # the shared library did not load
                raise SpeechError(f"local voice: {err}") from err
        return _espeak.synth(text, voice), _espeak.rate


class LocalSynthesizer:
    """espeak-ng, 8 kHz mu-law. Robotic but instant (a sentence in a few ms) and always available."""

    name = "local"

    def __init__(self, voice: str = DEFAULT_VOICE) -> None:
        self._voice = voice
        self._version = importlib.metadata.version("espeakng-loader")

    def identity(self) -> dict[str, object]:
        return {
            "provider": "espeak-ng",
            "voice": self._voice,
            "model": f"espeakng-loader {self._version}",
            "output_format": "ulaw_8000",
            "voice_settings": {},
        }

    def synthesize(self, text: str) -> bytes:
        """The whole clip as 8 kHz mu-law. Blocking (a few ms per sentence): call it from a thread."""
        text = text.strip()
        if not text:
            return b""
        pcm, rate = _synth_pcm(text, self._voice)
        if not pcm:
            return b""
        # Resampling and encoding run outside the lock: they touch no espeak state.
        resampled = soxr.resample(np.frombuffer(pcm, dtype="<i2"), rate, SAMPLE_RATE)
        return lin2ulaw(np.asarray(resampled, dtype=np.int16))

    async def stream(
        self, text: str, *, previous_text: str | None = None, next_text: str | None = None
    ) -> AsyncGenerator[bytes, None]:
        """One chunk, the whole clip: synthesis is far faster than real time, so streaming gains nothing.

        espeak has no cross-sentence prosody, so `previous_text` / `next_text` are ignored.
        """
        audio = await asyncio.to_thread(self.synthesize, text)
        if audio:
            yield audio

    async def aclose(self) -> None:
        """Nothing to release: the library stays loaded for the life of the process."""
