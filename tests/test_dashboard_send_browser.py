"""The Send and Schedules pages in a real browser (headless Chromium, tests/browser.py) against the sandbox
service: a CSV of 5 recipients uploaded, previewed, one row's audio played, sent, landing on the alert's
page; a schedule created and paused, paused in the list; a schedule's time edited and its new next run
shown; both pages at a phone's width."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tests.browser import Screenshots, sign_in
from tests.conftest import API_TOKEN, Service

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Page

PHONES = [f"+1555019{i:04d}" for i in range(1, 6)]
CSV = "phone,name,item\n" + "".join(
    f"{p},{name},{item}\n"
    for p, name, item in zip(
        PHONES,
        ("Ada", "Grace", "Alan", "Edsger", "Barbara"),
        ("prescription", "glasses", "results", "x-ray", "cast"),
        strict=True,
    )
)
# The audio's duration once its metadata has loaded (preload="none": loading starts here). Awaits the
# element's own events: the page's CSP forbids the string evaluation wait_for_function polls with.
LOADED = """selector => new Promise((resolve, reject) => {
  const audio = document.querySelector(selector);
  audio.addEventListener("loadedmetadata", () => resolve(audio.duration));
  audio.addEventListener("error", () => reject(new Error("audio error " + audio.error.code)));
  audio.load();
})"""
# Nothing wider than the screen but what scrolls inside its own box (a table's wrapper).
FITS = "() => document.documentElement.scrollWidth <= window.innerWidth"
PHONE_SCREEN = {"width": 390, "height": 844}


async def test_send_a_csv_of_five_preview_play_a_row_and_land_on_the_alert(
    service: Service, chromium: BrowserContext, screenshots: Screenshots, tmp_path: Path
) -> None:
    people = tmp_path / "people.csv"
    people.write_text(CSV)
    page = await chromium.new_page()
    await sign_in(page, service.base_url, API_TOKEN)
    await page.click("nav >> text=Send")
    await page.wait_for_selector("#send-form")
    await page.select_option("#template", "alert.j2")  # the variables it reads appear under the field
    await page.wait_for_selector("#variables-hint code:text-is('summary')")
    await page.select_option("#template", "")
    await page.fill("#template_text", "Hello {{ name }}, your {{ item }} is ready at {{ place }}.")
    await page.fill("#variables", "place=the front desk")
    await page.set_input_files("#csv", str(people))
    await screenshots.take(page, "send")
    await page.click("button[value=preview]")
    await page.wait_for_selector("#preview")
    assert "5 recipient(s)" in await page.inner_text("#preview")
    assert await page.locator("#recipients-table tbody tr").count() == 5
    said = await page.inner_text("#row-3 td[data-field=message] .said")
    assert said == "Hello Edsger, your x-ray is ready at the front desk."
    duration = await page.evaluate(LOADED, "#row-3 audio")
    assert duration > 1.0  # a sentence of speech
    await screenshots.take(page, "send-preview")

    await page.click("#send-button")
    await page.wait_for_url(f"{service.base_url}/alerts/*")
    await page.wait_for_selector(f"text={PHONES[4]}")
    await screenshots.take(page, "send-alert")


async def test_send_shows_a_rows_problem_in_its_cell(
    service: Service, chromium: BrowserContext, screenshots: Screenshots
) -> None:
    page = await chromium.new_page()
    await sign_in(page, service.base_url, API_TOKEN)
    await page.goto(service.base_url + "/send")
    await page.fill("#template_text", "Hello {{ name }}, about {{ item }}.")
    await page.fill(
        "#recipients", "phone,name,item\n+15550190001,Ada,a\n+15550190001,Grace,b\n+1555019000x,Alan,c"
    )
    await page.click("#send-button")
    await page.wait_for_selector("#problems")
    assert "nothing was sent" in await page.inner_text("#problems")
    assert "not a phone number" in await page.inner_text("#row-2 td[data-field=phone] .problem")
    await screenshots.take(page, "send-problems")


async def test_create_a_schedule_pause_it_and_see_it_paused(
    service: Service, chromium: BrowserContext, screenshots: Screenshots
) -> None:
    page = await chromium.new_page()
    await sign_in(page, service.base_url, API_TOKEN)
    await page.click("nav >> text=Schedules")
    await page.wait_for_selector("#schedule-form")
    await page.fill("#name", "weekday check-in")
    await page.fill("#template_text", "Good morning {{ name }}.")
    await page.fill("#recipients", "phone,name\n+15550190001,Ada\n+15550190002,Grace")
    await page.check("input[name=repeat][value=cron]")
    await page.fill("#cron", "0 8 * * mon-fri")
    await page.fill("#timezone", "Europe/Berlin")
    await page.fill("#quiet_start", "21:00")
    await page.fill("#quiet_end", "07:00")
    await page.click("#schedule-form button[type=submit]")
    await page.wait_for_selector("#upcoming")
    assert await page.inner_text("#status") == "active"
    await screenshots.take(page, "schedule")
    await page.click("button:has-text('Pause')")
    await page.wait_for_selector("#status:has-text('paused')")
    await page.click("nav >> text=Schedules")
    row = page.locator("#schedules tr", has_text="weekday check-in")
    await row.locator("text=paused").wait_for()
    assert await row.locator("button:has-text('Resume')").count() == 1
    await screenshots.take(page, "schedules")


async def test_edit_a_schedules_time_and_see_its_new_next_run(
    service: Service, chromium: BrowserContext, screenshots: Screenshots
) -> None:
    page = await chromium.new_page()
    await sign_in(page, service.base_url, API_TOKEN)
    await page.goto(service.base_url + "/schedules")
    await page.wait_for_selector("#schedule-form")
    await page.fill("#name", "daily round")
    await page.fill("#template_text", "Good morning {{ name }}.")
    await page.fill("#recipients", "phone,name\n+15550190001,Ada")
    await page.check("input[name=repeat][value=cron]")
    await page.fill("#cron", "0 8 * * *")
    await page.fill("#timezone", "Europe/Berlin")
    await page.click("#schedule-form button[type=submit]")
    await page.wait_for_selector("#upcoming")
    assert " 08:00:00+01:00" in await page.inner_text("#upcoming")
    await page.click("#edit-link")
    await page.wait_for_selector("#schedule-edit-form")
    assert await page.input_value("#cron") == "0 8 * * *"
    await page.fill("#cron", "45 17 * * *")
    await screenshots.take(page, "schedule-edit")
    await page.click("#save-button")
    await page.wait_for_selector("#upcoming:has-text('17:45:00+01:00')")
    assert " 08:00:00" not in await page.inner_text("#upcoming")
    assert await page.inner_text("h1") == "daily round active"


async def _at_phone_width(chromium: BrowserContext, service: Service) -> Page:
    page = await chromium.new_page()
    await page.set_viewport_size(PHONE_SCREEN)
    await sign_in(page, service.base_url, API_TOKEN)
    return page


async def test_send_and_schedules_fit_a_phone_screen(
    service: Service, chromium: BrowserContext, screenshots: Screenshots
) -> None:
    page = await _at_phone_width(chromium, service)
    await page.goto(service.base_url + "/send")
    await page.fill("#template_text", "Hello {{ name }}, your {{ item }} is ready.")
    await page.fill("#recipients", CSV)
    await page.click("button[value=preview]")
    await page.wait_for_selector("#preview")
    assert await page.evaluate(FITS)
    await screenshots.take(page, "send-phone")
    await page.click("#more-options summary")  # opened by a click: <details>, no script
    await page.locator("#opt-max_attempts").wait_for(state="visible")
    assert await page.evaluate(FITS)
    await screenshots.take(page, "send-more-options-phone")
    await page.goto(service.base_url + "/schedules")
    await page.wait_for_selector("#schedule-form")
    assert await page.evaluate(FITS)
    await screenshots.take(page, "schedules-phone")
