"""People, rotations (with their overrides) and escalation policies: who can be paged, and who a policy's
target is at a given instant.

SCAFFOLD: `resolve_targets` resolves person targets only; the on-call work completes it (rotations) and
adds the CRUD the API needs. The signatures below are a contract with the escalator (paging/escalator.py).
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from announcer.store.models import EscalationPolicy, Person, utcnow


@dataclass(frozen=True)
class PersonRow:
    id: str
    name: str
    phone: str  # E.164
    timezone: str


@dataclass(frozen=True)
class PolicyRow:
    id: str
    name: str
    repeat: int
    steps: list[dict[str, Any]]  # [{"delay_s": int, "targets": [{"type": "person"|"rotation", "id": str}]}]


def _person(p: Person) -> PersonRow:
    return PersonRow(p.id, p.name, p.phone, p.timezone)


class OncallStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def create_person(self, *, name: str, phone: str, timezone: str = "UTC") -> PersonRow:
        now = utcnow()
        row = Person(
            id="pe_" + secrets.token_hex(12),
            name=name,
            phone=phone,
            timezone=timezone,
            created_at=now,
            updated_at=now,
        )
        async with self.sessions() as s:
            s.add(row)
            await s.commit()
        return _person(row)

    async def create_policy(
        self, *, name: str, steps: Sequence[Mapping[str, Any]], repeat: int = 0
    ) -> PolicyRow:
        now = utcnow()
        row = EscalationPolicy(
            id="ep_" + secrets.token_hex(12),
            name=name,
            repeat=repeat,
            steps=[dict(step) for step in steps],
            created_at=now,
            updated_at=now,
        )
        async with self.sessions() as s:
            s.add(row)
            await s.commit()
        return PolicyRow(row.id, row.name, row.repeat, row.steps)

    async def policy(self, policy_id: str) -> PolicyRow | None:
        async with self.sessions() as s:
            row = await s.get(EscalationPolicy, policy_id)
            return None if row is None else PolicyRow(row.id, row.name, row.repeat, list(row.steps))

    async def resolve_targets(self, targets: Sequence[Mapping[str, Any]], at: datetime) -> list[PersonRow]:
        """The people `targets` name at instant `at`, in order, each once: a person target is that person;
        a rotation target is whoever is on call in it at `at` (an override first). A target that names
        nobody (a deleted person, an empty rotation) is left out."""
        ids = [t["id"] for t in targets if t.get("type") == "person"]
        async with self.sessions() as s:
            rows = {p.id: p for p in (await s.execute(select(Person).where(Person.id.in_(ids)))).scalars()}
        return [_person(rows[i]) for i in dict.fromkeys(ids) if i in rows]
