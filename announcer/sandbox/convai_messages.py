"""ElevenLabs Agents (Conversational AI) websocket messages, server side: pure encode/parse, no I/O.

Shapes as protocols.md ("Agents (Conversational AI) websocket") and the `elevenlabs` SDK's own client
(`elevenlabs/conversational_ai/conversation.py`) use them: every server message names itself in `type`
and carries its payload in `<type>_event` (the transcript's is `user_transcription_event`).  A client
message that is not one of the documented ones raises `ConvAIProtocolError` naming what was wrong.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

ULAW_8000 = "ulaw_8000"


class ConvAIProtocolError(ValueError):
    """A client message the agent cannot use; the text says why."""


# -- client -> server -------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class InitiationData:
    config_override: dict[str, Any] | None
    dynamic_variables: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class UserAudio:
    audio: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    event_id: int


@dataclass(frozen=True, slots=True)
class ContextualUpdate:
    text: str


@dataclass(frozen=True, slots=True)
class UserActivity:
    """`user_activity` / `user_message`: accepted and recorded, no effect on the scripted agent."""

    kind: str
    text: str | None = None


ClientMessage = InitiationData | UserAudio | Pong | ContextualUpdate | UserActivity


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConvAIProtocolError(f"{what} is not a JSON object")
    return value


def parse_client_message(text: str) -> ClientMessage:
    try:
        raw = json.loads(text)
    except ValueError as err:
        raise ConvAIProtocolError(f"message is not valid JSON ({err})") from err
    msg = _object(raw, "message")
    if "user_audio_chunk" in msg:  # the one message without a `type`
        chunk = msg["user_audio_chunk"]
        if not isinstance(chunk, str):
            raise ConvAIProtocolError("user_audio_chunk is not a base64 string")
        try:
            return UserAudio(base64.b64decode(chunk, validate=True))
        except binascii.Error as err:
            raise ConvAIProtocolError(f"user_audio_chunk is not valid base64 ({err})") from err
    kind = msg.get("type")
    if kind == "conversation_initiation_client_data":
        override = msg.get("conversation_config_override")
        if override is not None:
            override = _object(override, "conversation_config_override")
        variables = msg.get("dynamic_variables")
        variables = {} if variables is None else _object(variables, "dynamic_variables")
        return InitiationData(override, variables, msg)
    if kind == "pong":
        event_id = msg.get("event_id")
        if not isinstance(event_id, int) or isinstance(event_id, bool):
            raise ConvAIProtocolError(f"pong has no integer event_id (got {event_id!r})")
        return Pong(event_id)
    if kind == "contextual_update":
        update = msg.get("text")
        if not isinstance(update, str):
            raise ConvAIProtocolError("contextual_update has no text")
        return ContextualUpdate(update)
    if kind in ("user_activity", "user_message"):
        said = msg.get("text")
        return UserActivity(kind, said if isinstance(said, str) else None)
    raise ConvAIProtocolError(f"unknown message type {kind!r}")


# -- server -> client -------------------------------------------------------------------------------
def _dumps(kind: str, event: dict[str, Any], event_key: str | None = None) -> str:
    return json.dumps({"type": kind, event_key or f"{kind}_event": event}, separators=(",", ":"))


def initiation_metadata(conversation_id: str, output_format: str, input_format: str) -> str:
    return _dumps(
        "conversation_initiation_metadata",
        {
            "conversation_id": conversation_id,
            "agent_output_audio_format": output_format,
            "user_input_audio_format": input_format,
        },
    )


def audio(chunk: bytes, event_id: int) -> str:
    return _dumps("audio", {"audio_base_64": base64.b64encode(chunk).decode("ascii"), "event_id": event_id})


def agent_response(text: str) -> str:
    return _dumps("agent_response", {"agent_response": text})


def agent_response_correction(original: str, corrected: str) -> str:
    return _dumps(
        "agent_response_correction",
        {"original_agent_response": original, "corrected_agent_response": corrected},
    )


def user_transcript(text: str) -> str:
    return _dumps("user_transcript", {"user_transcript": text}, "user_transcription_event")


def interruption(event_id: int) -> str:
    return _dumps("interruption", {"event_id": event_id})


def ping(event_id: int, ping_ms: int | None) -> str:
    # ping_ms is the last measured round trip; null on the first ping (the SDK checks it before use)
    return _dumps("ping", {"event_id": event_id, "ping_ms": ping_ms})


# Sent by the `garbage` knob: what a client must survive without dropping the conversation.
GARBAGE_TEXT = (
    '{"type":"sandbox_unknown_event","sandbox_unknown_event_event":{"x":1}}',
    '{"type": "agent_response", "agent_response_event": {',  # malformed JSON
    '{"type":"ping","ping_event":{"ping_ms":12}}',  # ping without event_id
)
GARBAGE_BINARY = b"\x00\x01sandbox binary frame\xff"
