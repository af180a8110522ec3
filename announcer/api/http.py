"""What every handler shares: JSON errors on every route (never an HTML page, never a 500 with a trace),
bearer auth for the API, and reading a JSON body or a path id into checked values."""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.typedefs import Middleware
from pydantic import BaseModel, ValidationError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from announcer.api.schemas import problems_of
from announcer.deliveries.plan import Problem
from announcer.store.models import MAX_INT

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


# Deeper JSON than this is no message anyone sends; json.loads recurses and would raise RecursionError.
MAX_JSON_DEPTH = 32
STRING_ID = re.compile(r"^[A-Za-z0-9_-]{1,40}$")  # alert and schedule ids ("al_...", "sc_...")
IDEMPOTENCY_KEY_MAX = 255
_ASCII_INT = re.compile(r"^-?[0-9]{1,12}$")


def error(
    status: int, code: str, message: str, *, allow: Sequence[str] = (), **extra: Any
) -> web.HTTPException:
    """A JSON error: `{"error": code, "message": ..., **extra}` (`field` names the culprit). A 405 carries
    `Allow` (`allow`: the methods the route takes)."""
    body = json.dumps({"error": code, "message": message, **extra})
    if status == 413:
        return web.HTTPRequestEntityTooLarge(
            max_size=0, actual_size=0, text=body, content_type="application/json"
        )
    if status == 405:
        return web.HTTPMethodNotAllowed("", sorted(allow), text=body, content_type="application/json")
    return _ERRORS.get(status, web.HTTPBadRequest)(text=body, content_type="application/json")


