"""Database models: calls, their events (audit trail), single-use media-stream tokens, and the alerts
pipeline (alerts -> deliveries, one per recipient, each with its state history; opt-outs).

Times are stored as UTC; `UtcDateTime` gives them back timezone-aware on SQLite too (it keeps naive text).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from pydantic import BaseModel
from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from announcer.options import ScheduleOptions, StoredOptions, load

# The largest value of an INTEGER column on every database we run on (32-bit on PostgreSQL): ids and
# counters from outside are checked against it before they reach a query.
MAX_INT = 2**31 - 1


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database; use announcer.store.models.utcnow()")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


M = TypeVar("M", bound=BaseModel)


class OptionsJSON(TypeDecorator[M], Generic[M]):
    """Options as JSON in the row and as their model (announcer/options.py) everywhere else: read into the
    model as the row is read, leniently (`load`: old rows load as they behaved), and written from it, so
    no dict of options leaves the store."""

    impl = JSON
    cache_ok = True

    def __init__(self, model: type[M]) -> None:
        super().__init__()
        self.model = model

    def process_bind_param(self, value: M | None, dialect: Dialect) -> dict[str, Any] | None:
        if value is None:
            return None
        if not isinstance(value, self.model):
            raise TypeError(f"{self.model.__name__} expected, not {type(value).__name__}")
        return value.model_dump(mode="json")

    def process_result_value(self, value: Any, dialect: Dialect) -> M | None:
        return None if value is None else load(self.model, value)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UtcDateTime, dict[str, Any]: JSON}


class CallDirection(StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound-api"


class CallKind(StrEnum):
    GREETING = "greeting"
    ANNOUNCEMENT = "announcement"


class CallStatus(StrEnum):
    """Twilio's CallStatus values (protocols.md, status callback)."""

    QUEUED = "queued"
    INITIATED = "initiated"
    RINGING = "ringing"
    IN_PROGRESS = "in-progress"
    COMPLETED = "completed"
    BUSY = "busy"
    NO_ANSWER = "no-answer"
    FAILED = "failed"
    CANCELED = "canceled"


TERMINAL_STATUSES = frozenset(
    {CallStatus.COMPLETED, CallStatus.BUSY, CallStatus.NO_ANSWER, CallStatus.FAILED, CallStatus.CANCELED}
)
_RANK = {
    CallStatus.QUEUED: 0,
    CallStatus.INITIATED: 1,
    CallStatus.RINGING: 2,
    CallStatus.IN_PROGRESS: 3,
}


def status_rank(status: CallStatus) -> int:
    """Order of call statuses: a transition to a lower or equal rank would move a call backwards."""
    return _RANK.get(status, 4)


class CallOutcome(StrEnum):
    """What an answered call came to (the media session decides). Since machine detection (migration 0008)
    `heard` means a person (or Twilio's `unknown`, treated as one) heard the message to its end mark; an
    older row's `heard` may have been an answering machine that let the message play."""

    HEARD = "heard"
    CONFIRMED = "confirmed"  # pressed 1
    OPTED_OUT = "opted_out"  # pressed 9
    DECLINED = "declined"  # a reminder: pressed 2 to cancel
    SNOOZED = "snoozed"  # a reminder: pressed 3 to be called again later
    HUNG_UP_EARLY = "hung_up_early"
    SAID_BY_TWILIO = "said_by_twilio"
    AGENT = "agent"  # handed over to the conversational agent, which took the call
    FAILED = "failed"
    VOICEMAIL_LEFT = "voicemail_left"  # a machine: the whole voicemail message played after its greeting
    MACHINE = "machine"  # a machine, no message left (on_machine=hang_up, a full mailbox, it hung up)
    FAX = "fax"  # a fax answered


