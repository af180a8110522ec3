"""`GET /v1/openapi.json`: the API described from the same models the handlers validate with, so the
document and the handlers cannot disagree about a request body; parameters, either-or rules and
responses are stated as exactly as the handlers apply and build them. Route table below = the routes the
app registers (a test checks both ways); tests/test_openapi_fuzz.py runs schemathesis against it."""

from __future__ import annotations

import functools
import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from announcer.api.alerts import (
    ALERTS_PAGE,
    AUDIO_VALUES,
    E164_PATTERN,
    MAX_ALERTS_PAGE,
    MAX_PAGE,
    PAGE,
)
from announcer.api.http import IDEMPOTENCY_KEY_MAX, MAX_JSON_DEPTH, STRING_ID
from announcer.api.incidents import INCIDENTS_PAGE, MAX_INCIDENTS_PAGE, IncidentAction
from announcer.api.integrations import KINDS, MAX_WEBHOOK_BYTES, IntegrationBody, IntegrationPatch
from announcer.api.oncall import MODELS as ONCALL_MODELS
from announcer.api.oncall import MOMENT as ONCALL_MOMENT
from announcer.api.schemas import (
    PHONE_PATTERN,
    AlertBody,
    OutboundCallBody,
    PreviewBody,
    ScheduleBody,
    SchedulePatch,
)
from announcer.store.models import (
    FINAL_DELIVERY_STATES,
    MAX_INT,
    AlertStatus,
    AnsweredBy,
    CallDirection,
    CallKind,
    CallOutcome,
    CallStatus,
    DeliveryState,
    IncidentState,
    OccurrenceStatus,
)
from announcer.telephony.voice import CALL_SID

