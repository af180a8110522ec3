"""A loopback ElevenLabs Agents (Conversational AI) endpoint: signed URLs and the conversation websocket.

Mounted on the same aiohttp app and port as `SandboxElevenLabs` (ELEVENLABS_BASE_URL is one base for
text to speech and agents), through its `extensions` hook.  Routes, as protocols.md describes them:

- `GET /v1/convai/conversation/get-signed-url?agent_id=...` (and the older `get_signed_url`), with
  `xi-api-key` checked -> `{"signed_url": "ws://<host>/v1/convai/conversation?agent_id=...&
  conversation_signature=..."}`; 401 for a bad key, 404 for an agent id the sandbox does not know.
  The real SDK's `conversational_ai.conversations.get_signed_url` works against it.
- `GET /v1/convai/conversation?agent_id=...` (websocket): a private agent needs a valid, unexpired
  signature (or an `xi-api-key` header); refused with 401/403 before the upgrade, as the real service
  refuses them.  Each conversation is a scripted agent (`convai_agent.AgentSession`) that recognises the
  caller's lines through the shared `SpeechBook`, and leaves a `Conversation` record for tests.

Knobs: `behavior` (an `AgentBehavior`, read when a conversation opens: first message, replies, failure
knobs) and `fail_signed_url` (401, 500, or a signed URL pointing at a closed port).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import logging
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlencode

from aiohttp import web

from announcer.sandbox.convai_agent import AgentBehavior, AgentSession
from announcer.sandbox.convai_records import Conversation
from announcer.sandbox.speech_book import SpeechBook

log = logging.getLogger(__name__)

DEFAULT_AGENT_ID = "sandbox-agent"
SIGNED_URL_TTL_S = 15 * 60  # ElevenLabs: a signed URL is valid for 15 minutes
HEARTBEAT_S = 20.0
CONVERSATION_PATH = "/v1/convai/conversation"


class SignedUrlFailure(StrEnum):
    UNAUTHORIZED = "unauthorized"  # 401 invalid_api_key
    SERVER_ERROR = "server_error"  # 500, plain-text body
    UNREACHABLE = "unreachable"  # 200, but the signed URL points at a closed port


@dataclass
class SignedUrlRequest:
    path: str
    agent_id: str | None
    received_at: float
    status: int = 0
    injected: SignedUrlFailure | None = None


class SandboxConvAI:
    """The agents endpoint; `install` it on an aiohttp app, `close` it before that app's cleanup."""

    def __init__(
        self,
        *,
        api_key: str,
        synthesize: Callable[[str], bytes],
        speech_book: SpeechBook,
        agent_ids: Iterable[str] = (DEFAULT_AGENT_ID,),
        public_agent_ids: Iterable[str] = (),
        speed: float = 1.0,
    ) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self._api_key = api_key
        self._synthesize = synthesize
        self.speech_book = speech_book
        self.private_agents = frozenset(agent_ids)
        self.public_agents = frozenset(public_agent_ids)
        self.speed = speed  # sandbox seconds per real second: how fast the caller's phone plays audio
        self.behavior = AgentBehavior()
        self.conversations: list[Conversation] = []
        self.signed_url_requests: list[SignedUrlRequest] = []
        self._secret = secrets.token_bytes(32)
        self._failures: collections.deque[SignedUrlFailure] = collections.deque()
        self._sessions: dict[str, AgentSession] = {}
        self._changed = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------------
    def install(self, app: web.Application) -> None:
        app.router.add_get("/v1/convai/conversation/get-signed-url", self._signed_url)
        app.router.add_get("/v1/convai/conversation/get_signed_url", self._signed_url)
        app.router.add_get(CONVERSATION_PATH, self._conversation)

    async def close(self) -> None:
        """Close every open conversation (1001), so the app's cleanup does not wait on them."""
        sessions = list(self._sessions.values())
        for session in sessions:
            await session.shutdown()

    # -- test controls -----------------------------------------------------------------------------
    def fail_signed_url(self, kind: str, times: int = 1) -> None:
        """The next `times` signed-URL requests (with a good key) fail as `kind` (SignedUrlFailure)."""
        self._failures.extend([SignedUrlFailure(kind)] * times)

    def end_conversation(self, conversation: Conversation) -> None:
        """The agent says its goodbye line (after what it is saying) and closes the socket."""
        session = self._sessions.get(conversation.conversation_id)
        if session is not None:
            session.end()

    async def wait_for_conversation(self, timeout: float, n: int = 1) -> Conversation:
        """Wait until `n` conversations have opened; return the `n`th."""
        await self.wait_until(lambda: len(self.conversations) >= n, timeout)
        return self.conversations[n - 1]

    async def wait_until(self, predicate: Callable[[], bool], timeout: float) -> None:
        """Wait until `predicate()` holds; re-checked when a request or conversation arrives or closes."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self._changed.wait()

    def sign(self, agent_id: str, expires: int | None = None) -> str:
        """A conversation_signature for `agent_id`: expiry and an HMAC over both."""
        expires = expires if expires is not None else int(time.time()) + SIGNED_URL_TTL_S
        mac = hmac.new(self._secret, f"{agent_id}\n{expires}".encode(), hashlib.sha256).hexdigest()
        return f"{expires}.{mac}"

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    # -- signed URL --------------------------------------------------------------------------------
    async def _signed_url(self, request: web.Request) -> web.Response:
        record = SignedUrlRequest(request.path, request.query.get("agent_id"), time.monotonic())
        self.signed_url_requests.append(record)
        self._pulse()
        response = self._answer_signed_url(request, record)
        record.status = response.status
        return response

    def _answer_signed_url(self, request: web.Request, record: SignedUrlRequest) -> web.Response:
        if not self._key_ok(request.headers.get("xi-api-key")):
            return _detail(401, "invalid_api_key", "Invalid API key")
        failure = self._failures.popleft() if self._failures else None
        record.injected = failure
        if failure is SignedUrlFailure.UNAUTHORIZED:
            return _detail(401, "invalid_api_key", "Invalid API key")
        if failure is SignedUrlFailure.SERVER_ERROR:
            return web.Response(status=500, text="Internal Server Error")
        agent_id = record.agent_id
        if agent_id is None:
            problem = {"loc": ["query", "agent_id"], "msg": "Field required", "type": "missing"}
            return web.json_response({"detail": [problem]}, status=422)
        if agent_id not in self.private_agents and agent_id not in self.public_agents:
            return _detail(404, "agent_not_found", f"Agent {agent_id} not found")
        host = request.host
        if failure is SignedUrlFailure.UNREACHABLE:
            host = f"127.0.0.1:{_closed_port()}"
        scheme = "wss" if request.scheme == "https" else "ws"
        query = urlencode({"agent_id": agent_id, "conversation_signature": self.sign(agent_id)})
        return web.json_response({"signed_url": f"{scheme}://{host}{CONVERSATION_PATH}?{query}"})

    def _key_ok(self, key: str | None) -> bool:
        return key is not None and hmac.compare_digest(key.encode(), self._api_key.encode())

    def _signature_ok(self, agent_id: str, signature: str) -> bool:
        expires, _, _ = signature.partition(".")
        if not expires.isdigit() or int(expires) < time.time():
            return False
        return hmac.compare_digest(signature.encode(), self.sign(agent_id, int(expires)).encode())

    # -- the conversation websocket ------------------------------------------------------------------
    async def _conversation(self, request: web.Request) -> web.StreamResponse:
        agent_id = request.query.get("agent_id", "")
        if agent_id not in self.private_agents and agent_id not in self.public_agents:
            return _detail(404, "agent_not_found", f"Agent {agent_id!r} not found")
        auth = "public"
        if agent_id in self.private_agents:
            signature = request.query.get("conversation_signature")
            if signature is not None:
                if not self._signature_ok(agent_id, signature):
                    return _detail(403, "invalid_signature", "Invalid or expired conversation signature")
                auth = "signature"
            elif self._key_ok(request.headers.get("xi-api-key")):
                auth = "api_key"
            else:
                return _detail(401, "authentication_required", "This agent requires a signed URL")
        ws = web.WebSocketResponse(heartbeat=HEARTBEAT_S)
        await ws.prepare(request)
        record = Conversation(
            conversation_id="conv_" + secrets.token_hex(12),
            agent_id=agent_id,
            authenticated_by=auth,
            opened_at=time.monotonic(),
        )
        session = AgentSession(
            ws=ws,
            request=request,
            record=record,
            behavior=self.behavior,
            book=self.speech_book,
            synthesize=self._synthesize,
            speed=self.speed,
        )
        self.conversations.append(record)
        self._sessions[record.conversation_id] = session
        self._pulse()
        try:
            await session.run()
        finally:
            self._sessions.pop(record.conversation_id, None)
            self._pulse()
        return ws


def _detail(status: int, code: str, message: str) -> web.Response:
    """ElevenLabs' error shape: {"detail": {"status": ..., "message": ...}}."""
    return web.json_response({"detail": {"status": code, "message": message}}, status=status)


def _closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
