"""Stream tokens issued by this process, kept in memory so a stream starts without a database round trip.

The database stays the authority (any process may receive any websocket, and a token is single-use
across all of them): a stream admitted from memory starts speaking at once while `CallStore.consume_token`
confirms in the background; if that fails (the token was used through another process) the stream is cut.
"""

from __future__ import annotations

import time

from announcer.store.calls import TOKEN_TTL, StreamGrant, hash_token

_MAX_ENTRIES = 100_000


class TokenBook:
    def __init__(self) -> None:
        self._grants: dict[str, tuple[float, StreamGrant]] = {}
        # Tokens taken here, until they expire: a replay to this process is refused without a race
        # against the background confirmation.
        self._taken: dict[str, float] = {}
        self._by_call: dict[str, str] = {}  # call SID -> its unused token's key

    def issued(self, token: str, grant: StreamGrant) -> None:
        if len(self._grants) + len(self._taken) >= _MAX_ENTRIES:
            self._expire()
        key = hash_token(token)
        self._grants[key] = (time.monotonic() + TOKEN_TTL.total_seconds(), grant)
        if grant.call_sid is not None:
            self._by_call[grant.call_sid] = key

    def call_ended(self, call_sid: str) -> None:
        """The call ended (a status callback said so): its token admits no stream from memory. The
        database refuses it too (`consume_token`), for a stream that reaches another process."""
        key = self._by_call.pop(call_sid, None)
        if key is not None:
            self._grants.pop(key, None)

    def take(self, token: str, call_sid: str) -> StreamGrant | None:
        """The grant for `token`, once; None when this process did not issue it (ask the database)."""
        key = hash_token(token)
        entry = self._grants.pop(key, None)
        if entry is None:
            return None
        expires, grant = entry
        if grant.call_sid is not None:
            self._by_call.pop(grant.call_sid, None)
        self._taken[key] = expires
        if expires < time.monotonic() or (grant.call_sid is not None and grant.call_sid != call_sid):
            return None
        return grant

    def taken_here(self, token: str) -> bool:
        expires = self._taken.get(hash_token(token))
        return expires is not None and expires >= time.monotonic()

    def _expire(self) -> None:
        now = time.monotonic()
        for key in [k for k, (expires, _) in self._grants.items() if expires < now]:
            del self._grants[key]
        self._by_call = {sid: key for sid, key in self._by_call.items() if key in self._grants}
        for key in [k for k, expires in self._taken.items() if expires < now]:
            del self._taken[key]
        # Still full of live tokens: drop the oldest, used ones first (a dict keeps insertion order).
        while self._taken and len(self._grants) + len(self._taken) >= _MAX_ENTRIES:
            del self._taken[next(iter(self._taken))]
        while len(self._grants) >= _MAX_ENTRIES:
            del self._grants[next(iter(self._grants))]
        if len(self._by_call) > len(self._grants):
            self._by_call = {sid: key for sid, key in self._by_call.items() if key in self._grants}
