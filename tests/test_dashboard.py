"""The dashboard over plain HTTP: sign-in with the API token, the session cookie, CSRF on every
state-changing form, sign-out, escaping of user data, and errors as pages (the API keeps JSON)."""

from __future__ import annotations

import re
from pathlib import Path

import aiohttp
from yarl import URL

from announcer.dashboard.auth import COOKIE
from announcer.sandbox.twilio_call import PhoneBehavior
from tests.conftest import AUTH, Service, make_settings, start_service
from tests.dashboard import HTML, browser_session, csrf_of, opt_out, signed_in
from tests.test_alerts import alert_body, finished, get, post


async def test_the_sign_in_page_is_the_way_in(service: Service) -> None:
    async with browser_session(service) as http:
        async with http.get("/", allow_redirects=False) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == "/sign-in?next=%2F"
        async with http.get("/sign-in") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/html"
            page = await resp.text()
        assert 'name="token"' in page and 'type="password"' in page


async def test_a_wrong_token_is_refused_with_no_session(service: Service) -> None:
    async with browser_session(service) as http:
        async with http.post("/sign-in", data={"token": "not-the-token"}, allow_redirects=False) as resp:
            assert resp.status == 401
            assert "not this service&#39;s API token" in await resp.text()
            assert COOKIE not in resp.cookies
        assert len(http.cookie_jar) == 0
        async with http.get("/", allow_redirects=False) as resp:
            assert resp.status == 303


async def test_the_right_token_opens_a_session_in_a_strict_http_only_cookie(service: Service) -> None:
    async with browser_session(service) as http:
        async with http.post(
            "/sign-in", data={"token": "test-api-token", "next": "/opt-outs"}, allow_redirects=False
        ) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == "/opt-outs"
            cookie = resp.headers["Set-Cookie"]
        assert cookie.startswith(f"{COOKIE}=")
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
        assert "Secure" not in cookie  # PUBLIC_URL is http in the tests
        async with http.get("/") as resp:
            assert resp.status == 200
            assert "Sign out" in await resp.text()
            assert resp.headers["Cache-Control"] == "no-store"
            assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"]


async def test_the_cookie_is_secure_behind_https(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url, public_url="https://alerts.example.test")
    runner, svc = await start_service(settings)
    try:
        async with (
            browser_session(svc) as http,
            http.post("/sign-in", data={"token": "test-api-token"}, allow_redirects=False) as resp,
        ):
            assert resp.status == 303
            assert "Secure" in resp.headers["Set-Cookie"]
    finally:
        await runner.cleanup()


async def test_sign_in_goes_back_only_to_a_path_of_this_site(service: Service) -> None:
    async with browser_session(service) as http:
        for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
            async with http.post(
                "/sign-in", data={"token": "test-api-token", "next": target}, allow_redirects=False
            ) as resp:
                assert resp.status == 303
                assert resp.headers["Location"] == "/"


