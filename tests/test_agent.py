"""Agent mode end to end: the service's bridge between the sandbox Twilio (a phone that talks) and the
sandbox ElevenLabs agent (signed URL + ConvAI websocket), both speaking the real wire protocols."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from announcer.app import SANDBOX_AGENT
from announcer.sandbox import AgentBehavior, BargeIn, CloseReason, PhoneBehavior
from tests.conftest import Service, eventually, make_settings, start_service
from tests.test_alerts import finished, get, post

T = 30.0
CALLEE = "+15550100201"
PROMPT = "You are Ada's clinic assistant. Be brief."
FIRST = "Hello Ada, this is the clinic. How can I help?"


def agent_of(service: Service) -> Any:
    return service.app[SANDBOX_AGENT]


async def opened(service: Service) -> Any:
    """The agent's conversation, once the service has sent its initiation data."""
    conversation = await agent_of(service).wait_for_conversation(T)
    await conversation.wait_until(lambda: conversation.initiation is not None, T, "initiation data")
    return conversation


async def outbound(service: Service, **body: Any) -> dict[str, Any]:
    status, answer = await post(
        service, "/outbound-call", {"number": CALLEE, "prompt": PROMPT, "first_message": FIRST, **body}
    )
    assert status == 200, answer
    return dict(answer)


async def call_view(service: Service, sid: str) -> dict[str, Any]:
    status, view = await get(service, f"/v1/calls/{sid}")
    assert status == 200, view
    return dict(view)


async def ended_view(service: Service, sid: str) -> dict[str, Any]:
    """The call's record once the phone has hung up and the service has written the call's ending (the
    trail is group-committed)."""
    await service.sandbox.calls[sid].wait_ended(T)

    async def done() -> bool:
        view = await call_view(service, sid)
        return view["status"] == "completed" and any(e["kind"] == "stream_closed" for e in view["events"])

    await eventually(done, timeout=T)
    return await call_view(service, sid)


async def say_goodbye(call: Any, conversation: Any) -> None:
    """Once the agent has started talking, the caller says goodbye (the agent then ends the call). Said
    on cue rather than by a scripted reply: a message before the agent is followed by a gap whose
    length depends on the machine's load, and a scripted reply would fill it."""
    await conversation.wait_until(lambda: bool(conversation.agent_responses), T, "the agent's first words")
    await call.say("Goodbye.")


def first_event(view: dict[str, Any], kind: str) -> dict[str, Any]:
    return dict(next(e for e in view["events"] if e["kind"] == kind))


def kinds(view: dict[str, Any]) -> list[str]:
    return [e["kind"] for e in view["events"]]


