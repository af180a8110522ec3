"""Opt-outs: the numbers that pressed 9 (the list GET /v1/opt-outs gives), and removing one (as
DELETE /v1/opt-outs/{phone} does: normalised, not checked against the destination policy)."""

from __future__ import annotations

from aiohttp import web

from announcer.api.alerts import E164
from announcer.dashboard.routes import Page, Routes
from announcer.messages.phones import BadNumber, to_e164

routes = Routes()

PAGE = 100


@routes.get("/opt-outs", name="opt_outs")
async def opt_outs(request: web.Request, page: Page) -> web.StreamResponse:
    after = request.query.get("after")
    if after is not None and not E164.match(after):
        raise page.fail(400, "after must be a number in E.164 (+ and digits).")
    rows = await page.services.alerts.store.opt_outs(after=after, limit=PAGE + 1)
    more = len(rows) > PAGE
    rows = rows[:PAGE]
    return page.render(
        "opt_outs.html",
        rows=rows,
        following=rows[-1].phone if more else None,
        first_page=after is None,
        removed=request.query.get("removed"),
    )


@routes.post("/opt-outs/{phone}/remove", name="opt_out_remove")
async def remove(request: web.Request, page: Page) -> web.StreamResponse:
    deps = page.services.alerts
    try:
        phone = to_e164(request.match_info["phone"], deps.alerts.limits.destinations.region)
    except BadNumber as err:
        raise page.fail(422, f"Not a phone number: {err}") from None
    if not await deps.store.remove_opt_out(phone):
        raise page.fail(404, f"{phone} has not opted out.")
    return page.redirect(page.url("opt_outs", {"removed": phone}))
