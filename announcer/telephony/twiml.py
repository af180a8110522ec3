"""TwiML documents, built with the twilio SDK's VoiceResponse (it XML-escapes every value)."""

from __future__ import annotations

from twilio.twiml.voice_response import VoiceResponse

# Twilio's own TTS voice for the degraded path (protocols.md: `<Say voice="Polly.Joanna">`).
FALLBACK_VOICE = "Polly.Joanna"
SORRY = "We are sorry, this line cannot take your call right now. Please try again later. Goodbye."


def connect_stream(ws_url: str, parameters: dict[str, str]) -> str:
    """A bidirectional media stream, then hang up when it ends (never `<Pause>` after `<Connect>`)."""
    response = VoiceResponse()
    stream = response.connect().stream(url=ws_url)
    for name, value in parameters.items():
        stream.parameter(name=name, value=value)
    response.hangup()
    return str(response.to_xml())


def say_then_hangup(text: str, voice: str = FALLBACK_VOICE) -> str:
    response = VoiceResponse()
    response.say(text, voice=voice)
    response.hangup()
    return str(response.to_xml())


def hangup() -> str:
    response = VoiceResponse()
    response.hangup()
    return str(response.to_xml())
