"""The alert service: every way an alert comes to be, and its cancellation, in one place.

An alert is accepted from three places, the same way each time (checked, rendered in the render thread,
hashed for idempotency, stored with its deliveries before anyone is answered, the dispatcher woken):

* `accept`: `POST /v1/alerts` (and `announcer send`, through it);
* `fire`: a schedule's fire (the scheduler calls it, and `presynthesize` ahead of it);
* `call_out`: `POST /outbound-call`, an alert of one delivery whose agent speaks from the start.

`cancel` withdraws the alert's claims from the dispatcher, cancels what has not been dialed, and cancels
the calls still ringing at Twilio (with `hang_up`, it ends the answered ones too: a page acknowledged by
someone else). The API handlers parse a request, call one of these and answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from announcer.deliveries.dispatcher import Dispatcher
from announcer.deliveries.plan import (
    Limits,
    PlanError,
    Problem,
    RecipientIn,
    agent_problems,
    callback_problems,
    machine_problems,
    option_key_problems,
    plan,
)
from announcer.deliveries.policy import NO_JITTER, Backoff
from announcer.messages.phones import BadNumber
from announcer.messages.render import MessageRenderer
from announcer.messages.workers import RenderPool
from announcer.options import AlertOptions, PageRef, ScheduleOptions, StoredOptions
from announcer.speech.speaker import Speaker
from announcer.store.deliveries import AlertFinished, AlertView, DeliveryStore, NewDelivery
from announcer.store.models import DeliveryState
from announcer.store.schedules import ScheduleRow
from announcer.telephony.calls import TwilioCalls, TwilioError

log = logging.getLogger(__name__)

SID_WAIT_S = 10.0  # how long /outbound-call waits for Twilio's Call SID before answering without it
SID_POLL = Backoff(base_s=0.02, cap_s=0.25, jitter=NO_JITTER)
PAGE_TEMPLATE = "page.j2"  # an incident's page (paging/)
_PRESYNTH_AT_ONCE = 4  # syntheses of one schedule in flight together (its recipients' distinct texts)


def _digest(value: Any) -> str:
    """The request hash an Idempotency-Key is held to: sha256 of the canonical JSON."""
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class AlertRequest:
    """An alert as asked for (the `POST /v1/alerts` body)."""

    template: str | None
    template_text: str | None
    variables: Mapping[str, Any]
    recipients: Sequence[RecipientIn]
    options: AlertOptions

    def request_hash(self) -> str:
        """The hash of the body as the API reads it: the same body (however its JSON was laid out) is the
        same request, and the hash of one accepted before an upgrade still matches."""
        return _digest(
            {
                "template": self.template,
                "template_text": self.template_text,
                "variables": dict(self.variables),
                "recipients": [
                    {"phone": r.phone, "variables": dict(r.variables), "name": r.name, "timezone": r.timezone}
                    for r in self.recipients
                ],
                "options": self.options.model_dump(mode="json"),
            }
        )


@dataclass(frozen=True)
class OutboundRequest:
    """`POST /outbound-call`, checked (`AlertService.outbound`): the number to call, normalised."""

    number: str  # E.164
    request_hash: str
    prompt: str
    first_message: str


@dataclass(frozen=True)
class Accepted:
    alert: AlertView
    created: bool  # False: a replay of an accepted request (its Idempotency-Key and body)


@dataclass(frozen=True)
class Canceled:
    alert: AlertView
    canceled: int  # deliveries that will never be dialed now
    ringing_canceled: int  # calls canceled at Twilio while they rang
    answered_ended: int = 0  # with `hang_up`: answered calls ended at Twilio (Status=completed)


@dataclass(frozen=True)
class CalledOut:
    alert_id: str
    delivery_id: int
    call_sid: str | None  # None: Twilio had not given it within SID_WAIT_S (the call still goes out)


class AgentUnavailable(Exception):
    """Agent mode is not configured here (no ElevenLabs agent)."""


def voicemails_to_presynthesize(options: ScheduleOptions, deliveries: Sequence[NewDelivery]) -> set[str]:
    """A schedule's voicemails (its template's voicemail block) that a machine may be told: made ahead like
    its messages, so that a voicemail starts at the beep and a TTS failure shows before anyone is dialed.
    None without machine detection or with `on_machine: hang_up`: nothing would speak them."""
    if not options.machine_detection or options.on_machine != "leave_message":
        return set()
    return {d.voicemail_text for d in deliveries if d.voicemail_text is not None}


def recipients_of(items: Sequence[Mapping[str, Any]]) -> list[RecipientIn]:
    """A schedule's recipients as stored (each a request's recipient, as JSON)."""
    return [
        RecipientIn(r["phone"], r.get("variables") or {}, r.get("name"), r.get("timezone")) for r in items
    ]


class AlertService:
    def __init__(
        self,
        *,
        store: DeliveryStore,
        dispatcher: Dispatcher,
        twilio: TwilioCalls,
        speaker: Speaker,
        renderer: MessageRenderer,
        renders: RenderPool,
        limits: Limits,
        finished: Callable[[DeliveryState, int], None] | None = None,  # (outcome, how many): the metrics
    ) -> None:
        self._finished = finished  # told of deliveries finished here, without a call
        self._store = store
        self._dispatcher = dispatcher
        self._twilio = twilio
        self._speaker = speaker
        self._renderer = renderer
        self._renders = renders  # every render runs there, never on the event loop
        self.limits = limits

    # --- checks ---------------------------------------------------------------------------------------

    def option_problems(self, options: AlertOptions, *, reminder: bool) -> list[Problem]:
        """What is wrong with an alert's (or a schedule's, `reminder`) options here: an agent where none is
        configured, keys that clash, what needs machine detection without it, a callback URL the outbound
        policy refuses."""
        problems = agent_problems(options.agent is not None, self.limits)
        problems += option_key_problems(options, reminder=reminder)
        problems += machine_problems(options)
        problems += callback_problems(options.callback_url, self.limits)
        return problems

    async def plan(
        self,
        template: str | None,
        template_text: str | None,
        variables: Mapping[str, Any],
        recipients: Sequence[RecipientIn],
    ) -> list[NewDelivery]:
        """Every recipient rendered and every number checked; PlanError with every problem. In the render
        thread, even for one recipient: a template may be expensive (up to its budget), thousands of
        renders take a good fraction of a second, and the live calls keep their audio meanwhile. Raises
        RenderBusy when no render thread came free in time."""
        return await self._renders.run(
            plan, self._renderer, template, template_text, variables, recipients, self.limits
        )

    # --- accepting ------------------------------------------------------------------------------------

    async def accept(self, request: AlertRequest, idempotency_key: str | None) -> Accepted:
        """Accept an alert: committed with its deliveries before this returns. Raises PlanError (every
        problem), RenderBusy, IdempotencyConflict."""
        problems = self.option_problems(request.options, reminder=False)
        if problems:
            raise PlanError(problems)
        planned = await self.plan(
            request.template, request.template_text, request.variables, request.recipients
        )
        alert_id, created = await self._create(
            idempotency_key=idempotency_key,
            request_hash=request.request_hash(),
            source="api",
            template=request.template,
            template_text=request.template_text,
            variables=dict(request.variables),
            options=StoredOptions.accepted(request.options),
            deliveries=planned,
        )
        if created:
            log.info("alert %s accepted: %d recipients", alert_id, len(planned))
        return Accepted(await self._view(alert_id), created)

    async def fire(self, schedule: ScheduleRow, planned: datetime, key: str) -> str:
        """A fire of `schedule` planned at `planned` as an alert (rendered now, dialed by the dispatcher
        like any alert); its id. `key` names the fire: a second fire of the same time is the same alert.
        Raises PlanError when the schedule no longer renders."""
        deliveries = await self.plan(
            schedule.template, schedule.template_text, schedule.variables, recipients_of(schedule.recipients)
        )
        alert_id, _ = await self._create(
            idempotency_key=key,
            # The key names the fire; its hash stands in for the body, so an edit between two fires of
            # the same time cannot turn the second into a conflict.
            request_hash=hashlib.sha256(key.encode()).hexdigest(),
            source="schedule",
            template=schedule.template,
            template_text=schedule.template_text,
            variables=schedule.variables,
            # The schedule's zone: quiet hours of recipients without their own are read in it.
            options=StoredOptions.fired(
                schedule.options,
                schedule_id=schedule.id,
                planned_at=planned,
                timezone=schedule.when.get("timezone", "UTC"),
            ),
            deliveries=deliveries,
        )
        return alert_id

    async def presynthesize(self, schedule: ScheduleRow) -> int:
        """Render `schedule` and make every distinct text's speech into the cache (the voicemails too, when
        a machine may be told them); how many texts. Raises SpeechError (the first failure) when one could
        not be made by the primary voice."""
        deliveries = await self.plan(
            schedule.template, schedule.template_text, schedule.variables, recipients_of(schedule.recipients)
        )
        texts = sorted(
            {d.text for d in deliveries} | voicemails_to_presynthesize(schedule.options, deliveries)
        )
        gate = asyncio.Semaphore(_PRESYNTH_AT_ONCE)

        async def one(text: str) -> None:
            async with gate:
                await self._speaker.presynthesize(text)

        results = await asyncio.gather(*(one(text) for text in texts), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return len(texts)

    async def page(self, page: PageRef, people: Sequence[RecipientIn], variables: Mapping[str, Any]) -> str:
        """An incident's escalation step as an alert to the step's people (paging/), spoken from page.j2 and
        asking for the pager's keys; its id. Keyed by (incident, round, step): asked twice (a restart, a
        second process), the step is still paged once. Never retried: the next step is the retry. Raises
        PlanError when page.j2 does not render for someone."""
        key = f"page:{page.incident_id}:{page.round}:{page.step}"
        deliveries = await self.plan(PAGE_TEMPLATE, None, variables, people)
        options = AlertOptions(confirm=True, max_attempts=1, retry_on=[])
        alert_id, _ = await self._create(
            idempotency_key=key,
            request_hash=hashlib.sha256(key.encode()).hexdigest(),
            source="page",
            template=PAGE_TEMPLATE,
            template_text=None,
            variables=dict(variables),
            options=StoredOptions.model_validate({**options.model_dump(), "page": page.model_dump()}),
            deliveries=deliveries,
        )
        return alert_id

    def outbound(self, number: str, prompt: str, first_message: str) -> OutboundRequest:
        """`POST /outbound-call` checked: AgentUnavailable without an agent, PlanError for a number that
        cannot be called."""
        if not self.limits.agent:
            raise AgentUnavailable
        try:
            e164 = self.limits.destinations.check(number)
        except BadNumber as err:
            raise PlanError([Problem("number", str(err))]) from None
        body = {"number": number, "prompt": prompt, "first_message": first_message}
        return OutboundRequest(e164, _digest(body), prompt, first_message)

    async def call_out(
        self, request: OutboundRequest, idempotency_key: str | None, *, wait_for_sid: bool = True
    ) -> CalledOut:
        """Place the agent's call (through the dispatcher, like any alert's); answered with its Call SID
        once Twilio gave it, or without after SID_WAIT_S (at once with `wait_for_sid=False`: the
        dashboard shows the call's progress instead of waiting on Twilio). Raises IdempotencyConflict."""
        alert_id, _ = await self._create(
            idempotency_key=idempotency_key,
            request_hash=request.request_hash,
            source="outbound-call",
            template=None,
            template_text=None,
            variables={},
            options=StoredOptions.outbound(prompt=request.prompt, first_message=request.first_message),
            deliveries=[
                NewDelivery(position=0, phone=request.number, name=None, timezone=None, variables={}, text="")
            ],
        )
        (delivery,) = await self._store.deliveries(alert_id, after=-1, limit=1)
        call_sid = delivery.call_sid
        if call_sid is None and wait_for_sid:
            call_sid = await self._wait_for_sid(delivery.id)
        return CalledOut(alert_id, delivery.id, call_sid)

    async def _create(
        self,
        *,
        idempotency_key: str | None,
        request_hash: str,
        source: str,
        template: str | None,
        template_text: str | None,
        variables: dict[str, Any],
        options: StoredOptions,
        deliveries: Sequence[NewDelivery],
    ) -> tuple[str, bool]:
        """Store the alert (idempotent) and wake the dispatcher for a new one: (id, created)."""
        alert_id, created = await self._store.create_alert(
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            source=source,
            template=template,
            template_text=template_text,
            variables=variables,
            options=options,
            deliveries=deliveries,
        )
        if created:
            self._dispatcher.wake()
            # numbers that opted out earlier: finished at acceptance (never a page's: store create_alert)
            if self._finished is not None and options.page is None:
                opted_out = (await self._view(alert_id)).counts.get(DeliveryState.OPTED_OUT, 0)
                self._finished(DeliveryState.OPTED_OUT, opted_out)
        return alert_id, created

    async def _wait_for_sid(self, delivery_id: int) -> str | None:
        """The Call SID once Twilio has answered the create request (the dispatcher places the call within
        its rate limit); None if that takes longer than SID_WAIT_S (the call still goes out)."""
        try:
            async with asyncio.timeout(SID_WAIT_S):
                for poll in itertools.count(1):
                    found = await self._store.delivery_call(delivery_id)
                    if found is not None and found[1]:
                        return found[1]
                    # The dispatcher has no per-delivery signal: polled, backing off gently (no jitter:
                    # one request's own polls, nobody else's to spread).
                    await asyncio.sleep(SID_POLL.delay_s(poll))
        except TimeoutError:
            pass
        return None

    # --- cancelling -----------------------------------------------------------------------------------

    async def cancel(self, alert_id: str, *, hang_up: bool = False) -> Canceled:
        """Cancel what of the alert has not been dialed, and its calls still ringing; with `hang_up`, end its
        answered calls too (a page someone else acknowledged: the others' calls stop, answered or not).
        Raises LookupError (no such alert) and AlertFinished (nothing left to cancel)."""
        unplaced = self._dispatcher.withdraw(alert_id)  # claimed here, not dialed yet: never dialed now
        try:
            canceled, live = await self._store.cancel_alert(alert_id, unplaced, answered=hang_up)
        except (LookupError, AlertFinished):
            self._dispatcher.give_back(unplaced)
            raise
        if self._finished is not None:
            self._finished(DeliveryState.CANCELED, canceled)
        stopped = ended = 0
        for _, sid in live:
            try:
                if await self._twilio.cancel(sid):
                    stopped += 1
                    continue
            except TwilioError as e:
                log.warning("could not cancel ringing call %s: %s", sid, e)
            if hang_up:
                # Answered (before or since the store was read): `canceled` leaves an answered call
                # alone, `completed` ends it. Its outcome is the call flow's, as for any hang-up.
                try:
                    ended += await self._twilio.hang_up(sid)
                except TwilioError as e:
                    log.warning("could not hang up call %s: %s", sid, e)
        return Canceled(await self._view(alert_id), canceled, stopped, ended)

    async def _view(self, alert_id: str) -> AlertView:
        view = await self._store.alert(alert_id)
        assert view is not None  # alerts are never deleted
        return view
