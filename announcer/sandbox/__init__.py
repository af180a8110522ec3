"""Loopback Twilio and ElevenLabs that speak the real wire protocols (protocols.md).

Used by sandbox mode (no credentials) and by the tests. Imports nothing from the service but
`announcer.audio`; the service imports it only from `app.py` when sandbox mode is on.
"""

from announcer.sandbox.amd import AnsweredBy
from announcer.sandbox.convai import DEFAULT_AGENT_ID, SandboxConvAI
from announcer.sandbox.convai_agent import AgentBehavior
from announcer.sandbox.convai_records import CloseReason, Conversation
from announcer.sandbox.elevenlabs import SandboxElevenLabs
from announcer.sandbox.speech_book import SpeechBook
from announcer.sandbox.twilio import (
    BargeIn,
    Callee,
    PhoneBehavior,
    RestRequest,
    SandboxCall,
    SandboxTwilio,
    WebhookRequest,
)
from announcer.sandbox.twilio_call import AmdResult, LineKind, SpokenLine

__all__ = [
    "DEFAULT_AGENT_ID",
    "AgentBehavior",
    "AmdResult",
    "AnsweredBy",
    "BargeIn",
    "Callee",
    "CloseReason",
    "Conversation",
    "LineKind",
    "PhoneBehavior",
    "RestRequest",
    "SandboxCall",
    "SandboxConvAI",
    "SandboxElevenLabs",
    "SandboxTwilio",
    "SpeechBook",
    "SpokenLine",
    "WebhookRequest",
]