@pytest.fixture
async def greeting_service(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    runner, svc = await start_service(make_settings(tmp_path, database_url, greeting_agent=True))
    try:
        yield svc
    finally:
        await runner.cleanup()


async def test_outbound_call_holds_a_whole_conversation_and_keeps_its_transcript(service: Service) -> None:
    lines = ("I would like to move my appointment.", "Thank you, goodbye.")
    service.sandbox.set_behavior(CALLEE, PhoneBehavior(lines=lines))
    answer = await outbound(service)
    assert answer["success"] is True and answer["callSid"].startswith("CA")
    conversation = await opened(service)
    # the overrides and context reached the agent as given
    agent_override = conversation.config_override["agent"]
    assert agent_override == {"prompt": {"prompt": PROMPT}, "first_message": FIRST}
    # "goodbye" makes the agent end the conversation: the service then hangs up through REST
    assert await conversation.wait_closed(T) is CloseReason.SERVER
    assert conversation.agent_responses[0] == FIRST
    call = service.sandbox.calls[answer["callSid"]]
    await call.wait_ended(T)
    assert [s.text for s in call.spoke] == list(lines)
    assert call.heard_seconds > 2.0  # the agent's turns were played to the phone
    view = await ended_view(service, answer["callSid"])
    assert view["outcome"] == "agent"
    assert {"agent_handoff", "agent_connected", "agent_end", "hangup"} <= set(kinds(view))
    roles = [(t["role"], t["text"]) for t in view["transcript"]]
    assert roles[0] == ("agent", FIRST)
    assert ("user", lines[0]) in roles and ("user", lines[1]) in roles
    assert roles.index(("user", lines[0])) < roles.index(("user", lines[1]))
    assert roles[-1] == ("agent", AgentBehavior().goodbye)
    assert [t["seq"] for t in view["transcript"]] == list(range(len(roles)))
    assert conversation.user_audio_chunks > 50  # the caller's audio flowed, frame by frame
    # the delivery behind the call says who took it
    _, page = await get(service, f"/v1/alerts/{answer['alert_id']}/deliveries")
    assert page["deliveries"][0]["state"] == "agent"
    status, same = await get(service, f"/v1/deliveries/{answer['delivery_id']}/call")
    assert status == 200 and same["call_sid"] == answer["callSid"]


async def test_what_the_caller_says_while_the_agent_is_reached_is_kept_for_it(service: Service) -> None:
    hold = asyncio.Event()
    agent_of(service).behavior = AgentBehavior(hold_metadata=hold)
    service.sandbox.set_behavior(CALLEE, PhoneBehavior())
    answer = await outbound(service)
    conversation = await opened(service)  # the socket is open; the agent has not started yet
    call = service.sandbox.calls[answer["callSid"]]
    await call.say("Hello, is anybody there?")  # into the handoff's gap
    assert conversation.user_audio_chunks == 0
    hold.set()
    assert await conversation.wait_for_user_transcript(1, T) == "Hello, is anybody there?"
    await call.say("Goodbye.")
    await conversation.wait_closed(T)


async def test_pings_are_answered_with_their_own_ids(service: Service) -> None:
    agent_of(service).behavior = AgentBehavior(ping_interval_s=0.05)
    service.sandbox.set_behavior(CALLEE, PhoneBehavior(lines=("Goodbye.",), reply_after_quiet_s=2.0))
    await outbound(service)
    conversation = await opened(service)
    await conversation.wait_until(lambda: len(conversation.pongs) >= 3, T, "three pongs")
    sent = {p.event_id for p in conversation.pings}
    assert [p.event_id for p in conversation.pongs[:3]] == [p.event_id for p in conversation.pings[:3]]
    assert all(p.event_id in sent for p in conversation.pongs)


async def test_barge_in_clears_twilio_and_the_transcript_marks_the_cut_turn(service: Service) -> None:
    long_first = "Hello. " + "Let me tell you about all of our opening hours in great detail. " * 4
    service.sandbox.set_behavior(
        CALLEE,
        PhoneBehavior(barge_in=BargeIn("Stop, please.", after_s=1.0), lines=("Goodbye.",)),
    )
    answer = await outbound(service, first_message=long_first)
    conversation = await opened(service)
    await conversation.wait_until(lambda: bool(conversation.interruptions), T, "an interruption")
    call = service.sandbox.calls[answer["callSid"]]
    await conversation.wait_closed(T)
    await call.wait_ended(T)
    assert call.clears >= 1  # Twilio's buffer of the cut turn was dropped
    view = await ended_view(service, answer["callSid"])
    cut = [t for t in view["transcript"] if t["interrupted"]]
    assert len(cut) == 1 and cut[0]["role"] == "agent"
    assert 0 < cut[0]["played_ms"] < cut[0]["sent_ms"]  # heard in part, as the echoed marks tell
    # the agent's correction replaced the text with what it had said, keeping the original
    [(original, corrected)] = conversation.corrections
    assert cut[0]["original_text"] == original == long_first and cut[0]["text"] == corrected
    assert "agent_interruption" in kinds(view)


async def test_caller_hang_up_closes_the_agent_socket_at_once(service: Service) -> None:
    service.sandbox.set_behavior(CALLEE, PhoneBehavior())
    answer = await outbound(service)
    conversation = await opened(service)
    call = service.sandbox.calls[answer["callSid"]]
    await conversation.wait_until(lambda: conversation.metadata_sent_at is not None, T, "metadata")
    await call.wait_for_media(T)
    await call.hang_up()
    assert await conversation.wait_closed(T) is CloseReason.CLIENT
    assert conversation.closed_at is not None and call.stop_sent_at is not None
    # from Twilio's `stop` on the wire to the agent seeing its socket closed
    assert conversation.closed_at - call.stop_sent_at < 0.1, conversation.closed_at - call.stop_sent_at
    view = await ended_view(service, answer["callSid"])
    assert "agent_closed" in kinds(view)


async def test_agent_ending_the_conversation_hangs_up_through_rest(service: Service) -> None:
    agent_of(service).behavior = AgentBehavior(end_after_first_message=True)
    service.sandbox.set_behavior(CALLEE, PhoneBehavior())
    answer = await outbound(service)
    conversation = await opened(service)
    assert await conversation.wait_closed(T) is CloseReason.SERVER
    view = await ended_view(service, answer["callSid"])
    end = first_event(view, "agent_end")
    assert end["how"] == "agent_ended" and end["reason"] == "the agent ended the conversation"
    hangup = first_event(view, "hangup")
    assert hangup["already_ended"] is False  # our REST request ended it, not the phone
    assert view["outcome"] == "agent"


@pytest.mark.parametrize("failure", ["wrong_format", "unreachable", "refused", "dropped"])
async def test_agent_failures_end_with_a_spoken_apology(service: Service, failure: str) -> None:
    agent = agent_of(service)
    if failure == "wrong_format":
        agent.behavior = AgentBehavior(output_format="pcm_16000")
    elif failure == "unreachable":
        agent.fail_signed_url("unreachable")
    elif failure == "refused":
        agent.fail_signed_url("unauthorized")
    else:
        agent.behavior = AgentBehavior(drop_after_first_message=True)
    service.sandbox.set_behavior(CALLEE, PhoneBehavior())
    answer = await outbound(service)
    call = service.sandbox.calls[answer["callSid"]]
    view = await ended_view(service, answer["callSid"])
    end = first_event(view, "agent_end")
    assert end["how"] == "failed"
    reason = end["reason"]
    expected = {
        "wrong_format": "pcm_16000",
        "unreachable": "unreachable",
        "refused": "HTTP 401",
        "dropped": "dropped",
    }[failure]
    assert expected in reason, reason
    # the apology was spoken to the end (its mark echoed) before the hang-up
    assert any(m.startswith("bye:") for m in call.marks_echoed)
    assert call.heard_seconds > 1.0
    assert view["outcome"] == ("agent" if failure == "dropped" else "failed")


async def test_garbage_from_the_agent_is_ignored_and_the_call_goes_on(service: Service) -> None:
    agent_of(service).behavior = AgentBehavior(garbage=True)
    service.sandbox.set_behavior(CALLEE, PhoneBehavior(lines=("Goodbye.",)))
    answer = await outbound(service)
    conversation = await opened(service)
    assert await conversation.wait_closed(T) is CloseReason.SERVER  # the conversation ran to its end
    view = await ended_view(service, answer["callSid"])
    problems = [e["reason"] for e in view["events"] if e["kind"] == "agent_protocol_error"]
    assert len(problems) >= 3, problems  # unknown type, malformed JSON, ping without id, binary frame
    assert ("user", "Goodbye.") in [(t["role"], t["text"]) for t in view["transcript"]]


async def test_announcement_then_agent_with_the_recipient_as_context(service: Service) -> None:
    service.sandbox.set_behavior(CALLEE, PhoneBehavior())
    body = {
        "template_text": "Hello {{ name }}, your appointment is on {{ day }}.",
        "variables": {"day": "Monday"},
        "recipients": [{"phone": CALLEE, "name": "Ada", "variables": {"room": 12}}],
        "options": {"agent": {"after": "announcement", "first_message": "Any questions, {{name}}?"}},
    }
    status, accepted = await post(service, "/v1/alerts", body)
    assert status == 202, accepted
    conversation = await opened(service)
    assert conversation.dynamic_variables == {
        "name": "Ada",
        "day": "Monday",
        "room": 12,
        "announcement": "Hello Ada, your appointment is on Monday.",
    }
    [call] = service.sandbox.calls.values()
    await say_goodbye(call, conversation)
    await conversation.wait_closed(T)
    assert conversation.agent_responses[0] == "Any questions, Ada?"  # the agent filled its variable
    report = await finished(service, accepted["id"])
    assert report["counts"] == {"agent": 1}


async def test_pressing_the_key_during_the_message_hands_the_call_over(service: Service) -> None:
    service.sandbox.set_behavior(CALLEE, PhoneBehavior())
    body = {
        "template_text": "The server is down. Press 0 to talk to our assistant.",
        "recipients": [{"phone": CALLEE}],
        "options": {"agent": {"after": "key"}},
    }
    status, accepted = await post(service, "/v1/alerts", body)
    assert status == 202
    _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")

    async def placed() -> bool:
        _, p = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
        return p["deliveries"][0]["call_sid"] is not None

    await eventually(placed, timeout=T)
    _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
    call = service.sandbox.calls[page["deliveries"][0]["call_sid"]]
    await call.wait_for_media(T)  # the message is playing: the key cuts it short
    await call.press("0")
    conversation = await opened(service)
    await say_goodbye(call, conversation)
    await conversation.wait_closed(T)
    assert (await finished(service, accepted["id"]))["counts"] == {"agent": 1}
    assert call.clears >= 1  # what was left of the message was dropped from Twilio's buffer
    view = await ended_view(service, call.sid)
    assert first_event(view, "agent_handoff")["after"] == "key"


async def test_greeting_line_hands_callers_to_the_agent(greeting_service: Service) -> None:
    service = greeting_service
    call = await service.sandbox.call_in("+15550100999")
    conversation = await opened(service)
    assert "Acme Clinic" in str(conversation.dynamic_variables["announcement"])  # the greeting it heard
    assert conversation.config_override is None  # the agent's own prompt and first message
    await say_goodbye(call, conversation)
    assert await conversation.wait_closed(T) is CloseReason.SERVER
    view = await ended_view(service, call.sid)
    assert view["kind"] == "greeting" and view["outcome"] == "agent"


async def test_a_greeting_that_hands_over_says_no_goodbye(greeting_service: Service) -> None:
    """The caller is about to talk with the agent: "Goodbye." before the agent's hello would be a lie."""
    service = greeting_service
    call = await service.sandbox.call_in("+15550100999")
    conversation = await opened(service)
    await say_goodbye(call, conversation)
    await ended_view(service, call.sid)
    call_id = await service.store.find_by_sid(call.sid)
    row = await service.store.get(call_id) if call_id is not None else None
    assert row is not None and row.text is not None
    greeting = row.text
    assert "thank you for calling Acme Clinic" in greeting
    assert "goodbye" not in greeting.lower() and "call you back" not in greeting
    assert greeting.endswith("Our assistant will take your call now.")
    assert conversation.dynamic_variables["announcement"] == greeting
    # what the caller heard before the agent spoke is that greeting, as synthesized, whole
    clip = await service.speaker.synthesize(greeting)
    assert call.heard[: len(clip)] == clip
    assert call.heard_seconds > len(clip) / 8000 + 1.0  # and then the agent


async def test_a_conversation_is_cut_at_the_maximum_length(tmp_path: Path, database_url: str) -> None:
    runner, service = await start_service(make_settings(tmp_path, database_url, agent_max_conversation_s=0.5))
    try:
        service.sandbox.set_behavior(CALLEE, PhoneBehavior())
        answer = await outbound(service)
        conversation = await opened(service)
        assert await conversation.wait_closed(T) is CloseReason.CLIENT
        call = service.sandbox.calls[answer["callSid"]]
        view = await ended_view(service, answer["callSid"])
        end = first_event(view, "agent_end")
        assert end["how"] == "time_limit" and "0.5 s" in end["reason"]
        assert any(m.startswith("bye:") for m in call.marks_echoed)  # the goodbye was heard
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": PROMPT, "first_message": FIRST}, "number"),
        ({"number": CALLEE, "first_message": FIRST}, "prompt"),
        ({"number": CALLEE, "prompt": PROMPT}, "first_message"),
        ({"number": "not a number", "prompt": PROMPT, "first_message": FIRST}, "number"),
        ({"number": CALLEE, "prompt": "x" * 10_001, "first_message": FIRST}, "prompt"),
        ({"number": CALLEE, "prompt": PROMPT, "first_message": FIRST, "extra": 1}, "extra"),
    ],
)
async def test_outbound_call_refuses_bad_input_naming_the_field(
    service: Service, body: dict[str, Any], field: str
) -> None:
    status, answer = await post(service, "/outbound-call", body)
    assert status == 422, answer
    fields = [p["field"] for p in answer.get("problems", [])] or [answer.get("field")]
    assert field in fields, answer
    assert service.sandbox.calls == {}


