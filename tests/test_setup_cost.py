"""How many SQL statements a call costs over its whole life (issue 15, "Cheaper set-up"): a guard, not a
timing. Each statement costs about 0.2 ms of CPU (SQLAlchemy, the driver, and on SQLite a worker-thread
round trip), most of what a call's set-up costs in all, so their number per call is what regresses first.

Counted: every statement the service sends (SQLAlchemy's `before_cursor_execute`: one per round trip, a
multi-row INSERT or an executemany is one) from an alert's POST until its calls have been placed,
answered, played, hung up, and their writes committed. The event trail's INSERTs are left out: the journal
writes them once per batch, however many calls share it, so their number follows how the calls happened
to fall into batches on the machine, not what a call costs. So are the service's polls (the dispatcher's
open-calls count and next-due instant, the outbox's, the account rate's, the escalator's "anything
triggered?"): how many run over the test
follows how long it took on the machine (15-23 open-calls counts for the same ten calls), not the calls."""

from __future__ import annotations

import collections
import re
from typing import Any

from sqlalchemy import event

from announcer.app import DATABASE
from tests.conftest import Service, eventually
from tests.test_alerts import alert_body, finished, get, post

CALLS = 10
# Statements per call (SQLite, PostgreSQL), polls left out: 22.1-22.5 and 23.2-23.4 on 2026-12-07 (the
# claims' reads vary a little with how the calls fell into claim batches). With the polls in: before
# issue 15's set-up work 27.3-28.0 and 29.1-29.2, after 23.2-26.1 and 24.6-26.7.
MAX_PER_CALL = (24.0, 25.0)
BATCH_ROWS = re.compile(r"^\s*INSERT INTO (call_events|delivery_events)\b", re.I)
POLLS = re.compile(
    r"^\s*SELECT (count\(\*\) AS count_1\s+FROM calls\s+WHERE calls.delivery_id IS NOT NULL"
    r"|min\((deliveries|webhook_outbox).next_attempt_at\)"
    r"|incidents.id\s+FROM incidents\s+WHERE incidents.state = )",
    re.I,
)


async def test_a_call_costs_at_most_so_many_statements(service: Service) -> None:
    seen: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if not BATCH_ROWS.match(statement) and not POLLS.match(statement):
            seen.append(statement)

    engine = service.app[DATABASE].engine.sync_engine
    phones = [f"+1555016{i:04d}" for i in range(CALLS)]
    body = alert_body(*phones, start="on_answer", machine_detection=False)
    event.listen(engine, "before_cursor_execute", count)
    try:
        status, accepted = await post(service, "/v1/alerts", body)
        assert status == 202, accepted
        # Waited for without asking the API (its reads would be counted): every call over at the sandbox,
        # then the writes its end queued.
        await eventually(lambda: _placed(service, CALLS), timeout=30)
        for call in list(service.sandbox.calls.values()):
            await call.wait_ended(30)
        await service.store.flush()
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert (await finished(service, accepted["id"]))["status"] == "completed"
    status, page = await get(service, f"/v1/alerts/{accepted['id']}/deliveries")
    assert [d["outcome"] for d in page["deliveries"]] == ["heard"] * CALLS, page
    kinds = collections.Counter(" ".join(s.split())[:70] for s in seen)
    most = MAX_PER_CALL[0] if service.app[DATABASE].is_sqlite else MAX_PER_CALL[1]
    print(f"\n{len(seen) / CALLS:.1f} statements per call")
    assert len(seen) / CALLS <= most, kinds.most_common()


async def _placed(service: Service, n: int) -> bool:
    return len(service.sandbox.calls) >= n
