"""What the delivery store asks the delivery policy while it holds a delivery's row, and the answers it
understands. The policy itself is deliveries/policy.py (`DeliveryPolicy`); the store is built with one and
cannot import it (design.md: imports flow downward), hence this protocol. Why the store asks rather than
being told: see that module's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from announcer.options import StoredOptions
from announcer.store.models import DeliveryState


@dataclass(frozen=True)
class FollowUp:
    """What follows a final outcome. Neither: the outcome stands."""

    retry_at: datetime | None = None  # not final after all: the next attempt is due then
    again_at: datetime | None = None  # final; a new delivery of the same message is due then (a snooze)


class Rules(Protocol):
    def deferral(self, options: StoredOptions, timezone: str | None, now: datetime) -> datetime | None:
        """When a delivery due now may be dialed instead (quiet hours); None: now."""
        ...

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
        """What follows attempt `attempt` of a delivery ending in `state`."""
        ...
