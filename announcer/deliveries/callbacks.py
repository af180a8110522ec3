"""Outcome webhooks: signed JSON POSTs to a user's `callback_url` when a delivery or an alert finishes.

Contract with receivers
-----------------------
Every request is a `POST` of a compact JSON object (`json.dumps(payload, separators=(",", ":"),
sort_keys=True)`) with these headers:

* `Content-Type: application/json`
* `User-Agent: announcer-webhooks/1`
* `X-Announcer-Event-Id: <id>` - stable for one event: every retry carries the same id and the same
  body, so a receiver de-duplicates on it (delivery is at-least-once).
* `X-Announcer-Signature: t=<unix seconds>,v1=<hex>` - Stripe's scheme: `hex` is
  HMAC-SHA256(secret, f"{t}.{raw_body}") over the exact bytes of the body. Each attempt is signed
  afresh, so `t` is the time of that attempt, and receivers should reject a `t` more than a few minutes
  away from their clock (`verify` does, 300 s by default) to stop replays. A header may carry several
  `v1=` entries; one matching is enough, which lets a secret be rotated without downtime.

Outbound policy
---------------
Every URL is judged by the EgressPolicy (egress.py) before its first attempt, and every address its host
resolves to when a connection is made (the sender's own connector resolves through `GuardedResolver`; no
proxy from the environment). A refused one is a permanent failure, never retried: counted in `failed`,
its attempt logged with the error `refused_by_policy`, one log line naming the host and the reason.

Retry policy
------------
* 2xx: delivered.
* 408, 409, 425, 429, any 5xx, a timeout (`timeout_s` for the whole exchange) or a connection error:
  retried, up to `max_attempts` attempts in all. The wait before retry n is drawn uniformly from
  [0, min(max_backoff_s, backoff_s * 2**(n-1))] ("full jitter", so receivers coming back from an outage
  are not hit by every sender in lock-step); a `Retry-After` header (seconds or an HTTP date) replaces
  that draw, capped at `max_backoff_s`. (The service's one backoff rule, deliveries/policy.py `Backoff`,
  with FULL_JITTER.)
* Anything else (3xx, which are not followed, and other 4xx): a permanent failure, not retried.

An event is attempted sequentially; different events go out concurrently, at most `concurrency` requests
at a time.

Where events come from
----------------------
The service's outcome webhooks come from the outbox (store/outbox.py, sent by deliveries/notify.py): each
is a database row written with the outcome it reports, and this sender makes one `attempt` per claim of
it; the waits between attempts are kept in the row, so a stop or a crash loses none and the outbox has no
bound. `send` is the in-memory way in (no database): it never waits, it queues and returns, and drops
(with an error log) when `max_queue` events are already outstanding, counting queued ones and ones in
delivery or waiting to retry; a stop drops what it still holds.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import hmac
import logging
import random
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver

from announcer.deliveries.egress import EgressPolicy, EgressRefused, GuardedResolver
from announcer.deliveries.policy import FULL_JITTER, Backoff
from announcer.store.outbox import encode

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Announcer-Signature"
EVENT_ID_HEADER = "X-Announcer-Event-Id"
USER_AGENT = "announcer-webhooks/1"
RETRYABLE_STATUSES = frozenset({408, 409, 425, 429})
REFUSED_BY_POLICY = "refused_by_policy"  # an Attempt's error when the outbound policy refused the URL
# Bounded so a long-running process keeps a window for metrics and debugging, not a leak.
ATTEMPT_LOG_SIZE = 1000

_TIMESTAMP = re.compile(r"[0-9]{1,15}")
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_DELAY_SECONDS = re.compile(r"[0-9]{1,10}")


def _digest(secret: str, body: bytes, timestamp: int) -> str:
    signed = str(timestamp).encode("ascii") + b"." + body
    return hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The `X-Announcer-Signature` value for `body` sent at `timestamp` (unix seconds)."""
    return f"t={timestamp},v1={_digest(secret, body, timestamp)}"


