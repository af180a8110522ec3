"""The page call (issue 17, "The page call"): an incident's escalation step paged with AlertService.page, a
sandbox phone answering it and pressing the pager's keys. 1 acknowledges (`confirmed`), 2 repeats, 3
escalates now (`declined`), 9 does nothing on a page (no opt-out of one's own pages), a voicemail is never
an acknowledgement (`voicemail_left`), and `cancel(hang_up=True)` stops the others' calls, answered or
ringing, once someone acknowledged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from announcer.app import ALERT_SERVICE, RENDERER, create_app
from announcer.config import DEFAULT_TEMPLATES_DIR
from announcer.deliveries.alerts import AlertService
from announcer.deliveries.plan import RecipientIn
from announcer.deliveries.policy import DeliveryPolicy
from announcer.deliveries.script import (
    FALLBACK_PAGE_PROMPT,
    PAGE_PROMPT_TEMPLATE,
    CallScripts,
    check_prompts,
)
from announcer.messages.render import MessageRenderer, RenderError
from announcer.options import PageRef
from announcer.sandbox.twilio_call import Callee, PhoneBehavior, SandboxCall
from announcer.store.calls import StreamGrant
from announcer.store.models import CallOutcome, DeliveryState
from announcer.store.rules import FollowUp
from announcer.telephony.callflow import (
    OPT_OUT_KEY,
    CallState,
    Choice,
    KeyPressed,
    Phase,
    ReportOutcome,
    ScriptLoaded,
    Setup,
    StreamStarted,
    menu_for,
    step,
)
from tests.conftest import Service, eventually, make_settings, start_service
from tests.test_alerts import finished, get, placed_call

VARIABLES: dict[str, Any] = {
    "alertname": "HighLatency",
    "summary": "Requests to the api are slow",
    "severity": "critical",
    "alert_count": 3,
    "firing_for_s": 420,
}
KEY_WAIT_S = 20.0


def alerts(service: Service) -> AlertService:
    return service.app[ALERT_SERVICE]


async def page(service: Service, *phones: str, step: int = 0, incident: str = "in_test") -> str:
    people = [RecipientIn(p, name=f"Person {i}") for i, p in enumerate(phones)]
    return await alerts(service).page(PageRef(incident_id=incident, round=0, step=step), people, VARIABLES)


async def deliveries(service: Service, alert_id: str) -> dict[str, dict[str, Any]]:
    _, body = await get(service, f"/v1/alerts/{alert_id}/deliveries")
    return {d["phone"]: d for d in body["deliveries"]}


async def kinds_of(service: Service, call: SandboxCall) -> list[str]:
    call_id = await service.store.find_by_sid(call.sid)
    assert call_id is not None
    return [e.kind for e in await service.store.events(call_id)]


# --- the keys, end to end ----------------------------------------------------------------------------


async def test_the_pagers_keys_acknowledge_repeat_and_escalate(service: Service) -> None:
    acker, repeater, escalator, silent = "+15550170001", "+15550170002", "+15550170003", "+15550170004"
    alert_id = await page(service, acker, repeater, escalator, silent)

    async def acknowledge() -> None:  # 1 during the prompt
        call = await placed_call(service, acker)
        await call.wait_for_mark("end:", KEY_WAIT_S)
        await call.press("1")

    async def repeat_then_acknowledge() -> SandboxCall:  # 2 during the page starts it over; then 1
        call = await placed_call(service, repeater)
        await call.wait_for_media(KEY_WAIT_S)
        await call.press("2")
        await call.wait_for_mark("prompt:", KEY_WAIT_S)
        await call.press("1")
        return call

    async def escalate() -> None:  # 3 escalates to the next person now
        call = await placed_call(service, escalator)
        await call.wait_for_mark("end:", KEY_WAIT_S)
        await call.press("3")

    async def press_9() -> None:  # no key on a page: it plays on, and no key in the window is `heard`
        call = await placed_call(service, silent)
        await call.wait_for_media(KEY_WAIT_S)
        await call.press(OPT_OUT_KEY)

    _, again, _, _ = await asyncio.gather(acknowledge(), repeat_then_acknowledge(), escalate(), press_9())
    alert = await finished(service, alert_id)
    assert alert["counts"] == {"confirmed": 2, "declined": 1, "heard": 1}, alert["counts"]
    by_phone = await deliveries(service, alert_id)
    assert by_phone[acker]["outcome"] == by_phone[repeater]["outcome"] == "confirmed"
    assert by_phone[acker]["outcome_reason"] == "pressed 1 to acknowledge"
    assert by_phone[escalator]["outcome"] == "declined"
    assert by_phone[escalator]["outcome_reason"] == "pressed 3 to escalate now"
    assert by_phone[silent]["outcome"] == "heard"
    # The repeater heard the page twice; each number was paged once (never retried)
    kinds = await kinds_of(service, again)
    assert "repeat" in kinds and kinds.count("speech_sent") >= 2  # the page again (whole), the prompt
    assert any(m.startswith("end:") and m.endswith(".1") for m in again.marks_echoed)  # after the clear
    for phone in (acker, repeater, escalator, silent):
        assert len([c for c in service.sandbox.calls.values() if c.to == phone]) == 1
    # The prompt said is page_prompt.j2's, whole; the page itself is page.j2's
    prompt = service.app[RENDERER].render(PAGE_PROMPT_TEMPLATE, {"repeat_key": None})
    assert prompt.startswith("Press one to acknowledge.")
    assert service.speaker.cached(prompt) is not None  # spoken whole, from the primary voice
    said = {r.text.strip() for r in service.tts.requests}
    assert "Press three to escalate to the next person." in said, said
    assert by_phone[acker]["text"].startswith("Hello Person 0. This is an on-call page.")
    # 9 opted nobody out: the next step's page reaches the same number
    second = await page(service, silent, step=1)
    assert (await finished(service, second))["counts"] == {"heard": 1}
    assert len([c for c in service.sandbox.calls.values() if c.to == silent]) == 2


async def test_a_machine_gets_the_voicemail_busy_and_no_answer_are_final_none_acknowledges(
    tmp_path: Path, database_url: str
) -> None:
    # At 5 times real time, as the answering machines' own tests run: at 25 the service's own latency
    # on a loaded machine is seconds of the call, and the beep is long gone.
    settings = make_settings(tmp_path, database_url, announcer_sandbox_speed=5.0)
    runner, service = await start_service(settings)
    try:
        machine, busy, away = "+15550170011", "+15550170012", "+15550170013"
        service.sandbox.set_behavior(machine, PhoneBehavior(callee=Callee.MACHINE))
        service.sandbox.set_behavior(busy, PhoneBehavior(answer="busy"))
        service.sandbox.set_behavior(away, PhoneBehavior(answer="no-answer"))
        alert_id = await page(service, machine, busy, away)
        alert = await finished(service, alert_id)
        assert alert["counts"] == {"voicemail_left": 1, "busy": 1, "no_answer": 1}, alert["counts"]
        by_phone = await deliveries(service, alert_id)
        assert by_phone[machine]["answered_by"] == "machine_end_beep"
        call = await placed_call(service, machine)
        assert call.voicemail_speech_s > 0  # the page was left on the machine
        # Never retried (max_attempts 1, retry_on []): the escalation's next step is the retry
        for phone in (machine, busy, away):
            assert by_phone[phone]["attempt"] == 1
            assert len([c for c in service.sandbox.calls.values() if c.to == phone]) == 1
    finally:
        await runner.cleanup()


# --- cancel(hang_up=True): someone else acknowledged --------------------------------------------------


async def ringing_with_sid(service: Service, alert_id: str, phone: str) -> SandboxCall:
    call = await placed_call(service, phone)
    await call.wait_for_status("ringing", KEY_WAIT_S)

    async def known_sid() -> bool:  # the service knows which call to stop
        return (await deliveries(service, alert_id))[phone]["call_sid"] is not None

    await eventually(known_sid, timeout=KEY_WAIT_S)
    return call


async def answered_in_progress(service: Service, alert_id: str, phone: str) -> SandboxCall:
    """The call to `phone` once answered and playing. Its delivery may still read `ringing`: a stream that
    starts before Twilio's `in-progress` callback moves the call's row, not the delivery's."""
    call = await placed_call(service, phone)
    await call.wait_for_media(KEY_WAIT_S)

    async def known_sid() -> bool:
        return (await deliveries(service, alert_id))[phone]["call_sid"] == call.sid

    await eventually(known_sid, timeout=KEY_WAIT_S)
    return call


