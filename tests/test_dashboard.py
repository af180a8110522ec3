"""The dashboard over plain HTTP: sign-in with the API token, the session cookie, CSRF on every
state-changing form, sign-out, escaping of user data, and errors as pages (the API keeps JSON)."""

from __future__ import annotations

import aiohttp
from yarl import URL

from announcer.dashboard.auth import COOKIE
from tests.conftest import AUTH, Service
from tests.dashboard import HTML, browser_session, csrf_of, signed_in


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
