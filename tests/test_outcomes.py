"""Outcome truth end to end (issue 14): every kind of callee the sandbox Twilio simulates is dialed by the
service through the real SDKs, and each delivery says what really happened (who answered, how much of the
message played, which keys); a person's "Hello?" is never talked over; a machine may be hung up on and
called again per the backoff; and only a correctly signed machine-detection verdict is taken."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from twilio.request_validator import RequestValidator

from announcer.sandbox import AgentBehavior
from announcer.sandbox.twilio_call import Callee, PhoneBehavior, SandboxCall
from announcer.sandbox.voice_activity import VOICED_RMS, window_rms
from tests.conftest import Service, eventually, make_settings, start_service
from tests.test_alerts import (
    RECEIVER_ALLOWED,
    Receiver,
    alert_body,
    finished,
    get,
    placed_call,
    post,
    receiver,
)

__all__ = ["receiver"]  # the fixture, shared with test_alerts

T = 30.0  # seconds: the longest any one wait may take before the test fails


def number(i: int) -> str:
    return f"+1555015{i:04d}"


def speech_s(audio: bytes) -> float:
    """Seconds of `audio` (mu-law) that are not silence, judged per 20 ms frame as the sandbox machine
    judges its recording (`SandboxCall.voicemail_speech_s`): the same yardstick on both sides."""
    return int((window_rms(audio) > VOICED_RMS).sum()) * 0.02


async def deliveries(service: Service, alert_id: str) -> dict[str, dict[str, Any]]:
    status, page = await get(service, f"/v1/alerts/{alert_id}/deliveries")
    assert status == 200, page
    return {d["phone"]: d for d in page["deliveries"]}


async def settled(service: Service, alert_id: str) -> dict[str, dict[str, Any]]:
    """The deliveries of a finished alert once every call that reached a media stream has written its
    facts: the session records played_ms / message_ms / keys when its stream closes, which is after it
    reported the outcome that finished the delivery."""
    await finished(service, alert_id)
    for call in list(service.sandbox.calls.values()):
        await call.wait_ended(T)

    async def written() -> bool:
        for d in (await deliveries(service, alert_id)).values():
            if d["call_sid"] is None:
                continue
            _, view = await get(service, f"/v1/calls/{d['call_sid']}")
            streamed = any(e["kind"] == "stream_started" for e in view["events"])
            if streamed and not any(e["kind"] == "stream_closed" for e in view["events"]):
                return False
        return True

    await eventually(written, timeout=T)
    await service.store.flush()  # the facts, queued right after `stream_closed`, are committed too
    return await deliveries(service, alert_id)


# --- 1. the matrix: one recipient per kind of callee, each outcome as the API tells it ------------------

HEARER, SILENT, EARLY, CONFIRMER, REPEATER, OPTER, AGENT = (number(i) for i in range(1, 8))
BUSY, AWAY, INVALID = number(8), number(9), number(10)
BEEPER, NO_BEEP, FULL, FAX = number(11), number(12), number(13), number(14)
TTS_DOWN = number(15)
MATRIX = {
    HEARER: PhoneBehavior(),  # picks up and listens to the end without a word
    SILENT: PhoneBehavior(callee=Callee.SILENT),  # says nothing: detection says `unknown`, a person
    EARLY: PhoneBehavior(),  # hangs up while the message plays (the test does it)
    CONFIRMER: PhoneBehavior(),  # presses 1 at the prompt
    REPEATER: PhoneBehavior(),  # presses 2 during the message, then listens to the end
    OPTER: PhoneBehavior(),  # presses 9 during the message
    AGENT: PhoneBehavior(),  # presses 0 during the message: the agent takes the call
    BUSY: PhoneBehavior(answer="busy"),
    AWAY: PhoneBehavior(answer="no-answer"),
    INVALID: PhoneBehavior(refuse_code=21211),  # Twilio: invalid 'To' number
    BEEPER: PhoneBehavior(callee=Callee.MACHINE),  # greeting, beep, records
    NO_BEEP: PhoneBehavior(callee=Callee.MACHINE_NO_BEEP),  # greeting, records
    FULL: PhoneBehavior(callee=Callee.MAILBOX_FULL),  # greeting, hangs up
    FAX: PhoneBehavior(callee=Callee.FAX),
}


@pytest.fixture
async def paced(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    """The sandbox at 5 times real time, every call at once. Who answered is a race the service runs in
    real time against the callee's sounds in sandbox time (its stream opens, Twilio's verdict is posted
    and acted on, while the greeting goes on or a silence runs out). At 25 times the service's 50-250 ms
    on a loaded machine are 1-6 s of the call, more than a real line ever gives it: streams opened in the
    middle of a greeting and verdicts came seconds after the beep."""
    settings = make_settings(tmp_path, database_url, announcer_sandbox_speed=5.0, max_concurrent_calls=20)
    runner, svc = await start_service(settings)
    try:
        yield svc
    finally:
        await runner.cleanup()


def call_to(service: Service, phone: str) -> SandboxCall:
    calls: list[SandboxCall] = [c for c in service.sandbox.calls.values() if c.to == phone]
    assert len(calls) == 1, (phone, len(calls))
    return calls[0]


async def test_each_callee_ends_in_the_outcome_that_happened(paced: Service) -> None:
    service = paced
    for phone, behavior in MATRIX.items():
        service.sandbox.set_behavior(phone, behavior)
    service.agent.behavior = AgentBehavior(end_after_first_message=True)  # its first words, then goodbye
    # confirm: a prompt with key 1; the agent on key 0. Everything else is the default: machine detection
    # on, the message after the callee's hello, a voicemail left on a machine, one attempt each.
    body = alert_body(*MATRIX, confirm=True, agent={"after": "key"})
    status, accepted = await post(service, "/v1/alerts", body)
    assert status == 202, accepted

    async def hang_up_while_it_plays() -> None:
        call = await placed_call(service, EARLY)
        await call.wait_for_mark("played:", T)  # half a second of the message has played
        await call.hang_up()

    async def press(phone: str, digit: str, after_mark: str | None = None) -> None:
        call = await placed_call(service, phone)
        if after_mark is None:
            await call.wait_for_media(T)  # the message is playing
        else:
            await call.wait_for_mark(after_mark, T)
        await call.press(digit)

    await asyncio.gather(
        hang_up_while_it_plays(),
        press(CONFIRMER, "1", after_mark="prompt:"),
        press(REPEATER, "2"),
        press(OPTER, "9"),
        press(AGENT, "0"),
    )
    by_phone = await settled(service, accepted["id"])
    alert = (await get(service, f"/v1/alerts/{accepted['id']}"))[1]
    assert alert["status"] == "completed"
    assert alert["counts"] == {
        "heard": 3,
        "hung_up_early": 1,
        "confirmed": 1,
        "opted_out": 1,
        "agent": 1,
        "busy": 1,
        "no_answer": 1,
        "failed": 1,
        "voicemail_left": 2,
        "machine": 1,
        "fax": 1,
    }

    def facts(phone: str) -> tuple[Any, ...]:
        d = by_phone[phone]
        return d["state"], d["outcome"], d["answered_by"], d["keys"]

    # People: Twilio said `human` at the answer (the sandbox's listener), `unknown` after 5 s of silence.
    assert facts(HEARER) == ("heard", "heard", "human", None)
    assert by_phone[HEARER]["amd_ms"] == 0  # known at the answer
    assert facts(SILENT) == ("heard", "heard", "unknown", None)
    assert by_phone[SILENT]["amd_ms"] == 5000  # Twilio's silence timeout
    assert facts(REPEATER) == ("heard", "heard", "human", "2")
    for phone in (HEARER, SILENT, REPEATER, CONFIRMER):
        d = by_phone[phone]
        assert d["message_ms"] > 2000 and d["played_ms"] == d["message_ms"], d  # all of it played
    assert facts(CONFIRMER) == ("confirmed", "confirmed", "human", "1")
    assert "pressed 1" in by_phone[CONFIRMER]["outcome_reason"]
    assert facts(OPTER) == ("opted_out", "opted_out", "human", "9")
    assert facts(AGENT) == ("agent", "agent", "human", "0")
    assert by_phone[AGENT]["outcome_reason"].startswith("handed to the agent")
    early = by_phone[EARLY]
    assert (early["state"], early["answered_by"]) == ("hung_up_early", "human")
    # part of it, as the marks showed, of a message whose length is known
    assert early["played_ms"] is not None and early["message_ms"] is not None, early
    assert 0 < early["played_ms"] < early["message_ms"], early
    # Never answered, or never placed: nothing played and nobody answered.
    for phone, state in ((BUSY, "busy"), (AWAY, "no_answer"), (INVALID, "failed")):
        d = by_phone[phone]
        assert (d["state"], d["answered_by"], d["played_ms"], d["keys"]) == (state, None, None, None), d
    assert by_phone[INVALID]["outcome_code"] == 21211 and by_phone[INVALID]["call_sid"] is None
    assert [c for c in service.sandbox.calls.values() if c.to == INVALID] == []

    # Machines. A beep: the whole message after it, none of it during the greeting.
    beeper, beeper_call = by_phone[BEEPER], call_to(service, BEEPER)
    assert (beeper["state"], beeper["answered_by"]) == ("voicemail_left", "machine_end_beep")
    assert "after the beep" in beeper["outcome_reason"], beeper
    assert beeper_call.amd is not None and beeper["amd_ms"] == beeper_call.amd.duration_ms
    assert beeper["played_ms"] == beeper["message_ms"] > 2000
    assert beeper_call.beep_ended_at is not None and beeper_call.first_played_at is not None
    # Nothing played over the greeting: the message waited for the verdict at the beep.
    _, beeper_view = await get(service, f"/v1/calls/{beeper_call.sid}")
    started = [e["after"] for e in beeper_view["events"] if e["kind"] == "message_started"]
    assert beeper_call.first_played_at >= beeper_call.beep_ended_at, started
    # The recording holds the whole message. Its speech is measured against the message as the service
    # sends it: the clip the service's own speaker gives for the delivery's text (a cache hit: the very
    # frames it streamed), judged by the same per-frame loudness as the machine's recording. A message cut
    # at its start or end, or started over the greeting, comes out short.
    message = await service.speaker.synthesize(beeper["text"])
    assert speech_s(message) > 2.0
    assert beeper_call.voicemail_speech_s == pytest.approx(speech_s(message), rel=0.05)
    # No beep: left once the greeting ended in silence, and said so.
    no_beep, no_beep_call = by_phone[NO_BEEP], call_to(service, NO_BEEP)
    assert (no_beep["state"], no_beep["answered_by"]) == ("voicemail_left", "machine_end_silence")
    assert "no beep" in no_beep["outcome_reason"], no_beep
    assert no_beep["played_ms"] == no_beep["message_ms"] > 2000
    assert no_beep_call.recording_started_at is not None and no_beep_call.first_played_at is not None
    assert no_beep_call.first_played_at >= no_beep_call.recording_started_at
    no_beep_message = await service.speaker.synthesize(no_beep["text"])
    assert no_beep_call.voicemail_speech_s == pytest.approx(speech_s(no_beep_message), rel=0.05)
    # A full mailbox: its greeting is long, so the service held for the verdict and said nothing; the
    # mailbox hung up on it. No message left.
    full, full_call = by_phone[FULL], call_to(service, FULL)
    assert (full["state"], full["answered_by"], full["played_ms"]) == ("machine", "machine_end_other", None)
    assert "no message left" in full["outcome_reason"], full
    assert full_call.first_played_at is None and full_call.voicemail == b""
    # A fax: told by its calling tone. (Whether any of the message played first is a race the design
    # accepts: a stream that opens between two tones hears silence, and silence starts the message.)
    fax, fax_call = by_phone[FAX], call_to(service, FAX)
    assert (fax["state"], fax["outcome"], fax["answered_by"]) == ("fax", "fax", "fax"), fax
    assert fax_call.amd is not None and fax["amd_ms"] == fax_call.amd.duration_ms
    assert fax_call.voicemail == b""

    # TTS down (every request fails, so it is an alert of its own): the person still hears the message,
    # in Twilio's own voice (<Say>), and it counts as heard.
    service.sandbox.set_behavior(TTS_DOWN, PhoneBehavior())
    service.tts.fail_next("server_error", times=1_000)
    body = alert_body(TTS_DOWN)
    body["recipients"][0]["name"] = "Dana"  # a text of its own: not in the audio cache
    status, down = await post(service, "/v1/alerts", body)
    assert status == 202, down
    (spoken,) = (await settled(service, down["id"])).values()
    assert (spoken["state"], spoken["outcome"], spoken["answered_by"]) == ("heard", "heard", "human")
    assert "Twilio <Say>" in spoken["outcome_reason"], spoken
    down_call = call_to(service, TTS_DOWN)
    assert down_call.said == [spoken["text"]] and down_call.frames_received == 0
    down_requests = [r for r in service.tts.requests if "Hello Dana." in r.text]
    assert down_requests and all(r.status == 500 for r in down_requests)


# --- 2. "Hello?" is never talked over ---------------------------------------------------------------------

HELLO_BODY_TEXT = "The billing server is down. Please check the status page."


@pytest.fixture
async def near_real_time(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    """The sandbox at twice real time (not 25 times): the service's own latency (the voice webhook, the
    stream's start, its first frame: 0.1-0.5 s with a dozen and a half calls starting) stays a small part
    of a 0.3-1.2 s wait for a hello, as on a real line. At 25 times it took up to ~4 s of the phone's time,
    most streams opened after the hello was over, and the check could not fail. Every call at once (no
    concurrency cap), so the callees all meet the service under the same load."""
    settings = make_settings(tmp_path, database_url, announcer_sandbox_speed=2.0, max_concurrent_calls=50)
    runner, svc = await start_service(settings)
    try:
        yield svc
    finally:
        await runner.cleanup()


async def test_a_persons_hello_is_never_talked_over(near_real_time: Service) -> None:
    service = near_real_time
    # People take 0.3-1.2 s to say hello after picking up: one recipient at each tenth of a second of
    # that, and two who then talk over the message (their hello must be let finish all the same).
    people = [(Callee.HELLO, 0.3 + 0.1 * i) for i in range(10)] + [
        (Callee.TALKS_OVER, 0.4),
        (Callee.TALKS_OVER, 1.1),
    ]
    after_hello = [number(100 + i) for i in range(len(people))]
    for phone, (callee, after) in zip(after_hello, people, strict=True):
        service.sandbox.set_behavior(phone, PhoneBehavior(callee=callee, hello_after_s=after))
    # The control: people with a longer hello, called by an alert that starts on answer. They are talked
    # over: what is checked below can fail.
    on_answer = {number(150 + i): 0.6 + 0.2 * i for i in range(4)}
    for phone, after in on_answer.items():
        long_hello = PhoneBehavior(
            callee=Callee.HELLO, hello="Hello? Hello? Who is this?", hello_after_s=after
        )
        service.sandbox.set_behavior(phone, long_hello)
    # The message is made before anyone is called (as a schedule's pre-synthesis does), so it is ready the
    # moment each stream starts: nothing but the service's wait for the hello holds it back.
    await service.speaker.synthesize(HELLO_BODY_TEXT)
    alerts = []
    for phones, start in ((after_hello, "after_hello"), (list(on_answer), "on_answer")):
        body = {
            "template_text": HELLO_BODY_TEXT,
            "recipients": [{"phone": p} for p in phones],
            "options": {"start": start},
        }
        status, accepted = await post(service, "/v1/alerts", body)
        assert status == 202, accepted
        alerts.append(accepted["id"])
    waited, _ = [await settled(service, alert_id) for alert_id in alerts]
    listened = 0
    for phone in after_hello:
        call, d = call_to(service, phone), waited[phone]
        hello = call.hello
        assert hello is not None and hello.ended_at is not None, phone
        assert call.first_played_at is not None and call.start_sent_at is not None, phone
        # the message's first frame played after the last of the hello (its 20 ms slot), ...
        assert call.first_played_at >= hello.ended_at, (phone, call.first_played_at - hello.ended_at)
        # ... so nothing of the message's first half second fell on the callee's own sound
        assert call.overlap_ms() == 0, phone
        assert (d["state"], d["answered_by"]) == ("heard", "human"), d
        assert d["played_ms"] == d["message_ms"] > 2000, d
        listened += call.start_sent_at < hello.ended_at
    talked_over = 0
    for phone in on_answer:
        call = call_to(service, phone)
        hello = call.hello  # its end may be cut off: the call hangs up once the message has played
        assert hello is not None and hello.sound_ended_at is not None and call.first_played_at is not None
        talked_over += call.first_played_at < hello.sound_ended_at and call.overlap_ms(window_s=3.0) > 0
    # The check bites: the service heard most of the hellos from the start of its stream (a stream that
    # opens after the hello cannot talk over it), and the control's message did start over them.
    assert listened >= len(after_hello) // 2, listened
    assert talked_over >= len(on_answer) // 2, talked_over


# --- 3. a machine hung up on, and called again per the backoff ---------------------------------------------

BACKOFF_S = 0.4


async def test_a_machine_is_hung_up_on_and_called_again_per_the_backoff(service: Service) -> None:
    machine = number(200)
    service.sandbox.set_behavior(machine, PhoneBehavior(callee=Callee.MACHINE))
    options = {"on_machine": "hang_up", "retry_on": ["machine"], "max_attempts": 3}
    status, accepted = await post(
        service, "/v1/alerts", alert_body(machine, retry_backoff_s=BACKOFF_S, **options)
    )
    assert status == 202, accepted
    (delivery,) = (await settled(service, accepted["id"])).values()
    assert (delivery["state"], delivery["attempt"], delivery["answered_by"]) == (
        "machine",
        3,
        "machine_end_beep",
    )
    assert "on_machine is hang_up" in delivery["outcome_reason"], delivery
    retries = [h for h in delivery["history"] if h["kind"] == "retry_scheduled"]
    assert [(h["after"], h["next_attempt"]) for h in retries] == [("machine", 2), ("machine", 3)]
    calls = sorted((c for c in service.sandbox.calls.values() if c.to == machine), key=lambda c: c.placed_at)
    assert len(calls) == 3
    for call in calls:
        # hung up by us on the verdict: no voicemail left, and the machine did not hang up itself
        assert call.amd is not None and call.amd.answered_by == "machine_end_beep"
        assert call.voicemail_speech_s == 0
        hang_ups = [
            r
            for r in service.sandbox.rest_log
            if r.method == "POST" and r.path.endswith(f"/Calls/{call.sid}.json")
        ]
        assert ("Status", "completed") in hang_ups[0].form
    # Retry n is due retry_backoff_s * 2**(n-1) after the outcome, drawn up to a tenth early: the outcome
    # came between the verdict's post and the call's end, so the next call is placed no sooner than that
    # after the verdict, and not much later than it after the end (the dispatcher is woken for it).
    for n, (before, after) in enumerate(itertools.pairwise(calls), start=1):
        ceiling = BACKOFF_S * 2 ** (n - 1)
        assert before.amd is not None and before.amd.posted_at is not None and before.finished_at is not None
        assert after.placed_at - before.amd.posted_at >= 0.9 * ceiling, n
        assert after.placed_at - before.finished_at <= ceiling + 0.5, n


# --- 4. only a correctly signed verdict is taken -----------------------------------------------------------


def signature(service: Service, url: str, form: dict[str, str]) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(service.providers.auth_token).compute_signature(url, form)}


async def _known(service: Service, sid: str) -> bool:
    """The service has the call's SID on its row (the create request's answer is in)."""
    return await service.store.find_by_sid(sid) is not None


async def test_a_forged_machine_detection_verdict_changes_nothing(service: Service) -> None:
    ringer = number(300)
    service.sandbox.set_behavior(ringer, PhoneBehavior(ring_s=3600))  # rings out (the ring timeout)
    status, accepted = await post(service, "/v1/alerts", alert_body(ringer))
    assert status == 202, accepted
    call = await placed_call(service, ringer)
    assert call.amd_request is not None and call.amd_request.callback_url is not None
    url = call.amd_request.callback_url  # ours, naming the call row: /twilio/amd?call=<id>
    assert url.startswith(service.base_url + "/twilio/amd?call=")
    other_call = f"{service.base_url}/twilio/amd?call={int(url.rsplit('=', 1)[1]) + 1}"

    async def call_view() -> dict[str, Any]:
        status, view = await get(service, f"/v1/calls/{call.sid}")
        assert status == 200, view
        return dict(view)

    await eventually(lambda: _known(service, call.sid))
    form = {
        "CallSid": call.sid,
        "AccountSid": service.providers.account_sid,
        "AnsweredBy": "fax",
        "MachineDetectionDuration": "800",
    }
    forged: list[dict[str, str]] = [
        {},  # unsigned
        {"X-Twilio-Signature": "AAAAAAAAAAAAAAAAAAAAAAAAAAA="},  # a made-up signature
        signature(service, url, {**form, "AnsweredBy": "human"}),  # signed, then altered
        signature(service, other_call, form),  # signed for another call's URL
        signature(service, service.base_url + "/twilio/status", form),  # signed for another route
    ]
    async with aiohttp.ClientSession() as http:
        for headers in forged:
            async with http.post(url, data=form, headers=headers) as resp:
                assert resp.status == 403, headers
                assert (await resp.json())["field"] == "X-Twilio-Signature"
        # Signed, but not what Twilio sends: refused, naming the field.
        for field, value in (("AnsweredBy", "robot"), ("MachineDetectionDuration", "1.5")):
            bad = {**form, field: value}
            async with http.post(url, data=bad, headers=signature(service, url, bad)) as resp:
                assert resp.status == 400, field
                assert (await resp.json())["field"] == field
        missing = {k: v for k, v in form.items() if k != "AnsweredBy"}
        async with http.post(url, data=missing, headers=signature(service, url, missing)) as resp:
            assert resp.status == 400 and (await resp.json())["field"] == "AnsweredBy"
        await service.store.flush()  # anything the refused requests had queued would be written by now
        view = await call_view()
        assert (view["answered_by"], view["amd_ms"]) == (None, None), view
        assert not [e for e in view["events"] if e["kind"] == "amd"]
        # The same verdict, signed as Twilio signs it: accepted and recorded.
        async with http.post(url, data=form, headers=signature(service, url, form)) as resp:
            assert resp.status == 204

    async def recorded() -> bool:
        view = await call_view()
        return bool(view["answered_by"] == "fax")

    await eventually(recorded)
    view = await call_view()
    assert view["amd_ms"] == 800
    assert [(e["answered_by"], e["amd_ms"]) for e in view["events"] if e["kind"] == "amd"] == [("fax", 800)]
    (delivery,) = (await deliveries(service, accepted["id"])).values()
    assert (delivery["answered_by"], delivery["amd_ms"]) == ("fax", 800)
    # The verdict named a call that never answered: it is recorded all the same, and the call ends as the
    # unanswered call it is (the dispatcher's ring timeout).
    assert (await finished(service, accepted["id"]))["counts"] == {"no_answer": 1}


# --- 5. the outcome webhook carries the facts of the call that decided it -------------------------------


@pytest.fixture
async def hooked(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    runner, svc = await start_service(make_settings(tmp_path, database_url, **RECEIVER_ALLOWED))
    try:
        yield svc
    finally:
        await runner.cleanup()


async def test_the_outcome_webhook_says_how_much_played_and_who_answered(
    hooked: Service, receiver: Receiver
) -> None:
    """The session records its facts before it reports the outcome, through the same journal: the
    delivery.finished webhook, written with the outcome, names them (not nulls)."""
    hearer, machine, presser = number(41), number(42), number(43)
    hooked.sandbox.set_behavior(machine, PhoneBehavior(callee=Callee.MACHINE))
    status, accepted = await post(
        hooked, "/v1/alerts", alert_body(hearer, machine, presser, confirm=True, callback_url=receiver.url)
    )
    assert status == 202, accepted
    call = await placed_call(hooked, presser)
    await call.wait_for_mark("end:", T)
    await call.press("1")
    async with asyncio.timeout(T):
        await receiver.completed.wait()
    sent = {
        b["delivery"]["phone"]: b["delivery"]
        for b, signed in receiver.received
        if b["type"] == "delivery.finished"
    }
    assert set(sent) == {hearer, machine, presser}
    for phone, outcome, answered_by in (
        (hearer, "heard", "human"),
        (machine, "voicemail_left", "machine_end_beep"),
        (presser, "confirmed", "human"),
    ):
        d = sent[phone]
        assert (d["outcome"], d["answered_by"]) == (outcome, answered_by), d
        assert d["message_ms"] is not None and d["message_ms"] > 0, d
        assert d["played_ms"] == d["message_ms"], d  # the message (or the voicemail) played to its end
    assert sent[presser]["keys"] == "1"