@pytest.fixture
async def unhurried(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    """The sandbox at twice real time: an answered page plays for seconds (at 25 times it is over before
    the service is seen to know it was answered)."""
    runner, svc = await start_service(make_settings(tmp_path, database_url, announcer_sandbox_speed=2.0))
    try:
        yield svc
    finally:
        await runner.cleanup()


async def test_cancel_with_hang_up_ends_answered_and_ringing_page_calls(unhurried: Service) -> None:
    service = unhurried
    answering, ringing = "+15550170021", "+15550170022"
    service.sandbox.set_behavior(ringing, PhoneBehavior(answer="no-answer", ring_s=600))
    alert_id = await page(service, answering, ringing)
    rings = await ringing_with_sid(service, alert_id, ringing)
    talking = await answered_in_progress(service, alert_id, answering)
    done = await alerts(service).cancel(alert_id, hang_up=True)
    assert (done.ringing_canceled, done.answered_ended, done.canceled) == (1, 1, 0)
    await rings.wait_ended(KEY_WAIT_S)
    await talking.wait_ended(KEY_WAIT_S)
    assert rings.status == "canceled" and talking.status == "completed"
    hang_ups = [
        r
        for r in service.sandbox.rest_log
        if r.method == "POST" and r.path.endswith(f"/Calls/{talking.sid}.json")
    ]
    assert any(("Status", "completed") in r.form for r in hang_ups)

    async def settled() -> bool:
        return all(
            d["state"] not in ("ringing", "in_progress")
            for d in (await deliveries(service, alert_id)).values()
        )

    await eventually(settled, timeout=KEY_WAIT_S)
    by_phone = await deliveries(service, alert_id)
    assert by_phone[ringing]["outcome"] == "canceled"
    # Ended while the page played: the call flow's outcome for a call that stopped before its end
    assert by_phone[answering]["outcome"] == "hung_up_early", by_phone[answering]
    _, alert = await get(service, f"/v1/alerts/{alert_id}")
    assert alert["status"] == "canceled"


async def test_cancel_without_hang_up_leaves_an_answered_page_call_alone(unhurried: Service) -> None:
    service = unhurried
    answering = "+15550170031"
    alert_id = await page(service, answering)
    talking = await answered_in_progress(service, alert_id, answering)
    done = await alerts(service).cancel(alert_id)
    assert (done.ringing_canceled, done.answered_ended, done.canceled) == (0, 0, 0)
    await talking.wait_ended(60)  # it plays to the end of its key window: nobody hung it up
    # The page and its prompt played to the end; the key window ran out: the call flow ended it
    assert any(m.startswith("prompt:") for m in talking.marks_echoed)
    by_phone = await deliveries(service, alert_id)
    assert by_phone[answering]["outcome"] == "heard"


# --- the page's script and rules, without a call -------------------------------------------------------


def page_options() -> Any:
    from announcer.options import AlertOptions, StoredOptions

    options = AlertOptions(confirm=True, max_attempts=1, retry_on=[])
    page_ref = PageRef(incident_id="in_x", round=0, step=0)
    return StoredOptions.model_validate({**options.model_dump(), "page": page_ref.model_dump()})


def grant_of(options: Any) -> StreamGrant:
    return StreamGrant(call_id=1, call_sid=None, text="Hello.", kind="announcement", options=options)


async def test_a_pages_menu_has_no_opt_out_and_3_escalates(tmp_path: Path) -> None:
    script = await CallScripts(None, MessageRenderer(DEFAULT_TEMPLATES_DIR)).for_grant(  # type: ignore[arg-type]
        grant_of(page_options())
    )
    assert script is not None and script.agent is None
    menu = menu_for(Setup(call_id=1, kind="announcement", text="Hello.", script=True), script)
    assert menu == {"1": Choice.CONFIRM, "2": Choice.REPEAT, "3": Choice.DECLINE}


async def test_on_a_page_9_does_nothing_and_3_escalates_now() -> None:
    script = await CallScripts(None, MessageRenderer(DEFAULT_TEMPLATES_DIR)).for_grant(  # type: ignore[arg-type]
        grant_of(page_options())
    )
    setup = Setup(call_id=7, kind="announcement", text="Hello.", script=True)
    call, _ = step(CallState(), StreamStarted(setup))
    call, _ = step(call, ScriptLoaded(script))
    assert call.phase == Phase.SPEAKING
    same, actions = step(call, KeyPressed(OPT_OUT_KEY))
    assert (same, actions) == (call, [])  # the page plays on; nobody is opted out
    ended, actions = step(call, KeyPressed("3"))
    assert ended.phase == Phase.ENDED
    assert ReportOutcome(CallOutcome.DECLINED, "pressed 3 to escalate now") in actions


async def test_a_broken_page_prompt_falls_back_and_stops_the_start(tmp_path: Path, database_url: str) -> None:
    templates = tmp_path / "templates"
    templates.mkdir()
    for source in DEFAULT_TEMPLATES_DIR.glob("*.j2"):
        (templates / source.name).write_text(source.read_text())
    (templates / PAGE_PROMPT_TEMPLATE).write_text("Press {{ one ")
    renderer = MessageRenderer(templates)
    with pytest.raises(RenderError):
        check_prompts(renderer)
    with pytest.raises(RenderError, match=r"page_prompt\.j2"):  # the service does not start
        create_app(make_settings(tmp_path, database_url, announcer_templates_dir=templates))
    scripts = CallScripts(None, renderer)  # type: ignore[arg-type]
    with pytest.raises(RenderError):
        scripts.check()
    script = await scripts.for_grant(grant_of(page_options()))
    assert script is not None and script.prompt == FALLBACK_PAGE_PROMPT  # a call still gets its keys


def test_a_page_is_never_retried_snoozed_or_held_by_quiet_hours() -> None:
    options = page_options()
    assert options.quiet_hours is None and not options.reminder
    policy = DeliveryPolicy()
    now = datetime(2027, 1, 1, 3, 0, tzinfo=UTC)  # 3 a.m.: a page calls whatever the hour
    assert policy.deferral(options, "Europe/Berlin", now) is None
    for state in (
        DeliveryState.NO_ANSWER,
        DeliveryState.BUSY,
        DeliveryState.VOICEMAIL_LEFT,
        DeliveryState.DECLINED,
    ):
        follow = policy.after_final(state, options, attempt=1, max_attempts=1, alert_active=True, now=now)
        assert follow == FollowUp()


async def test_a_number_that_opted_out_of_alerts_is_still_paged(service: Service) -> None:
    """A 9 pressed on an ordinary alert stops alerts, not the pages of the person's own on-call rotation."""
    from announcer.store.models import OptOut, utcnow

    phone = "+15550170031"
    async with service.store.sessions() as s:
        s.add(OptOut(phone=phone, created_at=utcnow()))
        await s.commit()
    alert_id = await page(service, phone, incident="in_opted")
    call = await placed_call(service, phone)
    await call.wait_for_mark("end:", KEY_WAIT_S)
    await call.press("1")
    assert (await finished(service, alert_id))["counts"] == {"confirmed": 1}
