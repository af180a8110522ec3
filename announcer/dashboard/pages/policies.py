"""Escalation policies: each one's steps (the delay before it, and its targets named: a person, or a
rotation and who is on call in it now), how many times it repeats, and the integrations that escalate by
it. People: who can be paged, and the rotations they are in. Read through the same stores as
/v1/escalation-policies, /v1/people and /v1/integrations."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime

from aiohttp import web

from announcer.dashboard.pages.rotations import local, person_name
from announcer.dashboard.routes import Page, Routes
from announcer.shifts import Stretch
from announcer.store.incidents import IntegrationRow

routes = Routes()


@dataclass(frozen=True)
class Target:
    kind: str  # "person" | "rotation"
    id: str
    name: str  # the person's or the rotation's ("... (deleted)" when it is gone)
    rotation_id: str | None = None  # a rotation that exists: its page
    timezone: str = "UTC"
    now: Stretch | None = None  # a rotation's: who is on call in it now


@routes.get("/policies", name="policies")
async def policies_list(request: web.Request, page: Page) -> web.StreamResponse:
    store = page.services.oncall
    policies = await store.policies()
    people = {p.id: p for p in await store.people()}
    rotations = {o.rotation.id: o for o in await store.oncall(datetime.now(UTC))}
    used: dict[str, list[IntegrationRow]] = {}
    for integration in await page.services.incidents.store.integrations():
        used.setdefault(integration.policy_id, []).append(integration)

    def target(t: dict[str, object]) -> Target:
        kind, target_id = str(t.get("type")), str(t.get("id"))
        if kind == "rotation":
            found = rotations.get(target_id)
            if found is None:
                return Target(kind, target_id, f"{target_id} (deleted)")
            r = found.rotation
            return Target(kind, target_id, r.name, r.id, r.timezone, found.now)
        return Target(kind, target_id, person_name(people, target_id))

    steps = {
        p.id: [(int(s.get("delay_s", 0)), [target(t) for t in s.get("targets") or []]) for s in p.steps]
        for p in policies
    }
    return page.render(
        "policies.html",
        policies=policies,
        steps=steps,
        used=used,
        name_of=functools.partial(person_name, people),
        local=local,
    )


@routes.get("/people", name="people")
async def people_list(request: web.Request, page: Page) -> web.StreamResponse:
    store = page.services.oncall
    people = await store.people()
    oncall = await store.oncall(datetime.now(UTC))
    member_of: dict[str, list[str]] = {}
    on_call_in: dict[str, list[str]] = {}
    for o in oncall:
        for m in dict.fromkeys(o.rotation.members):
            member_of.setdefault(m, []).append(o.rotation.id)
        if o.now.person_id is not None:
            on_call_in.setdefault(o.now.person_id, []).append(o.rotation.id)
    return page.render(
        "people.html",
        people=people,
        rotations={o.rotation.id: o.rotation for o in oncall},
        member_of=member_of,
        on_call_in=on_call_in,
    )
