"""Send: pick a template or write one, fill the shared variables, paste numbers or upload a CSV (its
columns become variables, as `announcer send --file` reads them), preview every row's text and play any
row's audio, then send. Validated and sent by what POST /v1/alerts runs (its body model, the alert
service's plan and accept); its problems are shown next to the field, row and cell they name. A form
carries its own idempotency key, so a double submit sends once. Nothing here waits on a provider but
the audio of one row, which is fetched only when played."""

from __future__ import annotations

import base64
import binascii
import json
import zlib
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from announcer.api.alerts import alert_request
from announcer.api.schemas import AlertBody, PreviewBody, problems_of
from announcer.audio import wav_bytes
from announcer.dashboard.message_form import (
    SHOWN_ROWS,
    FormError,
    MessageForm,
    Placed,
    columns_of,
    has_timezones,
    recipient_columns,
    template_names,
    template_variables,
)
from announcer.dashboard.routes import Page, Routes
from announcer.deliveries.plan import PlanError, Problem, RecipientIn
from announcer.messages.workers import RenderBusy
from announcer.recipients import Recipient
from announcer.speech.engine import SpeechError
from announcer.store.deliveries import IdempotencyConflict, NewDelivery

routes = Routes()

# A row's audio URL carries what renders it (the /v1/preview body, compressed): no draft is stored, and
# any process behind a load balancer can answer it. Past this length a URL is no longer safe to use.
MAX_AUDIO_TOKEN = 6000
MAX_AUDIO_BODY = 64 * 1024
BUSY = "The service is busy rendering other messages; try again shortly."


@routes.get("/send", name="send")
async def send_page(request: web.Request, page: Page) -> web.StreamResponse:
    template = request.query.get("template", "")
    form = MessageForm(template=template if template in _templates(page) else "")
    return _form(page, form)


@routes.post("/send", name="send_submit")
async def send_submit(request: web.Request, page: Page) -> web.StreamResponse:
    data = await page.form()
    form = MessageForm.read(data)
    sending = data.get("action") == "send"
    try:
        body, recipients = form.body()
    except FormError as err:
        return _form(page, form, recipients=err.recipients, problems=err.problems, status=422)
    try:
        model = AlertBody.model_validate(body)
    except ValidationError as err:
        return _form(page, form, recipients=recipients, problems=problems_of(err), status=422)
    alerts = page.services.alerts.alerts
    try:
        if sending:
            accepted = await alerts.accept(alert_request(model), form.key)
            return page.redirect(page.url("alert", alert_id=accepted.alert.id))
        problems = alerts.option_problems(model.options, reminder=False)
        planned = await alerts.plan(model.template, model.template_text, model.variables, _ins(model))
    except PlanError as err:
        return _form(page, form, recipients=recipients, problems=err.problems, status=422)
    except RenderBusy:
        raise page.fail(503, BUSY) from None
    except IdempotencyConflict:
        problem = Problem(
            "form", "this form was already sent with other content: open Send again for a new form"
        )
        return _form(page, form, recipients=recipients, problems=[problem], status=409)
    if problems:
        return _form(page, form, recipients=recipients, problems=problems, status=422)
    return _form(page, form, recipients=recipients, planned=planned, model=model)


@routes.get("/send/variables", name="send_variables")
async def send_variables(request: web.Request, page: Page) -> web.StreamResponse:
    """The variables hint for the template just picked (htmx swaps it in under Shared variables)."""
    names = template_variables(
        page.services.settings.announcer_templates_dir, request.query.get("template", ""), ""
    )
    return page.render("_send_variables.html", variables=names)


@routes.get("/send/audio", name="send_audio")
async def send_audio(request: web.Request, page: Page) -> web.StreamResponse:
    """One row's message as WAV, rendered and synthesized as a call's is (the same speaker and cache)."""
    body = _preview_body(page, request.query.get("row", ""))
    r = body.recipient
    try:
        (planned,) = await page.services.alerts.alerts.plan(
            body.template,
            body.template_text,
            body.variables,
            [RecipientIn(r.phone, r.variables, r.name, r.timezone)],
        )
    except PlanError as err:
        raise page.fail(422, "; ".join(f"{p.field}: {p.reason}" for p in err.problems)) from None
    except RenderBusy:
        raise page.fail(503, BUSY) from None
    try:
        audio = await page.services.alerts.speaker.synthesize(planned.text)
    except SpeechError as err:
        raise page.fail(502, f"The text could not be synthesized: {err.reason}") from None
    return web.Response(body=wav_bytes(audio), content_type="audio/wav")


def _templates(page: Page) -> list[str]:
    return template_names(page.services.settings.announcer_templates_dir)


def _ins(model: AlertBody) -> list[RecipientIn]:
    return [RecipientIn(r.phone, r.variables, r.name, r.timezone) for r in model.recipients]


def _form(
    page: Page,
    form: MessageForm,
    *,
    recipients: list[Recipient] | None = None,
    problems: list[Problem] | None = None,
    planned: list[NewDelivery] | None = None,
    model: AlertBody | None = None,
    status: int = 200,
) -> web.Response:
    recipients = recipients or []
    texts = {d.position: d for d in planned or []}
    audio: dict[int, str | None] = {}
    if model is not None:
        audio = {i: _audio_url(page, model, i) for i in range(min(len(recipients), SHOWN_ROWS))}
    return page.render(
        "send.html",
        status=status,
        form=form,
        templates=_templates(page),
        recipients=recipients[:SHOWN_ROWS],
        more=max(0, len(recipients) - SHOWN_ROWS),
        total=len(recipients),
        variable_columns=columns_of(recipients),
        timezones=has_timezones(recipients),
        shown_columns=recipient_columns(recipients),
        placed=Placed.of(problems or []),
        texts=texts,
        audio=audio,
        previewed=planned is not None,
        variables=template_variables(
            page.services.settings.announcer_templates_dir, form.template, form.template_text
        ),
    )


def _audio_url(page: Page, model: AlertBody, index: int) -> str | None:
    """The URL of row `index`'s audio, or None when its text is too long to travel in one."""
    one: dict[str, Any] = model.model_dump(
        include={"template", "template_text", "variables"}, exclude_none=True
    )
    one["recipient"] = model.recipients[index].model_dump(exclude_none=True)
    raw = zlib.compress(json.dumps(one, separators=(",", ":")).encode(), 9)
    token = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    if len(token) > MAX_AUDIO_TOKEN:
        return None
    return page.url("send_audio", {"row": token})


def _preview_body(page: Page, token: str) -> PreviewBody:
    if not token or len(token) > MAX_AUDIO_TOKEN:
        raise page.fail(400, "row must be a row of a previewed form.")
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        inflater = zlib.decompressobj()
        text = inflater.decompress(raw, MAX_AUDIO_BODY)
        if inflater.unconsumed_tail:
            raise ValueError("too large")
        return PreviewBody.model_validate_json(text)
    except (binascii.Error, zlib.error, ValueError):
        raise page.fail(400, "row must be a row of a previewed form.") from None
