"""People, rotations (with their overrides) and escalation policies: who can be paged, and who a policy's
target is at a given instant.

The signatures of `resolve_targets` and `policy`, and the PersonRow and PolicyRow fields, are a contract
with the escalator (paging/escalator.py). What a field may hold (a dialable number, a known zone, a step's
bounds) is checked by the API before it reaches here; what only the database knows is checked here:
every id a rotation or a policy names must exist (MissingReferences), and nothing is deleted while
something names it (InUse). The ids named are read FOR SHARE and a deleted row is locked FOR UPDATE before
its users are looked for (PostgreSQL): a delete and a new reference to the same row take turns, so a race
never leaves a reference to a row that is gone (SQLite has one connection: every transaction takes turns).

The rotation math is announcer/shifts.py: a leaf like options.py (pure, no I/O, imports nothing of the
service), the one place that says who is on call, so the escalator (through resolve_targets) and the API
get the same answer.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, TypeVar

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from announcer.shifts import Override, RotationSpec, Shifts, Stretch
from announcer.store.models import (
    EscalationPolicy,
    Integration,
    Person,
    Rotation,
    RotationOverride,
    utcnow,
)

Editable = TypeVar("Editable", Person, Rotation, EscalationPolicy)
R = TypeVar("R")


@dataclass(frozen=True)
class PersonRow:
    id: str
    name: str
    phone: str  # E.164
    timezone: str
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class PolicyRow:
    id: str
    name: str
    repeat: int
    steps: list[dict[str, Any]]  # [{"delay_s": int, "targets": [{"type": "person"|"rotation", "id": str}]}]
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class RotationRow:
    id: str
    name: str
    timezone: str
    shift_length: int
    shift_unit: str
    handoff_time: str
    start_date: date
    members: list[str]
    created_at: datetime
    updated_at: datetime

    def spec(self) -> RotationSpec:
        return RotationSpec(
            self.timezone,
            self.shift_length,
            self.shift_unit,
            self.handoff_time,
            self.start_date,
            self.members,
        )


@dataclass(frozen=True)
class OverrideRow:
    id: int
    rotation_id: str
    person_id: str
    starts_at: datetime
    ends_at: datetime
    created_at: datetime


@dataclass(frozen=True)
class OnCall:
    """A rotation at an instant: who is on call (`now`) and the stretch after (`next`), with the people
    they name (a person id not in `people`: deleted meanwhile)."""

    rotation: RotationRow
    now: Stretch
    next: Stretch | None
    people: dict[str, PersonRow]


class MissingReferences(Exception):
    """Ids a rotation or a policy names that do not exist: (field, reason) each, e.g.
    ("steps[1].targets[0].id", "no such person")."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(f"{f}: {r}" for f, r in self.problems))


class InUse(Exception):
    """A delete refused: something still names the row (the message says what)."""


def _person(p: Person) -> PersonRow:
    return PersonRow(p.id, p.name, p.phone, p.timezone, p.created_at, p.updated_at)


def _policy(p: EscalationPolicy) -> PolicyRow:
    return PolicyRow(p.id, p.name, p.repeat, [dict(s) for s in p.steps], p.created_at, p.updated_at)


def _rotation(r: Rotation) -> RotationRow:
    return RotationRow(
        r.id,
        r.name,
        r.timezone,
        r.shift_length,
        r.shift_unit,
        r.handoff_time,
        r.start_date,
        list(r.members),
        r.created_at,
        r.updated_at,
    )


def _override(o: RotationOverride) -> OverrideRow:
    return OverrideRow(o.id, o.rotation_id, o.person_id, o.starts_at, o.ends_at, o.created_at)


def rotation_math(row: RotationRow, overrides: Sequence[OverrideRow]) -> Shifts:
    return Shifts(
        row.spec(), [Override(o.id, o.person_id, o.starts_at, o.ends_at, o.created_at) for o in overrides]
    )


