"""The ConvAI codec and the media fast path the bridge relies on: what is read, and what is refused."""

from __future__ import annotations

import base64
import json

import pytest

from announcer.agent import protocol
from announcer.telephony import codec


def test_server_events_are_read_from_their_type_and_payload() -> None:
    audio = protocol.parse('{"type":"audio","audio_event":{"audio_base_64":"/w==","event_id":3}}')
    assert audio == protocol.Audio("/w==", 3)
    assert protocol.parse('{"type":"ping","ping_event":{"event_id":7,"ping_ms":null}}') == protocol.Ping(
        7, None
    )
    assert protocol.parse(
        '{"type":"interruption","interruption_event":{"event_id":4}}'
    ) == protocol.Interruption(4)
    said = '{"type":"user_transcript","user_transcription_event":{"user_transcript":"hi"}}'
    assert protocol.parse(said) == protocol.UserTranscript("hi")
    meta = protocol.parse(
        '{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":'
        '{"conversation_id":"c1","agent_output_audio_format":"ulaw_8000","user_input_audio_format":"pcm_16000"}}'
    )
    assert meta == protocol.Metadata("c1", "ulaw_8000", "pcm_16000")
    assert protocol.parse('{"type":"vad_score","vad_score_event":{}}') == protocol.Unknown("vad_score")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "object"),
        ('{"type": 5}', "type"),
        ('{"type":"ping","ping_event":{}}', "event_id"),
        ('{"type":"ping","ping_event":{"event_id":true}}', "event_id"),
        ('{"type":"audio","audio_event":{"event_id":1}}', "audio_base_64"),
        ('{"type":"agent_response"}', "agent_response_event"),
    ],
)
def test_malformed_events_are_refused_naming_why(raw: str, why: str) -> None:
    with pytest.raises(protocol.AgentProtocolError, match=why):
        protocol.parse(raw)


def test_client_messages_carry_only_the_overrides_given() -> None:
    bare = json.loads(protocol.initiation_message(prompt=None, first_message=None, dynamic_variables={}))
    assert bare == {"type": "conversation_initiation_client_data"}
    full = json.loads(
        protocol.initiation_message(prompt='say "hi"', first_message="Hello", dynamic_variables={"n": 1})
    )
    assert full["conversation_config_override"] == {
        "agent": {"prompt": {"prompt": 'say "hi"'}, "first_message": "Hello"}
    }
    assert full["dynamic_variables"] == {"n": 1}
    assert json.loads(protocol.pong_message(9)) == {"type": "pong", "event_id": 9}
    assert json.loads(protocol.user_audio_message("AAAA")) == {"user_audio_chunk": "AAAA"}


def test_the_media_payload_is_found_without_parsing_and_checked() -> None:
    payload = base64.b64encode(bytes(range(160))).decode()
    raw = (
        '{"event":"media","sequenceNumber":"3","streamSid":"MZ' + "a" * 32 + '",'
        '"media":{"track":"inbound","chunk":"2","timestamp":"20","payload":"' + payload + '"}}'
    )
    assert codec.media_payload(raw) == payload
    assert codec.media_payload(raw.replace(payload, 'ab\\"cd')) is None  # an escape: not plain base64
    assert codec.media_payload(raw.replace(payload, "a*b=")) is None
    assert codec.media_payload(raw.replace(payload, "abc")) is None  # not a whole base64 quantum
    assert codec.media_payload('{"event":"media"}') is None