class AnsweredBy(StrEnum):
    """Twilio's AnsweredBy values (protocols.md, "Answering machine detection"). With `DetectMessageEnd` a
    machine is reported when its greeting ends (`machine_end_*`); `machine_start` only with `Enable`."""

    HUMAN = "human"
    MACHINE_START = "machine_start"
    MACHINE_END_BEEP = "machine_end_beep"
    MACHINE_END_SILENCE = "machine_end_silence"
    MACHINE_END_OTHER = "machine_end_other"
    FAX = "fax"
    UNKNOWN = "unknown"  # Twilio could not tell; treated as a person, as Twilio advises


class Call(Base):
    __tablename__ = "calls"
    # The dispatcher counts open calls before every claim, and the reconciler looks for quiet ones: both
    # ask about the few open calls, which must not mean a scan of every call ever made.
    __table_args__ = (Index("ix_calls_status_updated", "status", "updated_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_sid: Mapped[str | None] = mapped_column(String(34), unique=True)
    direction: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(16))
    from_number: Mapped[str] = mapped_column(String(32))
    to_number: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str | None] = mapped_column(String(24))
    # The rendered message stays here, keyed by call; URLs and TwiML carry only ids and tokens.
    text: Mapped[str] = mapped_column(Text, default="")
    # What the call came to, in facts (migration 0008; null when unknown, and in rows from before): who
    # answered as Twilio's machine detection said (AnsweredBy) and how long it took to say so
    # (MachineDetectionDuration), how much of the message played (from the marks Twilio echoed) of how
    # long it is, and the keys pressed, in order.
    answered_by: Mapped[str | None] = mapped_column(String(24))
    amd_ms: Mapped[int | None]
    played_ms: Mapped[int | None]
    message_ms: Mapped[int | None]
    keys: Mapped[str | None] = mapped_column(String(32))
    last_sequence: Mapped[int] = mapped_column(Integer, default=-1)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    answered_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    duration_s: Mapped[int | None]
    # An announcement's call is one attempt of one delivery (null for the greeting line).
    delivery_id: Mapped[int | None] = mapped_column(
        ForeignKey("deliveries.id", ondelete="SET NULL"), index=True
    )
    attempt: Mapped[int | None]

    events: Mapped[list[CallEvent]] = relationship(
        back_populates="call", order_by="CallEvent.id", cascade="all, delete-orphan"
    )


