"""The sandbox's callees and its answering machine detection, on their own: the real twilio SDK against
the sandbox REST API, and the small service of test_sandbox_twilio (signature-checking webhooks, a
media-stream peer) in the role of ours.  The callees speak with the sandbox's local voice.

Timings are checked against Twilio's documented rules (protocols.md, "Answering machine detection") on
the audio the callee actually sent: the detector works on 20 ms frames and reports the end of the frame
that decided, so a verdict is exact to the millisecond against the observed speech (both lie on the same
20 ms grid from the answer), and within two frames (40 ms) of the behaviour's configured times (a sound
starts in the slot nearest its time; a stalled event loop may push one frame a slot later).
"""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator
from twilio.rest import Client

from announcer.audio import FRAME_BYTES, cut_frames, ulaw2lin
from announcer.sandbox import media_messages as mm
from announcer.sandbox.amd import (
    AmdMode,
    AmdSettings,
    AnsweredBy,
    MachineDetector,
)
from announcer.sandbox.tones import BEEP_HZ, CED_HZ, Sound, classify, cng_cycle, tone
from announcer.sandbox.twilio import SandboxTwilio
from announcer.sandbox.twilio_call import Callee, LineKind, PhoneBehavior, SandboxCall, SpokenLine
from announcer.sandbox.voice_activity import VOICED_RMS, window_rms
from announcer.speech.local import LocalSynthesizer
from tests.test_sandbox_twilio import (
    ACCOUNT_SID,
    AUTH_TOKEN,
    LONG_CALL,
    SANDBOX_NUMBER,
    FakeService,
    StreamSession,
    make_client,
    service,
)
from tests.test_sandbox_twilio import tone as pattern

__all__ = ["service"]  # the fixture, shared with test_sandbox_twilio

# Sandbox seconds per real second.  At 10 a 20 ms slot is 2 ms real and the phone clock catches up at
# most 25 slots per tick, so only a 50 ms stall of the event loop could skip a slot.
SPEED = 10.0
T = 20.0
CALLEE = "+15550007001"
VOICE = LocalSynthesizer()
ALL_EVENTS = ["initiated", "ringing", "answered", "completed"]
MESSAGE = "This is a reminder from the dental office. Your appointment is tomorrow at nine."


@pytest.fixture
async def sandbox(service: FakeService, tmp_path: Any) -> AsyncIterator[SandboxTwilio]:
    sb = SandboxTwilio(
        account_sid=ACCOUNT_SID,
        auth_token=AUTH_TOKEN,
        phone_number=SANDBOX_NUMBER,
        voice_url=service.base + "/twilio/voice",
        status_callback_url=service.base + "/twilio/status",
        recordings_dir=tmp_path / "recordings",
        say_synthesize=VOICE.synthesize,
        speed=SPEED,
    )
    await sb.start()
    yield sb
    await sb.close()


@pytest.fixture
async def client(sandbox: SandboxTwilio) -> AsyncIterator[Client]:
    c, http = make_client(sandbox.base_url)
    yield c
    await http.close()


async def place(
    client: Client, service: FakeService, sandbox: SandboxTwilio, behavior: PhoneBehavior, **amd: Any
) -> SandboxCall:
    """Call CALLEE (acting as `behavior`) with machine detection `amd` (SDK keyword arguments)."""
    sandbox.set_behavior(CALLEE, behavior)
    created = await client.calls.create_async(
        to=CALLEE,
        from_=SANDBOX_NUMBER,
        url=service.base + "/twilio/voice",
        status_callback=service.base + "/twilio/status",
        status_callback_event=ALL_EVENTS,
        **amd,
    )
    return sandbox.calls[created.sid]


def async_amd(service: FakeService, mode: str = "DetectMessageEnd", **tuning: Any) -> dict[str, Any]:
    return {
        "machine_detection": mode,
        "async_amd": "true",
        "async_amd_status_callback": service.base + "/twilio/amd",
        **tuning,
    }


def ms(call: SandboxCall, at: float | None) -> int:
    """Sandbox milliseconds from the answer to the monotonic time `at`."""
    assert at is not None and call.answered_at is not None
    return round((at - call.answered_at) * SPEED * 1000)


def voiced_bounds_ms(audio: bytes) -> tuple[int, int]:
    """Start of the first and end of the last 20 ms frame of `audio` that is not silence."""
    loud = np.nonzero(window_rms(audio) > VOICED_RMS)[0]
    return int(loud[0]) * 20, (int(loud[-1]) + 1) * 20


