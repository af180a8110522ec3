"""The Schedules pages over plain HTTP: CSRF required on create, pause, resume and delete; a recurring
schedule with a zone, quiet hours and a CSV's variables; problems next to the field they name with
nothing stored; pause, resume, delete; past occurrences; escaping."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import aiohttp
from multidict import MultiDict

from announcer.dashboard import SERVICES
from announcer.store.schedules import ScheduleRow
from tests.conftest import AUTH, Service
from tests.dashboard import signed_in
from tests.test_alerts import get, post
from tests.test_schedules import occurrences

TEXT = "Hello {{ name }}, your appointment is at {{ at }}."
CSV = "phone,name,at\n+15550180001,Ada,10:30\n+15550180002,Grace,11:00\n"


def _form(csrf: str | None, *, csv: str | None = CSV, **fields: str) -> aiohttp.FormData:
    values = {
        "name": "check-in",
        "template_text": TEXT,
        "repeat": "cron",
        "cron": "0 8 * * mon-fri",
        "timezone": "Europe/Berlin",
        "misfire": "run",
    }
    values.update(fields)
    form = aiohttp.FormData()
    if csrf is not None:
        form.add_field("csrf_token", csrf)
    for name, value in values.items():
        form.add_field(name, value)
    if csv is not None:
        form.add_field("csv", csv.encode(), filename="people.csv", content_type="text/csv")
    return form


async def _schedules(service: Service) -> list[ScheduleRow]:
    return await service.app[SERVICES].schedules.store.listing()


def _local(seconds: float) -> str:
    """A datetime-local input's value (read in the form's zone, UTC here) `seconds` from now."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S")


