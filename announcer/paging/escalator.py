"""The escalator: pages each triggered incident's steps at their time, and acts on the keys pressed.

The database is the truth (store/incidents.py): every pass reads what is due and moves it with a
compare-and-set, so any number of processes (and a restart, after a SIGKILL too) go on from where the rows
say, nobody paged twice for a step and no step skipped. A pass:

1. page calls that ended `confirmed` (key 1) acknowledge their incident (who: the person, how: key), which
   cancels the other page calls; `declined` (key 3) on the step an incident is at makes its next step due
   now (event `escalated`). Every other outcome (voicemail, machine, no answer, busy, a hang-up, failed)
   leaves the escalation to its clock.
2. due incidents take their next step: the step's targets resolved now (OncallStore.resolve_targets), the
   move and the page's row committed together; after the last step the policy starts over while round <
   repeat, then the incident is `exhausted` (stays triggered, nobody paged any more). Every due step is
   taken first (each a short transaction; a policy and a step's targets read once per pass, since a burst
   of incidents mostly shares them), then the page alerts are made together (AlertService.page, keyed by
   incident, round and step): a hundred incidents opening at once must not wait for each other's
   rendering and dialing, nor the next pass for them (benchmarks/paging.py measured 3.9 s at p95 when
   each step held its slot until its page was made).
3. pages recorded but never made (a process died between the two) are made.

Woken in-process when an incident opens or a page call ends with a key (`wake`), and every `poll_s` for
what other processes did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import Any

from announcer.deliveries.alerts import AlertService
from announcer.deliveries.plan import PlanError, RecipientIn
from announcer.options import PageRef
from announcer.paging.incidents import IncidentService
from announcer.store.incidents import IncidentRow, IncidentStore, KeyPress, WrongState
from announcer.store.models import DeliveryState, utcnow
from announcer.store.oncall import OncallStore, PersonRow, PolicyRow
from announcer.store.transitions import Move

log = logging.getLogger(__name__)

POLL_S = 0.5
STEPPING_AT_ONCE = 8  # steps taken together (each a transaction: PostgreSQL runs them side by side)
PLACING_AT_ONCE = 32  # page alerts made together (rendered in the render threads, then stored)
PLACING_GRACE_S = 5.0  # at close, how long the pages being made may take to finish
KEY_STATES = frozenset({DeliveryState.CONFIRMED, DeliveryState.DECLINED})


def page_variables(incident: IncidentRow, now: datetime) -> dict[str, Any]:
    """page.j2's variables: what the page call says of the incident."""
    variables: dict[str, Any] = {
        "alertname": incident.title,
        "summary": incident.summary or incident.title,
        "alert_count": incident.alert_count,
    }
    if incident.severity:
        variables["severity"] = incident.severity
    if incident.firing_since is not None:
        variables["firing_for_s"] = max(0, int((now - incident.firing_since).total_seconds()))
    return variables


def next_step(round: int, step: int, steps: int, repeat: int) -> tuple[int, int] | None:
    """The (round, step) after `round`/`step` (step -1: none paged yet); None when the policy is spent."""
    if steps <= 0:
        return None
    if step + 1 < steps:
        return round, step + 1
    if round + 1 <= repeat:
        return round + 1, 0
    return None


