"""The delivery policy without a database: backoff, retry on outcome, snooze, quiet-hour deferral and
refused dials, each decision as a value."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from announcer.deliveries.policy import (
    EQUAL_JITTER,
    NO_JITTER,
    OUTCOME_BACKOFF_CAP_S,
    REFUSAL_BACKOFF,
    REFUSALS_GIVE_UP_AFTER,
    Backoff,
    DeliveryPolicy,
    quiet_hours_of,
    quiet_until,
)
from announcer.deliveries.quiet_hours import parse_quiet_hours
from announcer.options import StoredOptions, load
from announcer.store.delivery_states import moves_forward
from announcer.store.models import DeliveryState
from announcer.store.rules import FollowUp

NOW = datetime(2027, 6, 10, 12, 0, tzinfo=UTC)


def stored(**fields: Any) -> StoredOptions:
    """An alert's options as a row holds them."""
    return StoredOptions.model_validate(fields)


class MaxRandom(random.Random):
    """Jitter that always draws the ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


class MinRandom(random.Random):
    """Jitter that always draws the floor."""

    def uniform(self, a: float, b: float) -> float:
        return a


# --- backoff ------------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff(base_s=2.0, cap_s=60.0, jitter=NO_JITTER)
    assert [backoff.delay_s(n) for n in range(1, 9)] == [2, 4, 8, 16, 32, 60, 60, 60]
    assert backoff.delay_s(10_000) == 60.0  # no overflow, however many retries
    assert backoff.delay_s(0) == 2.0  # "before the first retry" reads as the first


@pytest.mark.parametrize(("jitter", "floor"), [(1.0, 0.0), (EQUAL_JITTER, 4.0), (0.1, 7.2)])
def test_jitter_draws_from_the_top_fraction_of_the_ceiling(jitter: float, floor: float) -> None:
    backoff = Backoff(base_s=1.0, cap_s=300.0, jitter=jitter)
    assert backoff.delay_s(4, MaxRandom()) == 8.0
    assert backoff.delay_s(4, MinRandom()) == pytest.approx(floor)
    rng = random.Random(3)
    delays = [backoff.delay_s(4, rng) for _ in range(500)]
    assert all(floor <= d <= 8.0 for d in delays) and len(set(delays)) > 1


@pytest.mark.parametrize("knobs", [{"base_s": -1.0}, {"cap_s": -1.0}, {"jitter": 1.5}, {"jitter": -0.1}])
def test_a_backoff_that_makes_no_sense_is_refused(knobs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**{"base_s": 1.0, "cap_s": 10.0, **knobs})


# --- the options the policy reads -------------------------------------------------------------------


def test_options_are_read_once_and_tolerantly() -> None:
    row = {
        "retry_on": ["busy", "no_answer"],
        "retry_backoff_s": 30,
        "snooze_s": 120,
        "quiet_hours": {"start": "21:00", "end": "08:00"},
        "timezone": "Europe/Berlin",
        "confirm": True,  # not the policy's
    }
    options = load(StoredOptions, row)
    assert (options.retry_on, options.retry_backoff_s, options.snooze_s, options.timezone) == (
        ["busy", "no_answer"],
        30.0,
        120.0,
        "Europe/Berlin",
    )
    assert quiet_hours_of(options) == parse_quiet_hours({"start": "21:00", "end": "08:00"})
    assert load(StoredOptions, {}) == StoredOptions()
    # an unreadable leftover does not stop a call: no quiet hours rather than an exception
    assert quiet_hours_of(load(StoredOptions, {"quiet_hours": {"start": "late"}})) is None
    assert quiet_hours_of(stored(quiet_hours={"start": "09:00", "end": "09:00"})) is None


# --- quiet hours --------------------------------------------------------------------------------------

NIGHT = parse_quiet_hours({"start": "21:00", "end": "08:00"})


@pytest.mark.parametrize(
    ("now", "zone", "until"),
    [
        # 07:00 in Berlin (summer, UTC+2): inside; resumes at 08:00 there
        (datetime(2027, 6, 11, 5, 0, tzinfo=UTC), "Europe/Berlin", datetime(2027, 6, 11, 6, 0, tzinfo=UTC)),
        # 23:30 in Berlin: inside a window that wraps midnight; resumes the next morning
        (datetime(2027, 6, 10, 21, 30, tzinfo=UTC), "Europe/Berlin", datetime(2027, 6, 11, 6, 0, tzinfo=UTC)),
        # 14:00 in Tokyo: outside
        (datetime(2027, 6, 11, 5, 0, tzinfo=UTC), "Asia/Tokyo", None),
        # the end itself is outside ([start, end))
        (datetime(2027, 6, 11, 6, 0, tzinfo=UTC), "Europe/Berlin", None),
        # no zone: UTC
        (datetime(2027, 6, 11, 7, 59, tzinfo=UTC), None, datetime(2027, 6, 11, 8, 0, tzinfo=UTC)),
        # an unknown zone (checked when accepted) does not stop a call
        (datetime(2027, 6, 11, 5, 0, tzinfo=UTC), "Mars/Olympus_Mons", None),
    ],
)
def test_quiet_hours_end_in_the_recipients_zone(
    now: datetime, zone: str | None, until: datetime | None
) -> None:
    assert quiet_until(NIGHT, zone, now) == until


def test_deferral_reads_the_recipients_zone_else_the_alerts() -> None:
    policy = DeliveryPolicy()
    options = stored(quiet_hours={"start": "21:00", "end": "08:00"}, timezone="Europe/Berlin")
    morning = datetime(2027, 6, 11, 5, 0, tzinfo=UTC)  # 07:00 in Berlin, 14:00 in Tokyo
    assert policy.deferral(options, None, morning) == datetime(2027, 6, 11, 6, 0, tzinfo=UTC)
    assert policy.deferral(options, "Asia/Tokyo", morning) is None
    assert policy.deferral(stored(), "Europe/Berlin", morning) is None  # no quiet hours


# --- after an outcome ------------------------------------------------------------------------------

RETRY = stored(retry_on=["busy", "no_answer"], retry_backoff_s=60, snooze_s=600)


def after(state: DeliveryState, options: StoredOptions = RETRY, **facts: Any) -> FollowUp:
    given: dict[str, Any] = {"attempt": 1, "max_attempts": 3, "alert_active": True, "now": NOW, **facts}
    return DeliveryPolicy(MaxRandom()).after_final(state, options, **given)


def test_an_outcome_in_retry_on_is_retried_while_attempts_remain() -> None:
    assert after(DeliveryState.BUSY) == FollowUp(retry_at=NOW + timedelta(seconds=60))
    assert after(DeliveryState.NO_ANSWER, attempt=2) == FollowUp(retry_at=NOW + timedelta(seconds=120))
    assert after(DeliveryState.BUSY, attempt=3) == FollowUp()  # the last attempt: busy it stays
    assert after(DeliveryState.FAILED) == FollowUp()  # not in retry_on
    assert after(DeliveryState.HEARD) == FollowUp()
    assert after(DeliveryState.BUSY, stored(retry_on=[])) == FollowUp()  # nothing retried unless asked


def test_a_machine_is_retried_when_asked_and_a_voicemail_or_a_fax_is_final() -> None:
    # the defaults: whoever or whatever answered, the outcome stands
    for state in (DeliveryState.MACHINE, DeliveryState.VOICEMAIL_LEFT, DeliveryState.FAX):
        assert after(state) == FollowUp()
    machine = stored(retry_on=["machine"], retry_backoff_s=60)
    assert after(DeliveryState.MACHINE, machine) == FollowUp(retry_at=NOW + timedelta(seconds=60))
    assert after(DeliveryState.MACHINE, machine, attempt=2) == FollowUp(retry_at=NOW + timedelta(seconds=120))
    assert after(DeliveryState.MACHINE, machine, attempt=3) == FollowUp()  # no attempts left
    assert after(DeliveryState.VOICEMAIL_LEFT, machine) == FollowUp()  # a message was left: not asked
    # an alert that must reach a person may call again after leaving a voicemail
    person = stored(retry_on=["voicemail_left"], retry_backoff_s=60)
    assert after(DeliveryState.VOICEMAIL_LEFT, person) == FollowUp(retry_at=NOW + timedelta(seconds=60))
    # a fax is never retried: no request may ask for it, and a row that says so reads as the default
    assert after(DeliveryState.FAX, load(StoredOptions, {"retry_on": ["fax"]})) == FollowUp()


def test_outcome_retries_double_with_a_little_jitter_and_a_cap() -> None:
    early = DeliveryPolicy(MinRandom()).after_final(
        DeliveryState.BUSY, RETRY, attempt=2, max_attempts=3, alert_active=True, now=NOW
    )
    assert early == FollowUp(retry_at=NOW + timedelta(seconds=108))  # 120 s, drawn up to a tenth early
    slow = stored(retry_on=["busy"], retry_backoff_s=86_400)
    capped = after(DeliveryState.BUSY, slow, attempt=9, max_attempts=10)
    assert capped == FollowUp(retry_at=NOW + timedelta(seconds=OUTCOME_BACKOFF_CAP_S))


def test_a_snooze_is_a_new_delivery_snooze_s_later() -> None:
    assert after(DeliveryState.SNOOZED) == FollowUp(again_at=NOW + timedelta(seconds=600))
    default = stored()  # snooze_s not given
    assert after(DeliveryState.SNOOZED, default) == FollowUp(again_at=NOW + timedelta(seconds=900))


def test_a_canceled_alert_calls_nobody_again() -> None:
    assert after(DeliveryState.BUSY, alert_active=False) == FollowUp()
    assert after(DeliveryState.SNOOZED, alert_active=False) == FollowUp()


# --- refused dials -----------------------------------------------------------------------------------


def test_refused_dials_back_off_with_a_cap_then_give_up_after_an_hour() -> None:
    slowest, fastest = DeliveryPolicy(MaxRandom()), DeliveryPolicy(MinRandom())
    first = NOW
    waits = [(slowest.after_refusal(n, first, NOW) or NOW) - NOW for n in range(1, 9)]
    assert [w.total_seconds() for w in waits] == [2, 4, 8, 16, 32, 60, 60, 60]
    assert [(fastest.after_refusal(n, first, NOW) or NOW) - NOW for n in (1, 6)] == [
        timedelta(seconds=1),
        timedelta(seconds=30),
    ]
    # the wait does not depend on how long ago the refusals began, only on how many there were
    late = first + timedelta(minutes=30)
    assert slowest.after_refusal(3, first, late) == late + timedelta(seconds=8)
    # a retry that would fall after the hour is not made: the delivery fails
    edge = first + REFUSALS_GIVE_UP_AFTER - timedelta(seconds=REFUSAL_BACKOFF.cap_s)
    assert slowest.after_refusal(70, first, edge) == first + REFUSALS_GIVE_UP_AFTER
    assert slowest.after_refusal(70, first, edge + timedelta(seconds=1)) is None


def test_a_delivery_waiting_for_its_retry_is_moved_by_nothing_of_that_attempt() -> None:
    """Requeued (pending) within its attempt: that attempt is over. A late status of its call (`completed`
    after the media stream reported `machine`) must not turn the waiting retry into a final outcome; the
    next attempt's call still moves it."""
    pending, hung_up = DeliveryState.PENDING, DeliveryState.HUNG_UP_EARLY
    assert not moves_forward(pending, 1, hung_up, 1)
    assert not moves_forward(pending, 1, DeliveryState.IN_PROGRESS, 1)
    assert moves_forward(pending, 1, DeliveryState.RINGING, 2)
    assert moves_forward(DeliveryState.RINGING, 1, hung_up, 1)
    assert not moves_forward(DeliveryState.HEARD, 1, hung_up, 2)  # final is final
