"""An agent call from the dashboard: what `POST /outbound-call` does (a number called and handed to the
ElevenLabs agent with a prompt and a first message), validated by the API's own body model. The page
answers at once with the call's alert page (the call's progress shows there) rather than waiting for
Twilio's Call SID as the API does."""

from __future__ import annotations

import secrets

from aiohttp import web
from pydantic import ValidationError

from announcer.api.http import IDEMPOTENCY_KEY_MAX
from announcer.api.schemas import OutboundCallBody, problems_of
from announcer.dashboard.routes import Page, Routes
from announcer.deliveries.alerts import AgentUnavailable
from announcer.deliveries.plan import PlanError, Problem
from announcer.store.deliveries import IdempotencyConflict

routes = Routes()

FIELDS = ("number", "prompt", "first_message")


def _form_page(page: Page, values: dict[str, str], problems: list[Problem], status: int) -> web.Response:
    return page.render(
        "agent_call.html",
        status=status,
        values=values,
        problems={p.field: p.reason for p in problems},
        # one per form shown: a double submit places one call (the API's Idempotency-Key)
        once=values.get("once") or secrets.token_urlsafe(16),
        agent=page.services.alerts.alerts.limits.agent,
    )


@routes.get("/calls/new", name="agent_call")
async def agent_call_form(request: web.Request, page: Page) -> web.StreamResponse:
    return _form_page(page, {}, [], 200)


@routes.post("/calls/new")
async def agent_call(request: web.Request, page: Page) -> web.StreamResponse:
    form = await page.form()
    values = {name: str(form.get(name, "")) for name in (*FIELDS, "once")}
    service = page.services.alerts.alerts
    once = values["once"][:IDEMPOTENCY_KEY_MAX] or None
    try:
        body = OutboundCallBody.model_validate({name: values[name] for name in FIELDS})
        outbound = service.outbound(body.number, body.prompt, body.first_message)
        placed = await service.call_out(outbound, once and f"dashboard-{once}", wait_for_sid=False)
    except ValidationError as err:
        return _form_page(page, values, problems_of(err), 422)
    except PlanError as err:
        return _form_page(page, values, list(err.problems), 422)
    except AgentUnavailable:
        raise page.fail(
            503, "Agent mode needs ELEVENLABS_AGENT_ID (an ElevenLabs agent to talk to)."
        ) from None
    except IdempotencyConflict:
        raise page.fail(409, "This form was already sent with other values: open it again.") from None
    return page.redirect(page.url("alert", alert_id=placed.alert_id))
