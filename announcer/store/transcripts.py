"""Transcript turns of agent conversations: written through the calls' journal (in order with the
call's event trail, one transaction per batch), read back for `GET /v1/calls/...`."""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any, cast

from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from announcer.store.journal import Batch, Journal
from announcer.store.models import TranscriptTurn

_TURNS = cast(Table, TranscriptTurn.__table__)
_UPDATE_TURN = (
    update(_TURNS)
    .where(_TURNS.c.call_id == bindparam("b_call_id"), _TURNS.c.seq == bindparam("b_seq"))
    .execution_options(synchronize_session=False)
)


def add_turn(journal: Journal, call_id: int, seq: int, role: str, text: str, at: datetime) -> None:
    journal.post(
        partial(_add, {"call_id": call_id, "seq": seq, "role": role, "text": text, "at": at}), call_id
    )


def change_turn(journal: Journal, call_id: int, seq: int, **values: Any) -> None:
    journal.post(partial(_change, call_id, seq, values), call_id)


async def turns(sessions: async_sessionmaker[AsyncSession], call_id: int) -> list[TranscriptTurn]:
    async with sessions() as s:
        rows = await s.execute(
            select(TranscriptTurn).where(TranscriptTurn.call_id == call_id).order_by(TranscriptTurn.seq)
        )
        return list(rows.scalars())


async def _add(row: dict[str, Any], b: Batch) -> None:
    b.insert(_TURNS, {"interrupted": False, "original_text": None, "played_ms": None, "sent_ms": None, **row})


async def _change(call_id: int, seq: int, values: dict[str, Any], b: Batch) -> None:
    # The row may still be queued in this very batch (inserts are written at its end): write them first.
    await b.write_rows()
    await b.session.execute(_UPDATE_TURN, {"b_call_id": call_id, "b_seq": seq, **values})