_ERROR = {"$ref": "#/components/schemas/Error"}
_VALIDATION = {"$ref": "#/components/schemas/ValidationError"}
_TEXT = {"type": "string"}
_INT = {"type": "integer"}
_MOMENT = {"type": "string", "format": "date-time"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _object(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    """A response object exactly as the handler builds it: every property listed (the ones in `optional`
    only sometimes present), nothing else."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(model: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "malformed JSON, header, query or path value (`field` names it)",
        401: "missing or wrong bearer token",
        404: "no such resource",
        409: "conflict (see `error`)",
        413: "body too large",
        415: "not application/json",
        422: "validation failed: every problem, with its field",
        502: "the speech could not be made",
        503: "busy (`busy`: every render thread taken; try again) or not configured here (see `message`)",
    }
    return {str(c): _json(_VALIDATION if c == 422 else _ERROR, text[c]) for c in codes}


_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "a repeated request with the same key and body is answered, not done again",
    "schema": {"type": "string", "minLength": 1, "maxLength": IDEMPOTENCY_KEY_MAX},
}
# Alert and schedule ids ("al_...", "sc_..."): anything else names nothing (404).
_KEY = {"type": "string", "pattern": STRING_ID.pattern}
_ALERT_ID = {"name": "alert_id", "in": "path", "required": True, "schema": _KEY}
_COUNTS = {
    "type": "object",
    "propertyNames": {"enum": [s.value for s in DeliveryState]},
    "additionalProperties": _INT,
    "description": "deliveries by state: those still on their way, and each final outcome (`heard`: a "
    "person heard the message to its end; `voicemail_left`: an answering machine took all of it; "
    "`machine`: a machine, no message left; `fax`)",
}
# A delivery's final state (a final outcome), and a call's outcome: null until there is one.
_DELIVERY_OUTCOME = {
    "anyOf": [
        {"type": "string", "enum": sorted(s.value for s in FINAL_DELIVERY_STATES)},
        {"type": "null"},
    ]
}
_OUTCOME = {"anyOf": [{"type": "string", "enum": [o.value for o in CallOutcome]}, {"type": "null"}]}
_ALERT = _object(
    {
        "id": _TEXT,
        "status": {"type": "string", "enum": [s.value for s in AlertStatus]},
        "recipients": _INT,
        "counts": _COUNTS,
        "created_at": _MOMENT,
        "finished_at": _nullable(_MOMENT),
        "options": {"type": "object"},
    }
)
_VOICEMAIL = {
    **_nullable(_TEXT),
    "description": "what an answering machine is told: the template's `{% block voicemail %}` (left out of "
    "`text`); null: the text itself",
}
# What a call came to (store/models.py Call), on every delivery (its latest attempt's call) and call view.
_FACTS: dict[str, Any] = {
    "answered_by": {
        "anyOf": [{"type": "string", "enum": [a.value for a in AnsweredBy]}, {"type": "null"}],
        "description": "who answered, as Twilio's machine detection said (AnsweredBy); null: not asked, "
        "not answered, or not known yet",
    },
    "amd_ms": {
        **_nullable(_INT),
        "description": "how long machine detection took (MachineDetectionDuration)",
    },
    "played_ms": {**_nullable(_INT), "description": "how much of the message played (from Twilio's marks)"},
    "message_ms": {**_nullable(_INT), "description": "how long the message is"},
    "keys": {**_nullable(_TEXT), "description": "the keys pressed, in order"},
}
_EVENT = {
    "type": "object",
    "required": ["at", "kind"],
    "properties": {"at": _MOMENT, "kind": _TEXT},
    "description": "what happened, and the event's details",
}
_DELIVERY = _object(
    {
        "id": _INT,
        "index": _INT,
        "phone": _TEXT,
        "name": _nullable(_TEXT),
        "state": {"type": "string", "enum": [s.value for s in DeliveryState]},
        "attempt": _INT,
        "outcome": _DELIVERY_OUTCOME,
        "outcome_code": _nullable(_INT),
        "outcome_reason": _nullable(_TEXT),
        "call_sid": _nullable(_TEXT),
        "text": _TEXT,
        "voicemail_text": _VOICEMAIL,
        **_FACTS,
        "updated_at": _MOMENT,
        "history": {"type": "array", "items": _EVENT},
    }
)

# (method, path, operation): what the app registers under /v1
OPERATIONS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "post",
        "/v1/alerts",
        {
            "summary": "Accept an alert: every recipient is rendered and validated first, then called",
            "parameters": [_IDEMPOTENCY_KEY],
            "requestBody": _body("AlertBody"),
            "responses": {
                "202": _json(
                    _object(
                        {"id": _TEXT, "status": _TEXT, "recipients": _INT, "replayed": {"type": "boolean"}}
                    ),
                    "accepted (or replayed for the same Idempotency-Key and body)",
                ),
                **_errors(400, 401, 409, 413, 415, 422, 503),
            },
        },
    ),
    (
        "get",
        "/v1/alerts",
        {
            "summary": "The alerts, newest first, a page at a time",
            "parameters": [
                {
                    "name": "before",
                    "in": "query",
                    "description": "the id of the last alert of the page before",
                    "schema": _KEY,
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {
                        "type": "integer",
                        "default": ALERTS_PAGE,
                        "minimum": 1,
                        "maximum": MAX_ALERTS_PAGE,
                    },
                },
            ],
            "responses": {
                "200": _json(
                    _object({"alerts": {"type": "array", "items": _ALERT}, "next_before": _nullable(_TEXT)}),
                    "a page of alerts; pass next_before as before for the next one",
                ),
                **_errors(400, 401),
            },
        },
    ),
    (
        "get",
        "/v1/alerts/{alert_id}",
        {
            "summary": "An alert's status and its deliveries counted by state",
            "parameters": [_ALERT_ID],
            "responses": {"200": _json(_ALERT, "the alert"), **_errors(401, 404)},
        },
    ),
    (
        "get",
        "/v1/alerts/{alert_id}/deliveries",
        {
            "summary": "An alert's deliveries, by recipient index, each with its state history",
            "parameters": [
                _ALERT_ID,
                {
                    "name": "after",
                    "in": "query",
                    "description": "the index after which the page starts",
                    "schema": {"type": "integer", "default": -1, "minimum": -1, "maximum": MAX_INT},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "default": PAGE, "minimum": 1, "maximum": MAX_PAGE},
                },
            ],
            "responses": {
                "200": _json(
                    _object(
                        {
                            "deliveries": {"type": "array", "items": _DELIVERY},
                            "next_after": _nullable(_INT),
                        }
                    ),
                    "a page of deliveries; pass next_after as after for the next one",
                ),
                **_errors(400, 401, 404),
            },
        },
    ),
    (
        "post",
        "/v1/alerts/{alert_id}/cancel",
        {
            "summary": "Cancel: queued calls are not placed, ringing ones are canceled",
            "parameters": [_ALERT_ID],
            "responses": {
                "200": _json(
                    _object(
                        {
                            "id": _TEXT,
                            "status": {"type": "string", "enum": [s.value for s in AlertStatus]},
                            "canceled": {"type": "integer", "description": "deliveries not placed now"},
                            "ringing_canceled": {"type": "integer", "description": "ringing calls ended"},
                            "counts": _COUNTS,
                        }
                    ),
                    "canceled",
                ),
                **_errors(401, 404, 409),
            },
        },
    ),
    (
        "post",
        "/v1/preview",
        {
            "summary": "Render a template for one recipient (?audio=1: the synthesized WAV) without calling",
            "parameters": [
                {
                    "name": "audio",
                    "in": "query",
                    "description": "1 or true: answer with the speech (audio/wav) instead of the text",
                    "schema": {"type": "string", "enum": list(AUDIO_VALUES)},
                }
            ],
            "requestBody": _body("PreviewBody"),
            "responses": {
                "200": {
                    "description": "the text (JSON), or the audio (audio/wav)",
                    "content": {
                        "application/json": {
                            "schema": _object(
                                {
                                    "text": _TEXT,
                                    "voicemail_text": _VOICEMAIL,
                                    "phone": _TEXT,
                                    "characters": _INT,
                                }
                            )
                        },
                        "audio/wav": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                **_errors(400, 401, 413, 415, 422, 502, 503),
            },
        },
    ),
    (
        "get",
        "/v1/opt-outs",
        {
            "summary": "The numbers that pressed 9, in order, a page at a time",
            "parameters": [
                {
                    "name": "after",
                    "in": "query",
                    "description": "the number (E.164) after which the page starts",
                    "schema": {"type": "string", "pattern": E164_PATTERN},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "default": PAGE, "minimum": 1, "maximum": MAX_PAGE},
                },
            ],
            "responses": {
                "200": _json(
                    _object(
                        {
                            "opt_outs": {
                                "type": "array",
                                "items": _object(
                                    {"phone": _TEXT, "created_at": _MOMENT, "delivery_id": _nullable(_INT)}
                                ),
                            },
                            "next_after": _nullable(_TEXT),
                        }
                    ),
                    "a page of opted-out numbers; pass next_after as after for the next one",
                ),
                **_errors(400, 401),
            },
        },
    ),
    (
        "delete",
        "/v1/opt-outs/{phone}",
        {
            "summary": "Allow alerts to call a number that pressed 9 again",
            "parameters": [
                {
                    "name": "phone",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "maxLength": 40, "pattern": PHONE_PATTERN},
                }
            ],
            "responses": {
                "200": _json(_object({"phone": _TEXT, "opted_out": {"const": False}}), "removed"),
                **_errors(401, 404, 422),
            },
        },
    ),
    (
        "get",
        "/v1/openapi.json",
        {
            "summary": "This document",
            "security": [],
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")},
        },
    ),
]


_SCHEDULE_ID = {"name": "schedule_id", "in": "path", "required": True, "schema": _KEY}
_SCHEDULE_STATUS = {"type": "string", "enum": ["active", "paused", "ended"]}
_SCHEDULE_PROPERTIES: dict[str, Any] = {
    "id": _TEXT,
    "name": _nullable(_TEXT),
    "status": _SCHEDULE_STATUS,
    "when": {"type": "object", "description": "as given, with its time zone"},
    "recipients": _INT,
    "next_run_at": _nullable(_MOMENT),
    "created_at": _MOMENT,
}
_SCHEDULE = _object(_SCHEDULE_PROPERTIES)
_OCCURRENCE = _object(
    {
        "planned_at": _MOMENT,
        "status": {"type": "string", "enum": [s.value for s in OccurrenceStatus]},
        "alert_id": _nullable(_TEXT),
        "counts": _COUNTS,
        "detail": {"type": "object"},
    }
)
_SCHEDULE_DETAIL = _object(
    {
        **_SCHEDULE_PROPERTIES,
        "next_run_times": {"type": "array", "items": _MOMENT},
        "variables": {"type": "object"},
        "options": {"type": "object"},
        "occurrences": {"type": "array", "items": _OCCURRENCE},
    }
)


OPERATIONS += [
    (
        "post",
        "/v1/schedules",
        {
            "summary": "Create a reminder, once (`when.at`) or repeating (`when.cron` in a time zone)",
            "requestBody": _body("ScheduleBody"),
            "responses": {
                "201": _json(
                    _object({"id": _TEXT, "status": _SCHEDULE_STATUS, "next_run_at": _nullable(_MOMENT)}),
                    "created: its id and next run",
                ),
                **_errors(400, 401, 413, 415, 422, 503),
            },
        },
    ),
    (
        "get",
        "/v1/schedules",
        {
            "summary": "Every schedule that is not deleted",
            "responses": {
                "200": _json(_object({"schedules": {"type": "array", "items": _SCHEDULE}}), "the schedules"),
                **_errors(401),
            },
        },
    ),
    (
        "get",
        "/v1/schedules/{schedule_id}",
        {
            "summary": "A schedule: its next run times and its past occurrences with their outcomes",
            "parameters": [_SCHEDULE_ID],
            "responses": {"200": _json(_SCHEDULE_DETAIL, "the schedule"), **_errors(401, 404)},
        },
    ),
    (
        "patch",
        "/v1/schedules/{schedule_id}",
        {
            "summary": "Pause, resume, or change the time, recipients or variables",
            "parameters": [_SCHEDULE_ID],
            "requestBody": _body("SchedulePatch"),
            "responses": {
                "200": _json(_SCHEDULE, "the schedule as changed"),
                **_errors(400, 401, 404, 413, 415, 422, 503),
            },
        },
    ),
    (
        "delete",
        "/v1/schedules/{schedule_id}",
        {
            "summary": "Delete a schedule: nothing of it is called after the answer",
            "parameters": [_SCHEDULE_ID],
            "responses": {"204": {"description": "deleted (no body)"}, **_errors(401, 404)},
        },
    ),
]


_TURN = _object(
    {
        "seq": _INT,
        "at": _MOMENT,
        "role": {"type": "string", "enum": ["agent", "user"]},
        "text": _TEXT,
        "interrupted": {"type": "boolean", "description": "an agent turn the caller cut short"},
        "original_text": {"type": "string", "description": "before the agent corrected the cut turn"},
        "played_ms": {"type": "integer", "description": "interrupted: the audio played before the cut"},
        "sent_ms": {"type": "integer", "description": "interrupted: the audio sent before the cut"},
    },
    optional=("original_text", "played_ms", "sent_ms"),
)
_CALL = _object(
    {
        "call_sid": _nullable(_TEXT),
        "direction": {"type": "string", "enum": [d.value for d in CallDirection]},
        "kind": {"type": "string", "enum": [k.value for k in CallKind]},
        "to": _nullable(_TEXT),
        "from": _nullable(_TEXT),
        "status": {"type": "string", "enum": [s.value for s in CallStatus]},
        "outcome": _OUTCOME,
        **_FACTS,
        "delivery_id": _nullable(_INT),
        "created_at": _MOMENT,
        "answered_at": _nullable(_MOMENT),
        "ended_at": _nullable(_MOMENT),
        "events": {"type": "array", "items": _EVENT},
        "transcript": {"type": "array", "items": _TURN},
    }
)

OPERATIONS += [
    (
        "get",
        "/v1/calls/{call_sid}",
        {
            "summary": "A call: its events and, for an agent conversation, the transcript in order",
            "parameters": [
                {
                    "name": "call_sid",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "pattern": CALL_SID.pattern},
                }
            ],
            "responses": {"200": _json(_CALL, "the call"), **_errors(401, 404)},
        },
    ),
    (
        "get",
        "/v1/deliveries/{delivery_id}/call",
        {
            "summary": "The latest call of a delivery, as `GET /v1/calls/{call_sid}`",
            "parameters": [
                {
                    "name": "delivery_id",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_INT},
                }
            ],
            "responses": {"200": _json(_CALL, "the call"), **_errors(400, 401, 404)},
        },
    ),
]

OPERATIONS += [
    (
        "get",
        "/v1/sandbox",
        {
            "summary": "Sandbox mode only: where the loopback Twilio is (`announcer sandbox call-in --url`)",
            "description": "Its account SID and auth token are throwaway ones made for this run.",
            "responses": {
                "200": _json(
                    _object(
                        {
                            "base_url": _TEXT,
                            "account_sid": _TEXT,
                            "auth_token": _TEXT,
                            "phone_number": _TEXT,
                            "greeting_agent": {"type": "boolean"},
                        }
                    ),
                    "the loopback Twilio",
                ),
                **_errors(401, 404),
            },
        },
    ),
]

# Outside /v1, kept where the reference example had it; documented all the same.
OPERATIONS += [
    (
        "post",
        "/outbound-call",
        {
            "summary": "Call `number` and hand the call to the agent from its first second",
            "description": "ElevenLabs' Twilio outbound example, with bearer auth and validation; the prompt "
            "and first message are stored, never put into TwiML or a URL.",
            "parameters": [_IDEMPOTENCY_KEY],
            "requestBody": _body("OutboundCallBody"),
            "responses": {
                "200": _json(
                    _object(
                        {
                            "success": {"const": True},
                            "message": {"type": "string", "enum": ["Call initiated", "Call queued"]},
                            "callSid": _nullable(_TEXT),
                            "alert_id": _TEXT,
                            "delivery_id": _INT,
                        }
                    ),
                    "placed (callSid) or queued behind the rate limit (callSid null)",
                ),
                **_errors(400, 401, 409, 413, 415, 422, 503),
            },
        },
    ),
]


# --- on call: people, rotations and their overrides, escalation policies, who is on call (api/oncall.py) ----
_PERSON_ID = {"name": "person_id", "in": "path", "required": True, "schema": _KEY}
_ROTATION_ID = {"name": "rotation_id", "in": "path", "required": True, "schema": _KEY}
_POLICY_ID = {"name": "policy_id", "in": "path", "required": True, "schema": _KEY}
_OVERRIDE_ID = {
    "name": "override_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_INT},
}
_PERSON = _object(
    {
        "id": _TEXT,
        "name": _TEXT,
        "phone": {"type": "string", "description": "E.164"},
        "timezone": _TEXT,
        "created_at": _MOMENT,
        "updated_at": _MOMENT,
    }
)
_ROTATION_PROPERTIES: dict[str, Any] = {
    "id": _TEXT,
    "name": _TEXT,
    "timezone": _TEXT,
    "shift_length": _INT,
    "shift_unit": {"type": "string", "enum": ["hours", "days", "weeks"]},
    "handoff_time": _TEXT,
    "start_date": {"type": "string", "format": "date"},
    "members": {"type": "array", "items": _TEXT},
    "created_at": _MOMENT,
    "updated_at": _MOMENT,
}
_ROTATION = _object(_ROTATION_PROPERTIES)
_STRETCH = {
    "anyOf": [
        _object(
            {
                "person": _nullable(_object({"id": _TEXT, "name": _nullable(_TEXT)})),
                "since": {**_nullable(_MOMENT), "description": "null: nobody before (since always)"},
                "until": {**_nullable(_MOMENT), "description": "null: nothing changes after"},
                "override": {"type": "boolean", "description": "an override put them there"},
            }
        ),
        {"type": "null"},
    ],
    "description": "who (null: nobody), since and until when, in the rotation's zone",
}
_ROTATION_DETAIL = _object({**_ROTATION_PROPERTIES, "now": _STRETCH, "next": _STRETCH})
_OVERRIDE = _object(
    {
        "id": _INT,
        "rotation_id": _TEXT,
        "person_id": _TEXT,
        "starts_at": _MOMENT,
        "ends_at": _MOMENT,
        "created_at": _MOMENT,
    }
)
_POLICY = _object(
    {
        "id": _TEXT,
        "name": _TEXT,
        "repeat": _INT,
        "steps": {
            "type": "array",
            "items": _object(
                {
                    "delay_s": _INT,
                    "targets": {
                        "type": "array",
                        "items": _object(
                            {"type": {"type": "string", "enum": ["person", "rotation"]}, "id": _TEXT}
                        ),
                    },
                }
            ),
        },
        "created_at": _MOMENT,
        "updated_at": _MOMENT,
    }
)
_ONCALL = _object(
    {
        "at": _MOMENT,
        "rotations": {
            "type": "array",
            "items": _object(
                {"id": _TEXT, "name": _TEXT, "timezone": _TEXT, "now": _STRETCH, "next": _STRETCH}
            ),
        },
    }
)


def _crud(
    path: str,
    what: str,
    key: dict[str, Any],
    view: dict[str, Any],
    detail: dict[str, Any],
    listed: str,
    model: str,
    conflict: str,
) -> list[tuple[str, str, dict[str, Any]]]:
    one = f"{path}/{{{key['name']}}}"
    return [
        (
            "post",
            path,
            {
                "summary": f"Create a {what}",
                "requestBody": _body(f"{model}Body"),
                "responses": {"201": _json(view, "created"), **_errors(400, 401, 413, 415, 422)},
            },
        ),
        (
            "get",
            path,
            {
                "summary": f"Every {what}",
                "responses": {
                    "200": _json(_object({listed: {"type": "array", "items": view}}), "the list"),
                    **_errors(401),
                },
            },
        ),
        (
            "get",
            one,
            {
                "summary": f"A {what}",
                "parameters": [key],
                "responses": {"200": _json(detail, f"the {what}"), **_errors(401, 404)},
            },
        ),
        (
            "patch",
            one,
            {
                "summary": f"Change a {what}: the fields given",
                "parameters": [key],
                "requestBody": _body(f"{model}Patch"),
                "responses": {"200": _json(view, "as changed"), **_errors(400, 401, 404, 413, 415, 422)},
            },
        ),
        (
            "delete",
            one,
            {
                "summary": f"Delete a {what} (409 while {conflict})",
                "parameters": [key],
                "responses": {"204": {"description": "deleted (no body)"}, **_errors(401, 404, 409)},
            },
        ),
    ]


OPERATIONS += [
    *_crud(
        "/v1/people",
        "person",
        _PERSON_ID,
        _PERSON,
        _PERSON,
        "people",
        "Person",
        "a rotation, an override or a policy step names them",
    ),
    *_crud(
        "/v1/rotations",
        "rotation",
        _ROTATION_ID,
        _ROTATION,
        _ROTATION_DETAIL,
        "rotations",
        "Rotation",
        "a policy step names it",
    ),
    (
        "post",
        "/v1/rotations/{rotation_id}/overrides",
        {
            "summary": "Put a person on call in the rotation for a while (the latest wins an overlap)",
            "parameters": [_ROTATION_ID],
            "requestBody": _body("OverrideBody"),
            "responses": {"201": _json(_OVERRIDE, "created"), **_errors(400, 401, 404, 413, 415, 422)},
        },
    ),
    (
        "get",
        "/v1/rotations/{rotation_id}/overrides",
        {
            "summary": "The rotation's overrides, in the order they were made",
            "parameters": [_ROTATION_ID],
            "responses": {
                "200": _json(_object({"overrides": {"type": "array", "items": _OVERRIDE}}), "the overrides"),
                **_errors(401, 404),
            },
        },
    ),
    (
        "delete",
        "/v1/rotations/{rotation_id}/overrides/{override_id}",
        {
            "summary": "Remove an override",
            "parameters": [_ROTATION_ID, _OVERRIDE_ID],
            "responses": {"204": {"description": "deleted (no body)"}, **_errors(400, 401, 404)},
        },
    ),
    *_crud(
        "/v1/escalation-policies",
        "escalation policy",
        _POLICY_ID,
        _POLICY,
        _POLICY,
        "escalation_policies",
        "Policy",
        "an integration escalates by it",
    ),
    (
        "get",
        "/v1/oncall",
        {
            "summary": "Who is on call in every rotation now (or `at`), and who is next",
            "parameters": [
                {
                    "name": "at",
                    "in": "query",
                    "required": False,
                    "description": "ISO-8601 with its offset (default: now)",
                    "schema": {"type": "string", "pattern": ONCALL_MOMENT},
                }
            ],
            "responses": {"200": _json(_ONCALL, "every rotation, now and next"), **_errors(400, 401, 422)},
        },
    ),
]


# --- paging: integrations, their sources' webhooks, incidents ----------------------------------------------

_INTEGRATION_ID = {"name": "integration_id", "in": "path", "required": True, "schema": _KEY}
_INCIDENT_ID = {"name": "incident_id", "in": "path", "required": True, "schema": _KEY}
_INTEGRATION_PROPERTIES: dict[str, Any] = {
    "id": _TEXT,
    "name": _TEXT,
    "kind": {"type": "string", "enum": list(KINDS)},
    "policy_id": _TEXT,
    "silence_s": _nullable(_INT),
    "webhook_path": {**_TEXT, "description": "where its source posts, with `Authorization: Bearer <secret>`"},
    "created_at": _MOMENT,
    "updated_at": _MOMENT,
    "secret": {**_TEXT, "description": "only when created (and rotated): it is kept as its SHA-256 alone"},
}
_INTEGRATION = _object(_INTEGRATION_PROPERTIES, optional=("secret",))
_INCIDENT_STATE = {"type": "string", "enum": [s.value for s in IncidentState]}
_INCIDENT_PROPERTIES: dict[str, Any] = {
    "id": _TEXT,
    "integration_id": _TEXT,
    "policy_id": _TEXT,
    "dedup_key": {**_TEXT, "description": "the source's groupKey (or dedup_key)"},
    "state": _INCIDENT_STATE,
    "title": _TEXT,
    "summary": _nullable(_TEXT),
    "severity": _nullable(_TEXT),
    "alert_count": _INT,
    "source_url": _nullable(_TEXT),
    "round": _INT,
    "step": {**_INT, "description": "the step last paged (-1: none yet)"},
    "next_step_at": _nullable(_MOMENT),
    "firing_since": _nullable(_MOMENT),
    "created_at": _MOMENT,
    "updated_at": _MOMENT,
    "acknowledged_at": _nullable(_MOMENT),
    "acknowledged_by": _nullable(_TEXT),
    "resolved_at": _nullable(_MOMENT),
}
_INCIDENT = _object(_INCIDENT_PROPERTIES)
_INCIDENT_EVENT = _object(
    {
        "at": _MOMENT,
        "kind": {
            **_TEXT,
            "description": "triggered, repeated, paged, escalated, acknowledged, resolved, ...",
        },
        "who": _nullable(_TEXT),
        "how": {
            **_nullable(_TEXT),
            "description": "key, api, dashboard, alertmanager, grafana, json, policy",
        },
        "detail": {"type": "object"},
    }
)
_PAGED = _object(
    {
        "name": _nullable(_TEXT),
        "phone": _nullable(_TEXT),
        "state": {"anyOf": [{"type": "string", "enum": [s.value for s in DeliveryState]}, {"type": "null"}]},
        "outcome": _DELIVERY_OUTCOME,
    }
)
_PAGE = _object(
    {
        "round": _INT,
        "step": _INT,
        "alert_id": _nullable(_TEXT),
        "created_at": _MOMENT,
        "people": {"type": "array", "items": _PAGED},
    }
)
_INCIDENT_DETAIL = _object(
    {
        **_INCIDENT_PROPERTIES,
        "details": {"type": "object", "description": "the source's labels, annotations and alerts (trimmed)"},
        "events": {"type": "array", "items": _INCIDENT_EVENT},
        "pages": {"type": "array", "items": _PAGE},
    }
)
_SOURCES = {
    "alertmanager": "Prometheus Alertmanager's webhook (version 4)",
    "grafana": "Grafana alerting's webhook contact point",
    "json": "the plain form: title, summary, severity, dedup_key, status (trigger | resolve)",
}

OPERATIONS += [
    (
        "post",
        f"/v1/integrations/{kind}/{{integration_id}}",
        {
            "summary": f"{text}: opens, repeats or resolves the group's incident",
            "description": "Authenticated by the integration's own secret "
            "(`Authorization: Bearer <secret>`), not the API token. A wrong or missing secret, or an "
            "integration of another kind: 401, nothing "
            f"stored. At most {MAX_WEBHOOK_BYTES} bytes.",
            "security": [{"integration": []}],
            "parameters": [_INTEGRATION_ID],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "responses": {
                "200": _json(
                    _object(
                        {
                            "action": {
                                "type": "string",
                                "enum": ["opened", "repeated", "resolved", "ignored"],
                            },
                            "incident_id": _nullable(_TEXT),
                        }
                    ),
                    "what it did",
                ),
                **_errors(400, 401, 413, 422),
            },
        },
    )
    for kind, text in _SOURCES.items()
]
OPERATIONS += [
    (
        "post",
        "/v1/integrations",
        {
            "summary": "Create an integration: its secret is in this answer, and never again",
            "requestBody": _body("IntegrationBody"),
            "responses": {
                "201": _json(_INTEGRATION, "created, with its secret"),
                **_errors(400, 401, 413, 415, 422),
            },
        },
    ),
    (
        "get",
        "/v1/integrations",
        {
            "summary": "The integrations",
            "responses": {
                "200": _json(
                    _object({"integrations": {"type": "array", "items": _INTEGRATION}}), "all of them"
                ),
                **_errors(401),
            },
        },
    ),
    (
        "get",
        "/v1/integrations/{integration_id}",
        {
            "summary": "An integration (never its secret)",
            "parameters": [_INTEGRATION_ID],
            "responses": {"200": _json(_INTEGRATION, "the integration"), **_errors(401, 404)},
        },
    ),
    (
        "patch",
        "/v1/integrations/{integration_id}",
        {
            "summary": "Change an integration's name, kind, policy or silence",
            "parameters": [_INTEGRATION_ID],
            "requestBody": _body("IntegrationPatch"),
            "responses": {
                "200": _json(_INTEGRATION, "as changed"),
                **_errors(400, 401, 404, 413, 415, 422),
            },
        },
    ),
    (
        "delete",
        "/v1/integrations/{integration_id}",
        {
            "summary": "Delete an integration no incident came from",
            "parameters": [_INTEGRATION_ID],
            "responses": {"204": {"description": "deleted (no body)"}, **_errors(401, 404, 409)},
        },
    ),
    (
        "post",
        "/v1/integrations/{integration_id}/rotate-secret",
        {
            "summary": "A new secret (the old one stops working now), answered this once",
            "parameters": [_INTEGRATION_ID],
            "responses": {
                "200": _json(_object({"id": _TEXT, "secret": _TEXT}), "the new secret"),
                **_errors(401, 404),
            },
        },
    ),
    (
        "get",
        "/v1/incidents",
        {
            "summary": "The incidents, newest first, a page at a time",
            "parameters": [
                {"name": "state", "in": "query", "schema": _INCIDENT_STATE},
                {
                    "name": "before",
                    "in": "query",
                    "description": "the id of the last incident of the page before",
                    "schema": _KEY,
                },
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {
                        "type": "integer",
                        "default": INCIDENTS_PAGE,
                        "minimum": 1,
                        "maximum": MAX_INCIDENTS_PAGE,
                    },
                },
            ],
            "responses": {
                "200": _json(
                    _object(
                        {"incidents": {"type": "array", "items": _INCIDENT}, "next_before": _nullable(_TEXT)}
                    ),
                    "a page of incidents; pass next_before as before for the next one",
                ),
                **_errors(400, 401),
            },
        },
    ),
    (
        "get",
        "/v1/incidents/{incident_id}",
        {
            "summary": "An incident with its timeline and its pages (each step, who, each call's outcome)",
            "parameters": [_INCIDENT_ID],
            "responses": {"200": _json(_INCIDENT_DETAIL, "the incident"), **_errors(401, 404)},
        },
    ),
    (
        "post",
        "/v1/incidents/{incident_id}/ack",
        {
            "summary": "Acknowledge (how: api): nobody more is paged, the page calls are canceled",
            "parameters": [_INCIDENT_ID],
            "requestBody": {**_body("IncidentAction"), "required": False},
            "responses": {
                "200": _json(_INCIDENT, "acknowledged"),
                **_errors(400, 401, 404, 409, 413, 415, 422),
            },
        },
    ),
    (
        "post",
        "/v1/incidents/{incident_id}/resolve",
        {
            "summary": "Resolve (how: api): the escalation stops, the page calls are canceled",
            "parameters": [_INCIDENT_ID],
            "requestBody": {**_body("IncidentAction"), "required": False},
            "responses": {"200": _json(_INCIDENT, "resolved"), **_errors(400, 401, 404, 409, 413, 415, 422)},
        },
    ),
]


@functools.lru_cache(maxsize=4)
def document_json(max_recipients: int | None = None) -> bytes:
    """`document` as served: made once (a pure function of the code and the setting), and as bytes, which
    no caller can change."""
    return json.dumps(document(max_recipients)).encode()


def document(max_recipients: int | None = None) -> dict[str, Any]:
    """The OpenAPI document; `max_recipients`: the deployment's ANNOUNCER_MAX_RECIPIENTS, stated as the
    recipient lists' maxItems."""
    models: list[tuple[type[BaseModel], Any]] = [
        (AlertBody, "validation"),
        (PreviewBody, "validation"),
        (ScheduleBody, "validation"),
        (SchedulePatch, "validation"),
        (OutboundCallBody, "validation"),
        *((model, "validation") for model in ONCALL_MODELS),
        (IntegrationBody, "validation"),
        (IntegrationPatch, "validation"),
        (IncidentAction, "validation"),
    ]
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schemas = dict(defs.get("$defs", {}))
    if max_recipients is not None:
        schemas["AlertBody"]["properties"]["recipients"]["maxItems"] = max_recipients
        schemas["ScheduleBody"]["properties"]["recipients"]["maxItems"] = max_recipients
        for branch in schemas["SchedulePatch"]["properties"]["recipients"]["anyOf"]:
            if branch.get("type") == "array":
                branch["maxItems"] = max_recipients
    schemas["Error"] = _object(
        {
            "error": {"type": "string", "description": "what went wrong, for programs: not_found, ..."},
            "message": {"type": "string", "description": "what went wrong, for people"},
            "field": {"type": "string", "description": "the header, parameter or body part at fault"},
        },
        optional=("field",),
    )
    schemas["ValidationError"] = _object(
        {
            "error": {"const": "validation_failed"},
            "message": {"type": "string"},
            "problems": {
                "type": "array",
                "minItems": 1,
                "items": _object(
                    {
                        "field": {"type": "string", "examples": ["recipients[3].phone"]},
                        "reason": {"type": "string"},
                        "index": {"type": "integer", "description": "the recipient's, when it is one's"},
                    },
                    optional=("index",),
                ),
            },
        }
    )
    paths: dict[str, dict[str, Any]] = {}
    for method, path, operation in OPERATIONS:
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "announcer",
            "version": "1",
            "description": "Phone announcements with generated speech.\n\n"
            "Beyond what the schemas say, every JSON body is refused (422) when a string or a key in it "
            f"holds a NUL character (U+0000) or it is nested deeper than {MAX_JSON_DEPTH} levels; a "
            "request is refused (422) for what only the service can know: a template that does not "
            "exist or does not render with the variables given, a number that cannot be dialed, keys "
            "of the options that clash, a time in the past, an unknown time zone.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                # the paging sources' webhooks: the integration's own secret, as a bearer token
                "integration": {"type": "http", "scheme": "bearer"},
            },
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
