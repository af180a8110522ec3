"""Measures read at scrape time from state the service keeps anyway: no work at all between scrapes.

Each source is a small protocol, so this module names what it reads without importing the modules that
keep it (they sit above it: telephony, deliveries).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sized
from dataclasses import dataclass
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class AdmissionState(Protocol):
    """deliveries/admission.py's `Admission`: the rate it settled at and what it measured."""

    cps: float
    lag_s: float
    backlog_s: float
    pending_starts: int

    @property
    def rate(self) -> float: ...


class ClockState(Protocol):
    """telephony/playout.py's `PlayoutClock`."""

    late_releases: int


class SpeakerState(Protocol):
    """speech/speaker.py's `Speaker`."""

    cache_hits: int
    cache_misses: int

    @property
    def in_flight(self) -> int: ...


class TwilioState(Protocol):
    """telephony/calls.py's `TwilioCalls`."""

    placed: int

    @property
    def refusals(self) -> Mapping[int, int]: ...


class OutboxState(Protocol):
    """deliveries/notify.py's `OutcomeNotifier`."""

    webhooks_sent: int
    webhooks_failed: int
    webhook_retries: int


@dataclass(frozen=True)
class Sources:
    live: Sized  # telephony/live.py's `LiveCalls`: the media sessions live in this process
    clock: ClockState
    admission: AdmissionState
    speaker: SpeakerState
    twilio: TwilioState
    outbox: OutboxState


class StateCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        s = self.sources
        yield GaugeMetricFamily(
            "announcer_live_media_streams",
            "Media streams (calls being spoken to) live in this process",
            len(s.live),
        )
        yield CounterMetricFamily(
            "announcer_late_frame_waits",
            "Frames sent late: waits of the playout clock released 100 ms or more after they fell due (each "
            "holds back one call's next burst of frames; a caller may hear a gap)",
            s.clock.late_releases,
        )
        a = s.admission
        yield GaugeMetricFamily(
            "announcer_event_loop_lag_seconds",
            "How late the event loop woke a 20 ms timer, the worst of the last 250 ms window",
            a.lag_s,
        )
        yield GaugeMetricFamily(
            "announcer_db_write_backlog_seconds",
            "How long a database write waited to commit, the worst of the last 250 ms window",
            a.backlog_s,
        )
        yield GaugeMetricFamily(
            "announcer_streams_starting",
            "Media streams open that have not sent their first frame yet",
            a.pending_starts,
        )
        yield GaugeMetricFamily(
            "announcer_admission_rate_calls_per_second",
            "The dialing rate admission control settled at for this process (at most TWILIO_CPS)",
            a.rate,
        )
        yield GaugeMetricFamily("announcer_twilio_cps", "The TWILIO_CPS setting (calls per second)", a.cps)
        yield CounterMetricFamily(
            "announcer_calls_placed",
            "Calls Twilio accepted to create (rate() gives calls placed per second)",
            s.twilio.placed,
        )
        refusals = CounterMetricFamily(
            "announcer_twilio_refusals",
            "Call creations Twilio refused, by Twilio error code (the HTTP status when it gave none; 0: no "
            "answer or a network error)",
            labels=["code"],
        )
        for code, count in sorted(s.twilio.refusals.items()):
            refusals.add_metric([str(code)], count)
        yield refusals
        yield CounterMetricFamily(
            "announcer_tts_cache_hits",
            "Requests for a message's audio served from the cache (memory or disk), no TTS request",
            s.speaker.cache_hits,
        )
        yield CounterMetricFamily(
            "announcer_tts_cache_misses",
            "Syntheses started because the audio was not in the cache",
            s.speaker.cache_misses,
        )
        yield GaugeMetricFamily(
            "announcer_tts_syntheses_in_flight", "Syntheses running now", s.speaker.in_flight
        )
        o = s.outbox
        yield CounterMetricFamily(
            "announcer_outcome_webhooks_sent", "Outcome webhooks delivered (a 2xx answer)", o.webhooks_sent
        )
        yield CounterMetricFamily(
            "announcer_outcome_webhooks_failed",
            "Outcome webhooks given up: refused for good (a 4xx, the egress policy) or out of attempts",
            o.webhooks_failed,
        )
        yield CounterMetricFamily(
            "announcer_outcome_webhook_retries",
            "Outcome webhook attempts that failed and were scheduled again",
            o.webhook_retries,
        )
