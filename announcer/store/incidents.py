"""Integrations and incidents: where alerts come in, and where each incident's escalation stands.

The database is the truth of an escalation: every move of an incident is a compare-and-set on the state
(and, for a step, on `round` and `step`) in one transaction with its event row, so two processes (or a
restart) never page one step twice, never skip one and never acknowledge twice. A step's page is an
`incident_pages` row written with the move; its alert is made after the commit (keyed by incident, round
and step, so making it again makes nothing new), and a row whose alert is missing is made again by
whoever finds it (`unplaced_pages`).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import ColumnElement

from announcer.store.models import (
    FINAL_DELIVERY_STATES,
    Delivery,
    DeliveryState,
    EscalationPolicy,
    Incident,
    IncidentEvent,
    IncidentPage,
    IncidentState,
    Integration,
    utcnow,
)

OPEN_STATES = (IncidentState.TRIGGERED, IncidentState.ACKNOWLEDGED)
# A page whose alert a process set out to make this long ago and has not: that process died (or is stuck);
# any process makes it (the alert's key makes a second making a no-op).
UNPLACED_AFTER = timedelta(seconds=5)


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def open_key(integration_id: str, dedup_key: str) -> str:
    """sha256 of the integration and the group: unique among open incidents."""
    return hashlib.sha256(f"{integration_id}\n{dedup_key}".encode("utf-8", "surrogateescape")).hexdigest()


class NoSuchPolicy(Exception):
    pass


class InUse(Exception):
    """An integration that incidents refer to cannot be deleted."""


class WrongState(Exception):
    """The incident is already in the state asked for, or past it."""

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


@dataclass(frozen=True)
class IntegrationRow:
    id: str
    name: str
    kind: str
    policy_id: str
    silence_s: int | None
    secret_hash: str
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class IncidentRow:
    id: str
    integration_id: str
    policy_id: str
    dedup_key: str
    state: str
    title: str
    summary: str | None
    severity: str | None
    alert_count: int
    source_url: str | None
    details: dict[str, Any]
    round: int
    step: int
    next_step_at: datetime | None
    firing_since: datetime | None
    created_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None


@dataclass(frozen=True)
class EventRow:
    id: int
    at: datetime
    kind: str
    who: str | None
    how: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class PagedPerson:
    name: str | None
    phone: str
    state: str  # the delivery's state: its outcome once final
    final: bool


@dataclass(frozen=True)
class PageRow:
    round: int
    step: int
    alert_id: str | None
    targets: list[dict[str, Any]]  # the people as resolved when the step was paged
    created_at: datetime
    people: list[PagedPerson]  # each page call, with its outcome (empty: no alert yet, or nobody)


@dataclass(frozen=True)
class KeyPress:
    """A page call that ended with a key that moves its incident: confirmed (1) or declined (3)."""

    incident_id: str
    round: int
    step: int
    alert_id: str
    name: str | None
    phone: str


@dataclass(frozen=True)
class Opened:
    incident: IncidentRow
    created: bool  # False: the group's open incident, told again (a repeat)


def _integration(row: Integration) -> IntegrationRow:
    return IntegrationRow(
        row.id,
        row.name,
        row.kind,
        row.policy_id,
        row.silence_s,
        row.secret_hash,
        row.created_at,
        row.updated_at,
    )


def _incident(row: Incident) -> IncidentRow:
    return IncidentRow(
        id=row.id,
        integration_id=row.integration_id,
        policy_id=row.policy_id,
        dedup_key=row.dedup_key,
        state=row.state,
        title=row.title,
        summary=row.summary,
        severity=row.severity,
        alert_count=row.alert_count,
        source_url=row.source_url,
        details=dict(row.details or {}),
        round=row.round,
        step=row.step,
        next_step_at=row.next_step_at,
        firing_since=row.firing_since,
        created_at=row.created_at,
        updated_at=row.updated_at,
        acknowledged_at=row.acknowledged_at,
        acknowledged_by=row.acknowledged_by,
        resolved_at=row.resolved_at,
    )


def _event(
    incident_id: str, kind: str, at: datetime, who: str | None, how: str | None, **detail: Any
) -> IncidentEvent:
    return IncidentEvent(incident_id=incident_id, at=at, kind=kind, who=who, how=how, detail=detail)


def _still_at(incident_id: str, round: int, step: int) -> tuple[ColumnElement[bool], ...]:
    """The escalator's compare-and-set: the incident is still triggered at the step it was read at (a move
    by another process, an ack or a resolve makes the UPDATE match nothing)."""
    return (
        Incident.id == incident_id,
        Incident.state == IncidentState.TRIGGERED,
        Incident.round == round,
        Incident.step == step,
    )


class IncidentStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    # --- integrations -------------------------------------------------------------------------------

    async def create_integration(
        self, *, name: str, kind: str, policy_id: str, silence_s: int | None
    ) -> tuple[IntegrationRow, str]:
        """A new integration and its secret (returned once: only its hash is kept). Raises NoSuchPolicy."""
        secret = secrets.token_urlsafe(32)
        now = utcnow()
        row = Integration(
            id="in_" + secrets.token_hex(12),
            name=name,
            kind=kind,
            policy_id=policy_id,
            secret_hash=secret_hash(secret),
            silence_s=silence_s,
            created_at=now,
            updated_at=now,
        )
        async with self.sessions() as s:
            if await s.get(EscalationPolicy, policy_id) is None:
                raise NoSuchPolicy(policy_id)
            s.add(row)
            await s.commit()
        return _integration(row), secret

    async def integration(self, integration_id: str) -> IntegrationRow | None:
        async with self.sessions() as s:
            row = await s.get(Integration, integration_id)
            return None if row is None else _integration(row)

    async def integrations(self) -> list[IntegrationRow]:
        async with self.sessions() as s:
            rows = (
                await s.execute(select(Integration).order_by(Integration.created_at, Integration.id))
            ).scalars()
            return [_integration(r) for r in rows]

    async def update_integration(self, integration_id: str, changes: dict[str, Any]) -> IntegrationRow | None:
        """Change name, kind, policy_id or silence_s; None: no such integration. Raises NoSuchPolicy."""
        async with self.sessions() as s:
            row = await s.get(Integration, integration_id, with_for_update=True)
            if row is None:
                return None
            if "policy_id" in changes and await s.get(EscalationPolicy, changes["policy_id"]) is None:
                raise NoSuchPolicy(changes["policy_id"])
            for name, value in changes.items():
                setattr(row, name, value)
            row.updated_at = utcnow()
            await s.commit()
            return _integration(row)

    async def rotate_secret(self, integration_id: str) -> str | None:
        """A new secret for the integration (the old one stops working now); None: no such integration."""
        secret = secrets.token_urlsafe(32)
        async with self.sessions() as s:
            done = await s.execute(
                update(Integration)
                .where(Integration.id == integration_id)
                .values(secret_hash=secret_hash(secret), updated_at=utcnow())
            )
            await s.commit()
        return secret if done.rowcount else None  # type: ignore[attr-defined]

    async def delete_integration(self, integration_id: str) -> bool:
        """Delete it; False: no such integration. Raises InUse when incidents came from it (they keep it)."""
        async with self.sessions() as s:
            used = await s.scalar(select(func.count()).where(Incident.integration_id == integration_id))
            if used:
                raise InUse(integration_id)
            try:
                done = await s.execute(delete(Integration).where(Integration.id == integration_id))
                await s.commit()
            except IntegrityError:
                raise InUse(integration_id) from None
        return bool(done.rowcount)  # type: ignore[attr-defined]

    # --- incidents from the sources ---------------------------------------------------------------------

    async def open_or_repeat(
        self,
        integration: IntegrationRow,
        *,
        dedup_key: str,
        title: str,
        summary: str | None,
        severity: str | None,
        alert_count: int,
        source_url: str | None,
        details: dict[str, Any],
        firing_since: datetime | None,
    ) -> Opened:
        """The group's open incident told again (event `repeated`), or a new one, triggered and due at once
        (event `triggered`). Two at once open one: the open key is unique."""
        key = open_key(integration.id, dedup_key)
        how = integration.kind
        for _ in range(5):
            now = utcnow()
            async with self.sessions() as s:
                row = (
                    await s.execute(select(Incident).where(Incident.open_key == key).with_for_update())
                ).scalar()
                if row is not None:
                    row.alert_count = alert_count
                    row.summary = summary
                    row.details = details
                    row.updated_at = now
                    if firing_since is not None:
                        row.firing_since = firing_since
                    s.add(_event(row.id, "repeated", now, None, how, alert_count=alert_count))
                    await s.commit()
                    return Opened(_incident(row), created=False)
            incident = Incident(
                id="ic_" + secrets.token_hex(12),
                integration_id=integration.id,
                policy_id=integration.policy_id,
                dedup_key=dedup_key,
                open_key=key,
                state=IncidentState.TRIGGERED,
                title=title,
                summary=summary,
                severity=severity,
                alert_count=alert_count,
                source_url=source_url,
                details=details,
                round=0,
                step=-1,
                next_step_at=now,
                firing_since=firing_since,
                created_at=now,
                updated_at=now,
            )
            try:
                async with self.sessions() as s:
                    s.add(incident)
                    await s.flush()
                    s.add(
                        _event(incident.id, "triggered", now, None, how, title=title, alert_count=alert_count)
                    )
                    await s.commit()
                return Opened(_incident(incident), created=True)
            except IntegrityError:
                continue  # another request opened it meanwhile: this one is a repeat of it
        raise RuntimeError("the group's incident kept changing")

    async def open_incident_id(self, integration_id: str, dedup_key: str) -> str | None:
        async with self.sessions() as s:
            return await s.scalar(
                select(Incident.id).where(Incident.open_key == open_key(integration_id, dedup_key))
            )

    # --- moves ------------------------------------------------------------------------------------------

    async def acknowledge(
        self, incident_id: str, *, who: str | None, how: str, detail: dict[str, Any] | None = None
    ) -> IncidentRow:
        """triggered -> acknowledged: nobody is paged for it any more. Raises LookupError, WrongState."""
        now = utcnow()
        return await self._move(
            incident_id,
            [IncidentState.TRIGGERED],
            {"state": IncidentState.ACKNOWLEDGED, "acknowledged_at": now, "acknowledged_by": who},
            _event(incident_id, "acknowledged", now, who, how, **(detail or {})),
        )

    async def resolve(self, incident_id: str, *, who: str | None, how: str) -> IncidentRow:
        """triggered or acknowledged -> resolved: the group may open a new incident. Raises LookupError,
        WrongState."""
        now = utcnow()
        return await self._move(
            incident_id,
            list(OPEN_STATES),
            {"state": IncidentState.RESOLVED, "open_key": None, "resolved_at": now},
            _event(incident_id, "resolved", now, who, how),
        )

    async def _move(
        self, incident_id: str, from_states: list[IncidentState], values: dict[str, Any], event: IncidentEvent
    ) -> IncidentRow:
        """One state change, conditional on the state it leaves (a racing ack or resolve loses cleanly),
        with its event, in one transaction; the incident as it is now. Escalation stops with it."""
        async with self.sessions() as s:
            done = await s.execute(
                update(Incident)
                .where(Incident.id == incident_id, Incident.state.in_([str(x) for x in from_states]))
                .values(**values, next_step_at=None, updated_at=event.at)
            )
            if not done.rowcount:  # type: ignore[attr-defined]
                await s.rollback()
                row = await s.get(Incident, incident_id)
                if row is None:
                    raise LookupError(incident_id)
                raise WrongState(row.state)
            s.add(event)
            await s.commit()
            row = await s.get(Incident, incident_id)
            assert row is not None
            return _incident(row)

    async def add_event(
        self, incident_id: str, kind: str, *, who: str | None = None, how: str | None = None, **detail: Any
    ) -> None:
        async with self.sessions() as s:
            s.add(_event(incident_id, kind, utcnow(), who, how, **detail))
            await s.commit()

    # --- the escalator's ----------------------------------------------------------------------------------

    async def due(self, now: datetime, limit: int = 100) -> list[IncidentRow]:
        """Triggered incidents whose next step is due, the longest waiting first."""
        async with self.sessions() as s:
            rows = (
                await s.execute(
                    select(Incident)
                    .where(Incident.state == IncidentState.TRIGGERED, Incident.next_step_at <= now)
                    .order_by(Incident.next_step_at)
                    .limit(limit)
                )
            ).scalars()
            return [_incident(r) for r in rows]

    async def any_triggered(self) -> bool:
        """Is any incident escalating? The escalator's poll, one index probe: with nothing triggered (most of
        the time, and always where paging is not used) it asks nothing more."""
        async with self.sessions() as s:
            found = await s.execute(
                select(Incident.id).where(Incident.state == IncidentState.TRIGGERED).limit(1)
            )
            return found.first() is not None

    async def next_due_at(self) -> datetime | None:
        async with self.sessions() as s:
            return await s.scalar(
                select(func.min(Incident.next_step_at)).where(Incident.state == IncidentState.TRIGGERED)
            )

    async def take_step(
        self,
        incident: IncidentRow,
        *,
        round: int,
        step: int,
        next_step_at: datetime,
        targets: Sequence[dict[str, Any]],
    ) -> bool:
        """Move the incident from the step it is at (as read) to `round`/`step` and record the step's page
        (its people, its alert to come): True when this call moved it; False when another process (or an
        acknowledgement, a resolution) got there first."""
        now = utcnow()
        async with self.sessions() as s:
            done = await s.execute(
                update(Incident)
                .where(*_still_at(incident.id, incident.round, incident.step), Incident.next_step_at <= now)
                .values(round=round, step=step, next_step_at=next_step_at, updated_at=now)
            )
            if not done.rowcount:  # type: ignore[attr-defined]
                await s.rollback()
                return False
            s.add(
                IncidentPage(
                    incident_id=incident.id,
                    round=round,
                    step=step,
                    alert_id=None,
                    targets=list(targets),
                    created_at=now,
                )
            )
            if not targets:
                s.add(_event(incident.id, "paged", now, None, "policy", round=round, step=step, people=[]))
            await s.commit()
            return True

    async def exhaust(self, incident: IncidentRow) -> bool:
        """No step is left: stop escalating (event `exhausted`); the incident stays triggered."""
        now = utcnow()
        async with self.sessions() as s:
            done = await s.execute(
                update(Incident)
                .where(*_still_at(incident.id, incident.round, incident.step), Incident.next_step_at <= now)
                .values(next_step_at=None, updated_at=now)
            )
            if not done.rowcount:  # type: ignore[attr-defined]
                await s.rollback()
                return False
            s.add(
                _event(
                    incident.id, "exhausted", now, None, "policy", round=incident.round, step=incident.step
                )
            )
            await s.commit()
            return True

    async def page_placed(
        self, incident_id: str, round: int, step: int, alert_id: str, names: list[str]
    ) -> bool:
        """The step's page alert exists: recorded with event `paged` (once, whoever made it)."""
        now = utcnow()
        async with self.sessions() as s:
            done = await s.execute(
                update(IncidentPage)
                .where(
                    IncidentPage.incident_id == incident_id,
                    IncidentPage.round == round,
                    IncidentPage.step == step,
                    IncidentPage.alert_id.is_(None),
                )
                .values(alert_id=alert_id)
            )
            if not done.rowcount:  # type: ignore[attr-defined]
                await s.rollback()
                return False
            s.add(
                _event(
                    incident_id,
                    "paged",
                    now,
                    ", ".join(names)[:200] or None,
                    "policy",
                    round=round,
                    step=step,
                    people=names,
                    alert_id=alert_id,
                )
            )
            await s.commit()
            return True

    async def page_failed(self, incident_id: str, round: int, step: int, reason: str) -> None:
        """The step's page could not be made (page.j2 does not render, a number cannot be dialed): its row
        keeps nobody, so nobody makes it again; the next step follows at its time."""
        now = utcnow()
        async with self.sessions() as s:
            done = await s.execute(
                update(IncidentPage)
                .where(
                    IncidentPage.incident_id == incident_id,
                    IncidentPage.round == round,
                    IncidentPage.step == step,
                    IncidentPage.alert_id.is_(None),
                )
                .values(targets=[])
            )
            if done.rowcount:  # type: ignore[attr-defined]
                s.add(
                    _event(
                        incident_id, "page_failed", now, None, "policy", round=round, step=step, reason=reason
                    )
                )
            await s.commit()

    async def unplaced_pages(self, now: datetime) -> list[tuple[IncidentRow, int, int, list[dict[str, Any]]]]:
        """Pages of triggered incidents recorded more than UNPLACED_AFTER ago whose alert was never made."""
        async with self.sessions() as s:
            rows = (
                await s.execute(
                    select(Incident, IncidentPage)
                    .join(IncidentPage, IncidentPage.incident_id == Incident.id)
                    .where(
                        Incident.state == IncidentState.TRIGGERED,
                        IncidentPage.alert_id.is_(None),
                        IncidentPage.created_at <= now - UNPLACED_AFTER,
                    )
                    .limit(100)
                )
            ).all()
            return [(_incident(i), p.round, p.step, list(p.targets)) for i, p in rows if p.targets]

    async def key_presses(self, state: DeliveryState, *, current_step_only: bool) -> list[KeyPress]:
        """Page calls of triggered incidents that ended `state` (confirmed: an acknowledgement; declined:
        escalate now, only on the step the incident is at, and while its next step is still to come)."""
        conditions = [Incident.state == IncidentState.TRIGGERED, Delivery.state == state]
        if current_step_only:
            conditions += [
                IncidentPage.round == Incident.round,
                IncidentPage.step == Incident.step,
                Incident.next_step_at > utcnow(),
            ]
        async with self.sessions() as s:
            rows = (
                await s.execute(
                    select(
                        Incident.id,
                        IncidentPage.round,
                        IncidentPage.step,
                        Delivery.alert_id,
                        Delivery.name,
                        Delivery.phone,
                    )
                    .join(IncidentPage, IncidentPage.incident_id == Incident.id)
                    .join(Delivery, Delivery.alert_id == IncidentPage.alert_id)
                    .where(and_(*conditions))
                    .order_by(Delivery.updated_at)
                    .limit(200)
                )
            ).all()
        return [KeyPress(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]

    async def escalate_now(self, press: KeyPress) -> bool:
        """Key 3 on the step the incident is at: its next step is due now (event `escalated`, once)."""
        now = utcnow()
        async with self.sessions() as s:
            done = await s.execute(
                update(Incident)
                .where(*_still_at(press.incident_id, press.round, press.step), Incident.next_step_at > now)
                .values(next_step_at=now, updated_at=now)
            )
            if not done.rowcount:  # type: ignore[attr-defined]
                await s.rollback()
                return False
            s.add(
                _event(
                    press.incident_id, "escalated", now, press.name, "key", round=press.round, step=press.step
                )
            )
            await s.commit()
            return True

    async def open_page_alerts(self, incident_id: str) -> list[str]:
        """The incident's page alerts with a delivery not final yet (a call to cancel)."""
        async with self.sessions() as s:
            rows = await s.execute(
                select(IncidentPage.alert_id)
                .join(Delivery, Delivery.alert_id == IncidentPage.alert_id)
                .where(
                    IncidentPage.incident_id == incident_id,
                    Delivery.state.not_in([str(x) for x in FINAL_DELIVERY_STATES]),
                )
                .distinct()
            )
            return [r[0] for r in rows.all() if r[0] is not None]

    # --- views --------------------------------------------------------------------------------------------

    async def incident(self, incident_id: str) -> IncidentRow | None:
        async with self.sessions() as s:
            row = await s.get(Incident, incident_id)
            return None if row is None else _incident(row)

    async def recent(self, *, state: str | None, before: str | None, limit: int) -> list[IncidentRow]:
        """Newest first, `limit` of them, older than the incident `before` (a page's last)."""
        async with self.sessions() as s:
            query = select(Incident).order_by(Incident.created_at.desc(), Incident.id.desc()).limit(limit)
            if state is not None:
                query = query.where(Incident.state == state)
            if before is not None:
                anchor = (
                    await s.execute(select(Incident.created_at, Incident.id).where(Incident.id == before))
                ).first()
                if anchor is None:
                    return []
                query = query.where(
                    (Incident.created_at < anchor.created_at)
                    | ((Incident.created_at == anchor.created_at) & (Incident.id < anchor.id))
                )
            return [_incident(r) for r in (await s.execute(query)).scalars()]

    async def events(self, incident_id: str) -> list[EventRow]:
        async with self.sessions() as s:
            rows = (
                await s.execute(
                    select(IncidentEvent)
                    .where(IncidentEvent.incident_id == incident_id)
                    .order_by(IncidentEvent.id)
                )
            ).scalars()
            return [EventRow(e.id, e.at, e.kind, e.who, e.how, dict(e.detail or {})) for e in rows]

    async def pages(self, incident_id: str) -> list[PageRow]:
        """Each step's page in order, with each of its calls' outcome (the delivery's state)."""
        async with self.sessions() as s:
            pages = list(
                (
                    await s.execute(
                        select(IncidentPage)
                        .where(IncidentPage.incident_id == incident_id)
                        .order_by(IncidentPage.round, IncidentPage.step)
                    )
                ).scalars()
            )
            alert_ids = [p.alert_id for p in pages if p.alert_id]
            people: dict[str, list[PagedPerson]] = {a: [] for a in alert_ids}
            if alert_ids:
                rows = await s.execute(
                    select(Delivery.alert_id, Delivery.name, Delivery.phone, Delivery.state)
                    .where(Delivery.alert_id.in_(alert_ids))
                    .order_by(Delivery.alert_id, Delivery.position)
                )
                for alert_id, name, phone, state in rows.all():
                    people[alert_id].append(
                        PagedPerson(name, phone, str(state), state in FINAL_DELIVERY_STATES)
                    )
        return [
            PageRow(
                p.round, p.step, p.alert_id, list(p.targets), p.created_at, people.get(p.alert_id or "", [])
            )
            for p in pages
        ]

    async def counts(self) -> dict[str, int]:
        """Incidents by state (the dashboard's and the metrics')."""
        async with self.sessions() as s:
            rows = await s.execute(select(Incident.state, func.count()).group_by(Incident.state))
            return {str(state): int(n) for state, n in rows.all()}
