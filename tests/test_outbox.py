"""The outcome webhooks' outbox (issue 15, point 6): each webhook is written in the transaction of the
outcome it reports and sent from the database, so a crash loses none: checked in the database, through the
outbox's sender against a real receiver, across a real SIGKILL of `announcer serve`, and with two senders
on one PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aiohttp import web

from announcer.deliveries.callbacks import WebhookSender, verify
from announcer.deliveries.egress import EgressPolicy
from announcer.deliveries.notify import OutcomeNotifier
from announcer.deliveries.policy import DeliveryPolicy
from announcer.options import StoredOptions
from announcer.store.calls import CallStore
from announcer.store.db import Database
from announcer.store.deliveries import DeliveryStore, ExpiredClaim, NewDelivery
from announcer.store.models import Delivery, DeliveryState, utcnow
from announcer.store.outbox import OUTBOX, OutboxStore, row, write
from tests.conftest import API_TOKEN, USE_PG, eventually, free_port
from tests.outside import Loopback, api, kill, running, spawn, stop, wait_healthy

SECRET = "whsec_outbox_test"
LOCAL_RECEIVER = EgressPolicy(allow_http=True, allow_networks=(IPv4Network("127.0.0.1/32"),))


# --- a webhook receiver --------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    event_id: str
    body: bytes
    signature: str


@dataclass
class Receiver:
    """A webhook endpoint on 127.0.0.1: answers `statuses` in turn (the last repeats), and may hold every
    request until `release` is set."""

    port: int
    statuses: list[int] = field(default_factory=lambda: [200])
    hits: list[Hit] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    in_flight: int = 0
    peak: int = 0
    hold_until_in_flight: int = 0  # hold requests until this many are in flight at once (0: never)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        async with self.changed:
            self.hits.append(
                Hit(request.headers["X-Announcer-Event-Id"], body, request.headers["X-Announcer-Signature"])
            )
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            if self.hold_until_in_flight and self.in_flight >= self.hold_until_in_flight:
                self.release.set()
            self.changed.notify_all()
        try:
            if self.hold_until_in_flight:
                await self.release.wait()
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            return web.Response(status=status)
        finally:
            self.in_flight -= 1

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def wait_events(self, count: int, timeout: float = 30) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(lambda: len({h.event_id for h in self.hits}) >= count)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver(free_port())
    await rec.start()
    try:
        yield rec
    finally:
        await rec.stop()


# --- the stores ----------------------------------------------------------------------------------


@dataclass
class Stores:
    db: Database
    calls: CallStore
    deliveries: DeliveryStore
    outbox: OutboxStore


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[Stores]:
    db = Database(database_url)
    await db.upgrade()
    calls = CallStore(db.sessions)
    deliveries = DeliveryStore(
        db.sessions, postgres=not db.is_sqlite, rules=DeliveryPolicy(), journal=calls.journal
    )
    try:
        yield Stores(db, calls, deliveries, OutboxStore(db.sessions, postgres=not db.is_sqlite))
    finally:
        await calls.aclose()
        await db.dispose()


async def outbox_rows(db: Database) -> list[Any]:
    async with db.engine.connect() as conn:
        return list((await conn.execute(sa.select(OUTBOX).order_by(OUTBOX.c.id))).all())


async def claimed_alert(stores: Stores, phones: list[str], callback_url: str | None) -> tuple[str, list[Any]]:
    """An alert to `phones`, each delivery claimed (its call row made): ready for a final outcome."""
    alert_id, created = await stores.deliveries.create_alert(
        idempotency_key=None,
        request_hash=secrets.token_hex(32),
        source="api",
        template=None,
        template_text="Hello.",
        variables={},
        options=StoredOptions(callback_url=callback_url),
        deliveries=[
            NewDelivery(position=i, phone=p, name=None, timezone=None, variables={}, text="Hello.")
            for i, p in enumerate(phones)
        ],
    )
    assert created
    claims = await stores.deliveries.claim(limit=50, lease=timedelta(minutes=5), from_number="+15550100000")
    return alert_id, sorted((c for c in claims if c.alert_id == alert_id), key=lambda c: c.delivery_id)


# --- (1) in the outcome's transaction --------------------------------------------------------------


async def test_the_outcome_and_its_webhooks_are_written_together(stores: Stores) -> None:
    url = "https://hooks.example.com/outcomes?token=t"
    alert_id, (heard, refused) = await claimed_alert(stores, ["+14155550101", "+14155550102"], url)
    # a call's outcome through the journal (several calls' moves share a transaction)
    move = await stores.deliveries.on_call_state(heard.call_id, DeliveryState.HEARD, source="test")
    assert move is not None and move.final
    [first] = await outbox_rows(stores.db)
    assert first.event_id == f"{alert_id}.delivery.{heard.delivery_id}"
    assert (first.url, first.state, first.attempts, first.last_error) == (url, "pending", 0, None)
    payload = json.loads(first.body)
    assert first.body == json.dumps(payload, separators=(",", ":"), sort_keys=True)  # the bytes sent
    assert payload["type"] == "delivery.finished" and payload["alert_id"] == alert_id
    assert payload["delivery"] == {
        "id": heard.delivery_id,
        "index": 0,
        "phone": "+14155550101",
        "outcome": "heard",
        "outcome_code": None,
        "outcome_reason": None,
        "attempts": 1,
        "answered_by": None,
        "amd_ms": None,
        "played_ms": None,
        "message_ms": None,
        "keys": None,
    }
    # a refused dial (its own transaction, not the journal's): the last delivery, so the alert completes
    move = await stores.deliveries.dial_refused(refused, code=21211, reason="invalid To", retry_at=None)
    assert move is not None and move.final and move.detail["alert_completed"]
    rows = await outbox_rows(stores.db)
    assert [r.event_id for r in rows] == [
        first.event_id,
        f"{alert_id}.delivery.{refused.delivery_id}",
        f"{alert_id}.completed",
    ]
    assert json.loads(rows[1].body)["delivery"]["outcome_code"] == 21211
    done = json.loads(rows[2].body)
    assert done == {
        "type": "alert.completed",
        "alert_id": alert_id,
        "status": "completed",
        "recipients": 2,
        "counts": {"heard": 1, "failed": 1},
        "at": done["at"],
    }
    # an alert without a callback URL writes nothing
    _, (quiet,) = await claimed_alert(stores, ["+14155550103"], None)
    assert (
        await stores.deliveries.on_call_state(quiet.call_id, DeliveryState.HEARD, source="test")
    ) is not None
    assert len(await outbox_rows(stores.db)) == 3


async def test_an_outbox_write_that_fails_takes_the_outcome_with_it(stores: Stores) -> None:
    """The outbox refuses every row (a trigger): the outcome is not committed either, on either path."""
    alert_id, (by_call, by_refusal) = await claimed_alert(
        stores, ["+14155550111", "+14155550112"], "https://hooks.example.com/h"
    )
    if stores.db.is_sqlite:
        install = [
            "CREATE TRIGGER outbox_refuses BEFORE INSERT ON webhook_outbox "
            "BEGIN SELECT RAISE(ABORT, 'outbox refuses'); END"
        ]
        remove = ["DROP TRIGGER outbox_refuses"]
    else:
        install = [
            "CREATE FUNCTION outbox_refuses() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE EXCEPTION 'outbox refuses'; END $$",
            "CREATE TRIGGER outbox_refuses BEFORE INSERT ON webhook_outbox "
            "FOR EACH ROW EXECUTE FUNCTION outbox_refuses()",
        ]
        remove = ["DROP TRIGGER outbox_refuses ON webhook_outbox", "DROP FUNCTION outbox_refuses()"]
    async with stores.db.engine.begin() as conn:
        for statement in install:
            await conn.execute(sa.text(statement))
    try:
        with pytest.raises(sa.exc.DBAPIError):
            await stores.deliveries.on_call_state(by_call.call_id, DeliveryState.HEARD, source="test")
        with pytest.raises(sa.exc.DBAPIError):
            await stores.deliveries.dial_refused(by_refusal, code=21211, reason="invalid To", retry_at=None)
    finally:
        async with stores.db.engine.begin() as conn:
            for statement in remove:
                await conn.execute(sa.text(statement))
    page = await stores.deliveries.deliveries(alert_id, after=-1, limit=10)
    assert [(d.state, d.outcome) for d in page] == [("dialing", None), ("dialing", None)]
    view = await stores.deliveries.alert(alert_id)
    assert view is not None and view.status == "active"
    assert await outbox_rows(stores.db) == []
    # with the outbox writable again the same outcome commits, with its webhook
    assert await stores.deliveries.on_call_state(by_call.call_id, DeliveryState.HEARD, source="test")
    assert [r.event_id for r in await outbox_rows(stores.db)] == [
        f"{alert_id}.delivery.{by_call.delivery_id}"
    ]


# --- sent from the outbox --------------------------------------------------------------------------


def a_sender(**knobs: Any) -> WebhookSender:
    options: dict[str, Any] = {
        "egress": LOCAL_RECEIVER,
        "backoff_s": 0.01,
        "max_backoff_s": 0.05,
        "timeout_s": 5.0,
    }
    options.update(knobs)
    sender = WebhookSender(SECRET, **options)
    sender.start()
    return sender


async def put(db: Database, url: str, count: int, prefix: str = "evt") -> list[str]:
    from announcer.store.models import utcnow

    now = utcnow()
    ids = [f"{prefix}_{i}" for i in range(count)]
    async with db.sessions() as s:
        await write(s, [row(e, url, {"type": "test", "n": i, "name": "é"}, now) for i, e in enumerate(ids)])
        await s.commit()
    return ids


@pytest.fixture
async def relay(stores: Stores) -> AsyncIterator[list[tuple[WebhookSender, OutcomeNotifier]]]:
    made: list[tuple[WebhookSender, OutcomeNotifier]] = []
    yield made
    for sender, notifier in made:
        await notifier.close(drain_timeout_s=1)
        await sender.close(drain_timeout_s=0)


def start_relay(
    stores: Stores,
    made: list[tuple[WebhookSender, OutcomeNotifier]],
    outbox: OutboxStore | None = None,
    **knobs: Any,
) -> tuple[WebhookSender, OutcomeNotifier]:
    sender = a_sender(**knobs)
    notifier = OutcomeNotifier(
        sender, outbox or stores.outbox, timeout_s=5.0, retention=timedelta(days=7), poll_s=0.2
    )
    notifier.start()
    made.append((sender, notifier))
    return sender, notifier


async def states(db: Database) -> Counter[str]:
    return Counter(r.state for r in await outbox_rows(db))


async def test_retries_come_from_the_row_with_the_same_event_id_and_body(
    stores: Stores, receiver: Receiver, relay: list[Any]
) -> None:
    receiver.statuses = [503, 503, 200]
    [event_id] = await put(stores.db, receiver.url, 1)
    start_relay(stores, relay)

    async def sent() -> bool:
        return (await states(stores.db))["sent"] == 1

    await eventually(sent, timeout=15)
    assert [h.event_id for h in receiver.hits] == [event_id] * 3
    assert len({h.body for h in receiver.hits}) == 1
    assert all(verify(SECRET, h.body, h.signature) for h in receiver.hits)
    [stored] = await outbox_rows(stores.db)
    assert (stored.attempts, stored.last_error, stored.lease_expires_at) == (3, "status 503", None)
    assert stored.body.encode() == receiver.hits[0].body and stored.finished_at is not None


async def test_spent_retries_and_permanent_refusals_are_marked_failed_with_the_error(
    stores: Stores, receiver: Receiver, relay: list[Any]
) -> None:
    receiver.statuses = [503]
    await put(stores.db, receiver.url, 2, "flaky")
    await put(stores.db, "http://10.0.0.1/hook", 1, "internal")  # refused by the policy: never posted
    sender, _ = start_relay(stores, relay, max_attempts=3)

    async def settled() -> bool:
        return (await states(stores.db))["failed"] == 3

    await eventually(settled, timeout=15)
    rows = {r.event_id: r for r in await outbox_rows(stores.db)}
    assert {(rows[e].attempts, rows[e].last_error) for e in ("flaky_0", "flaky_1")} == {(3, "status 503")}
    assert (rows["internal_0"].attempts, rows["internal_0"].last_error) == (1, "refused_by_policy")
    assert Counter(h.event_id for h in receiver.hits) == {"flaky_0": 3, "flaky_1": 3}
    assert sender.failed == 3 and sender.delivered == 0


async def test_the_outbox_has_no_in_memory_bound(
    stores: Stores, receiver: Receiver, relay: list[Any]
) -> None:
    """The sender's in-memory queue (`send`, bounded by max_queue) is not the outbox's way: a sender
    bounded at 2 sends all 300 rows."""
    ids = await put(stores.db, receiver.url, 300)
    sender, _ = start_relay(stores, relay, max_queue=2)
    await receiver.wait_events(300)

    async def all_sent() -> bool:
        return (await states(stores.db))["sent"] == 300

    await eventually(all_sent, timeout=30)
    assert sorted(h.event_id for h in receiver.hits) == sorted(ids)  # once each
    assert sender.dropped == 0 and sender.delivered == 300


async def test_sent_and_failed_rows_are_pruned_after_the_retention(stores: Stores) -> None:
    from announcer.store.models import utcnow

    await put(stores.db, "https://hooks.example.com/h", 3)
    claimed = await stores.outbox.claim(limit=3, lease=timedelta(seconds=30))
    assert await stores.outbox.sent(claimed[0]) and await stores.outbox.failed(claimed[1], "status 400")
    assert not await stores.outbox.sent(claimed[1])  # finished already: a late write-back changes nothing
    assert await stores.outbox.prune(utcnow() - timedelta(days=7)) == 0  # too recent
    assert await stores.outbox.prune(utcnow() + timedelta(seconds=1)) == 2
    assert [r.event_id for r in await outbox_rows(stores.db)] == ["evt_2"]  # pending stays, always


# --- (3) two senders on one PostgreSQL ------------------------------------------------------------------


@pytest.mark.skipif(not USE_PG, reason="several processes share a database on PostgreSQL only")
async def test_two_senders_on_one_postgresql_never_send_the_same_row(
    stores: Stores, receiver: Receiver, relay: list[Any], database_url: str
) -> None:
    """Two senders, each with its own engine (as two services have), at most 4 requests each at once: the
    receiver holds every request until 5 are in flight, which only both senders at once can make; every
    event arrives exactly once."""
    ids = await put(stores.db, receiver.url, 120)
    receiver.hold_until_in_flight = 5
    other = Database(database_url)
    try:
        _, first = start_relay(stores, relay, concurrency=4)
        _, second = start_relay(
            stores, relay, outbox=OutboxStore(other.sessions, postgres=True), concurrency=4
        )
        await receiver.wait_events(120, timeout=60)

        async def all_sent() -> bool:
            return (await states(stores.db))["sent"] == 120

        await eventually(all_sent, timeout=30)
        assert receiver.peak >= 5  # both were sending at the same moment
        assert Counter(h.event_id for h in receiver.hits) == dict.fromkeys(ids, 1)
        assert first.claimed > 0 and second.claimed > 0 and first.claimed + second.claimed == 120
    finally:
        for _, notifier in relay:
            await notifier.close(drain_timeout_s=1)
        await other.dispose()


# --- (2) a real SIGKILL with notifications pending ----------------------------------------------------


class Outside:
    """The loopback Twilio and ElevenLabs, and `announcer serve` against them (started, killed, restarted),
    posting its outcome webhooks to 127.0.0.1:`hook_port`."""

    def __init__(self, tmp_path: Path, database_url: str, hook_port: int) -> None:
        self.port = free_port()
        self.public = f"http://127.0.0.1:{self.port}"
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.hook_port = hook_port
        self.loopback = Loopback(tmp_path, self.public)
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        await self.loopback.start()

    async def serve(self) -> None:
        env = self.loopback.env(
            port=self.port,
            database_url=self.database_url,
            data_dir=self.tmp_path / "data",
            TWILIO_CPS="25",
            TWILIO_TIMEOUT_S="2",
            ANNOUNCER_CALLBACK_ALLOW_HTTP="1",
            ANNOUNCER_CALLBACK_ALLOW_HOSTS="127.0.0.1",
            # A receiver that is down is tried again and again, quickly: the rows stay pending, and one
            # is due within half a second of the receiver coming back.
            ANNOUNCER_WEBHOOK_BACKOFF_S="0.05",
            ANNOUNCER_WEBHOOK_MAX_BACKOFF_S="0.5",
            ANNOUNCER_WEBHOOK_MAX_ATTEMPTS="100000",
            ANNOUNCER_WEBHOOK_TIMEOUT_S="2",
        )
        self.proc = await spawn(env)
        await wait_healthy(self.public, running(self.proc))

    async def kill(self) -> None:
        assert self.proc is not None
        await kill(self.proc)

    async def close(self) -> None:
        await stop(self.proc)
        await self.loopback.close()

    async def api(self, method: str, path: str, body: Any = None) -> Any:
        return await api(self.public, method, path, body)


async def test_sigkill_with_notifications_pending_then_each_arrives_with_its_event_id(
    tmp_path: Path, database_url: str
) -> None:
    hooks = Receiver(free_port())  # not listening yet: every attempt is refused
    outside = Outside(tmp_path, database_url, hooks.port)
    await outside.start()
    db = Database(database_url)
    try:
        await outside.serve()
        phones = [f"+1415555{3000 + i:04d}" for i in range(4)]
        body = {
            "template_text": "Drill {{ n }}. This is only a test.",
            "recipients": [{"phone": p, "variables": {"n": i}} for i, p in enumerate(phones)],
            "options": {"callback_url": hooks.url},
        }
        status, accepted = await outside.api("POST", "/v1/alerts", body)
        assert status == 202, accepted
        alert_id = accepted["id"]

        async def pending_and_tried() -> bool:
            code, alert = await outside.api("GET", f"/v1/alerts/{alert_id}")
            if code != 200 or alert["status"] != "completed":
                return False
            rows = await outbox_rows(db)
            # every outcome's webhook, each tried and refused at least twice by now
            return len(rows) == len(phones) + 1 and all(
                r.state == "pending" and r.attempts >= 2 for r in rows
            )

        await eventually(pending_and_tried, timeout=120)
        _, page = await outside.api("GET", f"/v1/alerts/{alert_id}/deliveries")
        await outside.kill()
        pending = {r.event_id: r for r in await outbox_rows(db)}
        assert {r.state for r in pending.values()} == {"pending"}
        assert set(pending) == {f"{alert_id}.completed"} | {
            f"{alert_id}.delivery.{d['id']}" for d in page["deliveries"]
        }
        assert len(page["deliveries"]) == len(phones)

        await hooks.start()
        await outside.serve()
        await hooks.wait_events(len(pending), timeout=60)

        async def all_sent() -> bool:
            return {r.state for r in await outbox_rows(db)} == {"sent"}

        await eventually(all_sent, timeout=30)
        # each arrived once, with its original event id and its stored body, signed by the secret in
        # memory (the API token, the default)
        assert Counter(h.event_id for h in hooks.hits) == dict.fromkeys(pending, 1)
        for hit in hooks.hits:
            assert hit.body == pending[hit.event_id].body.encode()
            assert verify(API_TOKEN, hit.body, hit.signature)
        finished = [json.loads(h.body) for h in hooks.hits if ".delivery." in h.event_id]
        assert sorted(b["delivery"]["phone"] for b in finished) == phones
        assert {b["delivery"]["outcome"] for b in finished} == {"heard"}
    finally:
        await outside.close()
        await hooks.stop()
        await db.dispose()


# --- a late release never takes a newer claim of the same attempt ------------------------------------------


async def test_a_late_release_leaves_the_claim_made_after_it_alone(stores: Stores) -> None:
    """Released (no call was placed), then claimed again by another process: the attempt number is the same
    again. A second, late release of the first claim (a dispatcher giving back a claim it held too long,
    a reconciler's) must not take the new claim from the process that holds it: it would be dialed twice."""
    _, (first,) = await claimed_alert(stores, ["+15550100071"], None)

    def expired(claim: Any) -> ExpiredClaim:
        return ExpiredClaim(claim.delivery_id, claim.attempt, claim.call_id, claim.phone, utcnow(), None)

    await stores.deliveries.release(expired(first))
    (second,) = await stores.deliveries.claim(limit=5, lease=timedelta(minutes=5), from_number="+15550100000")
    assert (second.delivery_id, second.attempt) == (first.delivery_id, first.attempt)
    assert second.call_id != first.call_id
    await stores.deliveries.release(expired(first))  # the late one
    assert (
        await stores.deliveries.claim(limit=5, lease=timedelta(minutes=5), from_number="+15550100000") == []
    )
    async with stores.db.sessions() as s:
        delivery = await s.get(Delivery, first.delivery_id)
        assert delivery is not None
        assert (delivery.state, delivery.call_id) == (DeliveryState.DIALING, second.call_id)
