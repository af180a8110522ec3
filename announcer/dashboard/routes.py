"""How a page module plugs in: a `Routes` table of handlers, each wrapped with the sign-in check, the CSRF
check on state-changing methods, the security headers, and HTML error pages.

    routes = Routes()

    @routes.get("/alerts/{alert_id}", name="alert")
    async def alert(request: web.Request, page: Page) -> web.StreamResponse:
        view = await page.services.alerts.store.alert(request.match_info["alert_id"])
        if view is None:
            raise page.fail(404, "No such alert.")
        return page.render("alert.html", alert=view)

Every module in announcer/dashboard/pages/ with a module-level `routes = Routes()` is registered by
`dashboard.setup`. A GET answers HEAD too; a POST/PATCH/DELETE is refused (403, handler not run) without
the session's CSRF token; a route not `public` sends a browser without a session to the sign-in page.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from markupsafe import Markup, escape
from multidict import MultiDictProxy

from announcer.dashboard import auth
from announcer.dashboard.services import SERVICES, Services
from announcer.dashboard.views import VIEWS

log = logging.getLogger(__name__)

# The navigation, in order: (route name, label). A link shows only once its route is registered.
NAV = (
    ("overview", "Overview"),
    ("send", "Send"),
    ("alerts", "Alerts"),
    ("schedules", "Schedules"),
    ("opt_outs", "Opt-outs"),
    ("incidents", "Incidents"),
    ("rotations", "Rotations"),
    ("policies", "Policies"),
    ("people", "People"),
)
SIGN_IN = "sign_in"
# Pages are private and change often: no cache keeps them, no frame shows them, no script but ours runs.
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Page:
    """What a handler is given besides the request: the services, the session, and the helpers that
    answer (render, redirect, fail)."""

    def __init__(self, request: web.Request, services: Services, session_id: str | None) -> None:
        self.request = request
        self.services = services
        self.session_id = session_id  # None only on a public route (sign-in) without a session

    @property
    def signed_in(self) -> bool:
        return self.session_id is not None

    @property
    def csrf_token(self) -> str:
        return auth.csrf_token(self.session_id) if self.session_id else ""

    @property
    def csrf_field(self) -> Markup:
        """The hidden input every state-changing <form> carries: `{{ page.csrf_field }}`."""
        return Markup('<input type="hidden" name="{}" value="{}">').format(auth.CSRF_FIELD, self.csrf_token)

    @property
    def htmx(self) -> bool:
        """Whether htmx asked (a fragment, not a whole page, is the answer)."""
        return self.request.headers.get("HX-Request") == "true"

    def has(self, name: str) -> bool:
        return name in self.request.app.router.named_resources()

    def url(self, name: str, query: Mapping[str, Any] | None = None, **parts: Any) -> str:
        """The path of a named route (`page.url("alert", alert_id=a.id)`), with an optional query."""
        url = str(self.request.app.router[name].url_for(**{k: str(v) for k, v in parts.items()}))
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v is not None})
        return url

    def static(self, filename: str) -> str:
        """A vendored file's URL, with its content hash appended (a new version is never a stale cache)."""
        return str(self.request.app.router["static"].url_for(filename=filename))

    @property
    def nav(self) -> list[tuple[str, str, bool]]:
        """(label, path, current) for each registered page of the navigation."""
        current = self.request.match_info.route.name
        return [(label, self.url(name), name == current) for name, label in NAV if self.has(name)]

    def render(
        self, template: str, *, status: int = 200, headers: Mapping[str, str] | None = None, **context: Any
    ) -> web.Response:
        """A template of announcer/dashboard/templates/ as the answer; `page` is always in its context."""
        html = self.request.app[VIEWS].get_template(template).render(page=self, **context)
        return web.Response(text=html, status=status, content_type="text/html", headers=headers)

    def redirect(self, location: str) -> web.Response:
        """303 See Other (after a POST the browser GETs the location). htmx follows it itself."""
        return web.Response(status=303, headers={"Location": location})

    def fail(self, status: int, message: str) -> web.HTTPException:
        """An error answered as an HTML page saying `message` (raise it)."""
        return _HtmlError(status, message)

    async def form(self) -> MultiDictProxy[str | bytes | bytearray | web.FileField]:
        """The posted form (urlencoded or multipart); read once, cached by aiohttp."""
        return await self.request.post()


