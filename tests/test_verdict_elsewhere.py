"""Any process serves any webhook (design.md): machine detection's verdict posted to another process than
the one holding the call's media stream still reaches the call, through the database. Two services on one
database; the second gets the signed `POST /twilio/amd` while the first holds the call for a verdict."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from twilio.request_validator import RequestValidator

from announcer.sandbox.twilio_call import Callee, PhoneBehavior
from tests.conftest import eventually, free_port, make_settings, start_service
from tests.test_alerts import alert_body, finished, get, placed_call, post

MACHINE = "+15550160001"
# Long enough that the call holds for seconds before the machine's own verdict (at its beep).
GREETING = " ".join(["Hi, you have reached the front desk of the Acme Clinic."] * 6)


async def test_a_verdict_posted_to_another_process_reaches_the_holding_call(
    tmp_path: Path, database_url: str
) -> None:
    holder_runner, holder = await start_service(
        make_settings(tmp_path / "a", database_url, announcer_sandbox_speed=4.0)
    )
    try:
        holder.sandbox.set_behavior(MACHINE, PhoneBehavior(callee=Callee.MACHINE, greeting=GREETING))
        status, accepted = await post(holder, "/v1/alerts", alert_body(MACHINE))
        assert status == 202, accepted
        call = await placed_call(holder, MACHINE)
        call_id = None

        async def holding() -> bool:
            nonlocal call_id
            call_id = await holder.store.find_by_sid(call.sid)
            events = await holder.store.events(call_id) if call_id is not None else []
            return any(e.kind == "holding_for_amd" for e in events)

        await eventually(holding, timeout=20)
        assert call.beep_ended_at is None  # the machine's own verdict is still seconds away
        # The other process: same database and Twilio account, no media session of this call.
        p = holder.providers
        token = p.auth_token
        port = free_port()
        other_runner, other = await start_service(
            make_settings(
                tmp_path / "b",
                database_url,
                port=port,
                public_url=f"http://127.0.0.1:{port}",
                twilio_account_sid=p.account_sid,
                twilio_auth_token=token,
                twilio_phone_number=p.phone_number,
                twilio_api_base_url=p.twilio_base_url,
            )
        )
        try:
            url = f"{other.base_url}/twilio/amd?call={call_id}"
            form = {
                "AccountSid": p.account_sid,
                "CallSid": call.sid,
                "AnsweredBy": "machine_end_silence",
                "MachineDetectionDuration": "3100",
            }
            headers = {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, form)}
            async with aiohttp.ClientSession() as http, http.post(url, data=form, headers=headers) as resp:
                assert resp.status == 204, await resp.text()
        finally:
            await other_runner.cleanup()
        done = await finished(holder, accepted["id"])
        assert done["counts"].get("voicemail_left") == 1, done
        (delivery,) = (await get(holder, f"/v1/alerts/{accepted['id']}/deliveries"))[1]["deliveries"]
        # The other process's verdict is the call's (the machine's own, at its beep, came later or never):
        # the voicemail started before the beep, from the store, not from this process's webhook.
        assert delivery["answered_by"] == "machine_end_silence"
        assert delivery["outcome_reason"] == "the whole message was left after the greeting (no beep heard)"
        assert delivery["played_ms"] == delivery["message_ms"] and delivery["played_ms"] > 0
    finally:
        await holder_runner.cleanup()
