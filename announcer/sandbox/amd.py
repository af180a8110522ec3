"""Answering machine detection as Twilio documents it, driven by the callee's audio: pure, no I/O.

protocols.md ("Answering machine detection") and Twilio's AMD page give the rules this follows, with
the call's tuning values (defaults: 30 s, 2400 ms, 1200 ms, 5000 ms):

- speech shorter than `MachineDetectionSpeechThreshold`, then `MachineDetectionSpeechEndThreshold`
  of silence: `human`; speech reaching the threshold: a machine (`machine_start` at once with
  `Enable`; with `DetectMessageEnd`, reported only when its greeting ends: `machine_end_beep` when a
  beep ends, `machine_end_silence` after the speech-end silence, `machine_end_other` when the
  detection timeout or the end of the call comes first);
- nothing heard for `MachineDetectionSilenceTimeout` from the answer: `unknown`;
- fax tones (CNG 1100 Hz / CED 2100 Hz) for `FAX_MIN_MS`: `fax`; a 1 kHz tone of `BEEP_MIN_MS` or
  more is a machine's beep, after a greeting or not;
- nothing decided within `MachineDetectionTimeout`: `unknown`.

Time is the audio's own: each frame is fed with the sandbox milliseconds from the answer to its end,
so `MachineDetectionDuration` does not depend on the event loop.  A verdict on a sound (a machine's
speech reaching the threshold, a beep's end, fax tones) is timed at the end of the frame that showed
it; a verdict on a timer (the speech-end silence, the silence timeout, the detection timeout) at the
instant the timer ran out.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from announcer.audio import FRAME_MS
from announcer.sandbox.tones import Sound

BEEP_MIN_MS = 160  # shorter 1 kHz bursts are not a beep (a vowel's harmonic, a click)
FAX_MIN_MS = 300  # CNG lasts 500 ms, CED 2.6-4 s: 300 ms of either is a fax


class AmdMode(StrEnum):
    """Values of MachineDetection on the create-call request."""

    ENABLE = "Enable"
    DETECT_MESSAGE_END = "DetectMessageEnd"


class AnsweredBy(StrEnum):
    """Twilio's AnsweredBy values."""

    HUMAN = "human"
    MACHINE_START = "machine_start"
    MACHINE_END_BEEP = "machine_end_beep"
    MACHINE_END_SILENCE = "machine_end_silence"
    MACHINE_END_OTHER = "machine_end_other"
    FAX = "fax"
    UNKNOWN = "unknown"


# Twilio's tuning parameters: (create-call field, default, lowest, highest) (error 21234's page)
TIMEOUT = ("MachineDetectionTimeout", 30, 3, 59)  # seconds
SPEECH_THRESHOLD = ("MachineDetectionSpeechThreshold", 2400, 1000, 6000)  # ms
SPEECH_END_THRESHOLD = ("MachineDetectionSpeechEndThreshold", 1200, 500, 5000)  # ms
SILENCE_TIMEOUT = ("MachineDetectionSilenceTimeout", 5000, 2000, 10000)  # ms
TUNING = (TIMEOUT, SPEECH_THRESHOLD, SPEECH_END_THRESHOLD, SILENCE_TIMEOUT)


@dataclass(frozen=True, slots=True)
class AmdSettings:
    mode: AmdMode = AmdMode.DETECT_MESSAGE_END
    timeout_s: int = TIMEOUT[1]
    speech_threshold_ms: int = SPEECH_THRESHOLD[1]
    speech_end_threshold_ms: int = SPEECH_END_THRESHOLD[1]
    silence_timeout_ms: int = SILENCE_TIMEOUT[1]


@dataclass(frozen=True, slots=True)
class AmdRequest:
    """Machine detection as asked for on a create-call request."""

    settings: AmdSettings
    async_amd: bool = False  # AsyncAmd=true: the call connects at once, the verdict is POSTed
    callback_url: str | None = None  # AsyncAmdStatusCallback
    callback_method: str = "POST"


