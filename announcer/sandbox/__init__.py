"""Loopback Twilio and ElevenLabs that speak the real wire protocols (protocols.md).

Used by sandbox mode (no credentials) and by the tests. Imports nothing from the service but
`announcer.audio`; the service imports it only from `app.py` when sandbox mode is on.
"""

from announcer.sandbox.elevenlabs import SandboxElevenLabs
from announcer.sandbox.twilio import PhoneBehavior, RestRequest, SandboxCall, SandboxTwilio, WebhookRequest

__all__ = [
    "PhoneBehavior",
    "RestRequest",
    "SandboxCall",
    "SandboxElevenLabs",
    "SandboxTwilio",
    "WebhookRequest",
]