class _HtmlError(web.HTTPException):
    def __init__(self, status: int, message: str) -> None:
        self.status_code = status
        super().__init__(text=message)
        self.message = message


PageHandler = Callable[[web.Request, Page], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class _Route:
    method: str
    path: str
    name: str | None
    handler: PageHandler
    public: bool


@dataclass
class Routes:
    """A page module's routes. `public=True`: no sign-in needed (the sign-in page only)."""

    table: list[_Route] = field(default_factory=list)

    def get(
        self, path: str, *, name: str | None = None, public: bool = False
    ) -> Callable[[PageHandler], PageHandler]:
        return self._add("GET", path, name, public)

    def post(
        self, path: str, *, name: str | None = None, public: bool = False
    ) -> Callable[[PageHandler], PageHandler]:
        return self._add("POST", path, name, public)

    def patch(self, path: str, *, name: str | None = None) -> Callable[[PageHandler], PageHandler]:
        return self._add("PATCH", path, name, False)

    def delete(self, path: str, *, name: str | None = None) -> Callable[[PageHandler], PageHandler]:
        return self._add("DELETE", path, name, False)

    def _add(
        self, method: str, path: str, name: str | None, public: bool
    ) -> Callable[[PageHandler], PageHandler]:
        def add(handler: PageHandler) -> PageHandler:
            self.table.append(_Route(method, path, name, handler, public))
            return handler

        return add

    def register(self, app: web.Application) -> None:
        for route in self.table:
            if route.method == "GET":
                app.router.add_get(route.path, _wrap(route), name=route.name)
            else:
                app.router.add_route(route.method, route.path, _wrap(route), name=route.name)


def _wrap(route: _Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        services = request.app[SERVICES]
        sid = auth.session_id_of(request)
        if sid is not None and not await services.sessions.valid(sid):
            sid = None
        page = Page(request, services, sid)
        try:
            response = await _checked(route, request, page)
        except _HtmlError as err:
            response = error_page(request, err.status, err.message, page)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            response = error_page(request, exc.status, _message_of(exc), page)
        except Exception:
            log.exception("dashboard %s %s failed", request.method[:16], request.path[:200])
            response = error_page(request, 500, "An internal error; it has been logged.", page)
        response.headers.update(SECURITY_HEADERS)
        return response

    return handle


async def _checked(route: _Route, request: web.Request, page: Page) -> web.StreamResponse:
    if not page.signed_in and not route.public:
        if request.method in ("GET", "HEAD"):
            target = page.url(SIGN_IN, {"next": request.path_qs})
            if page.htmx:  # a poll after the session ended: htmx loads the sign-in page itself
                return web.Response(status=401, headers={"HX-Redirect": target})
            return page.redirect(target)
        raise page.fail(401, "You are not signed in (or your session has ended): sign in and try again.")
    if request.method in auth.UNSAFE_METHODS and not route.public:
        assert page.session_id is not None
        given = request.headers.get(auth.CSRF_HEADER)
        if given is None and request.content_type in (
            "application/x-www-form-urlencoded",
            "multipart/form-data",
        ):
            value = (await page.form()).get(auth.CSRF_FIELD)
            given = value if isinstance(value, str) else None
        if not auth.csrf_matches(given, page.session_id):
            raise page.fail(
                403,
                "This form's CSRF token is missing or wrong, so nothing was changed: "
                "reload the page and try again.",
            )
    return await route.handler(request, page)


def _message_of(exc: web.HTTPException) -> str:
    """The message of an error raised in JSON (the API's `error()`, or aiohttp's own)."""
    if exc.content_type == "application/json" and exc.text:
        try:
            body = json.loads(exc.text)
        except ValueError:
            return exc.reason
        if isinstance(body, dict) and isinstance(body.get("message"), str):
            return str(body["message"])
    return exc.reason


def error_page(request: web.Request, status: int, message: str, page: Page | None = None) -> web.Response:
    """An error as a page of its own (an htmx request gets the message alone: it is shown in place)."""
    page = page or Page(request, request.app[SERVICES], None)
    if page.htmx:
        return web.Response(text=str(escape(message)), status=status, content_type="text/html")
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    html = (
        request.app[VIEWS]
        .get_template("error.html")
        .render(page=page, status=status, title=title, message=message)
    )
    return web.Response(text=html, status=status, content_type="text/html")