def idempotency_key(request: web.Request) -> str | None:
    """The optional `Idempotency-Key` header: a repeated request with it is answered, not redone."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= IDEMPOTENCY_KEY_MAX:
        raise error(
            400,
            "invalid_header",
            f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters",
            field="Idempotency-Key",
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


def _not_json_number(value: str) -> Any:
    raise ValueError(f"{value} is not a JSON number")


def _finite(value: str) -> float:
    number = float(value)
    if math.isinf(number):
        raise ValueError(f"{value[:20]} is too large for a number")
    return number


def parse_json(raw: bytes) -> Any:
    """Strict JSON (RFC 8259): no NaN or Infinity, no number that overflows to infinity; 400 otherwise."""
    try:
        return json.loads(raw, parse_constant=_not_json_number, parse_float=_finite)
    except RecursionError:
        raise error(
            400, "malformed_json", f"the body is nested deeper than {MAX_JSON_DEPTH} levels", field="body"
        ) from None
    except (ValueError, UnicodeDecodeError) as err:
        raise error(400, "malformed_json", f"the body is not JSON: {err}", field="body") from None


def text_problems(data: Any) -> list[Problem]:
    """What no stored text may hold, wherever it is in a JSON body: a NUL character (PostgreSQL's text
    and JSON refuse it), and nesting deeper than MAX_JSON_DEPTH. Walked without recursion."""
    problems: list[Problem] = []
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack and len(problems) < 20:
        value, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            problems.append(Problem(path or "body", f"nested deeper than {MAX_JSON_DEPTH} levels"))
        elif isinstance(value, str):
            if "\x00" in value:
                problems.append(Problem(path or "body", "contains a NUL character (\\u0000)"))
        elif isinstance(value, dict):
            for key, item in value.items():
                where = f"{path}.{key}" if path else str(key)
                if "\x00" in key:
                    problems.append(Problem(path or "body", "a key contains a NUL character (\\u0000)"))
                    continue
                stack.append((item, where, depth + 1))
        elif isinstance(value, list):
            stack.extend((item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
    return problems


async def read_model(request: web.Request, model: type[M]) -> M:
    if request.content_type != "application/json":
        raise error(415, "unsupported_media_type", "send the body as application/json")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise error(
            413, "body_too_large", f"the body is larger than {request.app._client_max_size} bytes"
        ) from None
    data = parse_json(raw)
    if not isinstance(data, dict):
        raise invalid([Problem("body", "must be a JSON object")])
    if problems := text_problems(data):
        raise invalid(problems)
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise invalid(problems_of(err)) from None


def path_id(request: web.Request, name: str) -> int:
    """A numeric id in the path: ASCII digits only (an Arabic-Indic one is not 1), within the database's
    range; an id that cannot exist is 404, like one that does not."""
    value = request.match_info[name]
    if not value.isascii() or not value.isdigit():
        raise error(400, "invalid_path", f"{name} must be a number (ASCII digits)", field=name)
    if len(value) > 10 or int(value) > MAX_INT:
        raise error(404, "not_found", f"no such {name.removesuffix('_id')}", field=name)
    return int(value)


def path_key(request: web.Request, name: str) -> str:
    """A string id in the path ("al_...", "sc_..."): anything else names nothing (404), and never reaches
    the database (a NUL would be refused there with an error, not an answer)."""
    value = request.match_info[name]
    if not STRING_ID.match(value):
        raise error(404, "not_found", f"no such {name.removesuffix('_id')}", field=name)
    return value


def int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter in [low, high] (ASCII digits, optionally negative); 400 naming it."""
    value = request.query.get(name)
    if value is None:
        return default
    if not _ASCII_INT.match(value) or not low <= int(value) <= high:
        raise error(400, "invalid_query", f"{name} must be an integer from {low} to {high}", field=name)
    return int(value)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every route answers errors in the API's JSON shape: aiohttp's own (404, a method the route does not
    take: 405 with `Allow`, a websocket request without an upgrade) included. An unexpected exception is
    a bug: logged once with its trace, answered 500 without one."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            raise error(
                405,
                "method_not_allowed",
                f"{request.method[:16]} is not allowed here; this route takes {allowed}",
                allow=sorted(exc.allowed_methods),
            ) from None
        code = exc.reason.lower().replace(" ", "_")
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        raise error(exc.status, code, message) from None
    except PoolTimeout:
        # Overload, not a bug: every database connection stayed busy for the whole wait. The request's
        # own transaction rolled back; a client repeating it is protected by its Idempotency-Key.
        log.warning("%s %s: the database stayed busy; answered 503", request.method[:16], request.path[:200])
        return database_busy()
    except Exception:
        log.exception("%s %s failed", request.method[:16], request.path[:200])
        body = json.dumps({"error": "internal", "message": "an internal error; it has been logged"})
        return web.Response(status=500, text=body, content_type="application/json")


DATABASE_BUSY_RETRY_S = 5


def database_busy() -> web.Response:
    """503 for a request that found every database connection busy for the whole wait."""
    body = json.dumps(
        {
            "error": "database_busy",
            "message": "the database stayed busy; send the request again later "
            "(with an Idempotency-Key a repeat is safe)",
        }
    )
    return web.Response(
        status=503,
        text=body,
        content_type="application/json",
        headers={"Retry-After": str(DATABASE_BUSY_RETRY_S)},
    )


def make_middleware(token: str, own_auth: re.Pattern[str] | None = None) -> Middleware:
    """Bearer auth for the API routes (the OpenAPI document is public). `own_auth`: the paths whose
    handlers authenticate the request themselves (the paging sources' webhooks, by their own secret)."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def api(request: web.Request, handler: Handler) -> web.StreamResponse:
        if (
            request.path.startswith(API_PREFIXES)
            and request.path != "/v1/openapi.json"
            and not (own_auth is not None and own_auth.match(request.path))
        ):
            # Any bytes may come; aiohttp decodes them with surrogateescape, which strict UTF-8 cannot encode.
            given = request.headers.get("Authorization", "").encode("utf-8", "replace")
            if not hmac.compare_digest(given, expected):
                raise error(401, "unauthorized", "send Authorization: Bearer <ANNOUNCER_API_TOKEN>")
        return await handler(request)

    return api
