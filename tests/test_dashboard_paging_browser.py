"""The Incidents page in a real browser (headless Chromium, tests/browser.py) against the sandbox service: a
new incident appears in the open list without a reload, its page is opened from there, the Acknowledge
button acknowledges it (as `dashboard`), and the list, still not reloaded, shows the new state."""

from __future__ import annotations

from typing import TYPE_CHECKING

from announcer.sandbox.twilio_call import PhoneBehavior
from tests.browser import Screenshots, sign_in
from tests.conftest import API_TOKEN, Service
from tests.test_paging_ingest import ON_CALL, am_payload, incident, send, setup_paging

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext

T = 30_000  # ms: the longest one wait in the browser may take


async def test_an_incident_appears_live_and_is_acknowledged_with_the_button(
    service: Service, chromium: BrowserContext, screenshots: Screenshots
) -> None:
    service.sandbox.set_behavior(ON_CALL, PhoneBehavior(answer="no-answer", ring_s=2000))  # rings on
    integration, _ = await setup_paging(service, steps=[([ON_CALL], 600)])
    listing = await chromium.new_page()
    await sign_in(listing, service.base_url, API_TOKEN)
    await listing.goto(service.base_url + "/incidents")
    await listing.wait_for_selector("#no-incidents")
    await listing.evaluate("window.notReloaded = true")  # gone if the page were loaded again

    status, answer = await send(service, integration, am_payload())
    assert status == 200, answer
    incident_id = answer["incident_id"]
    row = f"tr[data-incident='{incident_id}']"
    await listing.wait_for_selector(f"{row}[data-state=triggered]", timeout=T)
    assert await listing.evaluate("window.notReloaded === true")
    assert "DiskFull" in await listing.inner_text(row)
    await screenshots.take(listing, "incidents-triggered")

    detail = await chromium.new_page()
    await detail.goto(service.base_url + "/incidents")
    await detail.click(f"{row} a")
    await detail.wait_for_url(f"{service.base_url}/incidents/{incident_id}")
    await detail.wait_for_selector(f"tr[data-phone='{ON_CALL}']", timeout=T)  # the first step's page, live
    await screenshots.take(detail, "incident-triggered")
    await detail.click("#acknowledge button")
    await detail.wait_for_selector("#incident[data-state=acknowledged]", timeout=T)
    assert await detail.inner_text("#incident [data-acknowledged-by]") == "dashboard"
    assert await detail.query_selector("#acknowledge") is None
    await screenshots.take(detail, "incident-acknowledged")

    await listing.wait_for_selector(f"{row}[data-state=acknowledged]", timeout=T)
    assert await listing.evaluate("window.notReloaded === true")
    assert await listing.inner_text(f"{row} [data-acknowledged-by]") == "dashboard"
    seen = await incident(service, incident_id)
    assert (seen["state"], seen["acknowledged_by"]) == ("acknowledged", "dashboard")
    assert seen["events"][-1]["how"] == "dashboard"
    await screenshots.take(listing, "incidents-acknowledged")
