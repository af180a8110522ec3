"""ElevenLabs Conversational AI websocket messages: a pure codec (JSON text <-> typed values), no I/O.

Shapes are those of protocols.md ("Agents (Conversational AI) websocket"): the server names each event
in `type` and puts its payload in `<type>_event` (`user_transcript`'s is `user_transcription_event`).
`parse` raises `AgentProtocolError` for what cannot be read (malformed JSON, a known event missing a
field); an event of an unknown `type` is returned as `Unknown`, so the bridge can log it and go on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

ULAW_8000 = "ulaw_8000"


class AgentProtocolError(Exception):
    """A message from the agent that does not follow the protocol."""


@dataclass(frozen=True, slots=True)
class Metadata:
    conversation_id: str
    agent_output_audio_format: str
    user_input_audio_format: str


@dataclass(frozen=True, slots=True)
class Audio:
    audio_b64: str
    event_id: int | None


@dataclass(frozen=True, slots=True)
class Interruption:
    event_id: int | None


@dataclass(frozen=True, slots=True)
class Ping:
    event_id: int
    ping_ms: int | None


@dataclass(frozen=True, slots=True)
class AgentResponse:
    text: str


@dataclass(frozen=True, slots=True)
class AgentCorrection:
    original: str
    corrected: str


@dataclass(frozen=True, slots=True)
class UserTranscript:
    text: str


@dataclass(frozen=True, slots=True)
class Unknown:
    type: str


ServerEvent = (
    Metadata | Audio | Interruption | Ping | AgentResponse | AgentCorrection | UserTranscript | Unknown
)

# Events the bridge does not act on, but which are part of the protocol: not worth a warning.
QUIET_TYPES = frozenset(
    {"vad_score", "internal_tentative_agent_response", "agent_tool_response", "client_tool_call"}
)


def _payload(msg: dict[str, Any], kind: str, key: str | None = None) -> dict[str, Any]:
    key = key or f"{kind}_event"
    value = msg.get(key)
    if not isinstance(value, dict):
        raise AgentProtocolError(f"{kind}: {key} must be an object")
    return value


def _text(obj: dict[str, Any], key: str, kind: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise AgentProtocolError(f"{kind}: {key} must be a string")
    return value


def _event_id(obj: dict[str, Any], kind: str, *, required: bool) -> int | None:
    value = obj.get("event_id")
    if value is None and not required:
        return None
    # bool is an int in Python; an id of `true` is not one.
    if not isinstance(value, int) or isinstance(value, bool):
        raise AgentProtocolError(f"{kind}: event_id must be an integer")
    return value


def parse(raw: str) -> ServerEvent:
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise AgentProtocolError(f"not JSON ({str(err)[:60]})") from None
    if not isinstance(msg, dict):
        raise AgentProtocolError("a message must be a JSON object")
    kind = msg.get("type")
    if not isinstance(kind, str):
        raise AgentProtocolError("type must be a string")
    if kind == "audio":
        audio = _payload(msg, kind)
        return Audio(_text(audio, "audio_base_64", kind), _event_id(audio, kind, required=False))
    if kind == "ping":
        ping = _payload(msg, kind)
        ms = ping.get("ping_ms")
        return Ping(_event_id(ping, kind, required=True) or 0, ms if isinstance(ms, int) else None)
    if kind == "interruption":
        return Interruption(_event_id(_payload(msg, kind), kind, required=False))
    if kind == "agent_response":
        return AgentResponse(_text(_payload(msg, kind), "agent_response", kind))
    if kind == "agent_response_correction":
        fix = _payload(msg, kind)
        return AgentCorrection(
            _text(fix, "original_agent_response", kind), _text(fix, "corrected_agent_response", kind)
        )
    if kind == "user_transcript":
        return UserTranscript(_text(_payload(msg, kind, "user_transcription_event"), "user_transcript", kind))
    if kind == "conversation_initiation_metadata":
        meta = _payload(msg, kind)
        return Metadata(
            conversation_id=str(meta.get("conversation_id", "")),
            agent_output_audio_format=str(meta.get("agent_output_audio_format", "")),
            user_input_audio_format=str(meta.get("user_input_audio_format", "")),
        )
    return Unknown(kind[:64])


# --- client -> server ----------------------------------------------------------------------------


def initiation_message(
    *,
    prompt: str | None,
    first_message: str | None,
    dynamic_variables: dict[str, str | int | float | bool],
    language: str | None = None,
) -> str:
    """`conversation_initiation_client_data`: only the overrides actually given are sent (an override
    the agent does not allow makes ElevenLabs refuse the conversation)."""
    agent: dict[str, Any] = {}
    if prompt:
        agent["prompt"] = {"prompt": prompt}
    if first_message:
        agent["first_message"] = first_message
    if language:
        agent["language"] = language
    msg: dict[str, Any] = {"type": "conversation_initiation_client_data"}
    if agent:
        msg["conversation_config_override"] = {"agent": agent}
    if dynamic_variables:
        msg["dynamic_variables"] = dynamic_variables
    return json.dumps(msg, separators=(",", ":"))


def user_audio_message(payload_b64: str) -> str:
    # Built by concatenation: 50 a second per call. The payload is base64 (checked by the caller).
    return '{"user_audio_chunk":"' + payload_b64 + '"}'


def pong_message(event_id: int) -> str:
    return '{"type":"pong","event_id":' + str(int(event_id)) + "}"
