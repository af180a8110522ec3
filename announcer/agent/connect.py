"""Reaching an ElevenLabs agent: a signed URL through the official SDK, then the websocket with aiohttp.

`conversational_ai.conversations.get_signed_url` sends `GET /v1/convai/conversation/get-signed-url`
(protocols.md; sdk-notes.md "signed URL"). The SDK would retry twice with ~1 s and ~2 s back-off: a caller
is waiting on the line, so one retry at most, inside a hard deadline. Every way of not getting a working
socket is one `AgentUnavailable` carrying a reason fit for the call's record (never the key or the URL's
signature).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import httpx

from announcer.speech.elevenlabs import LazyElevenLabs  # the SDK loads after the server listens

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 5.0


class AgentUnavailable(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class AgentConnector:
    """One SDK client and one aiohttp session for every agent conversation; closed by `aclose()`."""

    def __init__(self, api_key: str, base_url: str, *, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
        self._timeout_s = timeout_s
        self._sdk = LazyElevenLabs(api_key, base_url, timeout_s)
        # One socket per live conversation, all from this session: aiohttp's default pool of 100
        # connections held the 101st agent at its handshake (the caller in silence) until another
        # conversation ended (benchmarks/agent_bridge.py). MAX_CONCURRENT_CALLS bounds them instead.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def aclose(self) -> None:
        await self._session.close()
        await self._sdk.aclose()

    async def signed_url(self, agent_id: str) -> str:
        from elevenlabs.core.api_error import ApiError  # loaded with the client

        client = await self._sdk.get()
        try:
            async with asyncio.timeout(self._timeout_s):
                answer = await client.conversational_ai.conversations.get_signed_url(
                    agent_id=agent_id, request_options={"max_retries": 1}
                )
        except ApiError as err:
            raise AgentUnavailable(f"signed URL refused: HTTP {err.status_code}") from None
        except TimeoutError:  # before OSError: TimeoutError is one
            raise AgentUnavailable(f"signed URL request took over {self._timeout_s:g} s") from None
        except (httpx.HTTPError, OSError) as err:
            raise AgentUnavailable(f"signed URL request failed: {type(err).__name__}") from None
        url = getattr(answer, "signed_url", None)
        if not isinstance(url, str) or not url.startswith(("wss://", "ws://")):
            raise AgentUnavailable("signed URL answer holds no websocket URL")
        return url

    async def connect(self, agent_id: str) -> aiohttp.ClientWebSocketResponse:
        url = await self.signed_url(agent_id)
        try:
            # No permessage-deflate: audio in base64 barely compresses, and it costs CPU both ways.
            # The handshake has the signed URL's deadline too (the session's own default is 5 minutes).
            async with asyncio.timeout(self._timeout_s):
                return await self._session.ws_connect(
                    url,
                    timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                    autoping=True,
                    max_msg_size=4 * 2**20,
                    compress=0,
                )
        except aiohttp.WSServerHandshakeError as err:
            raise AgentUnavailable(f"agent websocket refused: HTTP {err.status}") from None
        except TimeoutError:  # before OSError: TimeoutError is one
            raise AgentUnavailable("agent websocket did not open in time") from None
        except (aiohttp.ClientError, OSError) as err:
            raise AgentUnavailable(f"agent websocket unreachable: {type(err).__name__}") from None
