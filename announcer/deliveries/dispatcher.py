"""The dispatcher: places the calls of due deliveries, at most `TWILIO_CPS` a second and at most
`MAX_CONCURRENT_CALLS` at once, and turns what the calls report into delivery transitions.

Each call goes: the claimer takes a batch of due deliveries while slots are free (counted in the
database: every process shares the account's limit) in one transaction (`dialing`, a lease, each
attempt's call row and stream token), keeping about a second of calls ready -> the pacer takes them
one per token of the rate bucket -> speech starts synthesizing into the cache while the phone rings
-> `calls.create` with inline TwiML `<Connect><Stream>` carrying the token -> record the SID. Twilio's
429/20429, 5xx and network errors put the delivery back without spending an attempt, after a wait that
grows with each refusal in a row (deliveries/policy.py), until an hour of refusals fails it with the last
code; any other refusal fails it with Twilio's code at once. A canceled alert's claims still queued are
withdrawn.

Each dial checks the number against the destination policy again, though it passed when planned: a
policy narrowed since (a restart with narrower settings, say after abuse was found) holds for the
retries and the queue of what was accepted before, not only for new alerts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import timedelta

from announcer import logs
from announcer.deliveries.admission import Admission
from announcer.deliveries.dial_rate import AccountRate
from announcer.deliveries.policy import REFUSALS_GIVE_UP_AFTER, DeliveryPolicy
from announcer.messages.destinations import DestinationPolicy
from announcer.messages.phones import BadNumber
from announcer.speech.speaker import Speaker
from announcer.store.deliveries import Claim, DeliveryStore, ExpiredClaim, Move
from announcer.store.delivery_states import state_for_call_status, twilio_says_answered
from announcer.store.models import TERMINAL_STATUSES, CallOutcome, CallStatus, DeliveryState, utcnow
from announcer.telephony import twiml
from announcer.telephony.calls import MachineDetection, TwilioCalls, TwilioError
from announcer.telephony.status import StatusReport

log = logging.getLogger(__name__)

RECONCILE_EVERY_S = 5.0
CLAIM_AHEAD_S = 1.0  # calls kept claimed ahead of the pacer, in seconds of the rate
# A claim queued longer than this share of its lease is not dialed but released: once its lease ends
# another process reconciles it (no SID: asks Twilio, finds no call yet, dials it again) while this
# process's create may still be on its way. The lease is at least twice the create's timeout.
STALE_CLAIM_SHARE = 0.5
MAX_BATCH = 100
IDLE_POLL_S = 5.0  # re-check the table this often even without a wake-up (another process' work)
RING_TIMEOUT_S = 30
# Paced a hair under the account's rate: Twilio counts requests as they arrive, and one held up on its
# way out (a busy event loop) arrives close behind the next; 1 % leaves room for 40 ms of that at 50/s.
RATE_MARGIN = 0.01
TIMER_SLACK_S = 0.002
WINDOW_GUARD_S = 0.01  # and for the sliding window (with the margin, 50 dials span 1.01 s at 50/s)

_OUTCOME_STATES = {
    CallOutcome.HEARD: DeliveryState.HEARD,
    CallOutcome.CONFIRMED: DeliveryState.CONFIRMED,
    CallOutcome.OPTED_OUT: DeliveryState.OPTED_OUT,
    CallOutcome.DECLINED: DeliveryState.DECLINED,
    CallOutcome.SNOOZED: DeliveryState.SNOOZED,
    CallOutcome.HUNG_UP_EARLY: DeliveryState.HUNG_UP_EARLY,
    CallOutcome.SAID_BY_TWILIO: DeliveryState.HEARD,
    CallOutcome.FAILED: DeliveryState.FAILED,
    CallOutcome.AGENT: DeliveryState.AGENT,
    CallOutcome.VOICEMAIL_LEFT: DeliveryState.VOICEMAIL_LEFT,
    CallOutcome.MACHINE: DeliveryState.MACHINE,
    CallOutcome.FAX: DeliveryState.FAX,
}


def voicemail_to_prefetch(claim: Claim) -> str | None:
    """The voicemail to synthesize while the phone rings, beside the message: only a template's own voicemail
    (without one a machine is told the message, made already) that a machine may be told (detection on, a
    message left on a machine). Its cost is a second synthesis per distinct text whoever answers, most
    often a person: paid so that a voicemail starts at the beep rather than a TTS round trip after it. The
    cache makes a text shared by many recipients cost one synthesis."""
    options = claim.options
    if claim.voicemail_text is None or not options.machine_detection or options.on_machine != "leave_message":
        return None
    return claim.voicemail_text


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved up. One consumer (the dispatcher loop)."""

    def __init__(self, rate: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    def wait_s(self) -> float:
        """How long until a token is there (0: now)."""
        self._refill()
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate

    def take(self) -> None:
        self._refill()
        self._tokens -= 1


class Dispatcher:
    """Started and stopped by the app's lifecycle."""

    def __init__(
        self,
        store: DeliveryStore,
        twilio: TwilioCalls,
        speaker: Speaker,
        *,
        cps: float,
        max_concurrent: int,
        from_number: str,
        media_url: str,
        status_url: str,
        on_move: Callable[[Move], None] | None = None,
        lease: timedelta = timedelta(seconds=60),
        destinations: DestinationPolicy | None = None,
        policy: DeliveryPolicy | None = None,
        amd: MachineDetection | None = None,
        amd_url: str | None = None,
        admission: Admission | None = None,
        account_rate: AccountRate | None = None,
    ) -> None:
        self._admission = admission  # deliveries/admission.py: the rate this process can serve
        self._destinations = destinations
        # PostgreSQL: the account's rate across every process (dial_rate.py), on top of this one's bucket
        self._account_rate = account_rate
        self._policy = policy if policy is not None else DeliveryPolicy()
        self._lease = lease  # a claim must have its SID by then, or it is reconciled before any redial
        self._store = store
        self._twilio = twilio
        self._speaker = speaker
        # A timer fires up to a millisecond or two late (libuv counts in whole milliseconds): the bucket
        # saves that much beyond one token, so the next call makes up for it and the average holds.
        rate = cps * (1 - RATE_MARGIN)
        self._bucket = TokenBucket(rate, burst=1 + TIMER_SLACK_S * rate)
        self._max_concurrent = max_concurrent
        self._from = from_number
        self._media_url = media_url
        self._status_url = status_url
        # Machine detection on every call whose alert does not turn it off; its verdicts go to `amd_url`.
        self._amd = amd if amd_url is not None else None
        self._amd_url = amd_url
        self._on_move = on_move
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._claimer: asyncio.Task[None] | None = None
        self._ready: deque[Claim] = deque()  # claimed, waiting for a token of the bucket
        self._ready_event = asyncio.Event()
        self._sent: deque[float] = deque(maxlen=max(1, int(cps)))  # when the last dials left
        self._reconciler: asyncio.Task[None] | None = None
        self._dials: set[asyncio.Task[None]] = set()
        self.placed = 0  # calls Twilio accepted (a gauge)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="dispatcher")
        self._claimer = asyncio.create_task(self._claim_forever(), name="dispatcher-claim")
        self._reconciler = asyncio.create_task(self._reconcile_forever(), name="dispatcher-reconcile")

    async def close(self) -> None:
        # Stop between steps, not inside one: a task cancelled mid-query leaves the database driver's
        # thread answering a loop that is about to close.
        self._stopping.set()
        self.wake()
        self._ready_event.set()
        tasks = [t for t in (self._task, self._claimer, self._reconciler) if t is not None]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=5)
            for task in late:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        # A create request in flight finishes (its SID must be recorded, or the claim is reconciled later).
        if self._dials:
            await asyncio.wait(self._dials, timeout=10)
        # Claimed but not dialed: due again at once (no call exists), not after the lease.
        while self._ready:
            await self._release_unsent(self._ready.popleft())

    async def _release_unsent(self, claim: Claim) -> None:
        """A claim this process will not dial: due again at once (no call exists), not after its lease."""
        with contextlib.suppress(Exception):
            await self._store.release(
                ExpiredClaim(claim.delivery_id, claim.attempt, claim.call_id, claim.phone, utcnow(), None)
            )

    def withdraw(self, alert_id: str) -> list[Claim]:
        """Take the claims of `alert_id` that are not dialed yet out of the queue (the alert is being
        canceled: they are canceled with it, never placed)."""
        taken = [c for c in self._ready if c.alert_id == alert_id]
        if taken:
            self._ready = deque(c for c in self._ready if c.alert_id != alert_id)
        return taken

    def give_back(self, claims: list[Claim]) -> None:
        """`withdraw` undone (the cancel did not happen): dialed first, as they would have been."""
        self._ready.extendleft(reversed(claims))
        self._ready_event.set()

    def wake(self) -> None:
        """New work, or a slot came free."""
        self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        self._wake.clear()

    # Claiming and dialing are two loops joined by a short queue: a claim transaction waits its turn
    # for the database behind the calls' own writes, and the rate must not wait with it. The claimer
    # keeps about CLAIM_AHEAD_S of calls ready; the pacer takes them at the bucket's rate.

    def _ahead(self) -> int:
        # At the rate this process actually dials: below TWILIO_CPS when admission control holds it back.
        rate = self._bucket.rate
        if self._admission is not None:
            rate = min(rate, self._admission.rate)
        return max(1, min(int(rate * CLAIM_AHEAD_S), MAX_BATCH))

    async def _claim_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                await self._claim_step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatcher claim failed; retrying shortly")
                await self._sleep(1.0)

    async def _claim_step(self) -> None:
        want = self._ahead() - len(self._ready)
        if want * 2 < self._ahead():  # more than half still queued: wait until the pacer drains it
            await self._sleep(IDLE_POLL_S)
            return
        # Claimed calls hold a slot from the claim on (their call rows are counted), queued ones included.
        free = self._max_concurrent - await self._store.in_flight()
        if free <= 0:
            await self._sleep(IDLE_POLL_S)  # a terminal status or an ended stream wakes us
            return
        claims = await self._store.claim(limit=min(want, free), lease=self._lease, from_number=self._from)
        if not claims:
            due = await self._store.next_due()
            delay = IDLE_POLL_S if due is None else (due - utcnow()).total_seconds()
            if delay > 0:
                await self._sleep(min(delay, IDLE_POLL_S))
            return
        self._ready.extend(claims)
        self._ready_event.set()

    def _window_wait_s(self) -> float:
        """How long until a dial now keeps every window of 1 s + WINDOW_GUARD_S to `TWILIO_CPS` dials:
        the bucket's catch-up must not bunch calls into one second as Twilio counts them."""
        if len(self._sent) < (self._sent.maxlen or 0):
            return 0.0
        return self._sent[0] + 1.0 + WINDOW_GUARD_S - time.monotonic()

    async def _run(self) -> None:
        """The pacer: one dial per token of the rate bucket, from the claimed queue."""
        while not self._stopping.is_set():
            if not self._ready:
                self._ready_event.clear()
                self.wake()
                await self._ready_event.wait()
                continue
            if not self._twilio.loaded:
                # The SDK loads in the background after start (app.py, _warm_up): paced from when it is
                # there, or the first call would reach Twilio late and close behind the second.
                await self._twilio.warm()
                continue
            wait = max(self._bucket.wait_s(), self._window_wait_s())
            if wait > 0:
                await asyncio.sleep(wait)  # the rate limit itself: nothing to wait on but time
                continue
            if self._admission is not None:
                # Admission control: also no faster than this process can serve (its headroom).
                await self._admission.admit()
                if not self._ready or self._stopping.is_set():
                    continue
            # A slot of the account's rate, asked for only now that a claim is ready. Not dialed: stopping,
            # no slot (the database failed), or the claim withdrawn meanwhile.
            rate = self._account_rate
            if rate is not None and (not await rate.wait_turn(self._stopping) or not self._ready):
                continue
            claim = self._ready.popleft()
            if len(self._ready) * 2 < self._ahead():
                self.wake()  # the claimer tops the queue up while these are dialed
            if time.monotonic() - claim.claimed_mono > self._lease.total_seconds() * STALE_CLAIM_SHARE:
                # Waited too long (the account's rate shared by many processes, a held-back rate): too
                # close to its lease's end to be dialed safely. Due again at once, claimed afresh.
                log.info("claim for delivery %s waited too long to be dialed; released", claim.delivery_id)
                await self._release_unsent(claim)
                continue
            self._sent.append(time.monotonic())
            self._bucket.take()
            task = asyncio.create_task(self._dial(claim), name=f"dial-{claim.delivery_id}")
            self._dials.add(task)
            task.add_done_callback(self._dials.discard)

    async def _dial(self, claim: Claim) -> None:
        logs.bind(delivery_id=claim.delivery_id, phone=claim.phone)  # this task's records name the call
        if self._destinations is not None:
            try:
                self._destinations.check(claim.phone)
            except BadNumber as err:
                log.warning(
                    "delivery %s not dialed: the destination policy refuses it: %s", claim.delivery_id, err
                )
                reason = f"refused by the destination policy: {err}"
                self._moved(await self._store.dial_refused(claim, code=None, reason=reason, retry_at=None))
                self.wake()
                return
        self._speaker.prefetch(claim.text)  # synthesized while the phone rings
        if (voicemail := voicemail_to_prefetch(claim)) is not None:
            self._speaker.prefetch(voicemail)
        try:
            info = await self._twilio.create(
                to=claim.phone,
                from_=self._from,
                twiml=twiml.connect_stream(self._media_url, {"token": claim.token}),
                status_callback=f"{self._status_url}?call={claim.call_id}",
                # `initiated` tells nothing the create answer did not: one webhook fewer per call.
                status_callback_event=["ringing", "answered", "completed"],
                timeout=RING_TIMEOUT_S,
                **self._machine_detection(claim),
            )
        except TwilioError as err:
            log.warning("call for delivery %s refused: %s", claim.delivery_id, err)
            self._moved(await self._refused(claim, err))
            self.wake()
            return
        self.placed += 1
        logs.bind(call_sid=info.sid)
        if not await self._store.dialed(claim, info.sid):
            # The alert was canceled while Twilio was placing this call: stop it ringing.
            try:
                await self._twilio.cancel(info.sid)
            except TwilioError as err:
                log.warning("could not cancel call %s of a canceled alert: %s", info.sid, err)

    def _machine_detection(self, claim: Claim) -> dict[str, object]:
        """The create request's machine detection parameters: none when the alert turned it off. The
        verdict's URL names the call row, as the status callback's does (signed like it)."""
        if self._amd is None or not claim.options.machine_detection:
            return {}
        return self._amd.params(f"{self._amd_url}?call={claim.call_id}")

    async def _refused(self, claim: Claim, err: TwilioError) -> Move | None:
        """Twilio refused to place the call: dialed again later (a retryable refusal, the policy's backoff
        over the refusals of this attempt so far), or failed with Twilio's code."""
        if not err.retryable:
            return await self._store.dial_refused(claim, code=err.code, reason=err.message, retry_at=None)
        refusals = await self._store.refusals(claim)
        retry_at = self._policy.after_refusal(refusals.count, refusals.since, utcnow())
        reason = err.message
        if retry_at is None:
            hours = REFUSALS_GIVE_UP_AFTER.total_seconds() / 3600
            reason = f"Twilio kept refusing the call for {hours:g} h ({refusals.count} tries), last: {reason}"
            log.warning("delivery %s failed: %s", claim.delivery_id, reason)
        return await self._store.dial_refused(claim, code=err.code, reason=reason, retry_at=retry_at)

    # --- claims without a SID (a crash between claim and answer, or a lost answer) ---------------

    async def _reconcile_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                for claim in await self._store.expired_claims():
                    await self._reconcile(claim)
                for call_id, sid, answered in await self._store.stale_calls(self._lease):
                    await self._check_call(call_id, sid, answered)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reconciling expired claims failed; trying again")
            with contextlib.suppress(TimeoutError):  # a periodic sweep, until the service stops
                async with asyncio.timeout(RECONCILE_EVERY_S):
                    await self._stopping.wait()

    async def _reconcile(self, claim: ExpiredClaim) -> None:
        """Never call a person twice for one attempt: find the attempt's call before releasing it."""
        sid = claim.call_sid
        if sid is None:
            # The status callback may have been lost too: ask Twilio for calls to that number since the
            # claim. A call found there is taken as this attempt's (an alert dials a number once at a time).
            try:
                calls = await self._twilio.list_to(claim.phone, claim.claimed_at - timedelta(seconds=5))
            except TwilioError as err:
                log.warning("cannot reconcile delivery %s yet: %s", claim.delivery_id, err)
                return
            known = {c.sid for c in calls}
            sid = next(iter(sorted(known)), None) if known else None
        if sid is not None:
            log.info(
                "delivery %s attempt %s: its call %s exists; kept", claim.delivery_id, claim.attempt, sid
            )
            await self._store.adopt_sid(claim, sid)
        else:
            log.info("delivery %s attempt %s was never placed; due again", claim.delivery_id, claim.attempt)
            await self._store.release(claim)
            self.wake()

    async def _check_call(self, call_id: int, sid: str, answered: bool) -> None:
        """Ask Twilio how a call we stopped hearing about ended (the callbacks went to a dead process)."""
        try:
            info = await self._twilio.fetch(sid)
        except TwilioError as err:
            log.warning("cannot check call %s yet: %s", sid, err)
            return
        try:
            status = CallStatus(info.status)
        except ValueError:
            return
        if status not in TERMINAL_STATUSES:
            await self._store.touch(call_id)
            return
        await self._store.settle_call(call_id, status)
        self.wake()  # its slot is free
        # Our row may not know of the answer (its `in-progress` went to the process that died); Twilio does.
        answered = answered or twilio_says_answered(info.duration_s, info.answered_by)
        new = state_for_call_status(status, answered=answered, answered_by=info.answered_by)
        if new is not None:
            self._moved(await self._store.on_call_state(call_id, new, source="reconciled with Twilio"))

    # --- what calls report ------------------------------------------------------------------------

    async def on_status(self, report: StatusReport) -> None:
        """A status callback moved an attempt's call: move its delivery (if the call carries one)."""
        if report.status in TERMINAL_STATUSES:
            self.wake()  # its slot is free
        new = state_for_call_status(report.status, answered=report.answered, answered_by=report.answered_by)
        if new is None:
            return
        code = report.error_code or (report.sip_code if new == DeliveryState.FAILED else None)
        move = await self._store.on_call_state(report.call_id, new, code=code, source="status callback")
        self._moved(move)

    async def on_call_outcome(self, call_id: int, outcome: CallOutcome, reason: str) -> None:
        new = _OUTCOME_STATES.get(outcome)
        if new is not None:
            self._moved(await self._store.on_call_state(call_id, new, reason=reason, source="media stream"))

    def _moved(self, move: Move | None) -> None:
        if move is None:
            return
        if move.final or move.retry_at is not None:
            self.wake()  # a slot came free
        if self._on_move is not None:
            self._on_move(move)
