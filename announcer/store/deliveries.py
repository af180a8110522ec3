"""Alerts and their deliveries in the database: one store for the rest of the service, written in parts by
what each stores (store/delivery_rows.py has what they share):

* alerts.py: acceptance, the views the API shows, cancel, the reads about the person a call is for;
* claims.py: what is due, claims, dialed calls, refused dials, the slots in use;
* reconcile.py: claims whose lease ran out without a SID, calls nobody has heard about for a while;
* transitions.py: what the calls report, a final outcome, and what follows it (retry, snooze, completion);
* opt_outs.py: the numbers that pressed 9.

What follows an outcome, and whether a due delivery waits out quiet hours, is the delivery policy's to say
(deliveries/policy.py, behind store/rules.py): the store is built with it.
"""

from __future__ import annotations

from announcer.store.alerts import (
    AlertFinished,
    AlertRecords,
    AlertView,
    DeliveryView,
    IdempotencyConflict,
    NewDelivery,
)
from announcer.store.claims import Claim, ClaimRecords, Refusals
from announcer.store.opt_outs import OptOutRecords
from announcer.store.reconcile import ExpiredClaim, ReconcileRecords
from announcer.store.transitions import Move, TransitionRecords

__all__ = [
    "AlertFinished",
    "AlertView",
    "Claim",
    "DeliveryStore",
    "DeliveryView",
    "ExpiredClaim",
    "IdempotencyConflict",
    "Move",
    "NewDelivery",
    "Refusals",
]


class DeliveryStore(AlertRecords, ClaimRecords, ReconcileRecords, TransitionRecords, OptOutRecords):
    """Every method is one transaction, or one operation of a journal batch (see each part)."""
