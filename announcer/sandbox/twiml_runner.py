"""TwiML for the sandbox: parse a document (pure) and run its verbs on one call.

Supported, as Twilio runs them: `<Connect><Stream url><Parameter/></Stream></Connect>` (blocks until
the stream ends, then the next verb runs, or the `action` URL is fetched), `<Say>` (spoken with the
sandbox voice, paced on the phone clock), `<Pause length>`, `<Hangup/>` and `<Redirect>`.  Anything
else is an application error, as it would be for a caller hearing "an application error has occurred":
the announcer never sends it, so seeing it means a bug.

A REST update with `Twiml=`/`Url=` replaces the document being run: the sandbox cancels the task
running it (`SandboxCall._script_task`); a stream being run then sends `stop` and closes its socket,
a `<Say>` stops talking, and `converse` continues with the new document.
"""

from __future__ import annotations

import asyncio
import logging
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import aiohttp

from announcer.audio import cut_frames
from announcer.sandbox.media_stream import MediaStream
from announcer.sandbox.phone import Phone, PhoneClock
from announcer.sandbox.phone_voice import PhoneVoice
from announcer.sandbox.twilio_call import CallStatus, SandboxCall
from announcer.sandbox.twilio_webhooks import (
    HTTP_RETRIEVAL_FAILURE,
    WebhookClient,
    WebhookFailure,
    call_params,
)

log = logging.getLogger(__name__)

# Twilio debugger codes for bad TwiML
DOCUMENT_PARSE_FAILURE = 12100
SCHEMA_VALIDATION = 12200
INVALID_CONTENT_TYPE = 12300
TWIML_CONTENT_TYPES = frozenset({"text/xml", "application/xml"})
SAY_LOOP_FOREVER = 1000  # Twilio: loop="0" repeats until hang-up; it caps the repeats at 1000


@dataclass(frozen=True)
class FetchTwiml:
    """TwiML to be requested from the service (voice URL, <Redirect>, Connect action, REST `Url`)."""

    url: str
    method: str = "POST"
    kind: str = "voice"  # for the webhook log


@dataclass(frozen=True)
class InlineTwiml:
    """TwiML given directly (REST `Twiml=`)."""

    text: str


TwimlSource = FetchTwiml | InlineTwiml


class TwimlError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code} {message}")
        self.code = code


@dataclass(frozen=True)
class Say:
    text: str
    voice: str | None = None
    language: str | None = None
    loop: int = 1


@dataclass(frozen=True)
class Pause:
    length_s: float = 1.0


@dataclass(frozen=True)
class Hangup:
    pass


@dataclass(frozen=True)
class Redirect:
    url: str
    method: str = "POST"


@dataclass(frozen=True)
class ConnectStream:
    url: str
    parameters: tuple[tuple[str, str], ...] = ()
    action: str | None = None
    method: str = "POST"


Verb = Say | Pause | Hangup | Redirect | ConnectStream


