"""The incident service: what a source's webhook, a key, the API or the dashboard does to an incident.

A firing group opens an incident (or, open already, is a repeat that pages nobody); a resolved one resolves
it and stops its escalation; an acknowledgement stops it too. Stopping cancels the incident's page calls
still queued or ringing (`AlertService.cancel`). Every change is an event with who and how (store).
The escalator (escalator.py) pages the steps; this service is woken into it when an incident opens.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from announcer.deliveries.alerts import AlertService
from announcer.paging.payloads import Signal
from announcer.paging.silence import Silencer
from announcer.store.alerts import AlertFinished
from announcer.store.incidents import (
    EventRow,
    IncidentRow,
    IncidentStore,
    IntegrationRow,
    PageRow,
    WrongState,
    secret_hash,
)
from announcer.store.models import IncidentState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Received:
    """What a webhook did: `opened`, `repeated`, `resolved`, or `ignored` (a resolve of no open incident)."""

    action: str
    incident_id: str | None


@dataclass(frozen=True)
class IncidentDetail:
    incident: IncidentRow
    events: list[EventRow]
    pages: list[PageRow]


class IncidentService:
    def __init__(
        self,
        store: IncidentStore,
        alerts: AlertService,
        silencer: Silencer | None = None,
        wake: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self._alerts = alerts
        self._silencer = silencer
        self._wake = wake or (lambda: None)
        self._background: set[asyncio.Task[None]] = set()
        self.on_acknowledged: Callable[[IncidentRow], None] = lambda incident: None  # the metrics' hooks
        self.on_pages_canceled: Callable[[int], None] = lambda count: None

    def set_wake(self, wake: Callable[[], None]) -> None:
        self._wake = wake

    # --- the sources --------------------------------------------------------------------------------

    async def authenticate(
        self, integration_id: str, kind: str, authorization: str | None
    ) -> IntegrationRow | None:
        """The integration a webhook of `kind` with this `Authorization` header is for; None when it names no
        integration, the secret is wrong or missing, or the integration is of another kind (all alike to the
        caller). The hashes are compared in constant time."""
        given = ""
        if authorization is not None and authorization[:7].lower() == "bearer ":
            given = authorization[7:].strip()
        integration = await self.store.integration(integration_id)
        expected = integration.secret_hash if integration is not None else "0" * 64
        ok = hmac.compare_digest(secret_hash(given).encode(), expected.encode())
        if integration is None or not ok or not given or integration.kind != kind:
            return None
        return integration

    async def receive(self, integration: IntegrationRow, signal: Signal) -> Received:
        """A webhook's signal: open or repeat the group's incident, or resolve it."""
        if signal.firing:
            opened = await self.store.open_or_repeat(
                integration,
                dedup_key=signal.dedup_key,
                title=signal.title,
                summary=signal.summary,
                severity=signal.severity,
                alert_count=signal.alert_count,
                source_url=signal.source_url,
                details=signal.details,
                firing_since=signal.firing_since,
            )
            if opened.created:
                log.info("incident %s opened by integration %s", opened.incident.id, integration.id)
                self._wake()
            return Received("opened" if opened.created else "repeated", opened.incident.id)
        incident_id = await self.store.open_incident_id(integration.id, signal.dedup_key)
        if incident_id is None:
            return Received("ignored", None)
        try:
            await self.resolve(incident_id, who=None, how=integration.kind)
        except (LookupError, WrongState):  # resolved meanwhile by someone else
            return Received("ignored", incident_id)
        return Received("resolved", incident_id)

    # --- people and the API ----------------------------------------------------------------------------

    async def acknowledge(
        self, incident_id: str, *, who: str | None, how: str, detail: dict[str, Any] | None = None
    ) -> IncidentRow:
        """triggered -> acknowledged; the other page calls are canceled, and the group silenced at its
        Alertmanager when the integration says so. Raises LookupError, WrongState."""
        incident = await self.store.acknowledge(incident_id, who=who, how=how, detail=detail)
        self.on_acknowledged(incident)
        await self.stop_paging(incident_id)
        if self._silencer is not None:
            integration = await self.store.integration(incident.integration_id)
            if integration is not None and integration.silence_s and integration.kind == "alertmanager":
                self._in_background(self._silence(incident, integration))
        return incident

    async def resolve(self, incident_id: str, *, who: str | None, how: str) -> IncidentRow:
        """triggered or acknowledged -> resolved; its page calls are canceled. Raises LookupError,
        WrongState."""
        incident = await self.store.resolve(incident_id, who=who, how=how)
        await self.stop_paging(incident_id)
        return incident

    async def stop_paging(self, incident_id: str) -> int:
        """Cancel the incident's page calls not placed yet, ringing or answered (hung up: the others' calls
        stop, answered or not); how many alerts were canceled."""
        stopped = 0
        for alert_id in await self.store.open_page_alerts(incident_id):
            try:
                canceled = await self._alerts.cancel(alert_id, hang_up=True)
                self.on_pages_canceled(canceled.canceled)  # never dialed now: no call's end counts them
                stopped += 1
            except (LookupError, AlertFinished):
                continue
        return stopped

    async def detail(self, incident_id: str) -> IncidentDetail | None:
        incident = await self.store.incident(incident_id)
        if incident is None:
            return None
        return IncidentDetail(
            incident, await self.store.events(incident_id), await self.store.pages(incident_id)
        )

    async def recent(
        self, *, state: IncidentState | None, before: str | None, limit: int
    ) -> list[IncidentRow]:
        return await self.store.recent(state=state, before=before, limit=limit)

    # --- the silence -------------------------------------------------------------------------------------

    async def _silence(self, incident: IncidentRow, integration: IntegrationRow) -> None:
        assert self._silencer is not None and integration.silence_s
        labels = incident.details.get("groupLabels") or {}
        result = await self._silencer.silence(
            incident.source_url,
            labels,
            integration.silence_s,
            f"announcer incident {incident.id}: {incident.title}",
        )
        if result.silence_id is not None:
            await self.store.add_event(
                incident.id,
                "silenced",
                how="alertmanager",
                silence_id=result.silence_id,
                ends_at=result.ends_at,
            )
        else:
            log.warning("incident %s: no silence at its Alertmanager: %s", incident.id, result.error)
            await self.store.add_event(incident.id, "silence_failed", how="alertmanager", reason=result.error)

    def _in_background(self, work: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("incident background work failed", exc_info=task.exception())

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
