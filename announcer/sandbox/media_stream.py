"""The websocket side of `<Connect><Stream>`: the sandbox connects to the service as Twilio does.

Order on the wire (protocols.md, "Media Streams websocket"): `connected`, `start`, then one `media`
frame per 20 ms of the phone clock, `dtmf` when a key is pressed, `mark` echoes, and `stop` when the
call leaves the stream (hang-up, redirect, REST update).  When the *service* closes the socket the
stream is simply over and the TwiML after `</Connect>` runs (Twilio error 31921's page: "Twilio
resumes the remaining TwiML only after your server closes the WebSocket connection").

One reader (the task running `run`) and one writer task per socket.  Every outgoing message goes
through the writer's queue, numbered when queued, so `sequenceNumber` is strictly increasing on the
wire whoever produced the message (clock, `press`, mark echo, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

import aiohttp

from announcer.sandbox import media_messages as mm
from announcer.sandbox.phone import Phone
from announcer.sandbox.twilio_call import SandboxCall, new_sid

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
HEARTBEAT_S = 20.0
SHUTDOWN_TIMEOUT_S = 2.0


class MediaStream:
    """One bidirectional media stream of one call."""

    def __init__(
        self,
        *,
        session: aiohttp.ClientSession,
        call: SandboxCall,
        phone: Phone,
        url: str,
        parameters: dict[str, str],
        signature: str,
    ) -> None:
        self._session = session
        self._call = call
        self._phone = phone
        self._url = url
        self._parameters = parameters
        self._signature = signature
        self.stream_sid = new_sid("MZ")
        self._seq = 0
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._outbox: deque[str | asyncio.Future[None]] = deque()
        self._wake = asyncio.Event()
        self._writer_dead = False

    async def run(self) -> None:
        """Stream until the service closes the socket.  Cancel it to leave the stream: the service
        then gets `stop` and the socket is closed from this side."""
        call = self._call
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                ws = await self._session.ws_connect(
                    self._url,
                    headers={"X-Twilio-Signature": self._signature},
                    heartbeat=HEARTBEAT_S,
                    compress=0,  # Twilio does not negotiate permessage-deflate
                )
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            call.application_errors.append(
                f"31920 Stream - WebSocket - Handshake Error: could not connect to {self._url}: {err!r}"
            )
            call.notify()
            return
        self._ws = ws
        writer = asyncio.create_task(self._write_loop(ws), name=f"sandbox-stream-writer-{call.sid}")
        try:
            call.stream_sid = self.stream_sid
            call.custom_parameters = dict(self._parameters)
            self._send(mm.connected_message())
            self._send(
                mm.start_message(
                    self._next_seq(),
                    stream_sid=self.stream_sid,
                    account_sid=call.account_sid,
                    call_sid=call.sid,
                    custom_parameters=self._parameters,
                )
            )
            now = time.monotonic()
            call.start_sent_at = now
            call._stream = self
            self._phone.attach(self, now)
            call.notify()
            await self._read_loop(ws)
        finally:
            call._stream = None
            self._phone.detach()
            await self._shutdown(ws, writer)

    # -- called by the phone (synchronously, from the clock tick) --------------------------------
    def send_mic_frame(self, chunk: int, timestamp_ms: int, payload_b64: str | None) -> None:
        self._send(
            mm.media_message(
                self._next_seq(),
                stream_sid=self.stream_sid,
                chunk=chunk,
                timestamp_ms=timestamp_ms,
                payload_b64=mm.SILENCE_PAYLOAD if payload_b64 is None else payload_b64,
            )
        )

    def echo_mark(self, name: str) -> None:
        self._send(mm.mark_message(self._next_seq(), stream_sid=self.stream_sid, name=name))
        self._call.marks_echoed.append(name)
        self._call.notify()

    # -- called by the call handle -------------------------------------------------------------
    async def send_dtmf(self, digits: str) -> None:
        """One `dtmf` message per digit; returns once they were handed to the socket."""
        for digit in digits:
            self._send(mm.dtmf_message(self._next_seq(), stream_sid=self.stream_sid, digit=digit))
        await self._flush()

    # -- internals -----------------------------------------------------------------------------
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _send(self, text: str) -> None:
        if self._writer_dead:
            return
        self._outbox.append(text)
        self._wake.set()

    async def _flush(self) -> None:
        if self._writer_dead:
            return
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._outbox.append(done)
        self._wake.set()
        await done

    async def _write_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        outbox = self._outbox
        try:
            while True:
                if not outbox:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                item = outbox.popleft()
                if isinstance(item, asyncio.Future):
                    if not item.done():
                        item.set_result(None)
                    continue
                await ws.send_str(item)
        except (ConnectionError, aiohttp.ClientError) as err:
            # the service went away mid-write: the reader will see the close; drop what is left
            log.debug("call %s: stream write failed: %r", self._call.sid, err)
        finally:
            self._writer_dead = True
            for item in outbox:
                if isinstance(item, asyncio.Future) and not item.done():
                    item.set_result(None)
            outbox.clear()

    async def _read_loop(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        call = self._call
        async for msg in ws:  # ends when the service closes the socket
            if msg.type is aiohttp.WSMsgType.TEXT:
                self._handle_text(msg.data)
            elif msg.type is aiohttp.WSMsgType.BINARY:
                call.protocol_errors.append(
                    f"{mm.PROTOCOL_ERROR_CODE} binary frame of {len(msg.data)} bytes (messages are JSON text)"
                )
                call.notify()
            elif msg.type is aiohttp.WSMsgType.ERROR:
                log.warning("call %s: media stream error: %r", call.sid, ws.exception())
                return

    def _handle_text(self, text: str) -> None:
        if self._call.first_message_at is None:
            self._call.first_message_at = time.monotonic()
            self._call.notify()
        try:
            msg = mm.parse_service_message(text, self.stream_sid)
        except mm.StreamProtocolError as err:
            # Twilio drops the message and keeps the call up; we also keep a readable record of it
            self._call.protocol_errors.append(f"{mm.PROTOCOL_ERROR_CODE} {err}")
            self._call.notify()
            return
        now = time.monotonic()
        match msg:
            case mm.ServiceMedia(payload=payload):
                self._phone.receive_frame(payload, now)
            case mm.ServiceMark(name=name):
                self._phone.receive_mark(name, now)
            case mm.ServiceClear():
                self._call.clears += 1
                self._phone.receive_clear(now)

    async def _shutdown(self, ws: aiohttp.ClientWebSocketResponse, writer: asyncio.Task[None]) -> None:
        """Leave the stream: `stop` (unless the service already closed the socket), then close."""
        try:
            if not ws.closed:
                call = self._call
                self._send(
                    mm.stop_message(
                        self._next_seq(),
                        stream_sid=self.stream_sid,
                        account_sid=call.account_sid,
                        call_sid=call.sid,
                    )
                )
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SHUTDOWN_TIMEOUT_S):
                        await self._flush()
                        call.stop_sent_at = time.monotonic()  # written to the socket
                        call.notify()
                        await ws.close()
        finally:
            writer.cancel()
            await asyncio.wait({writer})  # unlike `await writer`, never swallows our own cancellation
            if not ws.closed:
                await ws.close()
