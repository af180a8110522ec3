"""The dashboard's sign-ins: one row per signed-in browser, in the database every process reads, so any
process of `serve --workers N` serves any page (a signed cookie alone could not be revoked everywhere at
sign-out without a table like this one anyway).

The cookie carries a random session id; the row is keyed by its SHA-256 (a copy of the table opens no
session). A row also carries a mark of the API token it was opened with: changing ANNOUNCER_API_TOKEN
signs every browser out.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from announcer.store.models import DashboardSession, utcnow


def id_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "replace")).hexdigest()


class DashboardSessions:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], token_mark: str) -> None:
        self.sessions = sessions
        self.token_mark = token_mark

    async def open(self, session_id: str, ttl: timedelta) -> datetime:
        """Store a new session (and drop the expired ones: sign-ins are rare, so that is cheap here);
        returns when it expires."""
        now = utcnow()
        expires = now + ttl
        async with self.sessions() as s:
            await s.execute(delete(DashboardSession).where(DashboardSession.expires_at < now))
            s.add(
                DashboardSession(
                    id_hash=id_hash(session_id),
                    token_mark=self.token_mark,
                    created_at=now,
                    expires_at=expires,
                )
            )
            await s.commit()
        return expires

    async def valid(self, session_id: str) -> bool:
        """Whether the id names a live session opened with the current API token (one primary-key read)."""
        async with self.sessions() as s:
            row = await s.scalar(
                select(DashboardSession.expires_at).where(
                    DashboardSession.id_hash == id_hash(session_id),
                    DashboardSession.token_mark == self.token_mark,
                )
            )
        return row is not None and row > utcnow()

    async def close(self, session_id: str) -> None:
        async with self.sessions() as s:
            await s.execute(delete(DashboardSession).where(DashboardSession.id_hash == id_hash(session_id)))
            await s.commit()
