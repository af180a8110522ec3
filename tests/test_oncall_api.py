"""`/v1/people`, `/v1/rotations` (and overrides), `/v1/escalation-policies` and `GET /v1/oncall` against
the whole service (sandbox mode): validation naming the field, 404s, deletes refused while something names
the row, who is on call across a DST change and under an override, and the store's resolve_targets (the
escalator's question) answering with the same math."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import aiohttp

from announcer.app import DATABASE, ONCALL
from announcer.store.models import Integration, utcnow
from tests.conftest import AUTH, Service
from tests.test_alerts import get, post
from tests.test_schedules import delete, patch

ADA, BOB, CY = "+15550100001", "+15550100002", "+15550100003"


async def person(service: Service, name: str, phone: str, zone: str = "UTC") -> str:
    status, answer = await post(service, "/v1/people", {"name": name, "phone": phone, "timezone": zone})
    assert status == 201, answer
    return str(answer["id"])


async def rotation(service: Service, members: list[str], **fields: Any) -> str:
    body = {
        "name": "primary",
        "timezone": "Europe/Berlin",
        "shift_length": 1,
        "shift_unit": "days",
        "handoff_time": "09:00",
        "start_date": "2026-03-27",
        "members": members,
        **fields,
    }
    status, answer = await post(service, "/v1/rotations", body)
    assert status == 201, answer
    return str(answer["id"])


def fields(answer: dict[str, Any]) -> dict[str, str]:
    return {p["field"]: p["reason"] for p in answer["problems"]}


async def test_people_crud_with_numbers_checked_like_recipients(service: Service) -> None:
    status, made = await post(service, "/v1/people", {"name": "Ada", "phone": "+1 (555) 010-0001"})
    assert status == 201, made
    assert made["phone"] == ADA and made["timezone"] == "UTC"  # normalised to E.164; UTC by default
    status, answer = await post(
        service, "/v1/people", {"name": "", "phone": "112", "timezone": "Mars/Olympus"}
    )
    assert status == 422
    assert set(fields(answer)) == {"name"}  # the schema first: a short name
    status, answer = await post(
        service, "/v1/people", {"name": "Bob", "phone": "112", "timezone": "Mars/Olympus"}
    )
    assert status == 422 and set(fields(answer)) == {"phone", "timezone"}, answer
    assert "international form" in fields(answer)["phone"], answer  # the destination policy's words
    assert "unknown time zone" in fields(answer)["timezone"]

    status, listing = await get(service, "/v1/people")
    assert status == 200 and [p["id"] for p in listing["people"]] == [made["id"]]
    status, changed = await patch(
        service, f"/v1/people/{made['id']}", {"timezone": "Europe/Berlin", "name": "Ada L"}
    )
    assert status == 200 and changed["timezone"] == "Europe/Berlin" and changed["name"] == "Ada L"
    assert changed["phone"] == ADA
    status, answer = await patch(service, f"/v1/people/{made['id']}", {"phone": "not a number"})
    assert status == 422 and "phone" in fields(answer)
    status, one = await get(service, f"/v1/people/{made['id']}")
    assert status == 200 and one == changed
    assert await delete(service, f"/v1/people/{made['id']}") == 204
    status, answer = await get(service, f"/v1/people/{made['id']}")
    assert status == 404 and answer["field"] == "person_id"
    assert await delete(service, f"/v1/people/{made['id']}") == 404
    async with aiohttp.ClientSession() as http, http.get(service.base_url + "/v1/people") as resp:
        assert resp.status == 401


async def test_a_rotation_says_who_is_on_call_across_dst_and_under_an_override(service: Service) -> None:
    ada, bob = await person(service, "Ada", ADA), await person(service, "Bob", BOB)
    status, answer = await post(
        service,
        "/v1/rotations",
        {"name": "x", "timezone": "Nowhere/City", "start_date": "2026-02-30", "members": [ada, "pe_missing"]},
    )
    assert status == 422 and set(fields(answer)) == {"timezone", "start_date"}, answer
    status, answer = await post(
        service,
        "/v1/rotations",
        {"name": "x", "timezone": "UTC", "start_date": "2026-01-01", "members": [ada, "pe_missing"]},
    )
    assert status == 422 and fields(answer) == {"members[1]": "no such person 'pe_missing'"}, answer
    rid = await rotation(service, [ada, bob])

    # 28 March is Bob's day; the hand-off on the 29th is 09:00 CEST (the clocks went forward overnight)
    status, oncall = await get(service, "/v1/oncall?at=2026-03-28T12:00:00%2B00:00")
    assert status == 200, oncall
    assert oncall["at"] == "2026-03-28T12:00:00+00:00"
    [row] = oncall["rotations"]
    assert row["id"] == rid and row["timezone"] == "Europe/Berlin"
    assert row["now"] == {
        "person": {"id": bob, "name": "Bob"},
        "since": "2026-03-28T09:00:00+01:00",
        "until": "2026-03-29T09:00:00+02:00",
        "override": False,
    }
    assert row["next"]["person"] == {"id": ada, "name": "Ada"}
    assert row["next"]["since"] == "2026-03-29T09:00:00+02:00"

    # an override for Ada across Bob's afternoon
    override = {
        "person_id": ada,
        "starts_at": "2026-03-28T14:00:00+01:00",
        "ends_at": "2026-03-28T18:00:00+01:00",
    }
    status, made = await post(service, f"/v1/rotations/{rid}/overrides", override)
    assert status == 201, made
    status, oncall = await get(service, "/v1/oncall?at=2026-03-28T15:00:00%2B01:00")
    now, after = oncall["rotations"][0]["now"], oncall["rotations"][0]["next"]
    assert now["person"]["id"] == ada and now["override"] is True
    assert (now["since"], now["until"]) == ("2026-03-28T14:00:00+01:00", "2026-03-28T18:00:00+01:00")
    assert after["person"]["id"] == bob and after["override"] is False
    assert after["until"] == "2026-03-29T09:00:00+02:00"
    status, oncall = await get(service, "/v1/oncall?at=2026-03-28T12:00:00%2B00:00")
    assert oncall["rotations"][0]["now"]["until"] == "2026-03-28T14:00:00+01:00"  # the override is next

    # the store's answer to the escalator is the same
    store = service.app[ONCALL].store
    at = datetime(2026, 3, 28, 14, 30, tzinfo=UTC)
    targets = [{"type": "rotation", "id": rid}, {"type": "person", "id": bob}, {"type": "person", "id": ada}]
    assert [p.name for p in await store.resolve_targets(targets, at)] == ["Ada", "Bob"]  # each once, in order
    before = datetime(2026, 3, 1, tzinfo=UTC)  # before the rotation starts: it names nobody
    assert [p.name for p in await store.resolve_targets(targets, before)] == ["Bob", "Ada"]

    status, listing = await get(service, f"/v1/rotations/{rid}/overrides")
    assert status == 200 and [o["id"] for o in listing["overrides"]] == [made["id"]]
    status, answer = await post(
        service, f"/v1/rotations/{rid}/overrides", {**override, "ends_at": override["starts_at"]}
    )
    assert status == 422 and set(fields(answer)) == {"ends_at"}
    status, answer = await post(
        service, f"/v1/rotations/{rid}/overrides", {**override, "person_id": "pe_nobody"}
    )
    assert status == 422 and set(fields(answer)) == {"person_id"}
    status, answer = await post(service, "/v1/rotations/ro_nothing/overrides", override)
    assert status == 404

    # Ada is named by the override and the rotation: not deletable until both let go
    status, answer = await _delete(service, f"/v1/people/{ada}")
    assert status == 409 and answer["error"] == "in_use", answer
    assert await delete(service, f"/v1/rotations/{rid}/overrides/{made['id']}") == 204
    assert await delete(service, f"/v1/rotations/{rid}/overrides/{made['id']}") == 404
    status, answer = await _delete(service, f"/v1/people/{ada}")
    assert status == 409 and "rotation" in answer["message"]

    # GET one: the rotation with now and next (now: today's real date, after the start)
    status, view = await get(service, f"/v1/rotations/{rid}")
    assert status == 200 and view["members"] == [ada, bob] and view["start_date"] == "2026-03-27"
    assert view["now"]["person"]["id"] in (ada, bob) and view["next"]["person"]["id"] in (ada, bob)
    status, changed = await patch(service, f"/v1/rotations/{rid}", {"members": [bob], "shift_unit": "weeks"})
    assert status == 200 and changed["members"] == [bob] and changed["shift_unit"] == "weeks"
    status, answer = await patch(service, f"/v1/rotations/{rid}", {"timezone": "Bad/Zone"})
    assert status == 422 and set(fields(answer)) == {"timezone"}
    assert await delete(service, f"/v1/people/{ada}") == 204  # no longer named by anything
    status, answer = await get(service, "/v1/oncall?at=yesterday")
    assert status == 400 and answer["field"] == "at"
    status, listing = await get(service, "/v1/rotations")
    assert [r["id"] for r in listing["rotations"]] == [rid]


async def _delete(service: Service, path: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.delete(service.base_url + path, headers=AUTH) as resp:
        return resp.status, (await resp.json() if resp.status != 204 else None)


async def test_policies_name_every_bad_target_and_deletes_wait_for_what_uses_them(service: Service) -> None:
    ada = await person(service, "Ada", ADA)
    rid = await rotation(service, [ada])
    steps = [
        {"delay_s": 60, "targets": [{"type": "person", "id": ada}]},
        {"delay_s": 300, "targets": [{"type": "rotation", "id": "ro_gone"}, {"type": "person", "id": rid}]},
    ]
    status, answer = await post(service, "/v1/escalation-policies", {"name": "ops", "steps": steps})
    assert status == 422, answer
    assert fields(answer) == {
        "steps[1].targets[0].id": "no such rotation 'ro_gone'",
        "steps[1].targets[1].id": "no such person '" + rid + "'",
    }
    bounds = {
        "name": "ops",
        "repeat": 11,
        "steps": [
            {"delay_s": 0, "targets": []},
            {"delay_s": 86_401, "targets": [{"type": "team", "id": ada}]},
        ],
    }
    status, answer = await post(service, "/v1/escalation-policies", bounds)
    assert status == 422
    assert set(fields(answer)) == {
        "repeat",
        "steps[0].delay_s",
        "steps[0].targets",
        "steps[1].delay_s",
        "steps[1].targets[0].type",
    }, answer
    status, answer = await post(service, "/v1/escalation-policies", {"name": "ops", "steps": [steps[0]] * 21})
    assert status == 422 and set(fields(answer)) == {"steps"}

    good = [steps[0], {"delay_s": 300, "targets": [{"type": "rotation", "id": rid}]}]
    status, policy = await post(
        service, "/v1/escalation-policies", {"name": "ops", "steps": good, "repeat": 2}
    )
    assert status == 201, policy
    assert policy["steps"] == good and policy["repeat"] == 2
    row = await service.app[ONCALL].store.policy(policy["id"])  # the escalator's read
    assert row is not None and row.steps == good and row.repeat == 2
    status, one = await get(service, f"/v1/escalation-policies/{policy['id']}")
    assert status == 200 and one == policy
    status, listing = await get(service, "/v1/escalation-policies")
    assert [p["id"] for p in listing["escalation_policies"]] == [policy["id"]]

    status, answer = await _delete(service, f"/v1/rotations/{rid}")
    assert status == 409 and policy["id"] in answer["message"], answer
    status, answer = await patch(
        service,
        f"/v1/escalation-policies/{policy['id']}",
        {"steps": [{"delay_s": 5, "targets": [{"type": "rotation", "id": "ro_x"}]}]},
    )
    assert status == 422 and set(fields(answer)) == {"steps[0].targets[0].id"}
    status, changed = await patch(
        service, f"/v1/escalation-policies/{policy['id']}", {"steps": [steps[0]], "name": "ops 2"}
    )
    assert status == 200 and changed["steps"] == [steps[0]] and changed["name"] == "ops 2"
    assert await delete(service, f"/v1/rotations/{rid}") == 204  # no policy names it now
    status, answer = await _delete(service, f"/v1/people/{ada}")
    assert status == 409 and "policy" in answer["message"]

    # an integration escalates by it: the policy stays
    async with service.app[DATABASE].sessions() as s:
        s.add(
            Integration(
                id="in_test",
                name="am",
                kind="alertmanager",
                policy_id=policy["id"],
                secret_hash="0" * 64,
                silence_s=None,
                created_at=utcnow(),
                updated_at=utcnow(),
            )
        )
        await s.commit()
    status, answer = await _delete(service, f"/v1/escalation-policies/{policy['id']}")
    assert status == 409 and "in_test" in answer["message"]
    async with service.app[DATABASE].sessions() as s:
        await s.delete(await s.get(Integration, "in_test"))
        await s.commit()
    assert await delete(service, f"/v1/escalation-policies/{policy['id']}") == 204
    assert await delete(service, f"/v1/escalation-policies/{policy['id']}") == 404
    assert await delete(service, f"/v1/people/{ada}") == 204


async def test_a_delete_racing_a_new_reference_never_leaves_it_dangling(service: Service) -> None:
    """Deleting a person while rotations naming them are made, at once: each rotation made names a
    person who is still there (the delete was refused), or was refused itself for naming nobody."""
    for _ in range(5):
        ada = await person(service, "Ada", ADA)
        body = {"name": "r", "timezone": "UTC", "start_date": "2026-01-01", "members": [ada]}
        made, gone = await asyncio.gather(
            post(service, "/v1/rotations", body), _delete(service, f"/v1/people/{ada}")
        )
        if made[0] == 201:
            assert gone[0] == 409, (made, gone)
            status, _ = await get(service, f"/v1/people/{ada}")
            assert status == 200
            assert await delete(service, f"/v1/rotations/{made[1]['id']}") == 204
            assert await delete(service, f"/v1/people/{ada}") == 204
        else:
            assert made[0] == 422 and gone[0] == 204, (made, gone)
