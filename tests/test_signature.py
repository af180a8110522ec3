"""X-Twilio-Signature and TwiML, checked against Twilio's documented examples."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from announcer.telephony import twiml
from announcer.telephony.signature import SignatureChecker

# Twilio's request-validation example: token 12345, this URL and these params sign to this value.
DOC_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
DOC_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Caller": "+12349013030",
    "Digits": "1234",
    "From": "+12349013030",
    "To": "+18005551212",
}
DOC_SIGNATURE = "0/KCTR6DLpKmkAf8muzZqo1nDgQ="


def test_documented_signature_example() -> None:
    checker = SignatureChecker("12345", "https://mycompany.com")
    assert checker.valid(DOC_URL, DOC_PARAMS, DOC_SIGNATURE)
    assert not checker.valid(DOC_URL, {**DOC_PARAMS, "Digits": "9"}, DOC_SIGNATURE)
    assert not checker.valid(DOC_URL, DOC_PARAMS, None)
    assert not SignatureChecker("54321", "https://mycompany.com").valid(DOC_URL, DOC_PARAMS, DOC_SIGNATURE)


def test_connect_stream_twiml_is_escaped_and_ends_with_hangup() -> None:
    doc = twiml.connect_stream("wss://example.org/twilio/media", {"token": 'a"b<c>&d'})
    root = ET.fromstring(doc)
    assert [child.tag for child in root] == ["Connect", "Hangup"]
    stream = root.find("Connect/Stream")
    assert stream is not None and stream.get("url") == "wss://example.org/twilio/media"
    param = root.find("Connect/Stream/Parameter")
    assert param is not None and param.get("name") == "token" and param.get("value") == 'a"b<c>&d'
    assert "<Pause" not in doc


def test_say_fallback_escapes_text() -> None:
    root = ET.fromstring(twiml.say_then_hangup("Fish & <chips>"))
    say = root.find("Say")
    assert say is not None and say.text == "Fish & <chips>" and say.get("voice") == "Polly.Joanna"
    assert [child.tag for child in root] == ["Say", "Hangup"]
