"""Sign-in with the API token, and sign-out (auth.py says how sessions and CSRF tokens work).

The sign-in form has no CSRF token (there is no session yet): a forged sign-in would need the API token
itself, and then its forger could use the API directly."""

from __future__ import annotations

from aiohttp import web

from announcer.dashboard import auth
from announcer.dashboard.routes import Page, Routes

routes = Routes()


def _next(value: object) -> str:
    """Where to go after signing in: a path of this site only (never `//host` or a full URL)."""
    if isinstance(value, str) and value.startswith("/") and not value.startswith(("//", "/\\")):
        return value
    return "/"


def _secure(page: Page) -> bool:
    return (page.services.settings.public_url or "").startswith("https://")


@routes.get("/sign-in", name="sign_in", public=True)
async def sign_in_form(request: web.Request, page: Page) -> web.StreamResponse:
    return page.render("sign_in.html", next=_next(request.query.get("next")), problem=None)


@routes.post("/sign-in", public=True)
async def sign_in(request: web.Request, page: Page) -> web.StreamResponse:
    form = await page.form()
    token = form.get("token")
    target = _next(form.get("next"))
    if not isinstance(token, str) or not auth.token_matches(token, page.services.api_token):
        return page.render(
            "sign_in.html",
            status=401,
            next=target,
            problem="That is not this service's API token (ANNOUNCER_API_TOKEN). Nobody was signed in.",
        )
    session_id = auth.new_session_id()
    await page.services.sessions.open(session_id, auth.SESSION_TTL)
    response = page.redirect(target)
    auth.set_cookie(response, session_id, secure=_secure(page))
    return response


@routes.post("/sign-out", name="sign_out")
async def sign_out(request: web.Request, page: Page) -> web.StreamResponse:
    assert page.session_id is not None  # not public: only a signed-in browser gets here
    await page.services.sessions.close(page.session_id)
    response = page.redirect(page.url("sign_in"))
    auth.clear_cookie(response, secure=_secure(page))
    return response
