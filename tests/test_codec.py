"""The media-stream codec on the message shapes of protocols.md (as Twilio sends them)."""

from __future__ import annotations

import base64
import json

import pytest

from announcer.audio import FRAME_BYTES, SILENCE_FRAME
from announcer.telephony import codec

MZ = "MZ" + "a" * 32
CA = "CA" + "b" * 32
AC = "AC" + "c" * 32

START = {
    "event": "start",
    "sequenceNumber": "1",
    "streamSid": MZ,
    "start": {
        "accountSid": AC,
        "streamSid": MZ,
        "callSid": CA,
        "tracks": ["inbound"],
        "customParameters": {"token": "t0k"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
}
MEDIA = {
    "event": "media",
    "sequenceNumber": "2",
    "streamSid": MZ,
    "media": {
        "track": "inbound",
        "chunk": "1",
        "timestamp": "5",
        "payload": base64.b64encode(SILENCE_FRAME).decode(),
    },
}


def test_parses_every_inbound_event() -> None:
    assert codec.parse('{"event": "connected", "protocol": "Call", "version": "1.0.0"}') == codec.Connected(
        "Call", "1.0.0"
    )
    start = codec.parse(json.dumps(START))
    assert isinstance(start, codec.Start)
    assert (start.stream_sid, start.call_sid, start.account_sid) == (MZ, CA, AC)
    assert start.custom_parameters == {"token": "t0k"}
    media = codec.parse(json.dumps(MEDIA))
    assert isinstance(media, codec.Media) and media.payload == SILENCE_FRAME and media.chunk == 1
    dtmf = {
        "event": "dtmf",
        "sequenceNumber": "9",
        "streamSid": MZ,
        "dtmf": {"track": "inbound_track", "digit": "1"},
    }
    assert codec.parse(json.dumps(dtmf)) == codec.Dtmf(MZ, "1")
    mark = {"event": "mark", "sequenceNumber": "12", "streamSid": MZ, "mark": {"name": "end:42"}}
    assert codec.parse(json.dumps(mark)) == codec.Mark(MZ, "end:42")
    stop = {
        "event": "stop",
        "sequenceNumber": "40",
        "streamSid": MZ,
        "stop": {"accountSid": AC, "callSid": CA},
    }
    assert codec.parse(json.dumps(stop)) == codec.Stop(MZ, CA)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "expected an object"),
        ('{"event": "bogus", "streamSid": "' + MZ + '"}', "unknown event"),
        ('{"event": "mark", "streamSid": "' + MZ + '"}', "mark: expected an object"),
        ('{"event": "mark", "streamSid": "XX1", "mark": {"name": "a"}}', "not a MZ SID"),
        ('{"event": "dtmf", "streamSid": "' + MZ + '", "dtmf": {"digit": "12"}}', "is not a key"),
        ('{"event": "media", "streamSid": "' + MZ + '", "media": {"payload": "@@@"}}', "not base64"),
        ('{"event": "start", "start": {"streamSid": "' + MZ + '"}}', "callSid"),
    ],
)
def test_malformed_messages_raise_one_protocol_error(raw: str, problem: str) -> None:
    with pytest.raises(codec.ProtocolError, match=problem):
        codec.parse(raw)


def test_media_fast_path_recognises_twilio_order_only() -> None:
    assert codec.is_media(json.dumps(MEDIA))
    assert codec.is_media('{"event":"media","sequenceNumber":"3"}')
    assert not codec.is_media(json.dumps(START))
    assert not codec.is_media('{"event": "mark", "mark": {"name": "media"}}')
    # "event" not first: no fast path, the full parse still recognises it
    reordered = json.dumps({"streamSid": MZ, "event": "media", "media": MEDIA["media"]})
    assert not codec.is_media(reordered)
    assert isinstance(codec.parse(reordered), codec.Media)


def test_outbound_messages_are_valid_json_of_the_documented_shape() -> None:
    payload = codec.encode_frame(SILENCE_FRAME)
    assert json.loads(codec.media_message(MZ, payload)) == {
        "event": "media",
        "streamSid": MZ,
        "media": {"payload": payload},
    }
    assert json.loads(codec.mark_message(MZ, "end:7")) == {
        "event": "mark",
        "streamSid": MZ,
        "mark": {"name": "end:7"},
    }
    assert json.loads(codec.clear_message(MZ)) == {"event": "clear", "streamSid": MZ}
    assert len(base64.b64decode(payload)) == FRAME_BYTES
    with pytest.raises(ValueError):
        codec.encode_frame(b"\xff" * 159)
    with pytest.raises(ValueError):
        codec.mark_message(MZ, 'bad"name')
