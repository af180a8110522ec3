"""What happens next to a delivery, decided without I/O: retry after an outcome, back off after a refused
dial, snooze, wait out quiet hours. The one backoff rule (`Backoff`) is also the webhook sender's and
`/outbound-call`'s.

The store keeps the rows; this module decides (design.md: imports flow downward, so the store never imports
it). The decisions reach the store in two ways:

* while the store holds a delivery's row locked (a claim inside quiet hours, a final outcome that may be
  retried or snoozed), it asks `DeliveryPolicy`, which it was built with, through the `Rules` protocol of
  store/rules.py. Deciding outside would cost a second transaction per claim batch or per final
  outcome on the hot path, and the facts (the attempt count, the alert's options and status) are those of
  the locked row, not a copy read earlier that another process may have moved on;
* a refused dial is decided in the dispatcher (`DeliveryPolicy.after_refusal`), which hands the store the
  decided value: retry at T, or fail.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from announcer.deliveries.quiet_hours import QuietHours, QuietHoursError, parse_quiet_hours
from announcer.options import StoredOptions
from announcer.store.models import DeliveryState
from announcer.store.rules import FollowUp

# How much of each wait is drawn at random (AWS Architecture Blog, "Exponential Backoff And Jitter"):
# "full jitter" draws from [0, ceiling], "equal jitter" from [ceiling / 2, ceiling].
FULL_JITTER = 1.0
EQUAL_JITTER = 0.5
NO_JITTER = 0.0


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter and a cap: the wait before retry `n` (1 for the first retry) is
    drawn from [ceiling * (1 - jitter), ceiling], ceiling = min(cap_s, base_s * 2**(n - 1))."""

    base_s: float
    cap_s: float
    jitter: float = FULL_JITTER

    def __post_init__(self) -> None:
        if self.base_s < 0 or self.cap_s < 0 or not 0.0 <= self.jitter <= 1.0:
            raise ValueError("base_s and cap_s must be >= 0 and jitter within [0, 1]")

    def ceiling_s(self, retry: int) -> float:
        # The exponent is clamped so a large retry number cannot overflow the float.
        return min(self.cap_s, self.base_s * 2.0 ** min(max(retry, 1) - 1, 64))

    def delay_s(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry `retry`; the jitter drawn from `rng` (the `random` module's if None)."""
        ceiling = self.ceiling_s(retry)
        if not self.jitter:
            return ceiling
        draw = rng.uniform if rng is not None else random.uniform
        return draw(ceiling * (1.0 - self.jitter), ceiling)


# Twilio's 429 / 20429, its 5xx and network errors: not the person's doing, so no attempt is spent, but a
# refusal that persists (an account over its limit, an outage) must neither hammer Twilio every 2 s nor
# hold the delivery forever. Equal jitter: many deliveries refused in the same second (the account's rate)
# come back spread out, yet none sooner than half the ceiling.
REFUSAL_BACKOFF = Backoff(base_s=2.0, cap_s=60.0, jitter=EQUAL_JITTER)
REFUSALS_GIVE_UP_AFTER = timedelta(hours=1)

# After an outcome the alert retries (`retry_on`): `retry_backoff_s` doubling with each attempt, drawn up to
# a tenth early, so the retries of many recipients busy at once do not all fall due in the same instant.
# Capped at a day (the largest `retry_backoff_s` accepted) so the tenth attempt is not 256 days away.
OUTCOME_JITTER = 0.1
OUTCOME_BACKOFF_CAP_S = 86_400.0


def quiet_hours_of(options: StoredOptions) -> QuietHours | None:
    """An alert's quiet hours (a schedule's fire's), if any. Checked when the schedule was accepted; ones
    that no longer read (start and end the same) mean none rather than stopping a call."""
    if options.quiet_hours is None:
        return None
    try:
        return parse_quiet_hours(options.quiet_hours.model_dump())
    except QuietHoursError:
        return None


def quiet_until(quiet: QuietHours | None, zone: str | None, now: datetime) -> datetime | None:
    """When the quiet hours `now` falls in end, in the zone `zone` (UTC if None); None when calling is
    allowed now (no quiet hours, outside them, or an unknown zone: it was checked when accepted)."""
    if quiet is None:
        return None
    try:
        local = now.astimezone(ZoneInfo(zone or "UTC"))
    except (ZoneInfoNotFoundError, ValueError):
        return None
    if not quiet.contains(local.time()):
        return None
    return quiet.window_end(local).astimezone(UTC)


class DeliveryPolicy:
    """The delivery rules the store and the dispatcher ask (see the module docstring). `rng` draws the
    jitter (seeded in tests)."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()

    def deferral(self, options: StoredOptions, timezone: str | None, now: datetime) -> datetime | None:
        """Quiet hours: when a delivery due `now` may be dialed, if not now. Read in the recipient's zone
        (`timezone`), else the alert's (a schedule's)."""
        return quiet_until(quiet_hours_of(options), timezone or options.timezone, now)

    def after_final(
        self,
        state: DeliveryState,
        options: StoredOptions,
        *,
        attempt: int,
        max_attempts: int,
        alert_active: bool,
        now: datetime,
    ) -> FollowUp:
        """A delivery's attempt `attempt` just ended in `state`: retried (an outcome in `retry_on`, attempts
        left), snoozed (a new delivery `snooze_s` later), or final as it is. A canceled or completed alert
        calls nobody again."""
        if not alert_active:
            # Canceled (or completed) while this call went on: nobody is called again. A snooze's new
            # delivery would never be claimed (claims take active alerts' only) yet always be due: the
            # dispatcher's wait for it came to nothing and it polled the table without a pause.
            return FollowUp()
        if state.value in options.retry_on and attempt < max_attempts:
            backoff = Backoff(options.retry_backoff_s, OUTCOME_BACKOFF_CAP_S, jitter=OUTCOME_JITTER)
            return FollowUp(retry_at=now + timedelta(seconds=backoff.delay_s(attempt, self._rng)))
        if state == DeliveryState.SNOOZED:
            return FollowUp(again_at=now + timedelta(seconds=options.snooze_s))
        return FollowUp()

    def after_refusal(self, refusals: int, first_refused_at: datetime, now: datetime) -> datetime | None:
        """Twilio refused to place a call with a retryable error, the `refusals`-th time in a row for this
        attempt (the first of them claimed at `first_refused_at`): when to dial again, or None to give up
        (refused for REFUSALS_GIVE_UP_AFTER: the delivery fails with the last code)."""
        retry_at = now + timedelta(seconds=REFUSAL_BACKOFF.delay_s(refusals, self._rng))
        if retry_at - first_refused_at > REFUSALS_GIVE_UP_AFTER:
            return None
        return retry_at
