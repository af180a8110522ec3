"""The paging pages in a real browser (headless Chromium, tests/browser.py) against the sandbox service: a
new incident appears in the open Incidents list without a reload, its page is opened from there, the
Acknowledge button acknowledges it (as `dashboard`), and the list, still not reloaded, shows the new state;
an override is added with the rotation's form (refused first, its problem next to its field), and the
Policies and People pages say who is on call."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from announcer.app import DATABASE
from announcer.sandbox.twilio_call import PhoneBehavior
from announcer.store.oncall import OncallStore
from tests.browser import Screenshots, sign_in
from tests.conftest import API_TOKEN, Service
from tests.test_dashboard_paging import people_of, primary
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


async def test_an_override_is_added_with_the_form_and_the_policy_names_who_is_on_call(
    service: Service, chromium: BrowserContext, screenshots: Screenshots
) -> None:
    store = OncallStore(service.app[DATABASE].sessions)
    ada, bob, cy = await people_of(store, "Ada", "Bob", "Cyd")
    rotation = await primary(store, [ada, bob])
    await store.create_policy(
        name="Database",
        steps=[
            {"delay_s": 300, "targets": [{"type": "rotation", "id": rotation.id}]},
            {"delay_s": 600, "targets": [{"type": "person", "id": cy.id}]},
        ],
        repeat=1,
    )
    page = await chromium.new_page()
    await sign_in(page, service.base_url, API_TOKEN)
    await page.goto(service.base_url + "/rotations")
    await page.click(f"tr[data-rotation='{rotation.id}'] a")
    await page.wait_for_url(f"{service.base_url}/rotations/{rotation.id}")
    assert len(await page.query_selector_all("tr[data-handoff]")) == 7
    await screenshots.take(page, "rotation")

    # until before from: the problem is shown next to its field, nothing stored
    berlin = ZoneInfo("Europe/Berlin")
    now = datetime.now(UTC).astimezone(berlin).replace(second=0, microsecond=0)
    await page.select_option("#person_id", cy.id)
    await page.fill("#starts_at", (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    await page.fill("#ends_at", (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"))
    await page.click("#add-override button[type=submit]")
    await page.wait_for_selector("#problem-ends_at")
    assert "must be after starts_at" in await page.inner_text("#problem-ends_at")
    await screenshots.take(page, "override-refused")
    await page.fill("#ends_at", (now + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"))
    await page.click("#add-override button[type=submit]")
    await page.wait_for_selector("tr[data-override]")
    assert "Cyd" in await page.inner_text("td[data-now]")
    assert await page.query_selector("td[data-now] [data-override]") is not None
    await screenshots.take(page, "override-added")

    await page.goto(service.base_url + "/policies")
    target = await page.inner_text(f"li[data-target='rotation:{rotation.id}']")
    assert "Primary" in target and "Cyd" in target and "override" in target
    await screenshots.take(page, "policies")
    await page.goto(service.base_url + "/people")
    assert "Primary" in await page.inner_text(f"tr[data-person='{cy.id}'] [data-on-call]")
    await screenshots.take(page, "people")