async def test_sign_out_needs_the_csrf_token_and_ends_the_session_everywhere(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        session_cookie = http.cookie_jar.filter_cookies(URL(service.base_url))[COOKIE].value
        async with http.post("/sign-out", data={}, allow_redirects=False) as resp:
            assert resp.status == 403
            assert "CSRF" in await resp.text()
        async with http.post("/sign-out", data={"csrf_token": "0" * 64}, allow_redirects=False) as resp:
            assert resp.status == 403
        async with http.get("/", allow_redirects=False) as resp:
            assert resp.status == 200  # refused posts changed nothing: still signed in
        async with http.post("/sign-out", data={"csrf_token": csrf}, allow_redirects=False) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == "/sign-in"
    # The old cookie, replayed by someone who kept it, opens nothing any more.
    async with (
        aiohttp.ClientSession(
            base_url=service.base_url, headers={**HTML, "Cookie": f"{COOKIE}={session_cookie}"}
        ) as replay,
        replay.get("/", allow_redirects=False) as resp,
    ):
        assert resp.status == 303


async def test_the_csrf_token_is_accepted_as_a_header_too(service: Service) -> None:
    async with (
        signed_in(service) as (http, csrf),
        http.post("/sign-out", headers={"X-CSRF-Token": csrf}, allow_redirects=False) as resp,
    ):
        assert resp.status == 303


async def test_each_session_has_its_own_csrf_token(service: Service) -> None:
    async with signed_in(service) as (_, first), signed_in(service) as (other, second):
        assert first != second
        async with other.post("/sign-out", data={"csrf_token": first}, allow_redirects=False) as resp:
            assert resp.status == 403


async def test_the_bearer_token_is_not_a_dashboard_session(service: Service) -> None:
    async with aiohttp.ClientSession(base_url=service.base_url, headers={**HTML, **AUTH}) as http:
        async with http.get("/", allow_redirects=False) as resp:
            assert resp.status == 303
        async with http.post("/sign-out", allow_redirects=False) as resp:
            assert resp.status == 401


async def test_the_api_takes_its_bearer_token_and_never_the_cookie(service: Service) -> None:
    async with signed_in(service) as (http, _):
        async with http.get("/v1/alerts/al_nothing") as resp:
            assert resp.status == 401
            assert (await resp.json())["error"] == "unauthorized"
        async with http.get("/v1/alerts/al_nothing", headers=AUTH) as resp:
            assert resp.status == 404
            assert resp.content_type == "application/json"


async def test_errors_are_pages_for_a_browser_and_json_for_the_api(service: Service) -> None:
    async with browser_session(service) as http:
        async with http.get("/no/such/page") as resp:
            assert resp.status == 404
            assert resp.content_type == "text/html"
            assert "404 Not Found" in await resp.text()
        async with http.get("/v1/no-such-route", headers=AUTH) as resp:
            assert resp.status == 404
            assert resp.content_type == "application/json"
        async with http.put("/sign-in") as resp:
            assert resp.status == 405
            assert resp.content_type == "text/html"
    async with aiohttp.ClientSession(base_url=service.base_url) as plain, plain.get("/no/such/page") as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"  # not a browser: the API's shape, as before


async def test_the_vendored_htmx_and_stylesheet_are_served(service: Service) -> None:
    async with signed_in(service) as (http, _):
        async with http.get("/") as resp:
            page = await resp.text()
        assert csrf_of(page)
        for name in ("htmx.min.js", "dashboard.css"):
            start = page.index(f"/static/{name}")
            url = page[start : page.index('"', start)]
            async with http.get(url) as resp:
                assert resp.status == 200, url
                body = await resp.read()
            assert len(body) > 1000


# --- the pages ---------------------------------------------------------------------------------------


async def _alert(service: Service, *phones: str, name: str | None = None) -> str:
    body = alert_body(*phones)
    if name is not None:
        body["recipients"][0]["name"] = name
    status, accepted = await post(service, "/v1/alerts", body)
    assert status == 202, accepted
    return str(accepted["id"])


async def test_user_data_is_escaped_on_every_page(service: Service) -> None:
    evil = "<script>alert(1)</script>"
    alert_id = await _alert(service, "+15550170001", name=evil)
    await finished(service, alert_id)
    async with signed_in(service) as (http, _):
        for path in (f"/alerts/{alert_id}", f"/alerts/{alert_id}/progress", "/alerts"):
            async with http.get(path) as resp:
                assert resp.status == 200, path
                page = await resp.text()
            assert "<script>alert(1)" not in page, path
        async with http.get(f"/alerts/{alert_id}") as resp:
            assert "&lt;script&gt;alert(1)&lt;/script&gt;" in await resp.text()


async def test_unknown_ids_are_404_pages(service: Service) -> None:
    async with signed_in(service) as (http, _):
        for path in (
            "/alerts/al_nothing",
            "/alerts/al_nothing/progress",
            "/alerts/not%20an%20id",
            "/calls/CA" + "0" * 32,
            "/calls/CA" + "0" * 32 + "/recording.wav",
            "/calls/CA" + "0" * 32 + "/message.wav",
            "/calls/nonsense",
        ):
            async with http.get(path) as resp:
                assert resp.status == 404, path
                assert resp.content_type == "text/html", path
        async with http.get("/alerts?before=al_nothing") as resp:
            assert resp.status == 200
            assert "No older alerts" in await resp.text()


async def test_cancel_without_csrf_changes_nothing_and_with_it_cancels(service: Service) -> None:
    ringer = "+15550170002"
    service.sandbox.set_behavior(ringer, PhoneBehavior(answer="no-answer", ring_s=600))
    alert_id = await _alert(service, ringer)
    async with signed_in(service) as (http, csrf):
        async with http.post(f"/alerts/{alert_id}/cancel", data={}, allow_redirects=False) as resp:
            assert resp.status == 403
        _, view = await get(service, f"/v1/alerts/{alert_id}")
        assert view["status"] == "active"
        async with http.post(
            f"/alerts/{alert_id}/cancel", data={"csrf_token": csrf}, allow_redirects=False
        ) as resp:
            assert resp.status == 303
            assert resp.headers["Location"] == f"/alerts/{alert_id}"
        _, view = await get(service, f"/v1/alerts/{alert_id}")
        assert view["status"] == "canceled"
        async with http.post(f"/alerts/{alert_id}/cancel", data={"csrf_token": csrf}) as resp:
            assert resp.status == 409
            assert "already canceled" in await resp.text()


async def test_the_alert_page_pages_through_its_recipients(service: Service) -> None:
    phones = [f"+1555018{i:04d}" for i in range(60)]
    for phone in phones:
        service.sandbox.set_behavior(phone, PhoneBehavior(answer="busy"))
    alert_id = await _alert(service, *phones)
    async with signed_in(service) as (http, _):
        async with http.get(f"/alerts/{alert_id}") as resp:
            first = await resp.text()
        assert first.count("data-recipient=") == 50
        assert f'href="/alerts/{alert_id}?start=50"' in first
        async with http.get(f"/alerts/{alert_id}?start=50") as resp:
            second = await resp.text()
        assert second.count("data-recipient=") == 10
        assert phones[59] in second and phones[0] not in second
        async with http.get(f"/alerts/{alert_id}?start=x") as resp:
            assert resp.status == 400
            assert "start must be" in await resp.text()


async def test_opt_outs_are_listed_and_removed_with_the_csrf_token(service: Service) -> None:
    await opt_out(service, "+15550170003", "+15550170004")
    status, listed = await get(service, "/v1/opt-outs")
    assert status == 200
    assert [o["phone"] for o in listed["opt_outs"]] == ["+15550170003", "+15550170004"]
    assert listed["next_after"] is None
    status, listed = await get(service, "/v1/opt-outs?after=%2B15550170003&limit=1")
    assert [o["phone"] for o in listed["opt_outs"]] == ["+15550170004"]
    status, listed = await get(service, "/v1/opt-outs?after=nope")
    assert status == 400 and listed["field"] == "after"
    async with signed_in(service) as (http, csrf):
        async with http.get("/opt-outs") as resp:
            page = await resp.text()
        assert 'data-phone="+15550170003"' in page and 'data-phone="+15550170004"' in page
        path = "/opt-outs/%2B15550170003/remove"
        async with http.post(path, data={}) as resp:
            assert resp.status == 403
        _, listed = await get(service, "/v1/opt-outs")
        assert len(listed["opt_outs"]) == 2  # refused: nothing removed
        async with http.post(path, data={"csrf_token": csrf}, allow_redirects=False) as resp:
            assert resp.status == 303
        _, listed = await get(service, "/v1/opt-outs")
        assert [o["phone"] for o in listed["opt_outs"]] == ["+15550170004"]
        async with http.post(path, data={"csrf_token": csrf}) as resp:
            assert resp.status == 404


async def test_the_overview_counts_todays_outcomes(service: Service) -> None:
    busy = "+15550170005"
    service.sandbox.set_behavior(busy, PhoneBehavior(answer="busy"))
    alert_id = await _alert(service, "+15550170006", busy)
    await finished(service, alert_id)
    async with signed_in(service) as (http, _):
        async with http.get("/") as resp:
            page = await resp.text()
        async with http.get("/overview/live") as resp:
            fragment = await resp.text()
    for html in (page, fragment):
        assert '<dd data-outcome="heard">1</dd>' in html
        assert '<dd data-outcome="busy">1</dd>' in html
        assert '<dd data-outcome="failed">0</dd>' in html
        assert "<dd data-scheduler>running</dd>" in html
        assert '<dd data-cache="ratio">—</dd>' not in html  # the calls asked the speech cache
    assert "Sandbox mode" in page or "sandbox" in page


async def test_a_new_api_token_signs_every_browser_out(tmp_path: Path, database_url: str) -> None:
    runner, first = await start_service(make_settings(tmp_path, database_url))
    try:
        async with signed_in(first) as (http, _):
            session_id = http.cookie_jar.filter_cookies(URL(first.base_url))[COOKIE].value
    finally:
        await runner.cleanup()
    runner, second = await start_service(
        make_settings(tmp_path, database_url, announcer_api_token="another-token")
    )
    try:
        async with (
            aiohttp.ClientSession(
                base_url=second.base_url, headers={**HTML, "Cookie": f"{COOKIE}={session_id}"}
            ) as http,
            http.get("/", allow_redirects=False) as resp,
        ):
            assert resp.status == 303  # the session opened with the old token opens nothing
    finally:
        await runner.cleanup()


async def test_an_agent_call_is_placed_from_its_form_once(service: Service) -> None:
    async with signed_in(service) as (http, csrf):
        async with http.get("/calls/new") as resp:
            form = await resp.text()
        once = re.search(r'name="once" value="([^"]+)"', form)
        assert once is not None
        fields = {"number": "nonsense", "prompt": "You are a receptionist.", "first_message": "Hello!"}
        async with http.post("/calls/new", data={**fields, "csrf_token": csrf, "once": once[1]}) as resp:
            assert resp.status == 422
            page = await resp.text()
        assert 'data-problem="number"' in page and "You are a receptionist." in page  # kept as typed
        fields["number"] = "+15550170007"
        sent = {**fields, "csrf_token": csrf, "once": once[1]}
        async with http.post("/calls/new", data=sent, allow_redirects=False) as resp:
            assert resp.status == 303
            location = resp.headers["Location"]
        async with http.post("/calls/new", data=sent, allow_redirects=False) as resp:
            assert resp.headers["Location"] == location  # a double submit: the same call, not a second
        alert_id = location.rsplit("/", 1)[1]
        status, view = await get(service, f"/v1/alerts/{alert_id}")
        assert status == 200 and view["recipients"] == 1
        async with http.post("/calls/new", data=fields) as resp:
            assert resp.status == 403  # no CSRF token: nobody is called


async def test_a_session_ends_when_it_expires_and_is_purged_later(database_url: str) -> None:
    from datetime import timedelta

    from sqlalchemy import func, select

    from announcer.store.dashboard_sessions import DashboardSessions
    from announcer.store.db import Database
    from announcer.store.models import DashboardSession

    db = Database(database_url)
    await db.upgrade()
    try:
        sessions = DashboardSessions(db.sessions, "mark")
        await sessions.open("expired", timedelta(seconds=-1))
        await sessions.open("live", timedelta(hours=1))
        assert not await sessions.valid("expired")
        assert await sessions.valid("live")
        assert not await DashboardSessions(db.sessions, "another mark").valid("live")
        await sessions.open("next", timedelta(hours=1))  # each sign-in drops the expired rows
        async with db.sessions() as s:
            assert await s.scalar(select(func.count()).select_from(DashboardSession)) == 2
        await sessions.close("live")
        assert not await sessions.valid("live")
    finally:
        await db.dispose()


async def test_the_alerts_are_listed_newest_first_by_the_api_and_the_page(service: Service) -> None:
    ids = [await _alert(service, f"+1555017{i:04d}") for i in range(100, 103)]
    status, page = await get(service, "/v1/alerts?limit=2")
    assert status == 200
    assert [a["id"] for a in page["alerts"]] == [ids[2], ids[1]]
    assert page["next_before"] == ids[1]
    _, rest = await get(service, f"/v1/alerts?limit=2&before={ids[1]}")
    assert [a["id"] for a in rest["alerts"]] == [ids[0]] and rest["next_before"] is None
    assert rest["alerts"][0]["recipients"] == 1
    status, bad = await get(service, "/v1/alerts?before=not%20an%20id")
    assert status == 400 and bad["field"] == "before"
    async with signed_in(service) as (http, _), http.get("/alerts") as resp:
        html = await resp.text()
    assert html.index(ids[2]) < html.index(ids[1]) < html.index(ids[0])
