"""Opt-outs: numbers that pressed 9. No alert calls them again (checked at acceptance and again as each
delivery is claimed) until the number is removed through the API.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from announcer.store.delivery_rows import CHUNK, DeliveryRecords
from announcer.store.models import OptOut


@dataclass(frozen=True)
class OptOutView:
    phone: str
    created_at: datetime
    delivery_id: int | None  # the delivery whose call the key 9 was pressed in


class OptOutRecords(DeliveryRecords):
    async def opt_outs(self, *, after: str | None, limit: int) -> list[OptOutView]:
        """The opted-out numbers in order, `limit` of them, after the number `after` (a page's last)."""
        async with self.sessions() as s:
            query = select(OptOut).order_by(OptOut.phone).limit(limit)
            if after is not None:
                query = query.where(OptOut.phone > after)
            return [
                OptOutView(o.phone, o.created_at, o.delivery_id) for o in (await s.execute(query)).scalars()
            ]

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