@dataclass(frozen=True, slots=True)
class Verdict:
    answered_by: AnsweredBy
    duration_ms: int  # MachineDetectionDuration: from the answer to the decision, sandbox ms


class MachineDetector:
    """Fed one classified frame at a time; returns the verdict once, then ignores what follows."""

    def __init__(self, settings: AmdSettings) -> None:
        self.settings = settings
        self.verdict: Verdict | None = None
        self.machine_at_ms: int | None = None  # when speech reached the threshold (a machine)
        self._speech_start: int | None = None  # ms: start of the first voiced frame of this speech
        self._speech_end = 0  # ms: end of the last voiced frame
        self._loud_end = 0  # ms: end of the last frame that was not silence (voice or tone)
        self._heard = False  # anything but silence yet (ends the initial-silence timer)
        self._tone: Sound | None = None  # the tone now sounding, and since when
        self._tone_start = 0

    @property
    def done(self) -> bool:
        return self.verdict is not None

    def feed(self, sound: Sound, end_ms: int) -> Verdict | None:
        """The frame that ended `end_ms` sandbox ms after the answer was `sound`."""
        if self.verdict is not None:
            return None
        judged = self._judge(sound, end_ms)
        if judged is not None:
            self.verdict = Verdict(*judged)
        return self.verdict

    def conclude(self, end_ms: int) -> Verdict:
        """The call ended (or the detection was cut short) before a verdict: what is known by now."""
        if self.verdict is None:
            identified = self.machine_at_ms is not None
            self.verdict = Verdict(AnsweredBy.MACHINE_END_OTHER if identified else AnsweredBy.UNKNOWN, end_ms)
        return self.verdict

    def _judge(self, sound: Sound, end_ms: int) -> tuple[AnsweredBy, int] | None:
        """The verdict and its time, if this frame decides."""
        s = self.settings
        start_ms = end_ms - FRAME_MS
        enable = s.mode is AmdMode.ENABLE
        # -- tones ----------------------------------------------------------------------------
        if sound is not self._tone:
            ended, ended_ms = self._tone, start_ms - self._tone_start
            self._tone = sound if sound in (Sound.BEEP, Sound.FAX) else None
            self._tone_start = start_ms
            if ended is Sound.BEEP and ended_ms >= BEEP_MIN_MS and not enable:
                return AnsweredBy.MACHINE_END_BEEP, end_ms  # the greeting is over: the machine records now
        if self._tone is not None:
            self._heard = True
            self._loud_end = end_ms
            tone_ms = end_ms - self._tone_start
            if self._tone is Sound.FAX and tone_ms >= FAX_MIN_MS:
                return AnsweredBy.FAX, end_ms
            if self._tone is Sound.BEEP and tone_ms >= BEEP_MIN_MS and enable:
                return AnsweredBy.MACHINE_START, end_ms
        # -- speech -----------------------------------------------------------------------------
        elif sound is Sound.VOICE:
            self._heard = True
            self._loud_end = end_ms
            if self._speech_start is None:
                self._speech_start = start_ms
            self._speech_end = end_ms
            if self.machine_at_ms is None and end_ms - self._speech_start >= s.speech_threshold_ms:
                self.machine_at_ms = end_ms
                if enable:
                    return AnsweredBy.MACHINE_START, end_ms
        # -- timers: a verdict at the instant its timer ran out (decided by the frame that crossed it)
        quiet_end = self._loud_end + s.speech_end_threshold_ms
        if self._tone is None and end_ms >= quiet_end:
            if self.machine_at_ms is not None:
                return AnsweredBy.MACHINE_END_SILENCE, quiet_end
            if self._speech_start is not None:
                return AnsweredBy.HUMAN, quiet_end
        if not self._heard and end_ms >= s.silence_timeout_ms:
            return AnsweredBy.UNKNOWN, s.silence_timeout_ms
        if end_ms >= s.timeout_s * 1000:
            identified = self.machine_at_ms is not None
            return AnsweredBy.MACHINE_END_OTHER if identified else AnsweredBy.UNKNOWN, s.timeout_s * 1000
        return None
