"""Errors a browser sees as pages: a path nobody serves, or a method a page does not take, asked by a
browser (Accept: text/html) outside the API. The API, the webhooks and /healthz keep their JSON errors
(api/http.py's `json_errors`, which this middleware wraps); the dashboard's own routes answer their
errors as pages themselves (routes.py)."""

from __future__ import annotations

from aiohttp import web

from announcer.api.http import API_PREFIXES, Handler
from announcer.dashboard.routes import SECURITY_HEADERS, _message_of, error_page

MACHINE_PREFIXES = (*API_PREFIXES, "/twilio/", "/healthz", "/metrics")


def _wants_html(request: web.Request) -> bool:
    return not request.path.startswith(MACHINE_PREFIXES) and "text/html" in request.headers.get("Accept", "")


@web.middleware
async def html_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or not _wants_html(request):
            raise
        page = error_page(request, exc.status, _message_of(exc))
        if "Allow" in exc.headers:
            page.headers["Allow"] = exc.headers["Allow"]
        page.headers.update(SECURITY_HEADERS)
        return page
    if response.status >= 500 and response.content_type == "application/json" and _wants_html(request):
        page = error_page(request, response.status, "An internal error; it has been logged.")
        page.headers.update(SECURITY_HEADERS)
        return page
    return response