async def _create(http: aiohttp.ClientSession, form: aiohttp.FormData) -> str:
    async with http.post("/schedules", data=form, allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
        found = re.fullmatch(r"/schedules/([A-Za-z0-9_-]+)", resp.headers["Location"])
    assert found is not None
    return found.group(1)


async def test_every_change_needs_the_csrf_token(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        async with http.post("/schedules", data=_form(None), allow_redirects=False) as resp:
            assert resp.status == 403
        assert await _schedules(service) == []
        sid = await _create(http, _form(csrf))
        for action in ("pause", "delete"):
            async with http.post(f"/schedules/{sid}/{action}", data={}, allow_redirects=False) as resp:
                assert resp.status == 403
                assert "CSRF token is missing or wrong" in await resp.text()
        (row,) = await _schedules(service)
        assert row.status == "active"


async def test_a_recurring_schedule_with_a_zone_quiet_hours_and_a_csv(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        sid = await _create(http, _form(csrf, quiet_start="21:00", quiet_end="08:00"))
        async with http.get(f"/schedules/{sid}") as resp:
            assert resp.status == 200
            page = await resp.text()
        async with http.get("/schedules") as resp:
            listing = await resp.text()
    (row,) = await _schedules(service)
    assert row.when == {"cron": "0 8 * * mon-fri", "timezone": "Europe/Berlin"}
    assert row.options.quiet_hours is not None and row.options.quiet_hours.start == "21:00"
    assert [r["variables"] for r in row.recipients] == [{"at": "10:30"}, {"at": "11:00"}]
    upcoming = re.search(r'<ul id="upcoming">(.*?)</ul>', page, re.S)
    assert upcoming is not None and upcoming.group(1).count("<li>") == 5
    assert " 08:00:00+01:00" in upcoming.group(1)  # 8 o'clock in Berlin (winter)
    assert "It has not run yet." in page and "Grace" in page
    assert "<code>quiet_hours</code>: start 21:00, end 08:00" in page
    assert f'data-schedule="{sid}"' in listing and "08:00:00+01:00" in listing


async def test_problems_are_shown_next_to_their_field_and_nothing_is_stored(service: Service) -> None:
    cases = [
        ({"cron": "0 8 * *"}, "problem-when.cron", "5 fields"),
        ({"cron": "0 25 * * *"}, "problem-when.cron", "invalid cron expression"),
        ({"timezone": ""}, "problem-when.timezone", "needs its time zone"),
        ({"timezone": "Mars/Olympus"}, "problem-when.timezone", "unknown time zone"),
        ({"repeat": "once", "at": "2020-01-01T08:00", "timezone": "UTC"}, "problem-when.at", "in the past"),
        ({"quiet_start": "21:00"}, "problem-quiet_hours", "end: Field required"),
        ({"misfire": "later"}, "problem-misfire", "Input should be &#39;run&#39; or &#39;skip&#39;"),
        ({"template_text": "Hello {{ nobody_knows }}"}, None, "nobody_knows"),
    ]
    async with signed_in(service) as (http, csrf):
        for fields, where, reason in cases:
            async with http.post("/schedules", data=_form(csrf, **fields)) as resp:
                assert resp.status == 422, (fields, await resp.text())
                page = await resp.text()
            assert "nothing was stored" in page
            if where is not None:
                found = re.search(rf'id="{re.escape(where)}" role="alert">([^<]*)<', page)
                assert found is not None and reason in found.group(1), (fields, found)
            else:  # a recipient's: in its row of the table
                row = re.search(r'<tr id="row-0"[^>]*>(.*?)</tr>', page, re.S)
                assert row is not None and reason in row.group(1)
    assert await _schedules(service) == []


async def test_pause_resume_and_delete(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        sid = await _create(http, _form(csrf))
        async with http.post(f"/schedules/{sid}/pause", data={"csrf_token": csrf}) as resp:
            assert resp.status == 200 and str(resp.url).endswith("/schedules")
            listing = await resp.text()
        row = re.search(rf'<tr data-schedule="{sid}">(.*?)</tr>', listing, re.S)
        assert row is not None and ">paused<" in row.group(1) and "Resume" in row.group(1)
        assert (await _schedules(service))[0].status == "paused"
        form = {"csrf_token": csrf, "back": "schedule"}
        async with http.post(f"/schedules/{sid}/resume", data=form) as resp:
            assert str(resp.url).endswith(f"/schedules/{sid}")
            assert 'id="status">active<' in await resp.text()
        async with http.get(f"/schedules/{sid}/delete") as resp:  # asked once more, nothing changed
            assert f'action="/schedules/{sid}/delete"' in await resp.text()
        assert (await _schedules(service))[0].status == "active"
        async with http.post(f"/schedules/{sid}/delete", data={"csrf_token": csrf}) as resp:
            assert "Deleted check-in." in await resp.text()
        async with http.get(f"/schedules/{sid}") as resp:
            assert resp.status == 404
        async with http.post(f"/schedules/{sid}/pause", data={"csrf_token": csrf}) as resp:
            assert resp.status == 404
    assert await _schedules(service) == []


async def test_a_schedule_shows_its_past_occurrences(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        form = _form(
            csrf, csv="phone,name,at\n+15550180001,Ada,10:30\n", repeat="once", at=_local(2), timezone="UTC"
        )
        sid = await _create(http, form)
        (done,) = await occurrences(service, sid)
        async with http.get(f"/schedules/{sid}") as resp:
            page = await resp.text()
    table = re.search(r'<table id="occurrences">(.*?)</table>', page, re.S)
    assert table is not None
    assert done["alert_id"] in table.group(1) and f'href="/alerts/{done["alert_id"]}"' in table.group(1)
    assert ">fired<" in table.group(1)


async def test_names_and_variables_are_escaped(service: Service) -> None:
    csv = 'phone,name,at\n+15550180001,<img src=x onerror=alert(1)>,"<b>10:30</b>"\n'
    async with signed_in(service) as (http, csrf):
        sid = await _create(http, _form(csrf, csv=csv, name="<script>alert(1)</script>"))
        for path in ("/schedules", f"/schedules/{sid}"):
            async with http.get(path) as resp:
                page = await resp.text()
            assert "<script>alert(1)</script>" not in page and "<img src=x" not in page
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page


async def test_the_list_is_paged_and_made_by_the_api_too(service: Service) -> None:
    """Schedules made through /v1/schedules show on the pages, 50 a page, none twice, none left out."""
    names = [f"api-made {i:02d}" for i in range(52)]
    for name in names:
        body = {
            "name": name,
            "template_text": "Good morning {{ name }}.",
            "recipients": [{"phone": "+15550180001", "name": "Ada"}],
            "when": {"cron": "0 8 * * mon-fri", "timezone": "Europe/Berlin"},
        }
        status, answer = await post(service, "/v1/schedules", body)
        assert status == 201, answer
    async with signed_in(service) as (http, _):
        async with http.get("/schedules") as resp:
            first = await resp.text()
        async with http.get("/schedules?start=50") as resp:
            second = await resp.text()
        async with http.get("/schedules?start=x") as resp:
            assert resp.status == 400
    assert first.count("<tr data-schedule=") == 50 and second.count("<tr data-schedule=") == 2
    shown = re.findall(r">(api-made [0-9]+)</a>", first + second)
    assert sorted(shown) == names
    assert 'href="/schedules?start=50">Next' in first and 'href="/schedules">Previous' in second


async def test_more_options_arrive_in_the_schedule_as_through_the_api(service: Service) -> None:
    fields = {"confirm": "1", "max_attempts": "2", "snooze_s": "600", "misfire_grace_s": "120"}
    async with signed_in(service) as (http, csrf):
        form = _form(csrf, **fields)
        form.add_field("options_shown", "1")
        form.add_field("retry_on", "no_answer")
        sid = await _create(http, form)
    body = {
        "name": "check-in",
        "template_text": TEXT,
        "recipients": [
            {"phone": "+15550180001", "name": "Ada", "variables": {"at": "10:30"}},
            {"phone": "+15550180002", "name": "Grace", "variables": {"at": "11:00"}},
        ],
        "when": {"cron": "0 8 * * mon-fri", "timezone": "Europe/Berlin"},
        "options": {
            "confirm": True,
            "max_attempts": 2,
            "retry_on": ["no_answer"],
            "snooze_s": 600,
            "misfire_grace_s": 120,
            "misfire": "run",
        },
    }
    status, created = await post(service, "/v1/schedules", body)
    assert status == 201, created
    _, through_dashboard = await get(service, f"/v1/schedules/{sid}")
    _, through_api = await get(service, f"/v1/schedules/{created['id']}")
    assert through_dashboard["options"] == through_api["options"]
    assert through_dashboard["options"]["snooze_s"] == 600


async def test_a_bad_schedule_option_is_shown_next_to_its_field(service: Service) -> None:
    async with (
        signed_in(service) as (http, csrf),
        http.post("/schedules", data=_form(csrf, snooze_s="30")) as resp,
    ):
        assert resp.status == 422
        page = await resp.text()
    found = re.search(r'id="problem-options.snooze_s" role="alert">([^<]*)<', page)
    assert found is not None and "greater than or equal to 60" in found.group(1)
    assert await _schedules(service) == []


async def test_the_edit_form_is_filled_from_the_schedule_and_changes_only_what_was_edited(
    service: Service,
) -> None:
    async with signed_in(service) as (http, csrf):
        sid = await _create(http, _form(csrf, variables="place=Main St"))
        (before,) = await _schedules(service)
        async with http.get(f"/schedules/{sid}/edit") as resp:
            assert resp.status == 200
            page = await resp.text()
        assert 'value="check-in"' in page and 'value="0 8 * * mon-fri"' in page
        assert "phone,name,at\n+15550180001,Ada,10:30\n+15550180002,Grace,11:00</textarea>" in page
        assert "place=Main St</textarea>" in page
        # the same form sent back with a new cron, as a browser sends it (CRLF in the textareas)
        edit = {
            "csrf_token": csrf,
            "name": "check-in",
            "repeat": "cron",
            "cron": "30 9 * * *",
            "timezone": "Europe/Berlin",
            "start": "",
            "end": "",
            "at": "",
            "variables": "place=Main St",
            "recipients": "phone,name,at\r\n+15550180001,Ada,10:30\r\n+15550180002,Grace,11:00",
        }
        async with http.post(f"/schedules/{sid}/edit", data=edit, allow_redirects=False) as resp:
            assert resp.status == 303, await resp.text()
        (after,) = await _schedules(service)
        assert after.when == {"cron": "30 9 * * *", "timezone": "Europe/Berlin"}
        assert after.next_run_at != before.next_run_at
        assert (after.name, after.recipients, after.variables) == (
            before.name,
            before.recipients,
            before.variables,
        )
        assert after.options == before.options
        # then the name alone
        async with http.post(
            f"/schedules/{sid}/edit", data={**edit, "name": "morning"}, allow_redirects=False
        ) as resp:
            assert resp.status == 303
        (renamed,) = await _schedules(service)
        assert renamed.name == "morning" and renamed.when == after.when
        assert renamed.next_run_at == after.next_run_at  # not re-timed: its time was not edited
        async with http.get(f"/schedules/{sid}") as resp:
            assert "09:30:00+01:00" in await resp.text()


async def test_an_edit_needs_the_csrf_token_and_a_bad_one_changes_nothing(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        sid = await _create(http, _form(csrf))
        (before,) = await _schedules(service)
        base = {"name": "check-in", "repeat": "cron", "cron": "0 8 * * mon-fri", "timezone": "Europe/Berlin"}
        async with http.post(
            f"/schedules/{sid}/edit", data={**base, "name": "stolen"}, allow_redirects=False
        ) as resp:
            assert resp.status == 403
        cases = [
            ({"cron": "0 25 * * *"}, "problem-when.cron", "invalid cron expression"),
            ({"timezone": "Mars/Olympus"}, "problem-when.timezone", "unknown time zone"),
            ({"variables": "no equals sign"}, "problem-variables", "expected name=value"),
            ({"recipients": "+15550180001\nnot a phone"}, None, "not a phone number"),
        ]
        for fields, where, reason in cases:
            data = {**base, "csrf_token": csrf, "name": "renamed", **fields}
            async with http.post(f"/schedules/{sid}/edit", data=data) as resp:
                assert resp.status == 422, (fields, await resp.text())
                page = await resp.text()
            assert "nothing was changed" in page
            if where is not None:
                found = re.search(rf'id="{re.escape(where)}" role="alert">([^<]*)<', page)
                assert found is not None and reason in found.group(1), (fields, found)
            else:
                assert reason in page
            assert 'value="renamed"' in page  # kept as typed
        (after,) = await _schedules(service)
        assert after == before


class _Fields(HTMLParser):
    """A form's fields as a browser would post them untouched: inputs' values (checked boxes and radios
    only), textareas' text, selects' selected option; file inputs left empty."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id, self.inside, self.fields = form_id, False, MultiDict[str]()
        self._textarea: str | None = None
        self._select: str | None = None
        self._first: str | None = None
        self._chosen = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside or ("name" not in a and tag != "option"):
            return
        if tag == "input" and a.get("type") != "file":
            if a.get("type") not in ("checkbox", "radio") or "checked" in a:
                self.fields.add(a["name"], a.get("value", ""))
        elif tag == "textarea":
            self._textarea = a["name"]
            self.fields.add(a["name"], "")
        elif tag == "select":
            self._select, self._first, self._chosen = a["name"], None, False
        elif tag == "option" and self._select is not None:
            if self._first is None:
                self._first = a.get("value", "")
            if "selected" in a:
                self.fields.add(self._select, a.get("value", ""))
                self._chosen = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "textarea":
            self._textarea = None
        elif tag == "select" and self._select is not None:
            if not self._chosen:
                self.fields.add(self._select, self._first or "")
            self._select = None

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self.fields[self._textarea] = self.fields[self._textarea] + data


async def _edit_fields(http: aiohttp.ClientSession, sid: str) -> MultiDict[str]:
    async with http.get(f"/schedules/{sid}/edit") as resp:
        assert resp.status == 200
        parser = _Fields("schedule-edit-form")
        parser.feed(await resp.text())
    return parser.fields


async def test_an_untouched_edit_form_changes_nothing(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        form = _form(csrf, quiet_start="21:00", quiet_end="08:00", confirm="1", snooze_s="600")
        form.add_field("options_shown", "1")
        form.add_field("retry_on", "failed")
        sid = await _create(http, form)
        (before,) = await _schedules(service)
        fields = await _edit_fields(http, sid)
        assert fields["snooze_s"] == "600" and fields.getall("retry_on") == ["failed"]
        async with http.post(f"/schedules/{sid}/edit", data=fields, allow_redirects=False) as resp:
            assert resp.status == 303, await resp.text()
    (after,) = await _schedules(service)
    assert after == before  # not even re-armed


async def test_message_and_options_edited_as_a_patch_through_the_api_edits_them(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        sid = await _create(http, _form(csrf))
        _, twin = await post(service, "/v1/schedules", await _api_twin(service))
        fields = await _edit_fields(http, sid)
        fields["template_text"] = "Reminder for {{ name }} at {{ at }}."
        fields["max_attempts"] = "3"
        fields["quiet_start"], fields["quiet_end"] = "22:00", "07:00"
        fields["misfire"] = "skip"
        fields.popall("retry_on")
        fields.add("retry_on", "busy")
        async with http.post(f"/schedules/{sid}/edit", data=fields, allow_redirects=False) as resp:
            assert resp.status == 303, await resp.text()
    patch = {
        "template_text": "Reminder for {{ name }} at {{ at }}.",
        "options": {
            "max_attempts": 3,
            "retry_on": ["busy"],
            "quiet_hours": {"start": "22:00", "end": "07:00"},
            "misfire": "skip",
        },
    }
    status, _ = await _patch(service, f"/v1/schedules/{twin['id']}", patch)
    assert status == 200
    _, edited = await get(service, f"/v1/schedules/{sid}")
    _, patched = await get(service, f"/v1/schedules/{twin['id']}")
    assert edited["options"] == patched["options"]
    assert edited["options"]["quiet_hours"] == {"start": "22:00", "end": "07:00"}
    rows = {r.id: r for r in await _schedules(service)}
    assert rows[sid].template_text == patch["template_text"] and rows[sid].template is None
    assert rows[sid].when == rows[twin["id"]].when and rows[sid].recipients == rows[twin["id"]].recipients


async def test_quiet_hours_edited_alone_keep_the_other_options(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        sid = await _create(http, _form(csrf, confirm="1", snooze_s="600"))
        edit = {"csrf_token": csrf, "quiet_start": "22:00", "quiet_end": "07:00"}  # no other field posted
        async with http.post(f"/schedules/{sid}/edit", data=edit, allow_redirects=False) as resp:
            assert resp.status == 303, await resp.text()
    (row,) = await _schedules(service)
    assert row.options.quiet_hours is not None and row.options.quiet_hours.start == "22:00"
    assert (row.options.confirm, row.options.snooze_s) == (True, 600)


async def test_a_bad_option_in_the_edit_is_next_to_its_field_and_changes_nothing(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        sid = await _create(http, _form(csrf))
        (before,) = await _schedules(service)
        for name, value, reason in [
            ("snooze_s", "5", "greater than or equal to 60"),
            ("repeat_key", "9", "1 confirms and 9 opts out"),
            ("quiet_start", "25:00", "time of day"),
        ]:
            fields = await _edit_fields(http, sid)
            fields[name] = value
            fields["name"] = "renamed"
            async with http.post(f"/schedules/{sid}/edit", data=fields) as resp:
                assert resp.status == 422, name
                page = await resp.text()
            where = "problem-quiet_hours" if name == "quiet_start" else f"problem-options.{name}"
            found = re.search(rf'id="{re.escape(where)}" role="alert">([^<]*)<', page)
            assert found is not None and reason in found.group(1), (name, found)
    (after,) = await _schedules(service)
    assert after == before


async def _api_twin(service: Service) -> dict[str, Any]:
    (row,) = await _schedules(service)
    return {
        "name": row.name,
        "template_text": row.template_text,
        "recipients": row.recipients,
        "when": row.when,
        "options": row.options.model_dump(mode="json", exclude_defaults=True),
    }


async def _patch(service: Service, path: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.patch(service.base_url + path, json=body, headers=AUTH) as resp,
    ):
        return resp.status, await resp.json()