def verify(
    secret: str, body: bytes, header: str, *, now: float | None = None, tolerance_s: float = 300
) -> bool:
    """Whether `header` is a valid signature of `body` under `secret`, made within `tolerance_s` of `now`.

    False, never an exception, for a malformed header. The timestamp is checked in both directions: a `t`
    far in the future is as suspect as a stale one.
    """
    timestamp: int | None = None
    candidates: list[str] = []
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            return False
        if key == "t":
            # Two timestamps would make it ambiguous which one the signature covers.
            if timestamp is not None or not _TIMESTAMP.fullmatch(value):
                return False
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value)
        # Other schemes (v0, future versions) are skipped, as Stripe's receivers do.
    if timestamp is None or not candidates:
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = _digest(secret, body, timestamp).encode("ascii")
    matched = False
    for candidate in candidates:
        # compare_digest wants ASCII; the pattern check also keeps junk from reaching it.
        if _HEX_DIGEST.fullmatch(candidate) and hmac.compare_digest(expected, candidate.encode("ascii")):
            matched = True
    return matched


def _retry_after_s(value: str | None, now: float) -> float | None:
    if value is None:
        return None
    value = value.strip()
    if _DELAY_SECONDS.fullmatch(value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        # RFC 9110 dates are GMT; a naive result means the zone was missing, which is not worth a guess.
        return None
    return max(0.0, when.timestamp() - now)


def host_of(url: str) -> str:
    # Only the host is logged: a callback URL's path or query may carry the user's own token.
    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt: `status` when the receiver answered, otherwise `error` ("timeout",
    REFUSED_BY_POLICY, or the exception's class name). `at` is `time.monotonic()` when the attempt ended."""

    event_id: str
    url: str
    status: int | None
    error: str | None
    at: float


@dataclass(frozen=True)
class _Job:
    url: str
    event_id: str
    body: bytes


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to. `error` says why it was not delivered ("status 503", "timeout", the
    exception's class name, REFUSED_BY_POLICY): what an outbox row keeps as its last error."""

    done: bool  # delivered or permanently refused: no further attempt
    delivered: bool
    retry_after_s: float | None = None
    error: str | None = None


class WebhookSender:
    """Queues outcome webhooks and delivers them from a background worker (see the module docstring).

    Not thread-safe: `send` is called from the event loop the worker runs on. The sender owns its HTTP
    session, made by `start` and closed by `close`: only its own connector resolves through the policy.
    `resolver` is the name service under the policy (aiohttp's default when None).
    """

    def __init__(
        self,
        secret: str,
        *,
        egress: EgressPolicy,
        resolver: AbstractResolver | None = None,
        timeout_s: float = 10,
        max_attempts: int = 8,
        backoff_s: float = 1.0,
        max_backoff_s: float = 300,
        max_queue: int = 10_000,
        concurrency: int = 32,
        rng: random.Random | None = None,
    ) -> None:
        if not secret:
            raise ValueError("a webhook secret is required: an empty HMAC key signs nothing")
        if timeout_s <= 0 or max_attempts < 1 or backoff_s < 0 or max_backoff_s < 0:
            raise ValueError("timeout_s must be > 0, max_attempts >= 1, backoff_s and max_backoff_s >= 0")
        if max_queue < 1 or concurrency < 1:
            raise ValueError("max_queue and concurrency must be >= 1")
        self._egress = egress
        self._resolver = resolver
        self._session: aiohttp.ClientSession | None = None
        self._guarded: GuardedResolver | None = None
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_attempts = max_attempts
        # The retry policy above: full jitter over a doubling ceiling (the service's one backoff rule).
        self.backoff = Backoff(backoff_s, max_backoff_s, jitter=FULL_JITTER)
        self._max_queue = max_queue
        self._rng = rng if rng is not None else random.Random()
        # Taken per attempt, not per event, so events sleeping before a retry hold no slot.
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        # Accepted and not yet finished: queued, in flight, or waiting to retry.
        self._outstanding = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._attempts: deque[Attempt] = deque(maxlen=ATTEMPT_LOG_SIZE)
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    @property
    def attempts(self) -> list[Attempt]:
        """The most recent attempts (at most ATTEMPT_LOG_SIZE), oldest first."""
        return list(self._attempts)

    @property
    def outstanding(self) -> int:
        return self._outstanding

    @property
    def max_attempts(self) -> int:
        return self._max_attempts

    @property
    def concurrency(self) -> int:
        return self._concurrency

    def start(self) -> None:
        """Start the worker; call from inside the running event loop."""
        if self._closed:
            raise RuntimeError("WebhookSender is closed")
        if self._session is None:
            self._guarded = GuardedResolver(self._egress, self._resolver or aiohttp.DefaultResolver())
            # trust_env=False: a proxy from the environment would make the connection, to addresses the
            # resolver above never sees.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=self._guarded), trust_env=False
            )
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name="webhook-sender")

    def send(self, url: str, event_id: str, payload: dict[str, Any]) -> None:
        """Queue one event for delivery and return at once.

        Raises only for a payload that is not JSON (a bug in the caller); a full queue or a closed sender
        drops the event with an error log and counts it in `dropped`.
        """
        body = encode(payload)
        if self._closed:
            self.dropped += 1
            log.error("webhook %s to %s dropped: the sender is closed", event_id, host_of(url))
            return
        if self._outstanding >= self._max_queue:
            self.dropped += 1
            log.error(
                "webhook %s to %s dropped: %d events already outstanding",
                event_id,
                host_of(url),
                self._outstanding,
            )
            return
        self._outstanding += 1
        self._idle.clear()
        self._queue.put_nowait(_Job(url=url, event_id=event_id, body=body))

    async def wait_idle(self, timeout: float) -> None:
        """Return once nothing is queued, in flight or waiting to retry; TimeoutError after `timeout` s."""
        async with asyncio.timeout(timeout):
            await self._idle.wait()

    async def close(self, drain_timeout_s: float = 5) -> None:
        """Stop accepting events, give outstanding ones up to `drain_timeout_s`, then cancel the rest.

        Events cancelled or never started are counted in `dropped`.
        """
        if self._closed:
            return
        self._closed = True
        if self._worker is not None:
            try:
                await self.wait_idle(drain_timeout_s)
            except TimeoutError:
                log.warning(
                    "webhook sender closing: %d events still outstanding after %.1f s, cancelling them",
                    self._outstanding,
                    drain_timeout_s,
                )
            self._worker.cancel()
            pending = [self._worker, *self._tasks]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        # Jobs the worker never picked up (or that were queued with no worker started).
        while not self._queue.empty():
            job = self._queue.get_nowait()
            log.error("webhook %s to %s dropped: the sender closed first", job.event_id, host_of(job.url))
            self.dropped += 1
            self._finished()
        if self._session is not None:
            await self._session.close()
        if self._guarded is not None:
            # A connector leaves open a resolver it was given rather than made.
            await self._guarded.close()

    async def attempt(self, url: str, event_id: str, body: bytes) -> Outcome:
        """One attempt of one event, now (the outbox's unit: it keeps the waits between attempts). The URL
        is judged by the policy first; a delivery or a permanent failure is counted here, a retryable
        failure is the caller's to retry (`retry_delay_s`) or give up on (`gave_up`). Needs `start`."""
        job = _Job(url=url, event_id=event_id, body=body)
        host = host_of(url)
        if (problem := self._egress.url_problem(url)) is not None:
            self._refused(job, host, problem)
            self.failed += 1
            return Outcome(done=True, delivered=False, error=REFUSED_BY_POLICY)
        async with self._slots:
            outcome = await self._attempt(job, host)
        if outcome.delivered:
            self.delivered += 1
        elif outcome.done:
            self.failed += 1
        return outcome

    def retry_delay_s(self, number: int, outcome: Outcome) -> float:
        """The wait after failed attempt `number` (1 for the first): the receiver's Retry-After, capped,
        else the backoff's draw."""
        if outcome.retry_after_s is not None:
            return min(outcome.retry_after_s, self.backoff.cap_s)
        return self.backoff.delay_s(number, self._rng)

    def gave_up(self, event_id: str, url: str, attempts: int) -> None:
        """The caller's retries of an event are spent: counted and logged as `send`'s are."""
        self.failed += 1
        log.error("webhook %s to %s: gave up after %d attempts", event_id, host_of(url), attempts)

    async def _run(self) -> None:
        while True:
            job = await self._queue.get()
            task = asyncio.create_task(self._deliver(job), name=f"webhook {job.event_id}")
            self._tasks.add(task)
            # A done callback rather than `finally` inside _deliver: a task cancelled before its first
            # step never runs its body, and its job must still be accounted for.
            task.add_done_callback(functools.partial(self._on_done, job=job))

    def _on_done(self, task: asyncio.Task[None], job: _Job) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            self.dropped += 1
            log.error("webhook %s to %s dropped: cancelled at shutdown", job.event_id, host_of(job.url))
        elif (exc := task.exception()) is not None:
            self.failed += 1
            log.error(
                "webhook %s to %s failed: unexpected %s",
                job.event_id,
                host_of(job.url),
                type(exc).__name__,
                exc_info=exc,
            )
        self._finished()

    def _finished(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0:
            self._idle.set()

    async def _deliver(self, job: _Job) -> None:
        host = host_of(job.url)
        # Judged again at send time: the URL was accepted under the settings of that moment (a schedule's,
        # maybe months ago), and an IP literal never reaches the resolver that guards host names.
        if (problem := self._egress.url_problem(job.url)) is not None:
            self._refused(job, host, problem)
            self.failed += 1
            return
        for number in range(1, self._max_attempts + 1):
            async with self._slots:
                outcome = await self._attempt(job, host)
            if outcome.delivered:
                self.delivered += 1
                return
            if outcome.done:
                self.failed += 1
                return
            if number == self._max_attempts:
                break
            delay = self.retry_delay_s(number, outcome)
            log.info("webhook %s to %s: retry %d in %.2f s", job.event_id, host, number, delay)
            await asyncio.sleep(delay)
        self.failed += 1
        log.error("webhook %s to %s: gave up after %d attempts", job.event_id, host, self._max_attempts)

    async def _attempt(self, job: _Job, host: str) -> Outcome:
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            EVENT_ID_HEADER: job.event_id,
            # Signed per attempt: a retry hours later must still pass the receiver's timestamp check.
            SIGNATURE_HEADER: sign(self._secret, job.body, int(time.time())),
        }
        assert self._session is not None, "attempts are made by the worker, which start() starts"
        try:
            # allow_redirects=False: a redirected POST would turn into a GET and lose the body, and its
            # Location would be a second URL for the policy to judge.
            async with self._session.post(
                job.url, data=job.body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                status = response.status
                retry_after = response.headers.get("Retry-After")
        except (aiohttp.InvalidURL, aiohttp.NonHttpUrlClientError) as exc:
            self._record(job, None, type(exc).__name__)
            log.error("webhook %s to %s failed: the callback URL is not usable", job.event_id, host)
            return Outcome(done=True, delivered=False, error=type(exc).__name__)
        except TimeoutError:
            # Before ClientError: aiohttp's timeout exceptions are both.
            self._record(job, None, "timeout")
            log.warning("webhook %s to %s: timed out", job.event_id, host)
            return Outcome(done=False, delivered=False, error="timeout")
        except aiohttp.ClientError as exc:
            # The guarded resolver's refusal arrives as the connector's error (its os_error).
            if isinstance(exc, aiohttp.ClientConnectorError) and isinstance(exc.os_error, EgressRefused):
                self._refused(job, host, str(exc.os_error))
                return Outcome(done=True, delivered=False, error=REFUSED_BY_POLICY)
            self._record(job, None, type(exc).__name__)
            log.warning("webhook %s to %s: %s", job.event_id, host, type(exc).__name__)
            return Outcome(done=False, delivered=False, error=type(exc).__name__)
        self._record(job, status, None)
        if 200 <= status < 300:
            log.info("webhook %s to %s: delivered (%d)", job.event_id, host, status)
            return Outcome(done=True, delivered=True)
        if status in RETRYABLE_STATUSES or status >= 500:
            log.warning("webhook %s to %s: status %d", job.event_id, host, status)
            return Outcome(
                done=False,
                delivered=False,
                retry_after_s=_retry_after_s(retry_after, time.time()),
                error=f"status {status}",
            )
        log.error("webhook %s to %s failed: status %d, not retried", job.event_id, host, status)
        return Outcome(done=True, delivered=False, error=f"status {status}")

    def _refused(self, job: _Job, host: str, reason: str) -> None:
        self._record(job, None, REFUSED_BY_POLICY)
        log.error("webhook %s to %s refused by the callback policy: %s", job.event_id, host, reason)

    def _record(self, job: _Job, status: int | None, error: str | None) -> None:
        self._attempts.append(
            Attempt(event_id=job.event_id, url=job.url, status=status, error=error, at=time.monotonic())
        )
