"""Overview: what the service is doing now."""

from __future__ import annotations

from aiohttp import web

from announcer.dashboard.routes import Page, Routes

routes = Routes()


@routes.get("/", name="overview")
async def overview(request: web.Request, page: Page) -> web.StreamResponse:
    return page.render("overview.html", sandbox=page.services.sandbox)
