"""Helpers for the dashboard's tests over plain HTTP: a signed-in client session and the page's CSRF
token (the browser tests use tests/browser.py)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp

from tests.conftest import API_TOKEN, Service

HTML = {"Accept": "text/html"}
_CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def csrf_of(html: str) -> str:
    """The CSRF token of a page (its sign-out form carries it on every signed-in page)."""
    found = _CSRF.search(html)
    assert found is not None, "no CSRF field on the page"
    return found.group(1)


@asynccontextmanager
async def browser_session(service: Service) -> AsyncIterator[aiohttp.ClientSession]:
    """A client that keeps cookies (for 127.0.0.1 too) and follows no redirect unless asked."""
    async with aiohttp.ClientSession(
        base_url=service.base_url, cookie_jar=aiohttp.CookieJar(unsafe=True), headers=HTML
    ) as http:
        yield http


async def sign_in(http: aiohttp.ClientSession, token: str = API_TOKEN) -> str:
    """Sign in with `token`; returns the session's CSRF token (read from the overview page)."""
    async with http.post("/sign-in", data={"token": token, "next": "/"}, allow_redirects=False) as resp:
        assert resp.status == 303, await resp.text()
    async with http.get("/") as resp:
        assert resp.status == 200
        return csrf_of(await resp.text())


@asynccontextmanager
async def signed_in(service: Service) -> AsyncIterator[tuple[aiohttp.ClientSession, str]]:
    """A signed-in client and its CSRF token."""
    async with browser_session(service) as http:
        yield http, await sign_in(http)


async def opt_out(service: Service, *phones: str) -> None:
    """Numbers stored as opted out, as a key 9 in a call stores them (the row alone: no call needed)."""
    from announcer.app import DATABASE
    from announcer.store.models import OptOut, utcnow

    async with service.app[DATABASE].sessions() as s:
        s.add_all(OptOut(phone=p, created_at=utcnow()) for p in phones)
        await s.commit()
