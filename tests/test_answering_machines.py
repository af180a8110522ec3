"""Who answered, the data side (issue 14): every outbound call asks Twilio for asynchronous machine detection
with the deployment's tuning (unless the alert turns it off), a template's voicemail block is rendered per
recipient at acceptance and travels with the delivery, the new outcomes map to delivery states and may be
retried, and everything a user sees (the API's views, the outcome webhook, the CLI) carries the facts. Through
the sandbox with the real SDKs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from announcer.app import DISPATCHER
from announcer.sandbox.twilio_call import PhoneBehavior
from announcer.store.models import CallOutcome
from tests.clock import Clock
from tests.conftest import Service, eventually, make_settings, run_cli, start_service
from tests.test_alerts import RECEIVER_ALLOWED, Receiver, alert_body, finished, get, post, receiver
from tests.test_cli_send import ALERT_ID

HEARER = "+15550140001"
OTHER = "+15550140002"
# Not Twilio's defaults, so that the test sees the settings' values travel.
TUNING = {
    "announcer_amd_timeout_s": 45,
    "announcer_amd_speech_threshold_ms": 3000,
    "announcer_amd_speech_end_threshold_ms": 800,
    "announcer_amd_silence_timeout_ms": 4000,
}


__all__ = ["receiver"]  # the fixture, shared with test_alerts


@pytest.fixture
async def hooked_service(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    """A service that may post outcome webhooks to the receiver (127.0.0.1, http)."""
    runner, svc = await start_service(make_settings(tmp_path, database_url, **RECEIVER_ALLOWED))
    try:
        yield svc
    finally:
        await runner.cleanup()


@pytest.fixture
async def tuned(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    runner, svc = await start_service(make_settings(tmp_path, database_url, **TUNING))
    try:
        yield svc
    finally:
        await runner.cleanup()


def create_form(service: Service, to: str) -> dict[str, str]:
    """The create-call request the sandbox received for `to`, as its form."""
    (entry,) = [
        r
        for r in service.sandbox.rest_log
        if r.method == "POST" and r.path.endswith("/Calls.json") and dict(r.form).get("To") == to
    ]
    return dict(entry.form)


async def test_every_call_asks_for_machine_detection_unless_turned_off(tuned: Service) -> None:
    status, on = await post(tuned, "/v1/alerts", alert_body(HEARER))
    assert status == 202, on
    status, off = await post(tuned, "/v1/alerts", alert_body(OTHER, machine_detection=False))
    assert status == 202, off
    await finished(tuned, on["id"])
    await finished(tuned, off["id"])
    form = create_form(tuned, HEARER)
    call = next(c for c in tuned.sandbox.calls.values() if c.to == HEARER)
    (delivery,) = (await get(tuned, f"/v1/alerts/{on['id']}/deliveries"))[1]["deliveries"]
    call_row = (await get(tuned, f"/v1/deliveries/{delivery['id']}/call"))[1]
    assert call_row["call_sid"] == call.sid
    amd_url = form["AsyncAmdStatusCallback"]
    assert amd_url.startswith(tuned.base_url + "/twilio/amd?call=")
    assert {k: v for k, v in form.items() if "Amd" in k or k.startswith("MachineDetection")} == {
        "MachineDetection": "DetectMessageEnd",
        "AsyncAmd": "true",
        "AsyncAmdStatusCallback": amd_url,
        "AsyncAmdStatusCallbackMethod": "POST",
        "MachineDetectionTimeout": "45",
        "MachineDetectionSpeechThreshold": "3000",
        "MachineDetectionSpeechEndThreshold": "800",
        "MachineDetectionSilenceTimeout": "4000",
    }
    # the sandbox read it as Twilio would (its detector ran with these values)
    assert call.amd_request is not None and call.amd_request.async_amd
    settings = call.amd_request.settings
    assert (settings.timeout_s, settings.speech_threshold_ms) == (45, 3000)
    assert (settings.speech_end_threshold_ms, settings.silence_timeout_ms) == (800, 4000)
    # options.machine_detection: false asks for none of it
    off_form = create_form(tuned, OTHER)
    assert not [k for k in off_form if "Amd" in k or k.startswith("MachineDetection")]
    off_call = next(c for c in tuned.sandbox.calls.values() if c.to == OTHER)
    assert off_call.amd_request is None


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("ANNOUNCER_AMD_TIMEOUT_S", "2", "greater than or equal to 3"),
        ("ANNOUNCER_AMD_TIMEOUT_S", "60", "less than or equal to 59"),
        ("ANNOUNCER_AMD_SPEECH_THRESHOLD_MS", "999", "greater than or equal to 1000"),
        ("ANNOUNCER_AMD_SPEECH_END_THRESHOLD_MS", "5001", "less than or equal to 5000"),
        ("ANNOUNCER_AMD_SILENCE_TIMEOUT_MS", "1999", "greater than or equal to 2000"),
    ],
)
def test_tuning_outside_twilios_ranges_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, reason: str
) -> None:
    from announcer.config import ConfigError, load_settings

    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"{name}: .*{reason}"):
        load_settings(_env_file=None)


def test_the_settings_default_to_twilios_defaults() -> None:
    from announcer.config import load_settings
    from announcer.telephony.calls import MachineDetection

    assert MachineDetection.from_settings(load_settings(_env_file=None)) == MachineDetection(
        30, 2400, 1200, 5000
    )


@pytest.mark.parametrize(
    ("options", "fields"),
    [
        ({"machine_detection": False, "retry_on": ["machine"]}, ["options.retry_on"]),
        ({"machine_detection": False, "retry_on": ["busy", "voicemail_left"]}, ["options.retry_on"]),
        ({"machine_detection": False, "on_machine": "hang_up"}, ["options.on_machine"]),
        ({"retry_on": ["fax"]}, ["options.retry_on[0]"]),  # never retried: a fax answers again
        ({"hello_timeout_ms": 200}, ["options.hello_timeout_ms"]),
        ({"start": "whenever"}, ["options.start"]),
    ],
)
async def test_options_that_cannot_happen_are_refused_before_any_call(
    service: Service, options: dict[str, Any], fields: list[str]
) -> None:
    status, answer = await post(service, "/v1/alerts", alert_body(HEARER, **options))
    assert status == 422, answer
    assert [p["field"] for p in answer["problems"]] == fields
    schedule = {
        "template_text": "Hello.",
        "recipients": [{"phone": HEARER}],
        "when": {"cron": "0 8 * * *", "timezone": "UTC"},
        "options": options,
    }
    status, answer = await post(service, "/v1/schedules", schedule)
    assert status == 422, answer
    assert [p["field"] for p in answer["problems"]] == fields
    assert not service.sandbox.calls


VOICEMAIL_TEMPLATE = (
    "Hello {{ name }}, the {{ system }} is down."
    "{% block voicemail %}This is a message for {{ name }} from operations: the {{ system }} is down, "
    "please call back {{ callback }}.{% endblock %}"
    " Press one to confirm."
)


def voicemail_alert(*phones: str, **options: Any) -> dict[str, Any]:
    return {
        "template_text": VOICEMAIL_TEMPLATE,
        "variables": {"system": "billing server"},
        "recipients": [
            {"phone": p, "name": f"Person {i}", "variables": {"callback": f"extension {i + 40}"}}
            for i, p in enumerate(phones)
        ],
        "options": options,
    }


def synthesized(service: Service, words: str) -> bool:
    return any(words in r.text for r in service.tts.requests)


async def test_a_voicemail_block_is_rendered_per_recipient_kept_apart_and_made_while_ringing(
    service: Service,
) -> None:
    status, preview = await post(
        service,
        "/v1/preview",
        {
            "template_text": VOICEMAIL_TEMPLATE,
            "variables": {"system": "billing server", "callback": "extension 7"},
            "recipient": {"phone": HEARER, "name": "Ada"},
        },
    )
    assert status == 200, preview
    assert preview["text"] == "Hello Ada, the billing server is down. Press one to confirm."
    assert preview["voicemail_text"] == (
        "This is a message for Ada from operations: the billing server is down, please call back extension 7."
    )
    status, accepted = await post(service, "/v1/alerts", voicemail_alert(HEARER, OTHER))
    assert status == 202, accepted
    await finished(service, accepted["id"])
    _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
    for i, d in enumerate(page["deliveries"]):
        assert d["text"] == f"Hello Person {i}, the billing server is down. Press one to confirm."
        assert d["voicemail_text"] == (
            f"This is a message for Person {i} from operations: the billing server is down, "
            f"please call back extension {i + 40}."
        )
    # a person heard the message, never the voicemail; the voicemail was made while the phone rang
    hearer_call = next(c for c in service.sandbox.calls.values() if c.to == HEARER)
    assert hearer_call.marks_echoed
    assert synthesized(service, "please call back extension 40.")
    assert synthesized(service, "please call back extension 41.")


async def test_a_voicemail_nobody_will_hear_is_not_made(service: Service) -> None:
    for phone, options in ((HEARER, {"on_machine": "hang_up"}), (OTHER, {"machine_detection": False})):
        status, accepted = await post(service, "/v1/alerts", voicemail_alert(phone, **options))
        assert status == 202, accepted
        await finished(service, accepted["id"])
        _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
        (delivery,) = page["deliveries"]
        assert delivery["voicemail_text"] is not None  # rendered and kept, as the alert was accepted
    assert synthesized(service, "Press one to confirm.")  # the messages were spoken
    assert not synthesized(service, "please call back extension")


@pytest.mark.parametrize(
    "template",
    [
        VOICEMAIL_TEMPLATE,
        # a block in a branch the message never takes is checked all the same: a machine would be told it
        "Hello {{ name }}.{% if false %}{% block voicemail %}Call {{ callback }}.{% endblock %}{% endif %}",
    ],
)
async def test_a_missing_variable_in_the_voicemail_block_is_refused_before_any_call(
    service: Service, template: str
) -> None:
    body = {**voicemail_alert(HEARER, OTHER), "template_text": template}
    del body["recipients"][1]["variables"]["callback"]
    status, answer = await post(service, "/v1/alerts", body)
    assert status == 422, answer
    assert [(p["field"], p.get("index")) for p in answer["problems"]] == [("recipients[1].variables", 1)]
    assert "callback" in answer["problems"][0]["reason"]
    assert not service.sandbox.calls


async def test_a_schedules_voicemails_are_made_ahead_with_its_messages(clock: Clock) -> None:
    service = await clock.start(datetime(2027, 6, 10, 12, tzinfo=UTC))
    fires = {}
    for phone, on_machine, hour in ((HEARER, "leave_message", "09"), (OTHER, "hang_up", "10")):
        body = {
            **voicemail_alert(phone, on_machine=on_machine, presynthesize_s=300),
            "when": {"at": f"2027-06-11T{hour}:00", "timezone": "Europe/Berlin"},
        }
        if phone == OTHER:
            body["recipients"][0] |= {"name": "Bob", "variables": {"callback": "extension 99"}}
        status, created = await post(service, "/v1/schedules", body)
        assert status == 201, created
        fires[phone] = datetime.fromisoformat(f"2027-06-11T{hour}:00+02:00")
    await clock.advance_to(fires[HEARER] - timedelta(seconds=300))
    assert synthesized(service, "Hello Person 0, the billing server is down.")
    assert synthesized(service, "please call back extension 40.")  # made ahead, before anyone is dialed
    assert not [c for c in service.sandbox.calls.values() if c.to == HEARER]
    await clock.advance_to(fires[OTHER] - timedelta(seconds=300))
    assert synthesized(service, "Hello Bob, the billing server is down.")
    assert not synthesized(service, "extension 99")  # with on_machine: hang_up nothing would speak it


RINGING = PhoneBehavior(ring_s=3600)  # rings until the test is done with it


async def ringing_call(service: Service, alert_id: str, attempt: int) -> int:
    """The row id of the call of `alert_id`'s one delivery's attempt `attempt`, once Twilio rings it."""
    found: list[int] = []

    async def rings() -> bool:
        _, page = await get(service, f"/v1/alerts/{alert_id}/deliveries")
        (d,) = page["deliveries"]
        if d["state"] != "ringing" or d["attempt"] != attempt:
            return False
        call_id = await service.store.find_by_sid(d["call_sid"])
        found.append(call_id or 0)
        return call_id is not None

    await eventually(rings, timeout=30)
    return found[-1]


async def test_a_machine_is_called_again_per_the_backoff_and_a_voicemail_is_final(service: Service) -> None:
    # The media session reports what answered (telephony/, issue 14's call flow); here its report is
    # made directly to the dispatcher, for calls the sandbox keeps ringing.
    dispatcher = service.app[DISPATCHER]
    service.sandbox.set_behavior(HEARER, RINGING)
    body = alert_body(HEARER, max_attempts=3, retry_on=["machine", "busy"], retry_backoff_s=1.0)
    status, accepted = await post(service, "/v1/alerts", body)
    assert status == 202, accepted
    first = await ringing_call(service, accepted["id"], 1)
    reported = time.monotonic()
    await dispatcher.on_call_outcome(first, CallOutcome.MACHINE, "a full mailbox hung up")
    second = await ringing_call(service, accepted["id"], 2)
    dials = sorted(
        r.at for r in service.sandbox.rest_log if r.path.endswith("/Calls.json") and r.method == "POST"
    )
    assert len(dials) == 2
    # retry_backoff_s for the first retry, drawn up to a tenth early (deliveries/policy.py)
    assert dials[1] - reported >= 0.9
    await dispatcher.on_call_outcome(second, CallOutcome.VOICEMAIL_LEFT, "after the beep")
    alert = await finished(service, accepted["id"])
    assert alert["counts"] == {"voicemail_left": 1}  # final: not in retry_on
    _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
    (delivery,) = page["deliveries"]
    assert (delivery["state"], delivery["outcome"], delivery["attempt"]) == (
        "voicemail_left",
        "voicemail_left",
        2,
    )
    retries = [h for h in delivery["history"] if h["kind"] == "retry_scheduled"]
    assert [(h["after"], h["next_attempt"]) for h in retries] == [("machine", 2)]
    assert len([c for c in service.sandbox.calls.values() if c.to == HEARER]) == 2


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        (CallOutcome.FAX, "fax"),
        (CallOutcome.MACHINE, "machine"),
        (CallOutcome.VOICEMAIL_LEFT, "voicemail_left"),
    ],
)
async def test_each_answering_outcome_is_the_deliverys_final_state(
    service: Service, outcome: CallOutcome, state: str
) -> None:
    service.sandbox.set_behavior(OTHER, RINGING)
    status, accepted = await post(service, "/v1/alerts", alert_body(OTHER))  # retry_on: busy, no_answer
    assert status == 202, accepted
    call_id = await ringing_call(service, accepted["id"], 1)
    await service.app[DISPATCHER].on_call_outcome(call_id, outcome, "reported")
    alert = await finished(service, accepted["id"])
    assert alert["counts"] == {state: 1}


async def test_the_views_the_webhook_and_the_cli_say_who_answered_and_what_played(
    hooked_service: Service, receiver: Receiver, tmp_path: Path
) -> None:
    service = hooked_service
    service.sandbox.set_behavior(HEARER, RINGING)
    service.sandbox.set_behavior(OTHER, PhoneBehavior(answer="busy"))
    # `announcer send`, following the alert to its end in its own process
    message = "Hello {{ name }}. The billing server is down."
    args = ("--text", message, "--to", HEARER, "--to", OTHER, "--callback-url", receiver.url)
    cli = asyncio.create_task(run_cli(tmp_path, service.base_url, "send", *args))
    sid = ""

    async def ringing() -> bool:
        nonlocal sid
        sid = next((c.sid for c in service.sandbox.calls.values() if c.to == HEARER), "")
        return bool(sid) and await service.store.find_by_sid(sid) is not None

    await eventually(ringing, timeout=30)
    call_id = await service.store.find_by_sid(sid)
    assert call_id is not None
    # what the media session records (telephony/, issue 14's call flow) before it reports the outcome
    service.store.record_amd(call_id, "machine_end_beep", 4120)
    service.store.record_facts(call_id, played_ms=5340, message_ms=5340, keys="19")
    service.store.record_outcome(call_id, CallOutcome.VOICEMAIL_LEFT, reason="a beep was heard")
    await service.app[DISPATCHER].on_call_outcome(call_id, CallOutcome.VOICEMAIL_LEFT, "a beep was heard")
    code, out, err = await asyncio.wait_for(cli, 60)
    facts = {"answered_by": "machine_end_beep", "amd_ms": 4120, "played_ms": 5340, "message_ms": 5340}
    facts["keys"] = "19"
    nothing = dict.fromkeys(facts)

    def of(view: dict[str, Any]) -> dict[str, Any]:
        return {k: view[k] for k in facts}

    # the call views
    _, call_view = await get(service, f"/v1/calls/{sid}")
    assert of(call_view) == facts and call_view["outcome"] == "voicemail_left"
    _, same = await get(service, f"/v1/deliveries/{call_view['delivery_id']}/call")
    assert same == call_view
    # the deliveries and the alert
    match = ALERT_ID.search(out)
    assert match is not None, (out, err)
    _, page = await get(service, f"/v1/alerts/{match.group(1)}/deliveries")
    by_phone = {d["phone"]: d for d in page["deliveries"]}
    assert of(by_phone[HEARER]) == facts and by_phone[HEARER]["outcome"] == "voicemail_left"
    assert of(by_phone[OTHER]) == nothing and by_phone[OTHER]["outcome"] == "busy"  # never answered
    _, alert = await get(service, f"/v1/alerts/{match.group(1)}")
    assert alert["counts"] == {"voicemail_left": 1, "busy": 1}
    # the signed webhook
    async with asyncio.timeout(30):
        await receiver.completed.wait()
    assert all(signed for _, signed in receiver.received)
    hooks = {
        b["delivery"]["phone"]: b["delivery"]
        for b, _ in receiver.received
        if b["type"] == "delivery.finished"
    }
    assert of(hooks[HEARER]) == facts and hooks[HEARER]["outcome"] == "voicemail_left"
    assert of(hooks[OTHER]) == nothing
    # the CLI: a voicemail is not a person hearing it (exit 1), said in words, with what played
    assert code == 1, (out, err)
    assert "voicemail left 1, busy 1" in out, out
    (line,) = [x for x in out.splitlines() if HEARER in x and x.startswith("  #")]
    assert ": voicemail left (a beep was heard, answered by an answering machine (after its beep)" in line, (
        line
    )
    assert "played 5.3 s of 5.3 s, pressed 1 9" in line, line


def test_announcer_render_shows_the_voicemail_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from announcer.cli import main

    (tmp_path / "pickup.j2").write_text(
        "Your order is ready, {{ name }}.\n{% block voicemail %}Order ready for {{ name }}.{% endblock %}\n"
    )
    monkeypatch.setenv("ANNOUNCER_TEMPLATES_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    assert main(["render", "pickup.j2", "--var", "name=Ada"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "Your order is ready, Ada.",
        "voicemail: Order ready for Ada.",
    ]
