"""`/v1/integrations`: where alerts come in from (bearer token, like every /v1 route), and the sources'
own webhooks `POST /v1/integrations/{alertmanager|grafana|json}/{id}`, authenticated by the integration's
secret as `Authorization: Bearer <secret>` (what Alertmanager's `http_config.authorization` and Grafana's
webhook "Authorization header" send), not by the API token.

A secret is made here (32 random bytes, URL-safe), answered once (on creation and on rotate-secret) and
kept only as its SHA-256. A webhook with a wrong or missing secret, for an integration that does not exist
or is of another kind, is 401 and changes nothing; a payload that is not the kind's shape is 422 naming
the field, and changes nothing either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from aiohttp import web
from pydantic import BeforeValidator, Field

from announcer.api.http import error, invalid, parse_json, path_key, read_model, text_problems
from announcer.deliveries.plan import Problem
from announcer.options import Strict, _whole
from announcer.paging.incidents import IncidentService
from announcer.paging.payloads import PayloadError, parse
from announcer.store.incidents import IntegrationRow, InUse, NoSuchPolicy

MAX_WEBHOOK_BYTES = 2**20  # an Alertmanager group of hundreds of alerts is well under; more is no alert
SILENCE_MIN_S = 60
SILENCE_MAX_S = 7 * 24 * 3600
KINDS = ("alertmanager", "grafana", "json")
POLICY_ID = r"^[A-Za-z0-9_-]{1,40}$"
# The sources' webhooks: authenticated by the integration's own secret, not the API token (app.py).
WEBHOOK_PATH = re.compile(r"^/v1/integrations/(alertmanager|grafana|json)/[^/]+$")

# The bounds before the whole-number reading, or the document shows them as unknown keywords (`ge`).
SilenceSeconds = Annotated[int, Field(ge=SILENCE_MIN_S, le=SILENCE_MAX_S), BeforeValidator(_whole)]


class IntegrationBody(Strict):
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["alertmanager", "grafana", "json"]
    policy_id: str = Field(pattern=POLICY_ID, description="the escalation policy its incidents follow")
    silence_s: SilenceSeconds | None = Field(
        default=None,
        description="alertmanager only: on acknowledgement, silence the group at its Alertmanager this long",
    )


class IntegrationPatch(Strict):
    """What is given changes; what is not (or is null) stays; silence_s null: no silence."""

    name: str | None = Field(default=None, min_length=1, max_length=200)
    kind: Literal["alertmanager", "grafana", "json"] | None = None
    policy_id: str | None = Field(default=None, pattern=POLICY_ID)
    silence_s: SilenceSeconds | None = Field(default=None, description="null: none")


@dataclass
class IntegrationsDeps:
    incidents: IncidentService


def integration_json(row: IntegrationRow, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "kind": row.kind,
        "policy_id": row.policy_id,
        "silence_s": row.silence_s,
        "webhook_path": f"/v1/integrations/{row.kind}/{row.id}",
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
    }
    if secret is not None:
        out["secret"] = secret  # once: only its hash is kept
    return out


def _no_policy(policy_id: str) -> web.HTTPException:
    return invalid([Problem("policy_id", f"no escalation policy {policy_id}")])


async def create_integration(request: web.Request, deps: IntegrationsDeps) -> web.Response:
    body = await read_model(request, IntegrationBody)
    try:
        row, secret = await deps.incidents.store.create_integration(
            name=body.name, kind=body.kind, policy_id=body.policy_id, silence_s=body.silence_s
        )
    except NoSuchPolicy:
        raise _no_policy(body.policy_id) from None
    return web.json_response(integration_json(row, secret), status=201)


async def list_integrations(request: web.Request, deps: IntegrationsDeps) -> web.Response:
    rows = await deps.incidents.store.integrations()
    return web.json_response({"integrations": [integration_json(r) for r in rows]})


async def get_integration(request: web.Request, deps: IntegrationsDeps) -> web.Response:
    row = await deps.incidents.store.integration(path_key(request, "integration_id"))
    if row is None:
        raise error(404, "not_found", "no such integration")
    return web.json_response(integration_json(row))


async def patch_integration(request: web.Request, deps: IntegrationsDeps) -> web.Response:
    integration_id = path_key(request, "integration_id")
    body = await read_model(request, IntegrationPatch)
    changes = {
        name: getattr(body, name)
        for name in body.model_fields_set
        if getattr(body, name) is not None or name == "silence_s"
    }
    try:
        row = await deps.incidents.store.update_integration(integration_id, changes)
    except NoSuchPolicy:
        raise _no_policy(str(changes.get("policy_id"))) from None
    if row is None:
        raise error(404, "not_found", "no such integration")
    return web.json_response(integration_json(row))


async def delete_integration(request: web.Request, deps: IntegrationsDeps) -> web.Response:
    try:
        deleted = await deps.incidents.store.delete_integration(path_key(request, "integration_id"))
    except InUse:
        raise error(
            409, "integration_in_use", "incidents came from this integration; it is kept with them"
        ) from None
    if not deleted:
        raise error(404, "not_found", "no such integration")
    return web.Response(status=204)


async def rotate_secret(request: web.Request, deps: IntegrationsDeps) -> web.Response:
    integration_id = path_key(request, "integration_id")
    secret = await deps.incidents.store.rotate_secret(integration_id)
    if secret is None:
        raise error(404, "not_found", "no such integration")
    return web.json_response({"id": integration_id, "secret": secret})


# --- the sources' webhooks ------------------------------------------------------------------------------


def _unauthorized() -> web.HTTPException:
    return error(401, "unauthorized", "send Authorization: Bearer <the integration's secret>")


async def _body(request: web.Request) -> bytes:
    """The body, at most MAX_WEBHOOK_BYTES (413 beyond, read no further)."""
    too_large = error(413, "body_too_large", f"the body is larger than {MAX_WEBHOOK_BYTES} bytes")
    if request.content_length is not None and request.content_length > MAX_WEBHOOK_BYTES:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
        if size > MAX_WEBHOOK_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def webhook(request: web.Request, deps: IntegrationsDeps, kind: str) -> web.Response:
    """A source's notification (`kind`: the route's): opens, repeats or resolves its group's incident."""
    raw_id = request.match_info["integration_id"]
    integration = None
    if re.fullmatch(POLICY_ID, raw_id):
        integration = await deps.incidents.authenticate(raw_id, kind, request.headers.get("Authorization"))
    if integration is None:
        raise _unauthorized()
    raw = await _body(request)
    data = parse_json(raw)
    if problems := text_problems(data):
        raise invalid(problems)
    try:
        signal = parse(kind, data)
    except PayloadError as err:
        raise invalid(err.problems) from None
    received = await deps.incidents.receive(integration, signal)
    return web.json_response({"action": received.action, "incident_id": received.incident_id})
