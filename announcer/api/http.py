"""What every /v1 handler shares: bearer auth, JSON errors (never an HTML page, never a 500 with a trace),
and reading a JSON body into a model."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import BaseModel, ValidationError

from announcer.api.schemas import problems_of
from announcer.deliveries.plan import Problem

log = logging.getLogger(__name__)
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
API_PREFIXES = ("/v1/", "/outbound-call")


_ERRORS: dict[int, type[web.HTTPException]] = {
    400: web.HTTPBadRequest,
    401: web.HTTPUnauthorized,
    404: web.HTTPNotFound,
    405: web.HTTPMethodNotAllowed,
    409: web.HTTPConflict,
    415: web.HTTPUnsupportedMediaType,
    422: web.HTTPUnprocessableEntity,
    502: web.HTTPBadGateway,
    503: web.HTTPServiceUnavailable,
}


def error(status: int, code: str, message: str, **extra: Any) -> web.HTTPException:
    """A JSON error: `{"error": code, "message": ..., **extra}` (`field` names the culprit)."""
    body = json.dumps({"error": code, "message": message, **extra})
    if status == 413:
        return web.HTTPRequestEntityTooLarge(
            max_size=0, actual_size=0, text=body, content_type="application/json"
        )
    return _ERRORS.get(status, web.HTTPBadRequest)(text=body, content_type="application/json")


def idempotency_key(request: web.Request) -> str | None:
    """The optional `Idempotency-Key` header: a repeated request with it is answered, not redone."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise error(
            400, "invalid_header", "Idempotency-Key must be 1 to 255 characters", field="Idempotency-Key"
        )
    return key


def idempotency_conflict() -> web.HTTPException:
    return error(
        409,
        "idempotency_conflict",
        "this Idempotency-Key was used with a different body",
        field="Idempotency-Key",
    )


def invalid(problems: Sequence[Problem]) -> web.HTTPException:
    return error(
        422,
        "validation_failed",
        f"{len(problems)} problem(s); nothing was stored",
        problems=[p.as_json() for p in problems],
    )


async def read_model(request: web.Request, model: type[M]) -> M:
    if request.content_type != "application/json":
        raise error(415, "unsupported_media_type", "send the body as application/json")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise error(
            413, "body_too_large", f"the body is larger than {request.app._client_max_size} bytes"
        ) from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise error(400, "malformed_json", f"the body is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise error(422, "validation_failed", "the body must be a JSON object", problems=[])
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise invalid(problems_of(err)) from None


def make_middleware(token: str) -> Middleware:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def api(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIXES):
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if request.path != "/v1/openapi.json" and not hmac.compare_digest(given, expected):
            raise error(401, "unauthorized", "send Authorization: Bearer <ANNOUNCER_API_TOKEN>")
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.content_type == "application/json":
                raise
            raise error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason) from None
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            body = json.dumps({"error": "internal", "message": "an internal error; it has been logged"})
            return web.Response(status=500, text=body, content_type="application/json")

    return api