def voiced_s(audio: bytes) -> float:
    return int((window_rms(audio) > VOICED_RMS).sum()) * 0.02


def only(call: SandboxCall, kind: LineKind) -> SpokenLine:
    lines = call.lines(kind)
    assert len(lines) == 1, [(line.kind, line.text) for line in call.spoke]
    return lines[0]


def identified_ms(call: SandboxCall, line: SpokenLine, threshold_ms: int) -> int:
    """When `line` has been speech for `threshold_ms`: the end of its first voiced frame that far from
    the first (a pause at that point defers it to the next voiced frame)."""
    loud = np.nonzero(window_rms(line.audio) > VOICED_RMS)[0]
    ends = [ms(call, line.started_at) + (int(i) + 1) * 20 for i in loud]
    start = ends[0] - 20
    return next(end for end in ends if end - start >= threshold_ms)


def close_to(actual: int, expected: float, tolerance: int = 40) -> bool:
    return abs(actual - expected) <= tolerance


# -- pure parts ----------------------------------------------------------------------------------
def test_frames_of_speech_beeps_and_fax_tones_are_told_apart() -> None:
    for text in (MESSAGE, "Hello?", PhoneBehavior(callee=Callee.MACHINE).greeting_text):
        sounds = {classify(f) for f in cut_frames(VOICE.synthesize(text))}
        assert sounds == {Sound.VOICE, Sound.SILENCE}  # no frame of the voice passes for a tone
    assert {classify(f) for f in cut_frames(tone(BEEP_HZ, 0.5))} == {Sound.BEEP}
    assert {classify(f) for f in cut_frames(tone(CED_HZ, 0.5))} == {Sound.FAX}
    cng = [classify(f) for f in cut_frames(cng_cycle())]
    assert cng == [Sound.FAX] * 25 + [Sound.SILENCE] * 150  # 0.5 s on, 3 s off


def run(detector: MachineDetector, frames: list[Sound]) -> tuple[AnsweredBy, int] | None:
    for i, sound in enumerate(frames):
        verdict = detector.feed(sound, (i + 1) * 20)
        if verdict is not None:
            return verdict.answered_by, verdict.duration_ms
    return None


S, V, B, F = Sound.SILENCE, Sound.VOICE, Sound.BEEP, Sound.FAX
DME, ENABLE = AmdMode.DETECT_MESSAGE_END, AmdMode.ENABLE


