"""The Send page over plain HTTP: CSRF required, a CSV's columns as each row's variables (preview and one
row's audio), the API's problems shown in the cell of the row they name with nothing sent, a double
submit sending once, user data escaped."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from announcer.dashboard import SERVICES
from tests.conftest import Service
from tests.dashboard import signed_in
from tests.test_alerts import get, post

KEY = "0123456789abcdef0123456789abcdef"
TEXT = "Hello {{ name }}, your {{ item }} is ready."
CSV = (
    "phone,name,item\n"
    "+15550170001,Ada,prescription\n"
    "+15550170002,Grace,glasses\n"
    "+15550170003,Alan,test results\n"
)


def _form(csrf: str | None, action: str, *, csv: str | None = None, **fields: str) -> aiohttp.FormData:
    form = aiohttp.FormData()
    if csrf is not None:
        form.add_field("csrf_token", csrf)
    form.add_field("key", fields.pop("key", KEY))
    form.add_field("action", action)
    for name, value in fields.items():
        form.add_field(name, value)
    if csv is not None:
        form.add_field("csv", csv.encode(), filename="people.csv", content_type="text/csv")
    return form


async def _alerts(service: Service) -> list[Any]:
    return await service.app[SERVICES].alerts.store.recent_alerts(before=None, limit=10)


def _row(html: str, index: int) -> str:
    found = re.search(rf'<tr id="row-{index}"[^>]*>(.*?)</tr>', html, re.S)
    assert found is not None, f"no row {index} in the table"
    return found.group(1)


def _cell(html: str, index: int, field: str) -> str:
    found = re.search(rf'<td data-field="{re.escape(field)}">(.*?)</td>', _row(html, index), re.S)
    assert found is not None, f"no {field} cell in row {index}"
    return found.group(1)


async def test_sending_needs_the_csrf_token_and_nothing_is_sent_without_it(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        form = _form(None, "send", template_text=TEXT, csv=CSV)
        async with http.post("/send", data=form, allow_redirects=False) as resp:
            assert resp.status == 403
            assert "CSRF token is missing or wrong" in await resp.text()
        form = _form("f" * 64, "send", template_text=TEXT, csv=CSV)
        async with http.post("/send", data=form, allow_redirects=False) as resp:
            assert resp.status == 403
        assert await _alerts(service) == []
        form = _form(csrf, "send", template_text=TEXT, csv=CSV)  # the same form with the session's token
        async with http.post("/send", data=form, allow_redirects=False) as resp:
            assert resp.status == 303
    assert len(await _alerts(service)) == 1


async def test_a_csv_upload_previews_each_row_with_its_columns_as_variables(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        async with http.get("/send") as resp:
            assert resp.status == 200
            page = await resp.text()
        assert 'name="key" value="' in page and "alert.j2" in page  # a form key; the templates offered
        form = _form(csrf, "preview", template_text=TEXT, variables="item=parcel", csv=CSV)
        async with http.post("/send", data=form) as resp:
            assert resp.status == 200, await resp.text()
            page = await resp.text()
        assert "Hello Ada, your prescription is ready." in _cell(page, 0, "message")
        assert "Hello Grace, your glasses is ready." in _cell(page, 1, "message")
        assert _cell(page, 2, "variables.item").strip() == "test results"
        # The uploaded CSV is carried on in the form: Send after the preview sends these rows.
        assert "+15550170003,Alan,test results" in page
        audio = re.search(r'<audio controls preload="none" src="([^"]+)"', _row(page, 1))
        assert audio is not None
        async with http.get(audio.group(1).replace("&amp;", "&")) as resp:
            assert resp.status == 200
            assert resp.content_type == "audio/wav"
            wav = await resp.read()
        assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE" and len(wav) > 8000  # some speech, not a header
        async with http.get("/send/audio?row=not-a-row") as resp:
            assert resp.status == 400
    assert await _alerts(service) == []  # a preview sends nothing


async def test_problems_show_in_the_cell_of_the_row_they_name_and_nothing_is_sent(service: Service) -> None:
    csv = (
        "phone,name,item\n"
        "+15550170001,Ada,prescription\n"
        "12ab,Grace,glasses\n"  # not a phone number: recipients[1].phone
        "+15550170003,Alan,\n"  # no item, none shared: recipients[2].variables
        "+15550170001,Ada again,parcel\n"  # a duplicate of recipients[0]
    )
    async with signed_in(service) as (http, csrf):
        async with http.post("/send", data=_form(csrf, "send", template_text=TEXT, csv=csv)) as resp:
            assert resp.status == 422
            page = await resp.text()
        assert "1 problem(s); nothing was sent." in page  # the API's model refuses the pattern first
        assert "not a phone number" in _cell(page, 1, "phone")
        assert "problem" not in _cell(page, 0, "phone")
        # with a number the API's model takes, the plan's problems are placed the same way
        csv = csv.replace("12ab", "+1555")
        async with http.post("/send", data=_form(csrf, "send", template_text=TEXT, csv=csv)) as resp:
            assert resp.status == 422
            page = await resp.text()
        assert "problem(s); nothing was sent." in page
        assert 'class="problem"' in _cell(page, 1, "phone")
        assert "item" in _cell(page, 2, "message") and "undefined" in _cell(page, 2, "message")
        assert "duplicate of recipients[0]" in _cell(page, 3, "phone")
        assert 'class="problem"' not in _row(page, 0)
        # a problem of the form itself is shown next to its field
        form = _form(csrf, "send", template_text="Hello {{ name ", csv=CSV)
        async with http.post("/send", data=form) as resp:
            assert resp.status == 422
            page = await resp.text()
        assert re.search(r'id="problem-template_text" role="alert">[^<]*syntax error', page)
    assert await _alerts(service) == []


async def test_pasted_numbers_and_a_bad_csv_line_are_named(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        form = _form(csrf, "preview", template="alert.j2", recipients="+15550170001\n\n+15550170002\n")
        form.add_field("variables", "system=the billing server\nsummary=It is down.")
        async with http.post("/send", data=form) as resp:
            page = await resp.text()
            assert resp.status == 200, page
        assert _cell(page, 1, "phone").strip() == "+15550170002"
        bad = "phone,name\n+15550170001,Ada\n+15550170002,Grace,extra\n"
        async with http.post("/send", data=_form(csrf, "preview", template="alert.j2", csv=bad)) as resp:
            assert resp.status == 422
            page = await resp.text()
        assert re.search(
            r'id="problem-recipients" role="alert">people.csv: 1 bad line\(s\); nothing was sent</p>'
            r'<p class="problem" role="alert">people.csv line 3: 3 cells, the header has 2</p>',
            page,
        )
        form = _form(csrf, "preview", template_text="Kept {{ name }}")
        form.add_field("csv", "phone\n+1555\xe9\n".encode("latin-1"), filename="latin.csv")
        async with http.post("/send", data=form) as resp:
            assert resp.status == 422
            page = await resp.text()
        assert re.search(r'id="problem-recipients" role="alert">latin.csv is not UTF-8 text', page)
        assert ">Kept {{ name }}</textarea>" in page  # what was typed is kept
    assert await _alerts(service) == []


async def test_a_double_submit_sends_once_and_lands_on_the_alert(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        locations = []
        for _ in range(2):
            form = _form(csrf, "send", template_text=TEXT, csv=CSV)
            async with http.post("/send", data=form, allow_redirects=False) as resp:
                assert resp.status == 303, await resp.text()
                locations.append(resp.headers["Location"])
        assert locations[0] == locations[1]
        assert re.fullmatch(r"/alerts/[A-Za-z0-9_-]+", locations[0])
        async with http.get(locations[0]) as resp:
            assert resp.status == 200
            assert "+15550170002" in await resp.text()
        # the same form with other content is not sent under its key
        form = _form(csrf, "send", template_text="Another message for {{ name }}.", csv=CSV)
        async with http.post("/send", data=form, allow_redirects=False) as resp:
            assert resp.status == 409
            assert "already sent" in await resp.text()
    (alert,) = await _alerts(service)
    assert alert.recipients == 3


async def test_user_data_is_escaped(service: Service) -> None:
    csv = 'phone,name,item\n+15550170001,<script>alert(1)</script>,"<b>x</b>"\n'
    async with signed_in(service) as (http, csrf):
        form = _form(csrf, "preview", template_text="<i>{{ item }}</i> for {{ name }}", csv=csv)
        async with http.post("/send", data=form) as resp:
            assert resp.status == 200
            page = await resp.text()
    assert "<script>alert(1)</script>" not in page and "<b>x</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in _cell(page, 0, "name")
    assert "&lt;b&gt;x&lt;/b&gt;" in _cell(page, 0, "variables.item")
    assert "&lt;i&gt;" in page  # the template text itself, shown back in its field


async def test_the_variables_a_message_reads_are_named(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        async with http.get("/send?template=alert.j2") as resp:
            page = await resp.text()
        hint = re.search(r'<p class="hint" id="variables-hint">(.*?)</p>', page, re.S)
        assert hint is not None
        assert re.findall(r"<code>(\w+)</code>", hint.group(1)) == [
            *["severity", "since", "summary", "system", "ticket"],
            *["name", "phone"],
        ]
        async with http.get("/send/variables?template=../pyproject.toml") as resp:
            assert resp.status == 200
            assert "<code>" not in await resp.text()  # only the templates' own names are read
        form = _form(csrf, "preview", template_text="{{ greeting }} {{ name }}, {{ item }}", csv=CSV)
        async with http.post("/send", data=form) as resp:
            page = await resp.text()
        assert "This message reads: <code>greeting</code>, <code>item</code>" in page


# Every option the form's "More options" offers, as typed, and the same options as a /v1 body.
OPTION_FIELDS = {
    "confirm": "1",
    "max_attempts": "3",
    "retry_backoff_s": "30",
    "machine_detection": "yes",
    "on_machine": "hang_up",
    "start": "on_answer",
    "hello_timeout_ms": "2000",
    "repeat_key": "5",
}
API_OPTIONS = {
    "confirm": True,
    "max_attempts": 3,
    "retry_on": ["busy", "machine"],
    "retry_backoff_s": 30.0,
    "machine_detection": True,
    "on_machine": "hang_up",
    "start": "on_answer",
    "hello_timeout_ms": 2000,
    "repeat_key": "5",
}


def _with_options(form: aiohttp.FormData, retry_on: list[str], **fields: str) -> aiohttp.FormData:
    form.add_field("options_shown", "1")
    for outcome in retry_on:
        form.add_field("retry_on", outcome)
    for name, value in fields.items():
        form.add_field(name, value)
    return form


async def test_more_options_arrive_in_the_alert_as_through_the_api(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        async with http.get("/send") as resp:
            page = await resp.text()
        assert '<details class="more-options" id="more-options">' in page  # closed until a problem
        for name in ("max_attempts", "retry_backoff_s", "hello_timeout_ms", "repeat_key", "callback_url"):
            assert f'name="{name}"' in page
        form = _with_options(
            _form(csrf, "send", template_text=TEXT, csv=CSV), ["busy", "machine"], **OPTION_FIELDS
        )
        async with http.post("/send", data=form, allow_redirects=False) as resp:
            assert resp.status == 303, await resp.text()
            dashboard_id = resp.headers["Location"].rsplit("/", 1)[-1]
    one = {"phone": "+15550170009", "variables": {"item": "cast"}}
    body = {"template_text": TEXT, "recipients": [one], "options": API_OPTIONS}
    status, accepted = await post(service, "/v1/alerts", body)
    assert status in (200, 201, 202), accepted
    _, through_dashboard = await get(service, f"/v1/alerts/{dashboard_id}")
    _, through_api = await get(service, f"/v1/alerts/{accepted['id']}")
    assert through_dashboard["options"] == through_api["options"]
    assert through_dashboard["options"]["retry_on"] == ["busy", "machine"]
    assert through_dashboard["options"]["max_attempts"] == 3


async def test_a_bad_option_is_shown_next_to_its_field_and_nothing_is_sent(service: Service) -> None:
    cases = [
        ({"max_attempts": "two"}, [], "problem-options.max_attempts", "expected a whole number"),
        ({"max_attempts": "11"}, [], "problem-options.max_attempts", "less than or equal to 10"),
        ({"repeat_key": "1"}, [], "problem-options.repeat_key", "1 confirms and 9 opts out"),
        ({"callback_url": "ftp://example.com"}, [], "problem-options.callback_url", ""),
        ({"machine_detection": "no"}, ["machine"], "problem-options.retry_on", "machine"),
        ({"hello_timeout_ms": "10"}, [], "problem-options.hello_timeout_ms", "greater than or equal"),
    ]
    async with signed_in(service) as (http, csrf):
        for fields, retry_on, where, reason in cases:
            for action in ("preview", "send"):
                form = _with_options(_form(csrf, action, template_text=TEXT, csv=CSV), retry_on, **fields)
                async with http.post("/send", data=form, allow_redirects=False) as resp:
                    assert resp.status == 422, (fields, action, resp.status)
                    page = await resp.text()
                found = re.search(rf'id="{re.escape(where)}" role="alert">([^<]*)<', page)
                assert found is not None and reason in found.group(1), (fields, action, found)
                assert '<details class="more-options" id="more-options" open>' in page
                assert 'value="' + next(iter(fields.values())) + '"' in page  # kept as typed
    assert await _alerts(service) == []


async def test_numbers_pasted_and_a_csv_uploaded_is_a_problem_not_a_silent_pick(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        form = _form(csrf, "send", template_text=TEXT, recipients="+15550170042", csv=CSV)
        async with http.post("/send", data=form, allow_redirects=False) as resp:
            assert resp.status == 422
            page = await resp.text()
    found = re.search(r'id="problem-recipients" role="alert">([^<]*)<', page)
    assert found is not None and "people.csv was uploaded too" in found.group(1)
    assert "+15550170042</textarea>" in page  # the pasted numbers are kept
    assert await _alerts(service) == []
