"""The callee's own sounds (`Callee`): a person's hello, a machine's greeting and beep, a fax's tones.

Driven slot by slot by the phone's microphone from the moment the call is answered, whether or not a
media stream is open (a person says "Hello?" into the phone, not into our websocket), so each sound
starts in the 20 ms slot its behaviour names and machine detection hears exactly what was said.  Spoken
sounds come from the sandbox voice (prepared while the phone rings); tones are synthesized (`tones`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from announcer.sandbox import tones
from announcer.sandbox.phone_voice import PhoneVoice, Utterance, framed
from announcer.sandbox.twilio_call import Callee, LineKind, PhoneBehavior, SandboxCall, SpokenLine

if TYPE_CHECKING:
    from announcer.sandbox.phone import Phone


class CalleeScript:
    def __init__(self, call: SandboxCall, behavior: PhoneBehavior, slot_s: float, speed: float) -> None:
        self._call = call
        self._b = behavior
        self._kind = behavior.callee
        self._slot = slot_s
        self._speed = speed
        self._origin: float | None = None  # the answer (monotonic)
        self._ready: dict[LineKind, Utterance] = {}
        self._said: dict[LineKind, SpokenLine] = {}
        self._hung_up = False

    async def prepare(self, voice: PhoneVoice) -> None:
        """Synthesize what this callee will say (before it answers: each sound is due to the slot)."""
        b = self._b
        texts: list[tuple[LineKind, str]] = []
        if self._kind in (Callee.HELLO, Callee.TALKS_OVER) and b.hello:
            texts.append((LineKind.HELLO, b.hello))
        if self._kind is Callee.TALKS_OVER and b.talk_over:
            texts.append((LineKind.TALK_OVER, b.talk_over))
        if self._kind in (Callee.MACHINE, Callee.MACHINE_NO_BEEP, Callee.MAILBOX_FULL) and b.greeting_text:
            texts.append((LineKind.GREETING, b.greeting_text))
        for kind, text in texts:
            self._ready[kind] = await voice.prepare(text)
        if self._kind is Callee.MACHINE:
            self._ready[LineKind.BEEP] = framed("(beep)", tones.tone(tones.BEEP_HZ, b.beep_s))
        if self._kind is Callee.FAX:
            self._ready[LineKind.FAX_TONE] = framed("(fax CNG)", tones.cng_cycle())

    def answer(self, now: float) -> None:
        self._origin = now

    def before_slot(self, slot_start: float, phone: Phone) -> None:
        """Called for each microphone slot, before its frame is taken: start what is due in it."""
        if self._origin is None or self._hung_up:
            return
        kind, b, speed = self._kind, self._b, self._speed
        if kind in (Callee.HELLO, Callee.TALKS_OVER):
            self._say_at(LineKind.HELLO, self._origin + b.hello_after_s / speed, slot_start, phone)
            played = self._call.first_played_at
            hello_done = LineKind.HELLO not in self._ready or LineKind.HELLO in self._said
            if kind is Callee.TALKS_OVER and played is not None and hello_done:
                self._say_at(LineKind.TALK_OVER, played + b.talk_over_after_s / speed, slot_start, phone)
        elif kind is Callee.FAX:
            if self._due(self._origin + b.fax_after_s / speed, slot_start) and not phone.speaking:
                self._say(LineKind.FAX_TONE, phone)  # the next CNG cycle, for as long as the call lasts
        elif kind in (Callee.MACHINE, Callee.MACHINE_NO_BEEP, Callee.MAILBOX_FULL):
            self._machine(slot_start, phone)

    def _machine(self, slot_start: float, phone: Phone) -> None:
        call, b = self._call, self._b
        assert self._origin is not None
        self._say_at(LineKind.GREETING, self._origin + b.greeting_after_s / self._speed, slot_start, phone)
        greeting = self._said.get(LineKind.GREETING)
        greeting_end = greeting.ended_at if greeting is not None else None
        if greeting_end is None and LineKind.GREETING in self._ready:
            return
        after = greeting_end if greeting_end is not None else self._origin
        if self._kind is Callee.MAILBOX_FULL:
            if self._due(after + b.hang_up_after_greeting_s / self._speed, slot_start):
                self._hang_up(slot_start, phone)
            return
        if call.recording_started_at is None:
            if self._kind is Callee.MACHINE_NO_BEEP:
                call.recording_started_at = after
                call.notify()
                return
            self._say_at(LineKind.BEEP, after + b.beep_after_s / self._speed, slot_start, phone)
            beep = self._said.get(LineKind.BEEP)
            if beep is not None and beep.ended_at is not None:
                call.beep_ended_at = call.recording_started_at = beep.ended_at
                call.notify()
            return
        if self._due(call.recording_started_at + b.record_max_s / self._speed, slot_start):
            self._hang_up(slot_start, phone)

    def _due(self, at: float, slot_start: float) -> bool:
        # the slot nearest to `at` (float sums of slots never land exactly on it)
        return slot_start + self._slot / 2 >= at

    def _say_at(self, kind: LineKind, at: float, slot_start: float, phone: Phone) -> None:
        if kind not in self._said and kind in self._ready and self._due(at, slot_start):
            self._said[kind] = self._say(kind, phone)

    def _say(self, kind: LineKind, phone: Phone) -> SpokenLine:
        return phone.speak_now(self._ready[kind], kind)

    def _hang_up(self, at: float, phone: Phone) -> None:
        self._hung_up = True
        phone.conclude_detection(at)  # detection ends with the call, at this slot
        self._call._control.end_call(self._call)