@pytest.mark.parametrize(
    ("settings", "frames", "expected"),
    [
        # 0.5 s of silence, 0.5 s of speech: a human once 1.2 s of silence followed (1000 + 1200)
        (AmdSettings(DME), [S] * 25 + [V] * 25 + [S] * 100, (AnsweredBy.HUMAN, 2200)),
        # a pause shorter than the speech-end threshold is inside one speech
        (AmdSettings(DME), [V] * 25 + [S] * 50 + [V] * 25 + [S] * 100, (AnsweredBy.HUMAN, 2000 + 1200)),
        # speech reaching the threshold is a machine: at once with Enable ...
        (AmdSettings(ENABLE), [S] * 10 + [V] * 200, (AnsweredBy.MACHINE_START, 200 + 2400)),
        # ... and with DetectMessageEnd when its greeting ends: at the end of the beep ...
        (
            AmdSettings(DME),
            [V] * 150 + [S] * 15 + [B] * 25 + [S] * 100,
            (AnsweredBy.MACHINE_END_BEEP, 3800 + 20),
        ),
        # ... or after the speech-end silence, without a beep
        (AmdSettings(DME), [V] * 150 + [S] * 100, (AnsweredBy.MACHINE_END_SILENCE, 3000 + 1200)),
        # a beep without a greeting is still a machine's; a click of 1 kHz is not a beep
        (AmdSettings(DME), [S] * 10 + [B] * 10 + [S] * 70, (AnsweredBy.MACHINE_END_BEEP, 400 + 20)),
        (AmdSettings(ENABLE), [S] * 10 + [B] * 8, (AnsweredBy.MACHINE_START, 200 + 160)),
        (AmdSettings(DME), [V] * 20 + [B] * 3 + [S] * 60, (AnsweredBy.HUMAN, 460 + 1200)),
        # fax tones for 300 ms
        (AmdSettings(DME), [S] * 25 + [F] * 25, (AnsweredBy.FAX, 500 + 300)),
        # initial silence past the silence timeout; nothing decided by the detection timeout
        (AmdSettings(DME), [S] * 400, (AnsweredBy.UNKNOWN, 5000)),
        (AmdSettings(DME, silence_timeout_ms=2000), [S] * 400, (AnsweredBy.UNKNOWN, 2000)),
        (AmdSettings(DME, timeout_s=3, speech_threshold_ms=6000), [V] * 400, (AnsweredBy.UNKNOWN, 3000)),
        # a machine whose greeting never ends by the detection timeout
        (AmdSettings(DME, timeout_s=3), [V] * 400, (AnsweredBy.MACHINE_END_OTHER, 3000)),
        # the tuning moves the line between a person and a machine: 2 s of speech
        (AmdSettings(DME), [V] * 100 + [S] * 100, (AnsweredBy.HUMAN, 2000 + 1200)),
        (
            AmdSettings(DME, speech_threshold_ms=1500),
            [V] * 100 + [S] * 100,
            (AnsweredBy.MACHINE_END_SILENCE, 3200),
        ),
        (AmdSettings(DME, speech_end_threshold_ms=500), [V] * 25 + [S] * 30, (AnsweredBy.HUMAN, 500 + 500)),
        # a timer's verdict is timed when it ran out, not at the end of the frame that showed it had
        (AmdSettings(DME, speech_end_threshold_ms=1210), [V] * 25 + [S] * 70, (AnsweredBy.HUMAN, 500 + 1210)),
        (AmdSettings(DME, silence_timeout_ms=2010), [S] * 200, (AnsweredBy.UNKNOWN, 2010)),
    ],
)
def test_detector_follows_twilios_rules(
    settings: AmdSettings, frames: list[Sound], expected: tuple[AnsweredBy, int]
) -> None:
    detector = MachineDetector(settings)
    assert run(detector, frames) == expected
    assert detector.feed(Sound.VOICE, 99_000) is None  # one verdict, then nothing


def test_detector_concludes_when_the_call_ends_first() -> None:
    machine = MachineDetector(AmdSettings(DME))
    assert run(machine, [V] * 150) is None
    assert machine.conclude(3100).answered_by is AnsweredBy.MACHINE_END_OTHER  # identified, no end heard
    person = MachineDetector(AmdSettings(DME))
    assert run(person, [V] * 10) is None
    assert person.conclude(300).answered_by is AnsweredBy.UNKNOWN


# -- the callees through the REST API and the webhooks -------------------------------------------
async def test_person_saying_hello_is_a_human_after_the_speech_end_silence(
    service: FakeService, sandbox: SandboxTwilio, client: Client
) -> None:
    call = await place(
        client, service, sandbox, PhoneBehavior(callee=Callee.HELLO, hello_after_s=0.6), **async_amd(service)
    )
    form = await service.wait_amd(call.sid)
    hello = only(call, LineKind.HELLO)
    assert call.amd is not None and call.amd.answered_by == "human"
    assert form == {
        "AccountSid": ACCOUNT_SID,
        "CallSid": call.sid,
        "AnsweredBy": "human",
        "MachineDetectionDuration": str(call.amd.duration_ms),
    }
    # Twilio's rule on the audio sent: the end of the speech plus MachineDetectionSpeechEndThreshold ...
    assert call.amd.duration_ms == ms(call, hello.sound_ended_at) + 1200
    # ... and that speech is the behaviour's: "Hello?" said 600 ms after the answer
    first, last = voiced_bounds_ms(hello.audio)
    assert close_to(ms(call, hello.started_at), 600)
    assert close_to(ms(call, hello.sound_started_at), 600 + first)
    assert close_to(call.amd.duration_ms, 600 + last + 1200)
    # the callback was signed like every webhook (the service checked it on arrival, too)
    await call.wait_for_amd(T, answered=True)
    posted = [w for w in sandbox.webhook_log if w.kind == "amd"]
    assert len(posted) == 1 and posted[0].status == call.amd.post_status == 204
    assert RequestValidator(AUTH_TOKEN).validate(posted[0].url, dict(posted[0].form), posted[0].signature)
    assert call.amd.posted_at is not None and call.amd.posted_at >= call.amd.decided_at
    # status callbacks carry AnsweredBy once it is known: not when answered (async), then on every one
    answered = await service.wait_status(call.sid, "in-progress")
    assert "AnsweredBy" not in answered
    await client.calls(call.sid).update_async(status="completed")
    await call.wait_ended(T)
    assert (await service.wait_status(call.sid, "completed"))["AnsweredBy"] == "human"
    assert (await client.calls(call.sid).fetch_async()).answered_by == "human"
    assert call.application_errors == [] and call.warnings == []