def _policy_targets(steps: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """(field, type, id) of every target of `steps`."""
    return [
        (f"steps[{i}].targets[{j}].id", str(t.get("type")), str(t.get("id")))
        for i, step in enumerate(steps)
        for j, t in enumerate(step.get("targets") or [])
    ]


class OncallStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.sessions = sessions

    async def _update(
        self,
        model: type[Editable],
        row_id: str,
        changes: Mapping[str, Any],
        view: Callable[[Editable], R],
        missing: Callable[[AsyncSession], Awaitable[list[tuple[str, str]]]] | None = None,
    ) -> R | None:
        """Set `changes` on the row (None: no such row), after `missing` found every id it names."""
        async with self.sessions() as s:
            row = await s.get(model, row_id, with_for_update=True)
            if row is None:
                return None
            if missing is not None and (problems := await missing(s)):
                raise MissingReferences(problems)
            for key, value in changes.items():
                setattr(row, key, value)
            row.updated_at = utcnow()
            await s.commit()
            return view(row)

    # --- people ------------------------------------------------------------------------------------------

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

    async def person(self, person_id: str) -> PersonRow | None:
        async with self.sessions() as s:
            row = await s.get(Person, person_id)
            return None if row is None else _person(row)

    async def people(self) -> list[PersonRow]:
        async with self.sessions() as s:
            rows = (await s.execute(select(Person).order_by(Person.created_at, Person.id))).scalars()
            return [_person(p) for p in rows]

    async def update_person(self, person_id: str, **changes: Any) -> PersonRow | None:
        """Set `changes` (name, phone, timezone); None: no such person."""
        return await self._update(Person, person_id, changes, _person)

    async def delete_person(self, person_id: str) -> bool:
        """False: no such person. InUse while a rotation, an override or a policy step names them."""
        async with self.sessions() as s:
            row = await s.get(Person, person_id, with_for_update=True)
            if row is None:
                return False
            users = [r.id for r in (await s.execute(select(Rotation))).scalars() if person_id in r.members]
            if users:
                raise InUse(
                    f"a member of rotation {users[0]}" + (f" and {len(users) - 1} more" if users[1:] else "")
                )
            override = (
                await s.execute(
                    select(RotationOverride.rotation_id)
                    .where(RotationOverride.person_id == person_id)
                    .limit(1)
                )
            ).scalar()
            if override is not None:
                raise InUse(f"named by an override of rotation {override}")
            if policy := await self._policy_naming(s, "person", person_id):
                raise InUse(f"a target of escalation policy {policy}")
            await s.delete(row)
            await s.commit()
            return True

    # --- rotations ---------------------------------------------------------------------------------------

    async def _missing_people(self, s: AsyncSession, ids: Sequence[str], field: str) -> list[tuple[str, str]]:
        known = set(
            (
                await s.execute(select(Person.id).where(Person.id.in_(set(ids))).with_for_update(read=True))
            ).scalars()
        )
        return [(f"{field}[{i}]", f"no such person {pid!r}") for i, pid in enumerate(ids) if pid not in known]

    async def create_rotation(
        self,
        *,
        name: str,
        timezone: str,
        shift_length: int,
        shift_unit: str,
        handoff_time: str,
        start_date: date,
        members: Sequence[str],
    ) -> RotationRow:
        """MissingReferences naming each member that is no person."""
        now = utcnow()
        row = Rotation(
            id="ro_" + secrets.token_hex(12),
            name=name,
            timezone=timezone,
            shift_length=shift_length,
            shift_unit=shift_unit,
            handoff_time=handoff_time,
            start_date=start_date,
            members=list(members),
            created_at=now,
            updated_at=now,
        )
        async with self.sessions() as s:
            if missing := await self._missing_people(s, members, "members"):
                raise MissingReferences(missing)
            s.add(row)
            await s.commit()
        return _rotation(row)

    async def rotation(self, rotation_id: str) -> RotationRow | None:
        async with self.sessions() as s:
            row = await s.get(Rotation, rotation_id)
            return None if row is None else _rotation(row)

    async def rotations(self) -> list[RotationRow]:
        async with self.sessions() as s:
            rows = (await s.execute(select(Rotation).order_by(Rotation.created_at, Rotation.id))).scalars()
            return [_rotation(r) for r in rows]

    async def update_rotation(self, rotation_id: str, **changes: Any) -> RotationRow | None:
        """Set `changes` (any of create_rotation's fields); None: no such rotation; MissingReferences."""
        if "members" in changes:
            changes["members"] = list(changes["members"])

        async def missing(s: AsyncSession) -> list[tuple[str, str]]:
            return await self._missing_people(s, changes.get("members", []), "members")

        return await self._update(Rotation, rotation_id, changes, _rotation, missing)

    async def delete_rotation(self, rotation_id: str) -> bool:
        """False: no such rotation. InUse while a policy step names it. Its overrides go with it."""
        async with self.sessions() as s:
            row = await s.get(Rotation, rotation_id, with_for_update=True)
            if row is None:
                return False
            if policy := await self._policy_naming(s, "rotation", rotation_id):
                raise InUse(f"a target of escalation policy {policy}")
            await s.execute(delete(RotationOverride).where(RotationOverride.rotation_id == rotation_id))
            await s.delete(row)
            await s.commit()
            return True

    # --- overrides ---------------------------------------------------------------------------------------

    async def add_override(
        self, rotation_id: str, *, person_id: str, starts_at: datetime, ends_at: datetime
    ) -> OverrideRow | None:
        """None: no such rotation; MissingReferences: no such person."""
        async with self.sessions() as s:
            if await s.get(Rotation, rotation_id, with_for_update={"read": True}) is None:
                return None
            if await s.get(Person, person_id, with_for_update={"read": True}) is None:
                raise MissingReferences([("person_id", f"no such person {person_id!r}")])
            row = RotationOverride(
                rotation_id=rotation_id,
                person_id=person_id,
                starts_at=starts_at,
                ends_at=ends_at,
                created_at=utcnow(),
            )
            s.add(row)
            await s.commit()
            return _override(row)

    async def overrides(self, rotation_id: str) -> list[OverrideRow]:
        """The rotation's overrides, in the order they were made (the later wins an overlap)."""
        async with self.sessions() as s:
            rows = await s.execute(
                select(RotationOverride)
                .where(RotationOverride.rotation_id == rotation_id)
                .order_by(RotationOverride.created_at, RotationOverride.id)
            )
            return [_override(o) for o in rows.scalars()]

    async def delete_override(self, rotation_id: str, override_id: int) -> bool:
        async with self.sessions() as s:
            result = await s.execute(
                delete(RotationOverride).where(
                    RotationOverride.rotation_id == rotation_id, RotationOverride.id == override_id
                )
            )
            await s.commit()
            return bool(getattr(result, "rowcount", 0))

    # --- escalation policies -----------------------------------------------------------------------------

    async def _missing_targets(
        self, s: AsyncSession, steps: Sequence[Mapping[str, Any]]
    ) -> list[tuple[str, str]]:
        targets = _policy_targets(steps)
        people = {i for _, t, i in targets if t == "person"}
        rotations = {i for _, t, i in targets if t == "rotation"}
        known = {
            ("person", i)
            for i in (
                await s.execute(select(Person.id).where(Person.id.in_(people)).with_for_update(read=True))
            ).scalars()
        } | {
            ("rotation", i)
            for i in (
                await s.execute(
                    select(Rotation.id).where(Rotation.id.in_(rotations)).with_for_update(read=True)
                )
            ).scalars()
        }
        return [(f, f"no such {t} {i!r}") for f, t, i in targets if (t, i) not in known]

    async def _policy_naming(self, s: AsyncSession, kind: str, target_id: str) -> str | None:
        for policy in (await s.execute(select(EscalationPolicy).order_by(EscalationPolicy.id))).scalars():
            if any(t == kind and i == target_id for _, t, i in _policy_targets(policy.steps)):
                return policy.id
        return None

    async def create_policy(
        self, *, name: str, steps: Sequence[Mapping[str, Any]], repeat: int = 0
    ) -> PolicyRow:
        """MissingReferences naming each target that does not exist (`steps[1].targets[0].id`)."""
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
            if missing := await self._missing_targets(s, steps):
                raise MissingReferences(missing)
            s.add(row)
            await s.commit()
        return _policy(row)

    async def policy(self, policy_id: str) -> PolicyRow | None:
        async with self.sessions() as s:
            row = await s.get(EscalationPolicy, policy_id)
            return None if row is None else _policy(row)

    async def policies(self) -> list[PolicyRow]:
        async with self.sessions() as s:
            rows = await s.execute(
                select(EscalationPolicy).order_by(EscalationPolicy.created_at, EscalationPolicy.id)
            )
            return [_policy(p) for p in rows.scalars()]

    async def update_policy(self, policy_id: str, **changes: Any) -> PolicyRow | None:
        """Set `changes` (name, steps, repeat); None: no such policy; MissingReferences."""
        if "steps" in changes:
            changes["steps"] = [dict(step) for step in changes["steps"]]

        async def missing(s: AsyncSession) -> list[tuple[str, str]]:
            return await self._missing_targets(s, changes.get("steps", []))

        return await self._update(EscalationPolicy, policy_id, changes, _policy, missing)

    async def delete_policy(self, policy_id: str) -> bool:
        """False: no such policy. InUse while an integration escalates by it."""
        async with self.sessions() as s:
            row = await s.get(EscalationPolicy, policy_id, with_for_update=True)
            if row is None:
                return False
            integration = (
                await s.execute(select(Integration.id).where(Integration.policy_id == policy_id).limit(1))
            ).scalar()
            if integration is not None:
                raise InUse(f"the policy of integration {integration}")
            await s.delete(row)
            await s.commit()
            return True

    # --- who is on call ----------------------------------------------------------------------------------

    async def _overrides_of(
        self, s: AsyncSession, rotation_ids: Sequence[str]
    ) -> dict[str, list[OverrideRow]]:
        found: dict[str, list[OverrideRow]] = {i: [] for i in rotation_ids}
        rows = await s.execute(
            select(RotationOverride)
            .where(RotationOverride.rotation_id.in_(set(rotation_ids)))
            .order_by(RotationOverride.created_at, RotationOverride.id)
        )
        for o in rows.scalars():
            found[o.rotation_id].append(_override(o))
        return found

    async def resolve_targets(self, targets: Sequence[Mapping[str, Any]], at: datetime) -> list[PersonRow]:
        """The people `targets` name at instant `at`, in order, each once: a person target is that person;
        a rotation target is whoever is on call in it at `at` (an override first). A target that names
        nobody (a deleted person, an empty rotation, one not started yet) is left out."""
        async with self.sessions() as s:
            rotation_ids = [str(t["id"]) for t in targets if t.get("type") == "rotation"]
            rotations = {
                r.id: _rotation(r)
                for r in (
                    await s.execute(select(Rotation).where(Rotation.id.in_(set(rotation_ids))))
                ).scalars()
            }
            overrides = await self._overrides_of(s, list(rotations))
            ids: list[str] = []
            for t in targets:
                if t.get("type") == "person":
                    ids.append(str(t["id"]))
                elif t.get("type") == "rotation" and (row := rotations.get(str(t["id"]))) is not None:
                    ids.extend(who for who in [rotation_math(row, overrides[row.id]).on_call(at)] if who)
            rows = {
                p.id: p for p in (await s.execute(select(Person).where(Person.id.in_(set(ids))))).scalars()
            }
        return [_person(rows[i]) for i in dict.fromkeys(ids) if i in rows]

    async def oncall(self, at: datetime, rotation_id: str | None = None) -> list[OnCall]:
        """Every rotation (or the one `rotation_id` names) at `at`: now and next, with their people."""
        async with self.sessions() as s:
            query = select(Rotation).order_by(Rotation.created_at, Rotation.id)
            if rotation_id is not None:
                query = query.where(Rotation.id == rotation_id)
            rotations = [_rotation(r) for r in (await s.execute(query)).scalars()]
            overrides = await self._overrides_of(s, [r.id for r in rotations])
            answers = []
            for row in rotations:
                now, after = rotation_math(row, overrides[row.id]).now_and_next(at)
                answers.append(OnCall(row, now, after, {}))
            ids = {st.person_id for a in answers for st in (a.now, a.next) if st is not None and st.person_id}
            people = {
                p.id: _person(p)
                for p in (await s.execute(select(Person).where(Person.id.in_(ids)))).scalars()
            }
        for a in answers:
            a.people.update(people)
        return answers
