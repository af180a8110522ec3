"""Who is signed in: the API token exchanged for a session cookie, and each session's CSRF token.

* The token is compared in constant time (both sides hashed first: equal lengths, whatever is typed).
* The session id is random (32 bytes), sent only in an `HttpOnly`, `SameSite=Strict` cookie (`Secure`
  when PUBLIC_URL is https); the database holds its SHA-256 (store/dashboard_sessions.py), so every
  process serves every page and sign-out ends the session everywhere at once.
* The CSRF token is derived from the session id (HMAC-SHA256 keyed by it): one per session, stored
  nowhere, and knowing it tells nothing about the id. Every POST/PATCH/DELETE of the dashboard carries it
  as the form field `csrf_token` or the header `X-CSRF-Token` (htmx sends the header, base.html).
* The API's `Authorization: Bearer` header is not a way in here: the dashboard reads only its cookie, and
  the API only its header (api/http.py), so neither can be used to skip the other's checks.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from aiohttp import web

COOKIE = "announcer_session"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL = timedelta(hours=12)
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_SESSION_ID_MAX = 100  # a cookie longer than any id we issue is nobody's (never hashed, never queried)


def token_mark(api_token: str) -> str:
    """What a session row records of the API token it was opened with (not the token: a digest of it)."""
    return hmac.new(api_token.encode(), b"announcer dashboard session", hashlib.sha256).hexdigest()


def token_matches(given: str, api_token: str) -> bool:
    """The sign-in check, in constant time: both sides are hashed first, so even the length of what was
    typed tells nothing about the token's."""
    a = hashlib.sha256(given.encode("utf-8", "replace")).digest()
    b = hashlib.sha256(api_token.encode()).digest()
    return hmac.compare_digest(a, b)


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def csrf_token(session_id: str) -> str:
    return hmac.new(session_id.encode(), b"csrf", hashlib.sha256).hexdigest()


def csrf_matches(given: str | None, session_id: str) -> bool:
    if not given:
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), csrf_token(session_id).encode())


def session_id_of(request: web.Request) -> str | None:
    value = request.cookies.get(COOKIE)
    if not value or len(value) > _SESSION_ID_MAX:
        return None
    return value


def set_cookie(response: web.StreamResponse, session_id: str, *, secure: bool) -> None:
    response.set_cookie(
        COOKIE,
        session_id,
        max_age=int(SESSION_TTL.total_seconds()),
        path="/",
        httponly=True,
        samesite="Strict",
        secure=secure,
    )


def clear_cookie(response: web.StreamResponse, *, secure: bool) -> None:
    response.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=secure)