EARLY = pattern(100)  # 2 s the service says at once, over a greeting


async def leave_voicemail(service: FakeService, session: StreamSession, message: list[bytes]) -> None:
    """A service that talks over the greeting (EARLY), then waits for the verdict, clears, leaves
    `message`, waits for its mark and hangs up."""
    start = await session.wait_for(lambda m: m["event"] == "start")
    for frame in EARLY:
        await session.send_frame(frame)
    await service.wait_amd(start["start"]["callSid"])
    await session.send({"event": "clear", "streamSid": session.stream_sid})
    for frame in message:
        await session.send_frame(frame)
    await session.send_mark("vm")
    await session.wait_for(lambda m: m["event"] == "mark")
    await session.ws.close()


async def test_machine_with_a_beep_records_only_what_follows_the_beep(
    service: FakeService, sandbox: SandboxTwilio, client: Client
) -> None:
    message = cut_frames(VOICE.synthesize(MESSAGE))
    service.stream_handler = lambda s: leave_voicemail(service, s, message)
    call = await place(client, service, sandbox, PhoneBehavior(callee=Callee.MACHINE), **async_amd(service))
    form = await service.wait_amd(call.sid)
    await call.wait_ended(T)
    greeting, beep = only(call, LineKind.GREETING), only(call, LineKind.BEEP)
    assert form["AnsweredBy"] == "machine_end_beep"
    # a spoken greeting of a few seconds from 300 ms, a 0.5 s beep 300 ms after its last frame ...
    assert close_to(ms(call, greeting.started_at), 300)
    assert ms(call, greeting.sound_ended_at) - ms(call, greeting.sound_started_at) > 5000
    assert close_to(ms(call, beep.started_at), ms(call, greeting.ended_at) + 300)
    assert ms(call, beep.ended_at) - ms(call, beep.started_at) == 500
    # ... reported when the beep ends (the frame after it shows it has)
    assert call.amd is not None and int(form["MachineDetectionDuration"]) == call.amd.duration_ms
    assert call.amd.duration_ms == ms(call, beep.ended_at) + 20
    assert call.beep_ended_at == call.recording_started_at == beep.ended_at

    # The service talked over the greeting first: heard, measured, and not recorded.
    assert call.first_played_at is not None and call.first_played_at < greeting.ended_at
    assert call.overlap_ms() > 0  # its first 500 ms fell on the greeting
    voicemail = call.voicemail
    assert not any(frame in voicemail for frame in EARLY)
    # the recording holds the whole message, after the silence before it started, and nothing else
    assert b"".join(message) in voicemail
    message_at = call.played_after(beep.ended_at)  # the message's first frame: after the verdict
    assert message_at is not None and call.amd.posted_at is not None and message_at > call.amd.posted_at
    offset = round((message_at - beep.ended_at) * SPEED * 1000 / 20) * FRAME_BYTES  # recorded in place
    assert voicemail[offset:].startswith(message[0])
    assert call.voicemail_speech_s == pytest.approx(voiced_s(b"".join(message)))
    assert voicemail.startswith(bytes([0xFF]) * FRAME_BYTES)  # the service's reaction time
    assert call.wav_path is not None
    with wave.open(str(call.wav_path)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert np.array_equal(pcm, ulaw2lin(voicemail))
    # a machine records real time, to the hang-up
    assert call.finished_at is not None
    assert close_to(len(voicemail) // FRAME_BYTES * 20, ms(call, call.finished_at) - ms(call, beep.ended_at))
    assert (await service.wait_status(call.sid, "completed"))["AnsweredBy"] == "machine_end_beep"


async def test_machine_is_named_as_soon_as_identified_with_enable(
    service: FakeService, sandbox: SandboxTwilio, client: Client
) -> None:
    call = await place(
        client, service, sandbox, PhoneBehavior(callee=Callee.MACHINE), **async_amd(service, "Enable")
    )
    form = await service.wait_amd(call.sid)
    greeting = only(call, LineKind.GREETING)
    assert form["AnsweredBy"] == "machine_start"
    assert int(form["MachineDetectionDuration"]) == identified_ms(call, greeting, 2400)
    assert close_to(int(form["MachineDetectionDuration"]), ms(call, greeting.sound_started_at) + 2400, 320)
    assert call.lines(LineKind.BEEP) == []  # still greeting
    await call.hang_up()


async def test_machine_without_a_beep_ends_on_silence_and_records_after_its_greeting(
    service: FakeService, sandbox: SandboxTwilio, client: Client
) -> None:
    message = cut_frames(VOICE.synthesize("Hi Sam, call me back."))
    service.stream_handler = lambda s: leave_voicemail(service, s, message)
    behavior = PhoneBehavior(callee=Callee.MACHINE_NO_BEEP)
    call = await place(client, service, sandbox, behavior, **async_amd(service))
    form = await service.wait_amd(call.sid)
    await call.wait_ended(T)
    greeting = only(call, LineKind.GREETING)
    assert form["AnsweredBy"] == "machine_end_silence"
    assert int(form["MachineDetectionDuration"]) == ms(call, greeting.sound_ended_at) + 1200
    assert call.lines(LineKind.BEEP) == [] and call.beep_ended_at is None
    assert call.recording_started_at == greeting.ended_at
    assert b"".join(message) in call.voicemail and EARLY[0] not in call.voicemail


async def test_full_mailbox_hangs_up_after_its_greeting(
    service: FakeService, sandbox: SandboxTwilio, client: Client
) -> None:
    call = await place(
        client, service, sandbox, PhoneBehavior(callee=Callee.MAILBOX_FULL), **async_amd(service)
    )
    await call.wait_ended(T)
    greeting = only(call, LineKind.GREETING)
    assert "full" in greeting.text and call.status == "completed"
    # identified as a machine, then gone before its greeting's end could be heard
    form = await service.wait_amd(call.sid)
    assert form["AnsweredBy"] == "machine_end_other"
    assert close_to(int(form["MachineDetectionDuration"]), ms(call, greeting.ended_at) + 1000)
    kinds = [w.kind for w in sandbox.webhook_log]
    assert kinds.index("amd") < len(kinds) - 1 and kinds[-1] == "status"  # the verdict before `completed`
    assert (await service.wait_status(call.sid, "completed"))["AnsweredBy"] == "machine_end_other"
    assert call.recording_started_at is None and call.voicemail == b""


async def test_fax_answers_with_cng_tones(
    service: FakeService, sandbox: SandboxTwilio, client: Client
) -> None:
    call = await place(
        client, service, sandbox, PhoneBehavior(callee=Callee.FAX), **async_amd(service, "Enable")
    )
    form = await service.wait_amd(call.sid)
    cng = call.lines(LineKind.FAX_TONE)[0]
    assert close_to(ms(call, cng.sound_started_at), 500)
    assert form["AnsweredBy"] == "fax"
    assert int(form["MachineDetectionDuration"]) == ms(call, cng.sound_started_at) + 300
    await call.hang_up()
    assert call.lines(LineKind.HELLO) == [] and {line.kind for line in call.spoke} == {LineKind.FAX_TONE}


@pytest.mark.parametrize(("silence_timeout", "expected_ms"), [(None, 5000), (2000, 2000)])
async def test_person_who_says_nothing_is_unknown_after_the_silence_timeout(
    service: FakeService,
    sandbox: SandboxTwilio,
    client: Client,
    silence_timeout: int | None,
    expected_ms: int,
) -> None:
    tuning = {} if silence_timeout is None else {"machine_detection_silence_timeout": silence_timeout}
    call = await place(
        client, service, sandbox, PhoneBehavior(callee=Callee.SILENT), **async_amd(service, **tuning)
    )
    form = await service.wait_amd(call.sid)
    assert (form["AnsweredBy"], form["MachineDetectionDuration"]) == ("unknown", str(expected_ms))
    assert call.spoke == [] and call.voiced_spans == []
    await call.hang_up()


@pytest.mark.parametrize(
    ("mode", "threshold", "expected"),
    [
        ("DetectMessageEnd", None, "human"),
        ("DetectMessageEnd", 1500, "machine_end_silence"),
        ("Enable", 1500, "machine_start"),
    ],
)
async def test_speech_threshold_moves_a_two_second_greeting_between_person_and_machine(
    service: FakeService,
    sandbox: SandboxTwilio,
    client: Client,
    mode: str,
    threshold: int | None,
    expected: str,
) -> None:
    short = PhoneBehavior(callee=Callee.MACHINE_NO_BEEP, greeting="Hi, this is Sam, leave a message.")
    tuning = {} if threshold is None else {"machine_detection_speech_threshold": threshold}
    call = await place(client, service, sandbox, short, **async_amd(service, mode, **tuning))
    form = await service.wait_amd(call.sid)
    await call.wait_for_spoken(1, T)  # the whole greeting (Enable answers in the middle of it)
    greeting = only(call, LineKind.GREETING)
    start, end = ms(call, greeting.sound_started_at), ms(call, greeting.sound_ended_at)
    assert 2000 <= end - start < 2400  # about two seconds of speech
    assert form["AnsweredBy"] == expected
    duration = int(form["MachineDetectionDuration"])
    assert duration == (identified_ms(call, greeting, 1500) if expected == "machine_start" else end + 1200)
    await call.hang_up()


async def test_nothing_decided_by_the_detection_timeout_is_unknown(
    service: FakeService, sandbox: SandboxTwilio, client: Client
) -> None:
    # a greeting of 5.7 s never reaches a 6 s speech threshold before a 3 s timeout
    tuning = {"machine_detection_timeout": 3, "machine_detection_speech_threshold": 6000}
    call = await place(
        client, service, sandbox, PhoneBehavior(callee=Callee.MACHINE), **async_amd(service, **tuning)
    )
    form = await service.wait_amd(call.sid)
    assert (form["AnsweredBy"], form["MachineDetectionDuration"]) == ("unknown", "3000")
    await call.hang_up()


async def test_synchronous_detection_holds_the_twiml_until_the_verdict(
    service: FakeService, sandbox: SandboxTwilio, client: Client
) -> None:
    call = await place(
        client,
        service,
        sandbox,
        PhoneBehavior(callee=Callee.HELLO, hello_after_s=0.4),
        machine_detection="DetectMessageEnd",
    )
    session = await service.wait_session()
    await session.wait_for(lambda m: m["event"] == "start")
    hello = only(call, LineKind.HELLO)
    assert call.amd is not None and call.amd.duration_ms == ms(call, hello.sound_ended_at) + 1200
    voice = [w for w in sandbox.webhook_log if w.kind == "voice"]
    assert len(voice) == 1 and voice[0].at >= call.amd.decided_at  # asked for the TwiML only then
    assert service.voice_forms[0]["AnsweredBy"] == "human"
    assert hello.started_at is not None and call.start_sent_at is not None
    assert hello.started_at < call.start_sent_at  # said into the phone before any stream existed
    assert "amd" not in [w.kind for w in sandbox.webhook_log]  # no AsyncAmd: no callback
    answered = await service.wait_status(call.sid, "in-progress")
    assert "AnsweredBy" not in answered  # the answer came before the verdict
    await call.hang_up()


async def test_person_who_talks_over_the_message(
    service: FakeService, sandbox: SandboxTwilio, client: Client
) -> None:
    message = pattern(150)  # 3 s

    async def speak_after_verdict(session: StreamSession) -> None:
        start = await session.wait_for(lambda m: m["event"] == "start")
        await service.wait_amd(start["start"]["callSid"])
        for frame in message:
            await session.send_frame(frame)
        await session.send_mark("end")
        await session.wait_for(lambda m: m["event"] == "mark")
        await session.ws.close()

    service.stream_handler = speak_after_verdict
    behavior = PhoneBehavior(callee=Callee.TALKS_OVER, hello_after_s=0.5, talk_over_after_s=1.0)
    call = await place(client, service, sandbox, behavior, **async_amd(service))
    await call.wait_ended(T)
    hello, talk = only(call, LineKind.HELLO), only(call, LineKind.TALK_OVER)
    assert call.first_played_at is not None and hello.sound_ended_at is not None
    assert call.first_played_at > hello.sound_ended_at  # the message began after the hello ...
    assert close_to(
        ms(call, talk.started_at), ms(call, call.first_played_at) + 1000
    )  # ... and was talked over
    assert call.overlap_ms(0.5) == 0
    # over the rest of the message, the overlap is the talk's speech until the message's end
    talk_at, message_end = ms(call, talk.started_at), ms(call, call.first_played_at) + 3000
    loud = np.nonzero(window_rms(talk.audio) > VOICED_RMS)[0]
    expected = sum(
        max(0, min(talk_at + (int(i) + 1) * 20, message_end) - (talk_at + int(i) * 20)) for i in loud
    )
    assert 0 < call.overlap_ms(3.0) == pytest.approx(expected, abs=1)
    assert call.marks_echoed == ["end"] and call.amd is not None and call.amd.answered_by == "human"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("machine_detection", "Maybe"),
        ("machine_detection_timeout", 2),
        ("machine_detection_timeout", 60),
        ("machine_detection_speech_threshold", 999),
        ("machine_detection_speech_threshold", 6001),
        ("machine_detection_speech_end_threshold", 499),
        ("machine_detection_speech_end_threshold", 5001),
        ("machine_detection_silence_timeout", 1999),
        ("machine_detection_silence_timeout", 10001),
        ("machine_detection_timeout", "soon"),
        ("async_amd", "maybe"),
        ("async_amd_status_callback", "not a url"),
    ],
)
async def test_out_of_range_detection_values_are_twilios_21234(
    sandbox: SandboxTwilio, client: Client, field: str, value: object
) -> None:
    amd = {"machine_detection": "DetectMessageEnd", field: value}
    with pytest.raises(TwilioRestException) as err:
        await client.calls.create_async(to=CALLEE, from_=SANDBOX_NUMBER, twiml=LONG_CALL, **amd)
    assert (err.value.status, err.value.code) == (400, 21234)
    assert "Machine Detection" in err.value.msg
    assert sandbox.calls == {}


