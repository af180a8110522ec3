"""The delivery state machine (design.md): which moves are forward, and what a call's status means for it.

A delivery's position is (attempt, rank of state). A move is allowed only forward: a late, duplicated
or out-of-order status callback, or one for an earlier attempt, changes nothing. A retry is forward too:
it starts the next attempt.
"""

from __future__ import annotations

from announcer.store.models import FINAL_DELIVERY_STATES, CallStatus, DeliveryState

_RANK = {
    DeliveryState.PENDING: 0,
    DeliveryState.QUEUED: 1,
    DeliveryState.DIALING: 2,
    DeliveryState.RINGING: 3,
    DeliveryState.IN_PROGRESS: 4,
}
FINAL_RANK = 5


def rank(state: DeliveryState) -> int:
    return _RANK.get(state, FINAL_RANK)


def is_final(state: DeliveryState | str) -> bool:
    return state in FINAL_DELIVERY_STATES


def moves_forward(current: DeliveryState, current_attempt: int, new: DeliveryState, attempt: int) -> bool:
    if attempt != current_attempt:
        return attempt > current_attempt and not is_final(current)
    if current == DeliveryState.PENDING:
        # Pending again within its attempt: that attempt's outcome was decided and a retry waits (a late
        # `completed` of its call must not turn a retried `machine` into a final `hung_up_early`).
        return False
    return not is_final(current) and rank(new) > rank(current)


def forward_from(new: DeliveryState) -> list[DeliveryState]:
    """The states `moves_forward` lets a delivery leave for `new` within the same attempt."""
    return [
        state
        for state in DeliveryState
        if state != DeliveryState.PENDING and not is_final(state) and rank(new) > rank(state)
    ]


def twilio_says_answered(duration_s: int | None, answered_by: str | None) -> bool:
    """Whether Twilio's own facts of an ended call say it was answered: a talk time (CallDuration counts
    from the answer) or a machine detection verdict (given only to an answered call). What settles a call
    whose `in-progress` callback and media stream went to a process that died: our row never heard of the
    answer, Twilio did."""
    return bool(duration_s) or bool(answered_by)


def state_for_call_status(
    status: CallStatus, *, answered: bool, answered_by: str | None = None
) -> DeliveryState | None:
    """What a Twilio call status means for its delivery; None when it means nothing new. `answered_by`
    (Twilio's machine detection verdict) names a machine or a fax that the media session did not get to
    report (its process died): the outcome its own rules give them (telephony/callflow.py, `_hung_up`)."""
    match status:
        case CallStatus.QUEUED | CallStatus.INITIATED:
            return None  # still dialing
        case CallStatus.RINGING:
            return DeliveryState.RINGING
        case CallStatus.IN_PROGRESS:
            return DeliveryState.IN_PROGRESS
        case CallStatus.BUSY:
            return DeliveryState.BUSY
        case CallStatus.NO_ANSWER:
            return DeliveryState.NO_ANSWER
        case CallStatus.CANCELED:
            return DeliveryState.CANCELED
        case CallStatus.FAILED:
            return DeliveryState.FAILED  # a SIP 480 "failed" arrives as no-answer (telephony/status.py)
        case CallStatus.COMPLETED:
            # The media stream decides heard/confirmed/opted out before the call completes; a call that
            # completes without one was answered and left (hung up early) or never answered at all.
            if answered_by == "fax":
                return DeliveryState.FAX
            if answered_by is not None and answered_by.startswith("machine"):
                return DeliveryState.MACHINE  # a machine, and no message left that we know of
            return DeliveryState.HUNG_UP_EARLY if answered else DeliveryState.NO_ANSWER
