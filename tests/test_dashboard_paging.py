"""The dashboard's paging pages over HTTP, signed in, against the sandbox service: incidents (the live list
and its state filter, an incident's timeline and pages, Acknowledge and Resolve as `dashboard`, CSRF, 404s
and 409s), rotations (who is on call now and next, the next hand-offs, the override form's errors by field,
adding and removing an override), escalation policies and people."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp

from announcer.app import DATABASE
from announcer.sandbox.twilio_call import PhoneBehavior
from announcer.store.oncall import OncallStore, PersonRow, RotationRow
from tests.conftest import Service, eventually
from tests.dashboard import HTML, browser_session, signed_in
from tests.test_paging_ingest import ON_CALL, am_payload, api, incident, send, setup_paging

HX = {"HX-Request": "true"}
BERLIN = ZoneInfo("Europe/Berlin")


async def text(http: aiohttp.ClientSession, path: str, **headers: str) -> tuple[int, str]:
    async with http.get(path, allow_redirects=False, headers=headers) as resp:
        return resp.status, await resp.text()


async def post_form(http: aiohttp.ClientSession, path: str, data: dict[str, str]) -> tuple[int, str, str]:
    async with http.post(path, data=data, allow_redirects=False) as resp:
        return resp.status, resp.headers.get("Location", ""), await resp.text()


def row_of(html: str, attribute: str, value: str) -> str:
    """The <tr> (or <li>) whose `attribute` is `value`, as text."""
    found = re.search(rf'<(tr|li|section)[^>]*{attribute}="{re.escape(value)}".*?</\1>', html, re.DOTALL)
    assert found is not None, f"no {attribute}={value} in the page"
    return found.group(0)


async def open_incident(service: Service, **payload: Any) -> tuple[dict[str, Any], str]:
    service.sandbox.set_behavior(ON_CALL, PhoneBehavior(answer="no-answer", ring_s=2000))
    integration, _ = await setup_paging(service, steps=[([ON_CALL], 600)])
    status, answer = await send(service, integration, am_payload(**payload))
    assert status == 200, answer
    return integration, answer["incident_id"]


async def test_incidents_list_detail_acknowledge_and_resolve(service: Service) -> None:
    _, incident_id = await open_incident(service)
    async with signed_in(service) as (http, csrf):
        status, html = await text(http, "/incidents")
        assert status == 200
        row = row_of(html, "data-incident", incident_id)
        assert 'data-state="triggered"' in row and "DiskFull" in row and "critical" in row
        assert "<td>2</td>" in row  # the group's alerts
        assert 'hx-trigger="every 1s"' in html  # the newest page polls itself
        assert 'href="/incidents"' in html  # the navigation
        status, html = await text(http, "/incidents?state=resolved")
        assert status == 200 and incident_id not in html and 'id="no-incidents"' in html
        status, html = await text(http, "/incidents?state=triggered")
        assert incident_id in html
        assert (await text(http, "/incidents?state=sleeping"))[0] == 400
        assert (await text(http, "/incidents?before=a.b"))[0] == 400
        status, fragment = await text(http, "/incidents/list?state=all", **HX)
        assert status == 200 and fragment.startswith('<div id="incidents-list"') and incident_id in fragment

        # the incident's page: its labels, its timeline, and its first step's page once it is placed
        async def paged() -> bool:
            return f'data-phone="{ON_CALL}"' in (await text(http, f"/incidents/{incident_id}"))[1]

        await eventually(paged, timeout=20)
        status, html = await text(http, f"/incidents/{incident_id}")
        assert status == 200
        assert 'data-event="triggered"' in html and 'data-event="paged"' in html
        assert "alertname" in html and "The disk is nearly full" in html
        page_row = row_of(html, "data-phone", ON_CALL)
        assert 'data-page="0.0"' in page_row and "Person 1" in page_row
        assert 'id="acknowledge"' in html and 'id="resolve"' in html
        assert f'hx-get="/incidents/{incident_id}/live"' in html

        # no CSRF token: refused, nothing changed
        status, _, _ = await post_form(http, f"/incidents/{incident_id}/acknowledge", {})
        assert status == 403
        assert (await incident(service, incident_id))["state"] == "triggered"

        status, location, _ = await post_form(
            http, f"/incidents/{incident_id}/acknowledge", {"csrf_token": csrf}
        )
        assert (status, location) == (303, f"/incidents/{incident_id}")
        seen = await incident(service, incident_id)
        assert seen["state"] == "acknowledged" and seen["acknowledged_by"] == "dashboard"
        assert (seen["events"][-1]["kind"], seen["events"][-1]["how"]) == ("acknowledged", "dashboard")
        status, _, message = await post_form(
            http, f"/incidents/{incident_id}/acknowledge", {"csrf_token": csrf}
        )
        assert status == 409 and "already acknowledged" in message
        status, fragment = await text(http, f"/incidents/{incident_id}/live", **HX)
        assert 'data-state="acknowledged"' in fragment and "hx-trigger" in fragment  # still open: live
        assert 'id="acknowledge"' not in fragment and 'id="resolve"' in fragment
        assert "dashboard" in row_of(fragment, "data-event", "acknowledged")

        status, location, _ = await post_form(http, f"/incidents/{incident_id}/resolve", {"csrf_token": csrf})
        assert status == 303
        status, fragment = await text(http, f"/incidents/{incident_id}/live", **HX)
        assert 'data-state="resolved"' in fragment and "hx-trigger" not in fragment  # over: no more polls
        assert 'id="resolve"' not in fragment
        assert (await incident(service, incident_id))["events"][-1]["how"] == "dashboard"
        status, _, message = await post_form(http, f"/incidents/{incident_id}/resolve", {"csrf_token": csrf})
        assert status == 409 and "already resolved" in message
        status, html = await text(http, "/incidents?state=resolved")
        assert "dashboard" in row_of(html, "data-incident", incident_id)

        # what does not exist
        assert (await text(http, "/incidents/ic_000000000000000000000000"))[0] == 404
        assert (await text(http, "/incidents/ic_000000000000000000000000/live", **HX))[0] == 404
        assert (await text(http, "/incidents/a.b"))[0] == 404
        for action in ("acknowledge", "resolve"):
            status, _, _ = await post_form(
                http, f"/incidents/ic_000000000000000000000000/{action}", {"csrf_token": csrf}
            )
            assert status == 404

    async with browser_session(service) as anonymous:  # signed out: the sign-in page
        status, _ = await text(anonymous, "/incidents")
        assert status == 303
        async with anonymous.post(f"/incidents/{incident_id}/resolve", allow_redirects=False) as resp:
            assert resp.status == 401


async def people_of(store: OncallStore, *names: str) -> list[PersonRow]:
    return [
        await store.create_person(name=name, phone=f"+1555018{i:04d}", timezone="Europe/Berlin")
        for i, name in enumerate(names, 1)
    ]


async def primary(store: OncallStore, members: list[PersonRow]) -> RotationRow:
    return await store.create_rotation(
        name="Primary",
        timezone="Europe/Berlin",
        shift_length=1,
        shift_unit="days",
        handoff_time="09:00",
        start_date=date.today() - timedelta(days=10),
        members=[m.id for m in members],
    )


def local_input(at: datetime) -> str:
    """A datetime-local input's value on Berlin's clock."""
    return at.astimezone(BERLIN).strftime("%Y-%m-%dT%H:%M")


async def test_rotations_show_who_is_on_call_and_the_override_form(service: Service) -> None:
    store = OncallStore(service.app[DATABASE].sessions)
    ada, bob, cy = await people_of(store, "Ada", "Bob", "Cy")
    rotation = await primary(store, [ada, bob])
    (now_on_call,) = await store.oncall(datetime.now(UTC), rotation.id)
    current = {ada.id: "Ada", bob.id: "Bob"}[now_on_call.now.person_id or ""]
    upcoming = {ada.id: "Ada", bob.id: "Bob"}[now_on_call.next.person_id or ""]  # type: ignore[union-attr]
    async with signed_in(service) as (http, csrf):
        status, html = await text(http, "/rotations")
        assert status == 200
        row = row_of(html, "data-rotation", rotation.id)
        assert (
            "Primary" in row
            and current in row.split("data-next")[0]
            and upcoming in row.split("data-next")[1]
        )
        assert "since" in row and "until" in row and "data-override" not in row

        path = f"/rotations/{rotation.id}"
        status, html = await text(http, path)
        assert status == 200
        members = re.search(r'<ol id="members">(.*?)</ol>', html, re.DOTALL)
        assert members is not None and members.group(1).index("Ada") < members.group(1).index("Bob")
        handoffs = re.findall(r'data-handoff="\d+"', html)
        assert len(handoffs) == 7
        first = row_of(html, "data-handoff", "0")
        assert upcoming in first and "09:00" in first
        assert 'id="add-override"' in html and "No override now or to come." in html

        # the form's errors, each next to its field; nothing stored
        add = f"{path}/overrides"
        status, _, html = await post_form(http, add, {"csrf_token": csrf})
        assert status == 422
        assert 'id="problem-person_id"' in html and 'id="problem-starts_at"' in html
        assert 'id="problem-ends_at"' in html and "3 problem(s)" in html
        soon = datetime.now(UTC).replace(second=0, microsecond=0)
        status, _, html = await post_form(
            http,
            add,
            {
                "csrf_token": csrf,
                "person_id": cy.id,
                "starts_at": local_input(soon + timedelta(hours=2)),
                "ends_at": local_input(soon + timedelta(hours=1)),
            },
        )
        assert status == 422 and "must be after starts_at" in html
        assert re.search(r'id="problem-ends_at"[^>]*>must be after starts_at', html)
        assert f'<option value="{cy.id}" selected>' in html  # what was given comes back
        status, _, html = await post_form(
            http,
            add,
            {
                "csrf_token": csrf,
                "person_id": "pe_nobody",
                "starts_at": "tomorrow",
                "ends_at": "2030-01-01T10:00",
            },
        )
        assert status == 422
        assert re.search(r'id="problem-person_id"[^>]*>no such person', html)
        assert re.search(r'id="problem-starts_at"[^>]*>no such date and time &#39;tomorrow&#39;', html)
        assert await store.overrides(rotation.id) == []

        # no CSRF token: refused
        status, _, _ = await post_form(http, add, {"person_id": cy.id})
        assert status == 403

        # an override covering now: Cy is on call, marked
        status, location, _ = await post_form(
            http,
            add,
            {
                "csrf_token": csrf,
                "person_id": cy.id,
                "starts_at": local_input(soon - timedelta(hours=1)),
                "ends_at": local_input(soon + timedelta(hours=2)),
            },
        )
        assert (status, location) == (303, path)
        (override,) = await store.overrides(rotation.id)
        assert override.person_id == cy.id
        assert override.starts_at == soon - timedelta(hours=1)  # read on Berlin's clock
        status, html = await text(http, path)
        now_cell = re.search(r"<td data-now>(.*?)</td>", html, re.DOTALL)
        assert now_cell is not None and "Cy" in now_cell.group(1) and "data-override" in now_cell.group(1)
        assert "Cy" in row_of(html, "data-override", str(override.id))
        status, html = await text(http, "/rotations")
        assert "data-override" in row_of(html, "data-rotation", rotation.id)

        remove = f"{path}/overrides/{override.id}/remove"
        status, location, _ = await post_form(http, remove, {"csrf_token": csrf})
        assert (status, location) == (303, path)
        assert await store.overrides(rotation.id) == []
        assert (await post_form(http, remove, {"csrf_token": csrf}))[0] == 404
        assert (await post_form(http, f"{path}/overrides/99999999999/remove", {"csrf_token": csrf}))[0] == 404

        # what does not exist
        assert (await text(http, "/rotations/ro_000000000000000000000000"))[0] == 404
        assert (await text(http, "/rotations/a.b"))[0] == 404
        status, _, _ = await post_form(
            http, "/rotations/ro_000000000000000000000000/overrides", {"csrf_token": csrf, "person_id": cy.id}
        )
        assert status == 404


async def test_policies_name_their_targets_and_integrations_and_people_their_rotations(
    service: Service,
) -> None:
    store = OncallStore(service.app[DATABASE].sessions)
    ada, bob, cy = await people_of(store, "Ada", "Bob", "Cy")
    rotation = await primary(store, [ada, bob])
    (on_call,) = await store.oncall(datetime.now(UTC), rotation.id)
    current = {ada.id: "Ada", bob.id: "Bob"}[on_call.now.person_id or ""]
    policy = await store.create_policy(
        name="Database",
        steps=[
            {"delay_s": 300, "targets": [{"type": "rotation", "id": rotation.id}]},
            {"delay_s": 600, "targets": [{"type": "person", "id": cy.id}]},
        ],
        repeat=2,
    )
    unused = await store.create_policy(
        name="Spare", steps=[{"delay_s": 60, "targets": [{"type": "person", "id": ada.id}]}], repeat=0
    )
    status, integration = await api(
        service, "POST", "/v1/integrations", {"name": "prod", "kind": "alertmanager", "policy_id": policy.id}
    )
    assert status == 201, integration
    async with signed_in(service) as (http, _):
        status, html = await text(http, "/policies")
        assert status == 200
        section = row_of(html, "data-policy", policy.id)
        assert "Database" in section and "repeats 2 time(s)" in section
        first = row_of(section, "data-target", f"rotation:{rotation.id}")
        assert "Primary" in first and current in first and f'href="/rotations/{rotation.id}"' in first
        assert "Cy" in row_of(section, "data-target", f"person:{cy.id}")
        assert "300 s" in section and "600 s" in section
        assert "prod (alertmanager)" in section
        spare = row_of(html, "data-policy", unused.id)
        assert "no integration" in spare and "does not repeat" in spare

        status, html = await text(http, "/people")
        assert status == 200
        assert "Primary" in row_of(html, "data-person", ada.id)
        assert "Primary" not in row_of(html, "data-person", cy.id)
        on_call_id = on_call.now.person_id or ""
        assert "Primary" in row_of(html, "data-person", on_call_id).split("data-on-call")[1]

    async with browser_session(service) as anonymous:
        for path in ("/policies", "/people", "/rotations", f"/rotations/{rotation.id}"):
            async with anonymous.get(path, allow_redirects=False, headers=HTML) as resp:
                assert resp.status == 303, path
