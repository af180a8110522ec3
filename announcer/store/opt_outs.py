"""Opt-outs: numbers that pressed 9. No alert calls them again (checked at acceptance and again as each
delivery is claimed) until the number is removed through the API.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from announcer.store.delivery_rows import CHUNK, DeliveryRecords
from announcer.store.models import OptOut


class OptOutRecords(DeliveryRecords):
    async def remove_opt_out(self, phone: str) -> bool:
        async with self.sessions() as s:
            row = await s.get(OptOut, phone)
            if row is None:
                return False
            await s.delete(row)
            await s.commit()
            return True

    async def opted_out(self, phone: str) -> bool:
        async with self.sessions() as s:
            return await s.get(OptOut, phone) is not None


async def opted_out_among(s: AsyncSession, phones: Sequence[str]) -> set[str]:
    """Which of `phones` opted out (asked in chunks: an IN list stays bounded)."""
    out: set[str] = set()
    unique = list(dict.fromkeys(phones))
    for start in range(0, len(unique), CHUNK):
        rows = await s.execute(select(OptOut.phone).where(OptOut.phone.in_(unique[start : start + CHUNK])))
        out.update(rows.scalars())
    return out


async def record_opt_out(s: AsyncSession, phone: str, delivery_id: int, now: datetime) -> None:
    if await s.get(OptOut, phone) is None:
        s.add(OptOut(phone=phone, delivery_id=delivery_id, created_at=now))