class CallEvent(Base):
    """One row per thing that happened to a call, in order: the audit trail."""

    __tablename__ = "call_events"
    __table_args__ = (Index("ix_call_events_call_id", "call_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)

    call: Mapped[Call] = relationship(back_populates="events")


class TranscriptTurn(Base):
    """One turn of an agent conversation: who spoke, what, when; an agent turn cut by the caller keeps
    how much of it was played before the cut (the marks Twilio echoed)."""

    __tablename__ = "transcript_turns"
    __table_args__ = (UniqueConstraint("call_id", "seq", name="uq_transcript_turns_call_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)  # the turn's place in the conversation, from 0
    at: Mapped[datetime] = mapped_column(default=utcnow)
    role: Mapped[str] = mapped_column(String(8))  # "agent" | "user"
    text: Mapped[str] = mapped_column(Text)
    original_text: Mapped[str | None] = mapped_column(Text)  # before an agent_response_correction
    interrupted: Mapped[bool] = mapped_column(default=False)
    played_ms: Mapped[int | None]  # an interrupted agent turn: audio played before the cut
    sent_ms: Mapped[int | None]  # ... and audio sent to Twilio by then


class StreamToken(Base):
    """A single-use token our TwiML hands to one media stream; only its hash is stored."""

    __tablename__ = "stream_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    call_id: Mapped[int] = mapped_column(ForeignKey("calls.id", ondelete="CASCADE"), index=True)
    issued_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class AlertStatus(StrEnum):
    ACTIVE = "active"  # deliveries still to be placed or finished
    COMPLETED = "completed"  # every delivery has its final outcome
    CANCELED = "canceled"


class DeliveryState(StrEnum):
    """design.md: pending -> queued -> dialing -> ringing -> in_progress -> a final outcome."""

    PENDING = "pending"  # accepted, not yet due (first attempt or a retry waiting for its time)
    QUEUED = "queued"  # due: waiting for a dialing slot
    DIALING = "dialing"  # claimed by a dispatcher (leased); the create-call request is on its way
    RINGING = "ringing"
    IN_PROGRESS = "in_progress"
    HEARD = "heard"
    CONFIRMED = "confirmed"
    HUNG_UP_EARLY = "hung_up_early"
    NO_ANSWER = "no_answer"
    BUSY = "busy"
    FAILED = "failed"
    CANCELED = "canceled"
    OPTED_OUT = "opted_out"
    DECLINED = "declined"  # a reminder the recipient canceled (key 2)
    SNOOZED = "snoozed"  # a reminder to be repeated later (key 3): a new delivery follows after snooze_s
    AGENT = "agent"  # the call was handed to the conversational agent (after the message, if any)
    VOICEMAIL_LEFT = "voicemail_left"  # an answering machine took the whole message (CallOutcome)
    MACHINE = "machine"  # an answering machine, no message left
    FAX = "fax"


FINAL_DELIVERY_STATES = frozenset(
    {
        DeliveryState.HEARD,
        DeliveryState.CONFIRMED,
        DeliveryState.HUNG_UP_EARLY,
        DeliveryState.NO_ANSWER,
        DeliveryState.BUSY,
        DeliveryState.FAILED,
        DeliveryState.CANCELED,
        DeliveryState.OPTED_OUT,
        DeliveryState.DECLINED,
        DeliveryState.SNOOZED,
        DeliveryState.AGENT,
        DeliveryState.VOICEMAIL_LEFT,
        DeliveryState.MACHINE,
        DeliveryState.FAX,
    }
)


class Alert(Base):
    """One accepted announcement: the request as given, and its recipients as deliveries."""

    __tablename__ = "alerts"
    # the dashboard's list: newest first, a page at a time (migration 0011)
    __table_args__ = (Index("ix_alerts_created", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # Idempotency-Key with a hash of the request body: the same key and body is the same alert.
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(16), default="api")
    template: Mapped[str | None] = mapped_column(String(255))
    template_text: Mapped[str | None] = mapped_column(Text)
    variables: Mapped[dict[str, Any]] = mapped_column(default=dict)
    options: Mapped[StoredOptions] = mapped_column(OptionsJSON(StoredOptions))
    callback_url: Mapped[str | None] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16), default=AlertStatus.ACTIVE)
    recipients: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class Delivery(Base):
    """One recipient of one alert: the truth about them, moved only forward (see DeliveryState)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        Index("ix_deliveries_alert", "alert_id", "position"),
        # the dispatcher's question: what is due, oldest first
        Index("ix_deliveries_due", "state", "next_attempt_at"),
        # "does this alert still have an open delivery?", asked at every outcome
        Index("ix_deliveries_alert_state", "alert_id", "state"),
        # the dashboard's overview: today's outcomes (migration 0011)
        Index("ix_deliveries_finished", "finished_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[str] = mapped_column(ForeignKey("alerts.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)  # the recipient's index in the request
    phone: Mapped[str] = mapped_column(String(32))  # E.164
    name: Mapped[str | None] = mapped_column(String(200))
    timezone: Mapped[str | None] = mapped_column(String(64))
    variables: Mapped[dict[str, Any]] = mapped_column(default=dict)
    text: Mapped[str] = mapped_column(Text)  # rendered before the alert was accepted
    # The template's `{% block voicemail %}`, rendered with the message; null: a machine gets the message
    # itself (no such block, and rows from before migration 0008).
    voicemail_text: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING)
    attempt: Mapped[int] = mapped_column(Integer, default=0)  # attempts dialed (or claimed) so far
    max_attempts: Mapped[int] = mapped_column(Integer, default=1)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_expires_at: Mapped[datetime | None]
    call_id: Mapped[int | None] = mapped_column(Integer)  # the current attempt's calls.id
    call_sid: Mapped[str | None] = mapped_column(String(34), index=True)
    outcome: Mapped[str | None] = mapped_column(String(24))
    outcome_code: Mapped[int | None]  # Twilio error code or SIP code behind a failure
    outcome_reason: Mapped[str | None] = mapped_column(String(400))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class DeliveryEvent(Base):
    """Every transition of a delivery (and every ignored one), in order: its state history."""

    __tablename__ = "delivery_events"
    __table_args__ = (Index("ix_delivery_events_delivery", "delivery_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[int] = mapped_column(ForeignKey("deliveries.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class OptOut(Base):
    """A number that pressed 9: no alert calls it again until it is removed through the API."""

    __tablename__ = "opt_outs"

    phone: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    delivery_id: Mapped[int | None]


class ScheduleStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    ENDED = "ended"  # a one-shot that fired, or a cron past its end
    DELETED = "deleted"  # kept (its occurrences point at it), never fired again


class OccurrenceStatus(StrEnum):
    UPCOMING = "upcoming"  # not yet due; its speech is being (or was) made ahead (see `detail`)
    FIRED = "fired"  # its alert was created: the deliveries say who was reached
    MISSED = "missed"  # the service was down at the time and the misfire policy did not run it
    FAILED = "failed"  # it could not become an alert (a template no longer renders)


class Schedule(Base):
    """A reminder to repeat or to make once: what to say to whom (as an alert) and when. The truth;
    APScheduler only keeps the time (see scheduling/)."""

    __tablename__ = "schedules"
    # A start, and the leader every few seconds, look up the active schedules whose arm_at is near.
    __table_args__ = (Index("ix_schedules_arm", "status", "arm_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    template: Mapped[str | None] = mapped_column(String(255))
    template_text: Mapped[str | None] = mapped_column(Text)
    variables: Mapped[dict[str, Any]] = mapped_column(default=dict)
    recipients: Mapped[dict[str, Any]] = mapped_column(default=dict)  # {"items": [...]} as given
    when: Mapped[dict[str, Any]] = mapped_column(default=dict)
    options: Mapped[ScheduleOptions] = mapped_column(OptionsJSON(ScheduleOptions))
    status: Mapped[str] = mapped_column(String(16), default=ScheduleStatus.ACTIVE)
    # The last planned fire time handled (fired, missed or failed): where a restart's catch-up starts.
    last_planned_at: Mapped[datetime | None]
    # An active schedule's next planned fire, and when the scheduler must hold it (that, less the
    # pre-synthesis lead): only what is near is armed in APScheduler. NULL when not active, or not
    # computed yet (rows from before migration 0006: the next start computes them).
    next_run_at: Mapped[datetime | None]
    arm_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class Occurrence(Base):
    """One planned fire of a schedule. (schedule_id, planned_at) is unique: a double fire, a second
    scheduler or a restart's catch-up can create it only once."""

    __tablename__ = "occurrences"
    __table_args__ = (Index("ux_occurrences_planned", "schedule_id", "planned_at", unique=True),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    schedule_id: Mapped[str] = mapped_column(ForeignKey("schedules.id", ondelete="CASCADE"))
    planned_at: Mapped[datetime]
    status: Mapped[str] = mapped_column(String(16))
    alert_id: Mapped[str | None] = mapped_column(String(40))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class OutboxState(StrEnum):
    PENDING = "pending"  # to be sent: due at next_attempt_at (claimed while lease_expires_at is set)
    SENT = "sent"  # the receiver answered 2xx
    FAILED = "failed"  # refused for good, or out of attempts: last_error says why


class OutboxEvent(Base):
    """One outcome webhook, written in the transaction of the outcome it reports (store/outbox.py) and
    sent from here: the exact body (signed at each attempt; the secret is never stored), its target and
    where its retries stand."""

    __tablename__ = "webhook_outbox"
    __table_args__ = (
        # the senders' question: what is due, oldest first
        Index("ix_webhook_outbox_due", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # X-Announcer-Event-Id: one row per event, whoever writes it and however often it is sent
    event_id: Mapped[str] = mapped_column(String(120), unique=True)
    url: Mapped[str] = mapped_column(String(2048))
    body: Mapped[str] = mapped_column(Text)  # the JSON as sent, byte for byte (ASCII)
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # made or begun (a claim counts one)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Set while a sender holds the row (an attempt in flight); the row is due again at next_attempt_at,
    # which the claim moved to the lease's end: a sender that dies gives its rows back by then.
    lease_expires_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(String(300))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]


class DashboardSession(Base):
    """A signed-in dashboard browser (store/dashboard_sessions.py). The cookie holds a random id; the row
    holds only its SHA-256, so the table read by someone else signs nobody in."""

    __tablename__ = "dashboard_sessions"

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    # A digest of the API token it was opened with: a new ANNOUNCER_API_TOKEN signs every browser out.
    token_mark: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(index=True)


# --- paging (migration 0012): people, rotations, escalation policies, integrations, incidents ------------
# The database is the truth of who is on call and where every incident's escalation stands: a restart (or
# another process) reads it back and goes on from there.


class Person(Base):
    """Someone who can be paged: a name, a number (E.164) and the zone their day is in."""

    __tablename__ = "people"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "pe_" + hex
    name: Mapped[str] = mapped_column(String(200))
    phone: Mapped[str] = mapped_column(String(32))
    timezone: Mapped[str] = mapped_column(String(64), default="UTC")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ShiftUnit(StrEnum):
    HOURS = "hours"  # elapsed time: a shift of 12 hours is 12 real hours, DST or not
    DAYS = "days"  # wall-clock: the hand-off is at handoff_time local, DST or not (a 23- or 25-hour day)
    WEEKS = "weeks"


class Rotation(Base):
    """People in order, each on call for one shift, handing off at `handoff_time` in `timezone`; the first
    shift (members[0]) starts on `start_date` at the hand-off time."""

    __tablename__ = "rotations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "ro_" + hex
    name: Mapped[str] = mapped_column(String(200))
    timezone: Mapped[str] = mapped_column(String(64))
    shift_length: Mapped[int] = mapped_column(Integer, default=1)
    shift_unit: Mapped[str] = mapped_column(String(8), default=ShiftUnit.WEEKS)
    handoff_time: Mapped[str] = mapped_column(String(5), default="09:00")  # "HH:MM", local
    start_date: Mapped[date]
    members: Mapped[list[str]] = mapped_column(JSON, default=list)  # person ids, in order (may repeat)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RotationOverride(Base):
    """A temporary change: `person_id` is on call for the rotation from `starts_at` until `ends_at`."""

    __tablename__ = "rotation_overrides"
    __table_args__ = (Index("ix_rotation_overrides_rotation", "rotation_id", "ends_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rotation_id: Mapped[str] = mapped_column(ForeignKey("rotations.id", ondelete="CASCADE"))
    person_id: Mapped[str] = mapped_column(ForeignKey("people.id", ondelete="CASCADE"))
    starts_at: Mapped[datetime]
    ends_at: Mapped[datetime]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EscalationPolicy(Base):
    """Ordered steps, each paging its targets and then waiting `delay_s` for an acknowledgement before the
    next; after the last step the policy starts again, `repeat` more times at most.

    `steps` is JSON: `[{"delay_s": 300, "targets": [{"type": "person", "id": "pe_..."},
    {"type": "rotation", "id": "ro_..."}]}, ...]` (validated by the API)."""

    __tablename__ = "escalation_policies"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "ep_" + hex
    name: Mapped[str] = mapped_column(String(200))
    repeat: Mapped[int] = mapped_column(Integer, default=0)
    steps: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class IntegrationKind(StrEnum):
    ALERTMANAGER = "alertmanager"  # Prometheus Alertmanager's webhook_config (version "4")
    GRAFANA = "grafana"  # Grafana alerting's webhook contact point
    JSON = "json"  # the plain form: title, summary, severity, dedup_key, status


class Integration(Base):
    """Where alerts come in from: a kind, the policy its incidents escalate by, and a secret of its own
    (only its SHA-256 is stored; the secret is shown once, when the integration is made)."""

    __tablename__ = "integrations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "in_" + hex
    name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    policy_id: Mapped[str] = mapped_column(ForeignKey("escalation_policies.id"))
    secret_hash: Mapped[str] = mapped_column(String(64))
    # On acknowledgement, silence the group at the source's Alertmanager this long (null: no silence).
    silence_s: Mapped[int | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class IncidentState(StrEnum):
    TRIGGERED = "triggered"  # escalating: pages go out step by step until someone acknowledges
    ACKNOWLEDGED = "acknowledged"  # someone has it: nobody else is paged
    RESOLVED = "resolved"  # over (the source said so, or a person did)


class Incident(Base):
    """A firing group (Alertmanager's groupKey, Grafana's, or the plain form's dedup_key) of one
    integration, and where its escalation stands: `round` (0 .. policy.repeat) and `step` of the page last
    sent, and when the next step is due (`next_step_at`, null unless triggered)."""

    __tablename__ = "incidents"
    __table_args__ = (
        # the escalator's question: which triggered incidents are due
        Index("ix_incidents_due", "state", "next_step_at"),
        Index("ix_incidents_created", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # "ic_" + hex
    integration_id: Mapped[str] = mapped_column(ForeignKey("integrations.id"))
    policy_id: Mapped[str] = mapped_column(ForeignKey("escalation_policies.id"))
    dedup_key: Mapped[str] = mapped_column(Text)  # groupKey / dedup_key as the source sent it
    # sha256(integration id, dedup key) while the incident is open (triggered or acknowledged), null once
    # resolved: unique, so a group has one open incident whoever receives its repeats.
    open_key: Mapped[str | None] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=IncidentState.TRIGGERED)
    title: Mapped[str] = mapped_column(String(500))
    summary: Mapped[str | None] = mapped_column(Text)
    severity: Mapped[str | None] = mapped_column(String(32))
    alert_count: Mapped[int] = mapped_column(Integer, default=1)  # alerts firing in the group, last told
    source_url: Mapped[str | None] = mapped_column(String(2048))  # Alertmanager's externalURL
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)  # labels, annotations, alerts (trimmed)
    round: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=-1)  # -1: no page sent yet
    next_step_at: Mapped[datetime | None]
    firing_since: Mapped[datetime | None]  # the earliest startsAt of its alerts
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    acknowledged_at: Mapped[datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    resolved_at: Mapped[datetime | None]


class IncidentEvent(Base):
    """One change of an incident, in order: its timeline. `kind`: triggered, repeated (the source sent the
    group again), paged, page_outcome, escalated, acknowledged, resolved, silenced...; `who` and `how`
    (key, api, dashboard, alertmanager, grafana, json, policy) say who did it and through what."""

    __tablename__ = "incident_events"
    __table_args__ = (Index("ix_incident_events_incident", "incident_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(32))
    who: Mapped[str | None] = mapped_column(String(200))
    how: Mapped[str | None] = mapped_column(String(32))
    detail: Mapped[dict[str, Any]] = mapped_column(default=dict)


class IncidentPage(Base):
    """One step's page of an incident: the alert that called the step's targets. (incident, round, step) is
    the primary key: a step is paged once, whichever process or restart gets to it."""

    __tablename__ = "incident_pages"

    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id", ondelete="CASCADE"), primary_key=True)
    round: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[str | None] = mapped_column(String(40), index=True)  # null: nobody to page
    targets: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # who, as resolved then
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
