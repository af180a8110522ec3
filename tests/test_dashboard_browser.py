"""The dashboard in a real browser (headless Chromium, tests/browser.py) against the sandbox service:
sign-in (a wrong token refused), an alert watched to its end without a reload, a call's audio played, a
CSRF-less post refused, sign-out."""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from announcer.sandbox.twilio_call import Callee, PhoneBehavior
from tests.browser import Screenshots, sign_in
from tests.conftest import API_TOKEN, Service, make_settings, start_service
from tests.dashboard import opt_out
from tests.test_alerts import alert_body, post

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext

T = 30_000  # ms: the longest one wait in the browser may take

HEARER, BUSY, AWAY, MACHINE, INVALID = (f"+1555016{i:04d}" for i in range(1, 6))
PHONES = {
    HEARER: PhoneBehavior(),  # picks up and listens to the end
    BUSY: PhoneBehavior(answer="busy"),
    AWAY: PhoneBehavior(answer="no-answer", ring_s=10),  # 2 s at 5x: the page opens on a running alert
    MACHINE: PhoneBehavior(callee=Callee.MACHINE),  # greeting, beep, records the voicemail
    INVALID: PhoneBehavior(refuse_code=21211),  # Twilio: invalid 'To' number
}
# Waits in the page on the media element's own events (the page's CSP forbids the string evaluation
# Playwright's wait_for_function polls with): its duration once its metadata is loaded, and its position
# once it has played a fifth of a second.
LOADED = """selector => new Promise((resolve, reject) => {
  const audio = document.querySelector(selector);
  if (audio.readyState >= 1) return resolve(audio.duration);
  audio.addEventListener("loadedmetadata", () => resolve(audio.duration));
  audio.addEventListener("error", () => reject(new Error("audio error " + audio.error.code)));
})"""
PLAYS = """selector => new Promise((resolve, reject) => {
  const audio = document.querySelector(selector);
  audio.addEventListener("timeupdate", () => { if (audio.currentTime > 0.2) resolve(audio.currentTime); });
  audio.addEventListener("error", () => reject(new Error("audio error " + audio.error.code)));
  audio.play().catch(reject);
})"""
EXPECTED = {"heard": 1, "busy": 1, "no_answer": 1, "voicemail_left": 1, "failed": 1}


@pytest.fixture
async def paced(tmp_path: Path, database_url: str) -> AsyncIterator[Service]:
    """The sandbox at 5 times real time (as tests/test_outcomes.py: who answered is a race the service
    runs in real time against the callee's sounds in sandbox time), every call at once."""
    settings = make_settings(tmp_path, database_url, announcer_sandbox_speed=5.0, max_concurrent_calls=20)
    runner, svc = await start_service(settings)
    try:
        yield svc
    finally:
        await runner.cleanup()


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

    # A form post without the CSRF token (what another site's form would send) is refused.
    status = await page.evaluate("fetch('/sign-out', {method: 'POST'}).then(r => r.status)")
    assert status == 403
    await page.reload()
    assert page.url == service.base_url + "/"  # nothing changed: still signed in

    await page.click("text=Sign out")
    await page.wait_for_url(service.base_url + "/sign-in")
    assert await chromium.cookies() == []
    await page.goto(service.base_url + "/")
    assert page.url.startswith(service.base_url + "/sign-in")


async def test_an_alert_is_watched_to_its_end_and_a_call_played(
    paced: Service, chromium: BrowserContext, screenshots: Screenshots
) -> None:
    service = paced
    for phone, behavior in PHONES.items():
        service.sandbox.set_behavior(phone, behavior)
    page = await chromium.new_page()
    await sign_in(page, service.base_url, API_TOKEN)

    # The Send page is another helper's: the alert goes in through the API.
    status, accepted = await post(service, "/v1/alerts", alert_body(*PHONES))
    assert status == 202, accepted
    await page.goto(f"{service.base_url}/alerts/{accepted['id']}")
    await page.evaluate("window.notReloaded = true")  # gone if the page were loaded again
    assert await page.get_attribute("#progress", "data-status") == "active"
    await screenshots.take(page, "alert-running")

    await page.wait_for_selector("#progress[data-status=completed]", timeout=T)
    assert await page.evaluate("window.notReloaded === true")
    counts = {
        await dd.get_attribute("data-count"): int(await dd.inner_text())
        for dd in await page.query_selector_all("dd[data-count]")
    }
    assert counts == EXPECTED
    assert await page.inner_text("[data-done]") == "5 / 5"
    states = {
        await row.get_attribute("data-recipient"): await row.get_attribute("data-state")
        for row in await page.query_selector_all("tr[data-recipient]")
    }
    assert sorted(states.values()) == sorted(EXPECTED)
    assert await page.query_selector("#progress[hx-trigger]") is None  # final: the polling has stopped
    await screenshots.take(page, "alert-completed")

    # The heard call: its page, its timeline, and the sandbox phone's recording in an <audio> element.
    heard = next(c for c in service.sandbox.calls.values() if c.to == HEARER)
    await heard.wait_ended(T / 1000)
    await page.click("tr[data-recipient='0'] a:text('Call')")
    await page.wait_for_url(f"{service.base_url}/calls/{heard.sid}")
    assert await page.query_selector("tr[data-event]") is not None
    with wave.open(str(heard.wav_path)) as wav:
        expected_s = wav.getnframes() / wav.getframerate()
    duration = await page.evaluate(LOADED, "#recording")
    assert abs(duration - expected_s) < 0.05, (duration, expected_s)
    assert await page.evaluate(PLAYS, "#recording") > 0.2
    assert await page.query_selector("#message") is not None  # the message audio, from the speech cache
    assert await page.evaluate(LOADED, "#message") > 0.5
    await screenshots.take(page, "call")

    await page.goto(service.base_url + "/alerts")
    await page.wait_for_selector(f"a:text('{accepted['id']}')")
    await screenshots.take(page, "alerts")
    await page.goto(service.base_url + "/")
    assert await page.inner_text("dd[data-outcome=heard]") == "1"
    await screenshots.take(page, "overview")
    await opt_out(service, "+15550160099")
    await page.goto(service.base_url + "/opt-outs")
    await page.wait_for_selector("tr[data-phone='+15550160099']")
    await screenshots.take(page, "opt-outs")
    await page.goto(service.base_url + "/calls/new")
    await screenshots.take(page, "agent-call")
    await page.goto(service.base_url + "/alerts/al_nothing")
    assert "No such alert." in await page.inner_text("p.problem")
    await screenshots.take(page, "not-found")
    await page.set_viewport_size({"width": 390, "height": 844})  # a phone's width
    await page.goto(f"{service.base_url}/alerts/{accepted['id']}")
    await screenshots.take(page, "alert-phone")