async def test_outbound_call_needs_the_bearer_token(service: Service) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as http:
        body = {"number": CALLEE, "prompt": PROMPT, "first_message": FIRST}
        async with http.post(service.base_url + "/outbound-call", json=body) as resp:
            assert resp.status == 401


async def test_injection_in_prompt_and_first_message_is_inert(service: Service) -> None:
    prompt = 'Ignore.</Parameter></Stream><Say>pwned</Say><Redirect>http://evil/</Redirect>&x="y'
    first = "Hi <Hangup/> & ?first_message=evil&prompt=evil ]]> {{ 7*7 }}"
    service.sandbox.set_behavior(CALLEE, PhoneBehavior(lines=("Goodbye.",)))
    answer = await outbound(service, prompt=prompt, first_message=first)
    conversation = await opened(service)
    # the agent got both texts exactly, and they never touched TwiML or a URL
    assert conversation.config_override["agent"] == {"prompt": {"prompt": prompt}, "first_message": first}
    call = service.sandbox.calls[answer["callSid"]]
    await conversation.wait_closed(T)
    await call.wait_ended(T)
    assert call.said == []  # no <Say> ran: "pwned" was never spoken by Twilio
    for document in call.documents:
        assert "pwned" not in document and "evil" not in document and "Ignore" not in document


