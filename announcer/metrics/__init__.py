"""Prometheus `/metrics` (issue 16): what the service did and how it is keeping up, per process.

Two kinds of measure, chosen for what they cost on the hot path (1,000 calls of 50 frames a second per
core): nothing here runs per frame.

- **Events** (`registry.Metrics`): counters and histograms fed once per call or rarer (a call ended, a
  delivery finished, a first frame sent, a TTS request, a schedule fired).
- **State read at scrape time** (`state.StateCollector`): what the code keeps anyway (live streams, the
  playout clock's late frames, admission control's loop lag and rate, the speaker's cache counts, the
  Twilio client's placed calls and refusals, the webhook outbox's counts), read only when Prometheus asks;
  the dial queue depth is one count query per scrape (`route.metrics_handler`).

Each app has its own `CollectorRegistry` (never the global default: the tests run many apps in one
process, and `serve --workers N` runs one registry per process; each process is scraped on its own port).
"""

from announcer.metrics.registry import METRICS, Metrics
from announcer.metrics.route import Scrape, metrics_handler
from announcer.metrics.speech import MeteredSynthesizer
from announcer.metrics.state import Sources, StateCollector

__all__ = [
    "METRICS",
    "MeteredSynthesizer",
    "Metrics",
    "Scrape",
    "Sources",
    "StateCollector",
    "metrics_handler",
]
