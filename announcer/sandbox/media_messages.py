"""Twilio Media Streams messages as the sandbox phone speaks them: pure encode/validate, no I/O.

Phone -> service messages are built exactly as protocols.md ("Media Streams websocket") and Twilio's
"Media Streams - WebSocket Messages" page show them: `sequenceNumber`, `chunk` and `timestamp` are
strings, `connected` carries no sequence number, `start` is number 1.  Service -> phone messages
(`media`, `mark`, `clear`) are validated strictly; anything malformed raises `StreamProtocolError`,
which the phone reports as Twilio error 31951 ("Stream - Protocol - Invalid message").
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from announcer.audio import FRAME_BYTES, SAMPLE_RATE, SILENCE_FRAME

PROTOCOL_ERROR_CODE = 31951
# The phone's microphone is mostly silent: silent frames all carry this payload, encoded once.
SILENCE_PAYLOAD = base64.b64encode(SILENCE_FRAME).decode("ascii")


class StreamProtocolError(ValueError):
    """A message from the service that Twilio would reject with 31951; the text says what was wrong."""


@dataclass(frozen=True, slots=True)
class ServiceMedia:
    payload: bytes  # exactly FRAME_BYTES of mu-law


@dataclass(frozen=True, slots=True)
class ServiceMark:
    name: str


@dataclass(frozen=True, slots=True)
class ServiceClear:
    pass


ServiceMessage = ServiceMedia | ServiceMark | ServiceClear


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise StreamProtocolError(f"{what} is not a JSON object")
    return value


def parse_service_message(text: str, stream_sid: str) -> ServiceMessage:
    """Validate one text frame sent by the service on a bidirectional stream."""
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise StreamProtocolError(f"message is not valid JSON ({err})") from err
    msg = _object(raw, "message")
    event = msg.get("event")
    if not isinstance(event, str):
        raise StreamProtocolError("message has no 'event'")
    if event not in ("media", "mark", "clear"):
        raise StreamProtocolError(
            f"unknown event {event!r} (a bidirectional stream accepts media, mark, clear)"
        )
    sid = msg.get("streamSid")
    if sid != stream_sid:
        raise StreamProtocolError(f"{event} message has streamSid {sid!r}, expected {stream_sid!r}")
    if event == "clear":
        return ServiceClear()
    if event == "mark":
        name = _object(msg.get("mark"), "mark.mark").get("name")
        if not isinstance(name, str) or not name:
            raise StreamProtocolError("mark message has no mark.name")
        return ServiceMark(name)
    payload = _object(msg.get("media"), "media.media").get("payload")
    if not isinstance(payload, str):
        raise StreamProtocolError("media message has no media.payload string")
    try:
        audio = base64.b64decode(payload, validate=True)
    except binascii.Error as err:
        raise StreamProtocolError(f"media payload is not valid base64 ({err})") from err
    if len(audio) != FRAME_BYTES:
        raise StreamProtocolError(f"media payload is {len(audio)} bytes, expected {FRAME_BYTES}")
    return ServiceMedia(audio)


def _dumps(msg: dict[str, Any]) -> str:
    return json.dumps(msg, separators=(",", ":"))


def connected_message() -> str:
    return _dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start_message(
    seq: int, *, stream_sid: str, account_sid: str, call_sid: str, custom_parameters: dict[str, str]
) -> str:
    return _dumps(
        {
            "event": "start",
            "sequenceNumber": str(seq),
            "streamSid": stream_sid,
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "customParameters": custom_parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": SAMPLE_RATE, "channels": 1},
            },
        }
    )


def media_message(seq: int, *, stream_sid: str, chunk: int, timestamp_ms: int, payload_b64: str) -> str:
    # Hand-built rather than json.dumps: this is the hot path (50 messages a second per call, hundreds
    # of calls in a benchmark) and every field is a plain token that needs no escaping.
    return (
        f'{{"event":"media","sequenceNumber":"{seq}","streamSid":"{stream_sid}",'
        f'"media":{{"track":"inbound","chunk":"{chunk}","timestamp":"{timestamp_ms}",'
        f'"payload":"{payload_b64}"}}}}'
    )


def dtmf_message(seq: int, *, stream_sid: str, digit: str) -> str:
    return _dumps(
        {
            "event": "dtmf",
            "sequenceNumber": str(seq),
            "streamSid": stream_sid,
            "dtmf": {"track": "inbound_track", "digit": digit},
        }
    )


def mark_message(seq: int, *, stream_sid: str, name: str) -> str:
    return _dumps(
        {"event": "mark", "sequenceNumber": str(seq), "streamSid": stream_sid, "mark": {"name": name}}
    )


def stop_message(seq: int, *, stream_sid: str, account_sid: str, call_sid: str) -> str:
    return _dumps(
        {
            "event": "stop",
            "sequenceNumber": str(seq),
            "streamSid": stream_sid,
            "stop": {"accountSid": account_sid, "callSid": call_sid},
        }
    )
