"""The dashboard in a real browser (headless Chromium, tests/browser.py) against the sandbox service."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.browser import Screenshots, sign_in
from tests.conftest import API_TOKEN, Service

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext


async def test_sign_in_refuses_a_wrong_token_then_signs_in_and_out(
    service: Service, chromium: BrowserContext, screenshots: Screenshots
) -> None:
    page = await chromium.new_page()
    await page.goto(service.base_url + "/")
    assert page.url.startswith(service.base_url + "/sign-in")
    await screenshots.take(page, "sign-in")
    await page.fill("#token", "wrong-token")
    await page.click("button[type=submit]")
    await page.wait_for_selector("p.problem")
    assert "not this service's API token" in await page.inner_text("p.problem")
    assert await chromium.cookies() == []
    await screenshots.take(page, "sign-in-refused")

    await sign_in(page, service.base_url, API_TOKEN)
    (cookie,) = await chromium.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert await page.evaluate("document.cookie") == ""  # HttpOnly: no script reads the session
    await screenshots.take(page, "overview")

    await page.click("text=Sign out")
    await page.wait_for_url(service.base_url + "/sign-in")
    assert await chromium.cookies() == []
    await page.goto(service.base_url + "/")
    assert page.url.startswith(service.base_url + "/sign-in")
