"""Twilio Media Streams messages: a pure codec (JSON text <-> typed values), no I/O.

Message shapes are those of protocols.md ("Media Streams websocket"). Malformed input raises one
`ProtocolError` naming what was wrong. Inbound `media` frames have a fast path: an announcement does not
need the caller's audio, so `is_media` recognises them without a JSON parse (design.md, "The hot path").
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from announcer.audio import FRAME_BYTES


class ProtocolError(Exception):
    """A media-stream message that does not follow the protocol."""


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom_parameters: dict[str, str] = field(default_factory=dict)
    encoding: str = "audio/x-mulaw"
    sample_rate: int = 8000
    channels: int = 1


@dataclass(frozen=True, slots=True)
class Media:
    stream_sid: str
    track: str
    chunk: int
    timestamp: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class Dtmf:
    stream_sid: str
    digit: str


@dataclass(frozen=True, slots=True)
class Mark:
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Stop:
    stream_sid: str
    call_sid: str


Inbound = Connected | Start | Media | Dtmf | Mark | Stop

_MEDIA_PREFIX = '{"event":"media",'
_LEADING_EVENT = re.compile(r'\s*\{\s*"event"\s*:\s*"(\w+)"')
_SID = re.compile(r"^[A-Z]{2}[0-9a-fA-F]{32}$")
_DIGITS = frozenset("0123456789*#ABCDabcdw")
_MARK_NAME = re.compile(r"^[\w:.\-]{1,128}$")


def is_media(raw: str) -> bool:
    """True when `raw` is an inbound `media` message whose `event` key comes first (Twilio's order).

    Recognised without parsing the JSON. False means "parse it": a peer that orders keys differently
    still works, through `parse`, just without the fast path.
    """
    if raw.startswith(_MEDIA_PREFIX):  # Twilio's own spelling, byte for byte: no regex needed
        return True
    m = _LEADING_EVENT.match(raw)
    return m is not None and m.group(1) == "media"


_PAYLOAD_KEY = '"payload":'
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")


def media_payload(raw: str) -> str | None:
    """The base64 payload of an inbound `media` message, found without parsing the JSON (agent mode
    relays it as is, 50 times a second per call); None when it is not plainly there and valid base64."""
    at = raw.find(_PAYLOAD_KEY)
    if at < 0:
        return None
    start = raw.find('"', at + len(_PAYLOAD_KEY))
    end = raw.find('"', start + 1)
    if start < 0 or end < 0 or raw[at + len(_PAYLOAD_KEY) : start].strip():
        return None
    payload = raw[start + 1 : end]
    if len(payload) % 4 or not _BASE64.fullmatch(payload):
        return None
    return payload


def _obj(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"{where}: expected an object")
    return value


def _str(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise ProtocolError(f"{where}.{key}: expected a non-empty string")
    return value


def _sid(obj: dict[str, Any], key: str, where: str, prefix: str) -> str:
    value = _str(obj, key, where)
    if not value.startswith(prefix) or not _SID.match(value):
        raise ProtocolError(f"{where}.{key}: {value[:40]!r} is not a {prefix} SID")
    return value


_MAX_NUMBER = 2**53  # what a JSON peer can count to exactly; Twilio's counters stay far below


def _int_str(obj: dict[str, Any], key: str, where: str) -> int:
    """A counter Twilio sends as a string of ASCII digits ("²" is a digit to str.isdigit)."""
    value = obj.get(key)
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 16:
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_NUMBER:
        return value
    raise ProtocolError(f"{where}.{key}: expected a number as a string")


def parse(raw: str | bytes) -> Inbound:
    """Parse one inbound text frame into a typed event."""
    try:
        msg = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ProtocolError(f"not JSON: {err}") from None
    except RecursionError:
        raise ProtocolError("not JSON: nested too deeply") from None
    msg = _obj(msg, "message")
    event = msg.get("event")
    if event == "connected":
        return Connected(protocol=str(msg.get("protocol", "")), version=str(msg.get("version", "")))
    if event == "start":
        start = _obj(msg.get("start"), "start")
        stream_sid = _sid(start, "streamSid", "start", "MZ")
        if "streamSid" in msg and msg["streamSid"] != stream_sid:
            raise ProtocolError("streamSid differs between the message and start")
        tracks = start.get("tracks", ["inbound"])
        if not isinstance(tracks, list) or not all(isinstance(t, str) for t in tracks):
            raise ProtocolError("start.tracks: expected a list of strings")
        params = start.get("customParameters") or {}
        if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
            raise ProtocolError("start.customParameters: expected an object of strings")
        fmt = _obj(start.get("mediaFormat", {}), "start.mediaFormat")
        return Start(
            stream_sid=stream_sid,
            call_sid=_sid(start, "callSid", "start", "CA"),
            account_sid=_sid(start, "accountSid", "start", "AC"),
            tracks=tuple(tracks),
            custom_parameters=dict(params),
            encoding=str(fmt.get("encoding", "audio/x-mulaw")),
            sample_rate=_int_str(fmt, "sampleRate", "start.mediaFormat") if "sampleRate" in fmt else 8000,
            channels=_int_str(fmt, "channels", "start.mediaFormat") if "channels" in fmt else 1,
        )
    stream_sid = _sid(msg, "streamSid", event if isinstance(event, str) else "message", "MZ")
    if event == "media":
        media = _obj(msg.get("media"), "media")
        try:
            payload = base64.b64decode(_str(media, "payload", "media"), validate=True)
        except binascii.Error as err:
            raise ProtocolError(f"media.payload: not base64 ({err})") from None
        return Media(
            stream_sid=stream_sid,
            track=str(media.get("track", "inbound")),
            chunk=_int_str(media, "chunk", "media") if "chunk" in media else 0,
            timestamp=_int_str(media, "timestamp", "media") if "timestamp" in media else 0,
            payload=payload,
        )
    if event == "dtmf":
        digit = _str(_obj(msg.get("dtmf"), "dtmf"), "digit", "dtmf")
        if len(digit) != 1 or digit not in _DIGITS:
            raise ProtocolError(f"dtmf.digit: {digit[:8]!r} is not a key")
        return Dtmf(stream_sid=stream_sid, digit=digit)
    if event == "mark":
        name = _str(_obj(msg.get("mark"), "mark"), "name", "mark")
        if not _MARK_NAME.match(name):  # Twilio echoes only the marks we sent, and we send only these
            raise ProtocolError(f"mark.name: {name[:40]!r} is not a mark this service sends")
        return Mark(stream_sid=stream_sid, name=name)
    if event == "stop":
        stop = msg.get("stop")
        call_sid = _obj(stop, "stop").get("callSid", "") if stop is not None else ""
        return Stop(stream_sid=stream_sid, call_sid=str(call_sid))
    raise ProtocolError(f"unknown event {str(event)[:32]!r}")


# --- outbound (to Twilio) -------------------------------------------------------------------------
# Built by concatenation: these run 50 times a second per call. The stream SID is validated once at
# `start` (it matches _SID, so it needs no JSON escaping) and payloads are base64 (no escaping needed).


def media_message(stream_sid: str, payload_b64: str) -> str:
    return '{"event":"media","streamSid":"' + stream_sid + '","media":{"payload":"' + payload_b64 + '"}}'


def mark_message(stream_sid: str, name: str) -> str:
    if not _MARK_NAME.match(name):
        raise ValueError(f"mark name {name!r} must be 1-128 word characters, ':', '.' or '-'")
    return '{"event":"mark","streamSid":"' + stream_sid + '","mark":{"name":"' + name + '"}}'


def clear_message(stream_sid: str) -> str:
    return '{"event":"clear","streamSid":"' + stream_sid + '"}'


def encode_frame(frame: bytes) -> str:
    if len(frame) != FRAME_BYTES:
        raise ValueError(f"a media frame is {FRAME_BYTES} bytes, got {len(frame)}")
    return base64.b64encode(frame).decode("ascii")