class Escalator:
    def __init__(
        self,
        store: IncidentStore,
        oncall: OncallStore,
        alerts: AlertService,
        incidents: IncidentService,
        *,
        poll_s: float = POLL_S,
    ) -> None:
        self._store = store
        self._oncall = oncall
        self._alerts = alerts
        self._incidents = incidents
        self._poll_s = poll_s
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._placing: set[asyncio.Task[None]] = set()  # pages being made
        self._placing_gate = asyncio.Semaphore(PLACING_AT_ONCE)
        self.passes = 0  # for tests and metrics

    def wake(self) -> None:
        self._wake.set()

    def moved(self, move: Move) -> None:
        """The dispatcher's hook: a call ended with a key that may move an incident."""
        if move.final and move.state in KEY_STATES:
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="escalator")

    async def close(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Pages being made finish (each is a few short transactions); one cut short is made again at the
        # next start, from its recorded row.
        if self._placing:
            await asyncio.wait(set(self._placing), timeout=PLACING_GRACE_S)
        for task in list(self._placing):
            task.cancel()

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            busy = True
            try:
                busy = await self.run_once()
            except Exception:  # a database hiccup must not end paging: logged, tried again next pass
                log.exception("escalator pass failed")
            self.passes += 1
            if self._stopping:
                return
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(await self._sleep_s() if busy else self._poll_s):
                    await self._wake.wait()

    async def _sleep_s(self) -> float:
        try:
            due = await self._store.next_due_at()
        except Exception:
            return self._poll_s
        if due is None:
            return self._poll_s
        return max(0.0, min(self._poll_s, (due - utcnow()).total_seconds()))

    async def run_once(self) -> bool:
        """One pass; False when no incident is triggered (then nothing else was asked)."""
        if not await self._store.any_triggered():
            return False
        for press in await self._store.key_presses(DeliveryState.CONFIRMED, current_step_only=False):
            await self._acknowledged(press)
        for press in await self._store.key_presses(DeliveryState.DECLINED, current_step_only=True):
            if await self._store.escalate_now(press):
                log.info("incident %s: %s pressed 3, escalating now", press.incident_id, press.name)
        due = await self._store.due(utcnow())
        if due:
            await self._take_steps(due)
        for incident, round, step, targets in await self._store.unplaced_pages(utcnow()):
            await self._place(incident, round, step, targets)
        return True

    async def _take_steps(self, due: list[IncidentRow]) -> None:
        """Take every due incident's next step, then make the pages of the steps taken."""
        now = utcnow()
        policies: dict[str, PolicyRow | None] = {}
        resolved: dict[tuple[str, int], list[dict[str, Any]]] = {}
        gate = asyncio.Semaphore(STEPPING_AT_ONCE)

        async def take(incident: IncidentRow) -> tuple[IncidentRow, int, int, list[dict[str, Any]]] | None:
            async with gate:
                return await self._step(incident, now, policies, resolved)

        taken = await asyncio.gather(*(take(i) for i in due), return_exceptions=True)
        pages = []
        for incident, result in zip(due, taken, strict=True):
            if isinstance(result, BaseException):
                log.error("incident %s: its step failed", incident.id, exc_info=result)
            elif result is not None:
                pages.append(result)
        for page in pages:  # made in the background: the next pass takes the steps that fell due meanwhile
            task = asyncio.create_task(self._place_soon(*page), name=f"page {page[0].id}")
            self._placing.add(task)
            task.add_done_callback(self._placing.discard)

    async def _place_soon(
        self, incident: IncidentRow, round: int, step: int, targets: list[dict[str, Any]]
    ) -> None:
        async with self._placing_gate:
            try:
                await self._place(incident, round, step, targets)
            except Exception:  # its row stays unplaced: made again after UNPLACED_AFTER
                log.exception("incident %s: its page failed", incident.id)

    async def _acknowledged(self, press: KeyPress) -> None:
        try:
            await self._incidents.acknowledge(
                press.incident_id,
                who=press.name or press.phone,
                how="key",
                detail={"round": press.round, "step": press.step, "phone": press.phone},
            )
        except (LookupError, WrongState):
            return  # acknowledged (or resolved) meanwhile, by another process or the API
        log.info("incident %s acknowledged by %s (key 1)", press.incident_id, press.name or press.phone)

    async def _step(
        self,
        incident: IncidentRow,
        now: datetime,
        policies: dict[str, PolicyRow | None],
        resolved: dict[tuple[str, int], list[dict[str, Any]]],
    ) -> tuple[IncidentRow, int, int, list[dict[str, Any]]] | None:
        """Take the incident's next step (its page to make: incident, round, step, targets), or None: the
        policy is spent, nobody is to be paged, or another process (an ack, a resolve) moved it first.
        `policies` and `resolved` are this pass's reads, shared by its incidents."""
        if incident.policy_id not in policies:
            policies[incident.policy_id] = await self._oncall.policy(incident.policy_id)
        policy = policies[incident.policy_id]
        steps = policy.steps if policy is not None else []
        repeat = policy.repeat if policy is not None else 0
        following = next_step(incident.round, incident.step, len(steps), repeat)
        if following is None:
            if await self._store.exhaust(incident):
                log.warning("incident %s: its escalation policy is spent; nobody more is paged", incident.id)
            return None
        round, step = following
        spec = steps[step]
        key = (incident.policy_id, step)
        if key not in resolved:
            people = await self._oncall.resolve_targets(spec.get("targets") or [], now)
            resolved[key] = [_target(p) for p in people]
        targets = resolved[key]
        delay = timedelta(seconds=int(spec.get("delay_s") or 0))
        if not await self._store.take_step(
            incident, round=round, step=step, next_step_at=now + delay, targets=targets
        ):
            return None  # another process (or an ack, a resolve) moved it first
        return (incident, round, step, targets) if targets else None

    async def _place(
        self, incident: IncidentRow, round: int, step: int, targets: list[dict[str, Any]]
    ) -> None:
        people = [RecipientIn(t["phone"], {}, t["name"], t.get("timezone")) for t in targets]
        try:
            alert_id = await self._alerts.page(
                PageRef(incident_id=incident.id, round=round, step=step),
                people,
                page_variables(incident, utcnow()),
            )
        except PlanError as err:
            reason = "; ".join(f"{p.field}: {p.reason}" for p in err.problems)[:500]
            log.error(
                "incident %s: step %d of round %d could not be paged: %s", incident.id, step, round, reason
            )
            await self._store.page_failed(incident.id, round, step, reason)
            return
        if await self._store.page_placed(incident.id, round, step, alert_id, [t["name"] for t in targets]):
            log.info("incident %s: round %d step %d paged (alert %s)", incident.id, round, step, alert_id)
        now_is = await self._store.incident(incident.id)
        if now_is is not None and now_is.state != "triggered":
            await self._incidents.stop_paging(incident.id)  # acknowledged or resolved while it was being made


def _target(person: PersonRow) -> dict[str, Any]:
    return {"id": person.id, "name": person.name, "phone": person.phone, "timezone": person.timezone}