async def test_a_scheduled_reminder_hands_over_to_the_agent(service: Service) -> None:
    from tests.test_schedules import schedule_body, soon

    service.sandbox.set_behavior(CALLEE, PhoneBehavior())
    body = schedule_body({"at": soon(1.0)}, CALLEE, agent={"after": "announcement"})
    status, created = await post(service, "/v1/schedules", body)
    assert status == 201, created
    conversation = await opened(service)
    assert conversation.dynamic_variables["announcement"].startswith("Hello Person 0, your appointment")
    [call] = service.sandbox.calls.values()
    await say_goodbye(call, conversation)
    assert await conversation.wait_closed(T) is CloseReason.SERVER
    view = await ended_view(service, call.sid)
    assert view["outcome"] == "agent"


async def test_the_agent_option_is_refused_where_no_agent_is_configured(
    tmp_path: Path, database_url: str
) -> None:
    # An ElevenLabs key without ELEVENLABS_AGENT_ID: agent mode is off (nothing to talk to).
    runner, service = await start_service(
        make_settings(
            tmp_path, database_url, elevenlabs_api_key="xi-key", elevenlabs_base_url="http://127.0.0.1:9"
        )
    )
    try:
        status, answer = await post(
            service,
            "/v1/alerts",
            {"template_text": "Hi.", "recipients": [{"phone": CALLEE}], "options": {"agent": {}}},
        )
        assert status == 422 and answer["problems"][0]["field"] == "options.agent", answer
        status, answer = await post(
            service, "/outbound-call", {"number": CALLEE, "prompt": PROMPT, "first_message": FIRST}
        )
        assert status == 503 and answer["error"] == "agent_unavailable", answer
    finally:
        await runner.cleanup()
