"""The destination policy (toll fraud): premium-rate and other revenue-sharing number types refused by
default, countries outside ANNOUNCER_ALLOWED_COUNTRIES refused, emergency and short numbers refused always
(sandbox mode too); the policy alone first, then through the service's API and a schedule's fire.

The numbers come from libphonenumber's own metadata (`example_number_for_type`) wherever it has one, so
a test does not rest on a guess about which range is which.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import phonenumbers
import pytest
from phonenumbers import PhoneNumberType

from announcer.config import ConfigError, load_settings
from announcer.messages.destinations import REFUSED_BY_DEFAULT, DestinationPolicy
from announcer.messages.phones import BadNumber
from announcer.sandbox.twilio_call import PhoneBehavior
from tests.clock import Clock
from tests.conftest import AUTH, Service, eventually, make_settings, start_service
from tests.test_alerts import BUSY, HEARER, alert_body, finished, get, post
from tests.test_schedules import calls_to, heard_fires, occurrences, schedule_body

LIVE = DestinationPolicy(strict=True)  # what a deployment with Twilio credentials checks
SANDBOX = DestinationPolicy(strict=False)
LIVE_SETTINGS = {  # credentials only make the settings live-like: nothing here reaches Twilio
    "twilio_account_sid": "AC" + "0" * 32,
    "twilio_auth_token": "secret",
    "twilio_phone_number": "+15550100999",
    "public_url": "https://announcer.example.com",
}


def example(region: str, kind: int) -> str:
    number = phonenumbers.example_number_for_type(region, kind)
    assert number is not None, (region, kind)
    return str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))


def refusal(policy: DestinationPolicy, number: str) -> str:
    with pytest.raises(BadNumber) as refused:
        policy.check(number)
    return str(refused.value)


def settings(**values: Any) -> Any:
    return load_settings(_env_file=None, **values)


# --- the policy --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "reason"),
    [
        (example("US", PhoneNumberType.PREMIUM_RATE), "premium-rate"),  # +1 900 ...
        (example("GB", PhoneNumberType.PREMIUM_RATE), "premium-rate"),  # 09 ...
        ("+44 871 234 5678", "premium-rate"),  # 0871: libphonenumber files it as premium rate
        (example("FR", PhoneNumberType.PREMIUM_RATE), "premium-rate"),  # 089 ...
        ("+33 899 12 34 56", "premium-rate"),  # 0899
        (example("FR", PhoneNumberType.SHARED_COST), "shared-cost"),  # 0884 ...
        (example("DE", PhoneNumberType.SHARED_COST), "shared-cost"),  # 0180 ...
    ],
)
@pytest.mark.parametrize("policy", [LIVE, SANDBOX], ids=["live", "sandbox"])
def test_premium_rate_and_shared_cost_numbers_are_refused(
    policy: DestinationPolicy, number: str, reason: str
) -> None:
    refused = refusal(policy, number)
    assert reason in refused and "ANNOUNCER_ALLOWED_NUMBER_TYPES" in refused


@pytest.mark.parametrize("kind", sorted(REFUSED_BY_DEFAULT), ids=PhoneNumberType.to_string)
def test_every_type_refused_by_default_is_refused_and_a_setting_allows_it_back(kind: int) -> None:
    region = next(
        r for r in sorted(phonenumbers.SUPPORTED_REGIONS) if phonenumbers.example_number_for_type(r, kind)
    )
    number = example(region, kind)
    name = PhoneNumberType.to_string(kind).lower()
    assert f"ANNOUNCER_ALLOWED_NUMBER_TYPES includes {name}" in refusal(LIVE, number)
    widened = DestinationPolicy.from_settings(settings(**LIVE_SETTINGS, announcer_allowed_number_types=name))
    assert widened.strict and widened.check(number) == number
    other = next(k for k in REFUSED_BY_DEFAULT if k != kind)  # only the named type comes back
    other_region = next(
        r for r in sorted(phonenumbers.SUPPORTED_REGIONS) if phonenumbers.example_number_for_type(r, other)
    )
    refusal(widened, example(other_region, other))


def test_countries_outside_allowed_countries_are_refused_naming_the_country_and_the_setting() -> None:
    policy = DestinationPolicy.from_settings(settings(**LIVE_SETTINGS, announcer_allowed_countries="US,GB"))
    assert policy.strict
    for region, kind in [("ST", PhoneNumberType.FIXED_LINE), ("MD", PhoneNumberType.MOBILE)]:  # +239, +373
        refused = refusal(policy, example(region, kind))
        assert f"a number in {region}" in refused and "ANNOUNCER_ALLOWED_COUNTRIES allows GB, US" in refused
    # +1 is shared: Jamaica's +1 876 is Jamaica's, not the United States'
    assert "a number in JM" in refusal(policy, example("JM", PhoneNumberType.MOBILE))
    # the international networks (satellite +881, ...) are no country at all
    satellite = phonenumbers.example_number_for_non_geo_entity(881)
    assert satellite is not None
    e164 = str(phonenumbers.format_number(satellite, phonenumbers.PhoneNumberFormat.E164))
    assert "international network (+881)" in refusal(policy, e164)
    for region in ("US", "GB"):
        for kind in (PhoneNumberType.FIXED_LINE_OR_MOBILE, PhoneNumberType.MOBILE):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is not None:
                assert policy.check(example(region, kind)) == example(region, kind)
    # the sandbox's fictional +1 555 numbers are valid nowhere: they count as their code's country, the US
    sandbox = DestinationPolicy(strict=False, countries=frozenset({"US"}))
    assert sandbox.check(HEARER) == HEARER
    assert "a number in US" in refusal(DestinationPolicy(strict=False, countries=frozenset({"GB"})), HEARER)


EMERGENCY = [
    ("911", "US"),
    ("112", "US"),
    ("112", "DE"),
    ("110", "DE"),
    ("999", "GB"),
    ("000", "AU"),
    ("+49112", None),
    ("+1911", None),
    ("+44 999", None),
    ("+61 000", None),
]


@pytest.mark.parametrize(("number", "region"), EMERGENCY)
@pytest.mark.parametrize("strict", [True, False], ids=["live", "sandbox"])
def test_emergency_numbers_are_refused_whatever_the_settings(
    number: str, region: str | None, strict: bool
) -> None:
    # the widest policy settings can make: every country, every number type
    widest = DestinationPolicy(region=region, strict=strict, refused_types=frozenset())
    assert "an emergency number" in refusal(widest, number)


@pytest.mark.parametrize("strict", [True, False], ids=["live", "sandbox"])
def test_short_codes_are_refused(strict: bool) -> None:
    widest = DestinationPolicy(strict=strict, refused_types=frozenset())
    assert "a short code" in refusal(widest, "+44 118 118")  # UK directory enquiries, charged as premium
    assert "a short code" in refusal(DestinationPolicy(region="GB", strict=strict), "118118")


def test_ordinary_numbers_are_accepted() -> None:
    # every country's example landline and mobile, as libphonenumber's metadata gives them
    checked = 0
    for region in sorted(phonenumbers.SUPPORTED_REGIONS):
        for kind in (PhoneNumberType.FIXED_LINE, PhoneNumberType.MOBILE, PhoneNumberType.TOLL_FREE):
            number = phonenumbers.example_number_for_type(region, kind)
            if number is None:
                continue
            e164 = str(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164))
            assert LIVE.check(e164) == e164, (region, kind)
            checked += 1
    assert checked > 400
    # 15 is France's medical emergency number, and a prefix of Paris landlines: only exact matches count
    assert LIVE.check("+33 1 53 45 67 89") == "+33153456789"
    # numbers without +country read in the default region
    assert DestinationPolicy(region="DE").check("030 1234567") == "+49301234567"
    # sandbox mode keeps the fictional numbers the tests and the README use; a live deployment does not
    assert SANDBOX.check("+1 (555) 010-0001") == HEARER
    assert "not a valid phone number" in refusal(LIVE, HEARER)


# --- settings ----------------------------------------------------------------------------------------


def test_the_settings_are_comma_lists_and_a_bad_value_names_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ANNOUNCER_ALLOWED_COUNTRIES", "us, gb")
    monkeypatch.setenv("ANNOUNCER_ALLOWED_NUMBER_TYPES", "Premium_Rate")
    loaded = settings()
    assert loaded.announcer_allowed_countries == {"US", "GB"}
    assert loaded.announcer_allowed_number_types == {"premium_rate"}
    monkeypatch.setenv("ANNOUNCER_ALLOWED_COUNTRIES", "US,UK")
    with pytest.raises(ConfigError, match=r"ANNOUNCER_ALLOWED_COUNTRIES: .*UK.*the United Kingdom is GB"):
        settings()
    monkeypatch.delenv("ANNOUNCER_ALLOWED_COUNTRIES")
    monkeypatch.setenv("ANNOUNCER_ALLOWED_NUMBER_TYPES", "premium")
    with pytest.raises(ConfigError, match=r"ANNOUNCER_ALLOWED_NUMBER_TYPES: unknown number types: premium"):
        settings()
    monkeypatch.setenv("ANNOUNCER_ALLOWED_NUMBER_TYPES", "")  # empty: the default, as for every setting
    assert settings().announcer_allowed_number_types == frozenset()


# --- through the service (sandbox mode) --------------------------------------------------------------


async def test_the_api_refuses_emergency_and_premium_numbers_naming_the_field(service: Service) -> None:
    premium = example("US", PhoneNumberType.PREMIUM_RATE)
    status, answer = await post(service, "/v1/alerts", alert_body(HEARER, "+49112", premium, "+1911"))
    assert status == 422, answer
    problems = {p["field"]: p["reason"] for p in answer["problems"]}
    assert set(problems) == {"recipients[1].phone", "recipients[2].phone", "recipients[3].phone"}, problems
    assert "emergency number" in problems["recipients[1].phone"]
    assert "premium-rate" in problems["recipients[2].phone"]
    assert "emergency number" in problems["recipients[3].phone"]

    preview = {"template_text": "Hello.", "recipient": {"phone": "+49112"}}
    status, answer = await post(service, "/v1/preview", preview)
    assert status == 422, answer
    assert [p["field"] for p in answer["problems"]] == ["recipient.phone"], answer

    for number in ("+49112", premium):
        body = {"number": number, "prompt": "You are polite.", "first_message": "Hello."}
        status, answer = await post(service, "/outbound-call", body)
        assert status == 422 and [p["field"] for p in answer["problems"]] == ["number"], answer
    assert service.sandbox.calls == {}  # nobody was dialed


async def test_allowed_countries_hold_in_the_service_and_opt_outs_stay_removable(
    tmp_path: Path, database_url: str
) -> None:
    runner, service = await start_service(
        make_settings(tmp_path, database_url, announcer_allowed_countries="GB")
    )
    try:
        await _allowed_countries_hold(service)
    finally:
        await runner.cleanup()


async def _allowed_countries_hold(service: Service) -> None:
    status, answer = await post(service, "/v1/alerts", alert_body(HEARER))
    assert status == 422, answer
    [problem] = answer["problems"]
    assert problem["field"] == "recipients[0].phone"
    assert "a number in US" in problem["reason"] and "ANNOUNCER_ALLOWED_COUNTRIES" in problem["reason"]
    # removing an opt-out only deletes a row: a number refused now may have opted out before
    async with (
        aiohttp.ClientSession() as http,
        http.delete(f"{service.base_url}/v1/opt-outs/{HEARER}", headers=AUTH) as resp,
    ):
        assert resp.status == 404  # read as a number (not 422), and it has not opted out
    briton = example("GB", PhoneNumberType.MOBILE)
    status, answer = await post(service, "/v1/alerts", alert_body(briton))
    assert status == 202, answer

    async def called() -> bool:
        return bool(calls_to(service, briton))

    await eventually(called)


async def test_a_schedule_whose_recipient_a_tightened_policy_refuses_fails_its_fire_and_the_scheduler_goes_on(
    clock: Clock,
) -> None:
    service = await clock.start(datetime(2027, 6, 10, 6, tzinfo=UTC))
    when = {"at": "2027-06-10T09:00", "timezone": "Europe/Berlin"}
    briton = example("GB", PhoneNumberType.FIXED_LINE)
    created = {}
    for name, phone in [("american", HEARER), ("briton", briton)]:
        status, created[name] = await post(service, "/v1/schedules", schedule_body(when, phone))
        assert status == 201, created[name]
    await clock.stop(service)
    # the operator narrows the policy: the American's schedule is refused at its fire, the Briton's is not
    service = await clock.start(announcer_allowed_countries="GB")
    await clock.advance_to(datetime(2027, 6, 10, 7, 0, 1, tzinfo=UTC))
    [failed] = await occurrences(service, created["american"]["id"])
    assert failed["status"] == "failed", failed
    [problem] = failed["detail"]["problems"]
    assert (
        problem.startswith("recipients[0].phone: a number in US") and "ANNOUNCER_ALLOWED_COUNTRIES" in problem
    )
    assert calls_to(service, HEARER) == []
    assert await heard_fires(service, created["briton"]["id"]) == [datetime(2027, 6, 10, 7, tzinfo=UTC)]
    _, view = await get(service, f"/v1/schedules/{created['american']['id']}")
    assert view["status"] == "ended"
    # and the scheduler still takes new work
    later = {"at": "2027-06-10T10:00", "timezone": "Europe/Berlin"}
    status, again = await post(service, "/v1/schedules", schedule_body(later, briton))
    assert status == 201, again
    await clock.advance(timedelta(hours=1))
    assert len(await heard_fires(service, again["id"])) == 1


async def test_a_retry_accepted_before_the_policy_narrowed_is_not_dialed(clock: Clock) -> None:
    service = await clock.start(datetime(2027, 6, 10, 6, tzinfo=UTC))
    service.sandbox.set_behavior(BUSY, PhoneBehavior(answer="busy"))
    body = alert_body(BUSY, max_attempts=2, retry_on=["busy"], retry_backoff_s=600)
    status, accepted = await post(service, "/v1/alerts", body)
    assert status == 202, accepted
    await clock.advance(timedelta(seconds=1))  # the first attempt: busy, the second due in 10 minutes
    _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
    [delivery] = page["deliveries"]
    assert delivery["attempt"] == 1 and delivery["state"] not in ("failed", "busy"), delivery
    assert len(calls_to(service, BUSY)) == 1
    await clock.stop(service)
    # the operator narrows the policy; the retry planned under the old one must not ring
    service = await clock.start(announcer_allowed_countries="GB")
    await clock.advance(timedelta(minutes=11))
    alert = await finished(service, accepted["id"])
    assert alert["counts"] == {"failed": 1}, alert
    _, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
    [delivery] = page["deliveries"]
    assert delivery["outcome_reason"].startswith("refused by the destination policy: a number in US"), (
        delivery
    )
    assert "ANNOUNCER_ALLOWED_COUNTRIES" in delivery["outcome_reason"]
    assert calls_to(service, BUSY) == []  # the restarted service's phone network saw no call