async def test_detection_values_at_the_ends_of_their_ranges_are_accepted(
    sandbox: SandboxTwilio, client: Client
) -> None:
    for timeout, speech, speech_end, silence in ((3, 1000, 500, 2000), (59, 6000, 5000, 10000)):
        created = await client.calls.create_async(
            to=CALLEE,
            from_=SANDBOX_NUMBER,
            twiml=LONG_CALL,
            machine_detection="Enable",
            machine_detection_timeout=timeout,
            machine_detection_speech_threshold=speech,
            machine_detection_speech_end_threshold=speech_end,
            machine_detection_silence_timeout=silence,
        )
        request = sandbox.calls[created.sid].amd_request
        assert request is not None and request.settings == AmdSettings(
            AmdMode.ENABLE, timeout, speech, speech_end, silence
        )
        await client.calls(created.sid).update_async(status="completed")


async def test_default_callee_is_a_listener_known_as_human_at_once(
    service: FakeService, sandbox: SandboxTwilio, client: Client
) -> None:
    call = await place(client, service, sandbox, PhoneBehavior(), **async_amd(service))
    form = await service.wait_amd(call.sid)
    assert (form["AnsweredBy"], form["MachineDetectionDuration"]) == ("human", "0")
    sent = [(w.kind, dict(w.form).get("CallStatus")) for w in sandbox.webhook_log]
    assert sent.index(("amd", None)) > sent.index(("status", "in-progress"))  # after the answer
    session = await service.wait_session()
    await session.wait_for(lambda m: m["event"] == "media")
    await call.hang_up()
    assert call.spoke == [] and call.voiced_spans == []
    assert {m["media"]["payload"] for m in session.events("media")} == {mm.SILENCE_PAYLOAD}
    # without machine detection nothing is reported at all, as before
    plain = await place(client, service, sandbox, PhoneBehavior())
    await service.wait_status(plain.sid, "in-progress")
    await plain.hang_up()
    assert plain.answered_by is None and plain.amd is None
    assert [w.kind for w in sandbox.webhook_log].count("amd") == 1


async def test_async_detection_without_a_callback_is_warning_21262(
    service: FakeService, sandbox: SandboxTwilio, client: Client
) -> None:
    call = await place(
        client,
        service,
        sandbox,
        PhoneBehavior(callee=Callee.HELLO),
        machine_detection="Enable",
        async_amd="true",
    )
    await call.wait_for_amd(T)
    assert [w[:6] for w in call.warnings] == ["21262 "]
    assert (await client.calls(call.sid).fetch_async()).answered_by == "human"  # only on the resource
    assert "amd" not in [w.kind for w in sandbox.webhook_log]
    await call.hang_up()