# -- parsing (pure) ----------------------------------------------------------------------------
def parse_twiml(text: str) -> list[Verb]:
    """Parse and validate a whole document before running any of it (as Twilio does)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as err:
        raise TwimlError(DOCUMENT_PARSE_FAILURE, f"Document parse failure: {err}") from err
    if root.tag != "Response":
        raise TwimlError(DOCUMENT_PARSE_FAILURE, f"root element is <{root.tag}>, expected <Response>")
    return [_verb(el) for el in root]


def _schema(message: str) -> TwimlError:
    return TwimlError(SCHEMA_VALIDATION, f"Schema validation: {message}")


def _int_attr(el: ET.Element, name: str, default: int) -> int:
    raw = el.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _schema(f"<{el.tag} {name}={raw!r}> is not an integer") from None
    if value < 0:
        raise _schema(f"<{el.tag} {name}={raw!r}> is negative")
    return value


def _method(el: ET.Element) -> str:
    method = el.get("method", "POST").upper()
    if method not in ("GET", "POST"):
        raise _schema(f"<{el.tag} method={method!r}> must be GET or POST")
    return method


def _verb(el: ET.Element) -> Verb:
    tag = el.tag
    if tag == "Say":
        text = "".join(el.itertext()).strip()
        if not text:
            raise _schema("<Say> has no text")
        loop = _int_attr(el, "loop", 1)
        return Say(text, el.get("voice"), el.get("language"), loop or SAY_LOOP_FOREVER)
    if tag == "Pause":
        return Pause(float(_int_attr(el, "length", 1)))
    if tag == "Hangup":
        return Hangup()
    if tag == "Redirect":
        url = (el.text or "").strip()
        if not url:
            raise _schema("<Redirect> has no URL")
        return Redirect(url, _method(el))
    if tag == "Connect":
        children = list(el)
        if len(children) != 1 or children[0].tag != "Stream":
            found = ", ".join(f"<{c.tag}>" for c in children) or "nothing"
            raise _schema(f"<Connect> must hold exactly one <Stream> in the sandbox, found {found}")
        return _stream(children[0], el.get("action"), _method(el))
    if tag == "Play":
        raise _schema("<Play> is not supported by the sandbox")
    raise _schema(f"unknown verb <{tag}>")


def _stream(el: ET.Element, action: str | None, method: str) -> ConnectStream:
    url = el.get("url", "")
    if urlsplit(url).scheme not in ("ws", "wss") or not urlsplit(url).netloc:
        raise _schema(f"<Stream url={url!r}> must be an absolute ws:// or wss:// URL")
    params: list[tuple[str, str]] = []
    for child in el:
        if child.tag != "Parameter":
            raise _schema(f"<Stream> may only hold <Parameter>, found <{child.tag}>")
        name, value = child.get("name"), child.get("value")
        if not name or value is None:
            raise _schema("<Parameter> needs a name and a value")
        params.append((name, value))
    return ConnectStream(url, tuple(params), action, method)


def _absolute_http(url: str, base: str | None) -> str:
    full = urljoin(base, url) if base else url
    parts = urlsplit(full)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _schema(f"URL {url!r} is not an absolute http(s) URL")
    return full


# -- running -----------------------------------------------------------------------------------
class TwimlRunner:
    def __init__(
        self,
        *,
        webhooks: WebhookClient,
        session: aiohttp.ClientSession,
        clock: PhoneClock,
        synthesize: Callable[[str], bytes],
        on_answered: Callable[[SandboxCall], None],
        voice: PhoneVoice | None = None,
    ) -> None:
        self._webhooks = webhooks
        self._session = session
        self._clock = clock
        self._synthesize = synthesize
        self._voice = voice
        self._on_answered = on_answered

    async def converse(self, call: SandboxCall, phone: Phone, source: TwimlSource) -> None:
        """Run TwiML on an answered (or, inbound, ringing) call until it hangs up or runs out of verbs.
        The phone belongs to the caller of this (it lives from the answer to the end of the call)."""
        next_source: TwimlSource | None = source
        try:
            while next_source is not None and not call.is_ending():
                task = asyncio.create_task(self._run_document(call, phone, next_source))
                call._script_task = task
                try:
                    await asyncio.wait({task})
                except asyncio.CancelledError:
                    task.cancel()
                    await asyncio.wait({task})
                    raise
                finally:
                    call._script_task = None
                redirect, call._redirect_to = call._redirect_to, None
                if redirect is not None:
                    next_source = redirect
                elif task.cancelled():
                    next_source = None
                else:
                    next_source = task.result()
        finally:
            phone.stop_local()

    async def _run_document(self, call: SandboxCall, phone: Phone, source: TwimlSource) -> TwimlSource | None:
        """Run one document; return the next one to fetch (<Redirect>, Connect action) or None to hang up."""
        doc_url: str | None = None
        try:
            if isinstance(source, FetchTwiml):
                doc_url = source.url
                text = await self._fetch(call, source)
            else:
                text = source.text
            call.documents.append(text)
            verbs = parse_twiml(text)
            if call.status is CallStatus.RINGING:
                self._on_answered(call)  # an inbound call is answered when its TwiML arrives
            for verb in verbs:
                match verb:
                    case Say():
                        await self._say(call, phone, verb)
                    case Pause(length_s=length_s):
                        await asyncio.sleep(length_s / self._clock.speed)
                    case Hangup():
                        return None
                    case Redirect(url=url, method=method):
                        return FetchTwiml(_absolute_http(url, doc_url), method, "redirect")
                    case ConnectStream():
                        await self._connect_stream(call, phone, verb)
                        if verb.action:
                            return FetchTwiml(_absolute_http(verb.action, doc_url), verb.method, "action")
            return None
        except (TwimlError, WebhookFailure) as err:
            self._application_error(call, str(err))
            return None

    async def _fetch(self, call: SandboxCall, source: FetchTwiml) -> str:
        answer = await self._webhooks.send(
            kind=source.kind, call_sid=call.sid, url=source.url, method=source.method, form=call_params(call)
        )
        if not 200 <= answer.status < 300:
            raise TwimlError(
                HTTP_RETRIEVAL_FAILURE,
                f"HTTP retrieval failure: {source.method} {source.url} answered {answer.status}",
            )
        if answer.content_type not in TWIML_CONTENT_TYPES:
            raise TwimlError(
                INVALID_CONTENT_TYPE,
                f"Invalid Content-Type {answer.content_type!r} from {source.url} (TwiML is text/xml)",
            )
        return answer.body

    async def _say(self, call: SandboxCall, phone: Phone, verb: Say) -> None:
        call.said.append(verb.text)
        call.notify()
        try:
            audio = await asyncio.to_thread(self._synthesize, verb.text)
        except Exception as err:  # the sandbox voice failing is a sandbox bug, not the service's
            log.exception("call %s: <Say> synthesis failed", call.sid)
            raise TwimlError(SCHEMA_VALIDATION, f"sandbox voice failed on <Say>: {err!r}") from err
        frames = cut_frames(audio)
        for _ in range(verb.loop):
            done = phone.play_local(frames)
            try:
                await done
            except asyncio.CancelledError:
                phone.stop_local()  # interrupted (redirect, hang-up): stop talking now
                raise

    async def _connect_stream(self, call: SandboxCall, phone: Phone, verb: ConnectStream) -> None:
        stream = MediaStream(
            session=self._session,
            call=call,
            phone=phone,
            url=verb.url,
            parameters=dict(verb.parameters),
            signature=self._webhooks.sign(verb.url),  # an upgrade is signed over the URL alone
        )
        await stream.run()

    @staticmethod
    def _application_error(call: SandboxCall, message: str) -> None:
        log.warning("call %s: application error: %s", call.sid, message)
        call.application_errors.append(message)
        call.notify()
