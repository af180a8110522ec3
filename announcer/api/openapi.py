"""`GET /v1/openapi.json`: the API described from the same models the handlers validate with, so the
document and the handlers cannot disagree about a request body. Route table below = the routes the app
registers (a test checks both ways)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from announcer.api.schemas import AlertBody, OutboundCallBody, PreviewBody, ScheduleBody, SchedulePatch

_ERROR = {"$ref": "#/components/schemas/Error"}
_VALIDATION = {"$ref": "#/components/schemas/ValidationError"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "malformed JSON or query",
        401: "missing or wrong bearer token",
        404: "no such resource",
        409: "conflict (see `error`)",
        413: "body too large",
        415: "not application/json",
        422: "validation failed: every problem, with its field",
    }
    return {str(c): _json(_VALIDATION if c == 422 else _ERROR, text[c]) for c in codes}


_ALERT_ID = {"name": "alert_id", "in": "path", "required": True, "schema": {"type": "string"}}
_ALERT = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["active", "completed", "canceled"]},
        "recipients": {"type": "integer"},
        "counts": {"type": "object", "additionalProperties": {"type": "integer"}},
        "created_at": {"type": "string", "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "options": {"type": "object"},
    },
}
_DELIVERY = {
    "type": "object",
    "properties": {
        "id": {"type": "integer"},
        "index": {"type": "integer"},
        "phone": {"type": "string"},
        "name": {"type": ["string", "null"]},
        "state": {"type": "string"},
        "attempt": {"type": "integer"},
        "outcome": {"type": ["string", "null"]},
        "outcome_code": {"type": ["integer", "null"]},
        "outcome_reason": {"type": ["string", "null"]},
        "call_sid": {"type": ["string", "null"]},
        "text": {"type": "string"},
        "updated_at": {"type": "string", "format": "date-time"},
        "history": {"type": "array", "items": {"type": "object"}},
    },
}

# (method, path, operation): what the app registers under /v1
OPERATIONS: list[tuple[str, str, dict[str, Any]]] = [
    (
        "post",
        "/v1/alerts",
        {
            "summary": "Accept an alert: every recipient is rendered and validated first, then called",
            "parameters": [
                {"name": "Idempotency-Key", "in": "header", "required": False, "schema": {"type": "string"}}
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/AlertBody"}}},
            },
            "responses": {
                "202": _json(
                    {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "status": {"type": "string"},
                            "recipients": {"type": "integer"},
                            "replayed": {"type": "boolean"},
                        },
                    },
                    "accepted (or replayed for the same Idempotency-Key and body)",
                ),
                **_errors(400, 401, 409, 413, 415, 422),
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
                {"name": "after", "in": "query", "schema": {"type": "integer", "default": -1}},
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "default": 100, "maximum": 1000},
                },
            ],
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "deliveries": {"type": "array", "items": _DELIVERY},
                            "next_after": {"type": ["integer", "null"]},
                        },
                    },
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
            "responses": {"200": _json(_ALERT, "canceled"), **_errors(401, 404, 409)},
        },
    ),
    (
        "post",
        "/v1/preview",
        {
            "summary": "Render a template for one recipient (?audio=1: the synthesized WAV) without calling",
            "parameters": [
                {"name": "audio", "in": "query", "schema": {"type": "string", "enum": ["0", "1"]}}
            ],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PreviewBody"}}},
            },
            "responses": {
                "200": {
                    "description": "the text (JSON), or the audio (audio/wav)",
                    "content": {
                        "application/json": {
                            "schema": {"type": "object", "properties": {"text": {"type": "string"}}}
                        },
                        "audio/wav": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                **_errors(400, 401, 415, 422),
            },
        },
    ),
    (
        "delete",
        "/v1/opt-outs/{phone}",
        {
            "summary": "Allow alerts to call a number that pressed 9 again",
            "parameters": [{"name": "phone", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": _json({"type": "object"}, "removed"), **_errors(401, 404, 422)},
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


_SCHEDULE_ID = {"name": "schedule_id", "in": "path", "required": True, "schema": {"type": "string"}}
_SCHEDULE = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "name": {"type": ["string", "null"]},
        "status": {"type": "string", "enum": ["active", "paused", "ended"]},
        "when": {"type": "object"},
        "recipients": {"type": "integer"},
        "next_run_at": {"type": ["string", "null"], "format": "date-time"},
        "next_run_times": {"type": "array", "items": {"type": "string", "format": "date-time"}},
        "occurrences": {"type": "array", "items": {"type": "object"}},
    },
}


def _body(model: str) -> dict[str, Any]:
    return {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model}"}}},
    }


OPERATIONS += [
    (
        "post",
        "/v1/schedules",
        {
            "summary": "Create a reminder, once (`when.at`) or repeating (`when.cron` in a time zone)",
            "requestBody": _body("ScheduleBody"),
            "responses": {
                "201": _json(_SCHEDULE, "created: its id and next run"),
                **_errors(400, 401, 415, 422),
            },
        },
    ),
    (
        "get",
        "/v1/schedules",
        {
            "summary": "Every schedule that is not deleted",
            "responses": {
                "200": _json(
                    {"type": "object", "properties": {"schedules": {"type": "array", "items": _SCHEDULE}}},
                    "the schedules",
                ),
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
            "responses": {"200": _json(_SCHEDULE, "the schedule"), **_errors(401, 404)},
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
                **_errors(400, 401, 404, 415, 422),
            },
        },
    ),
    (
        "delete",
        "/v1/schedules/{schedule_id}",
        {
            "summary": "Delete a schedule: nothing of it is called after the answer",
            "parameters": [_SCHEDULE_ID],
            "responses": {"204": {"description": "deleted"}, **_errors(401, 404)},
        },
    ),
]


_TURN = {
    "type": "object",
    "properties": {
        "seq": {"type": "integer"},
        "at": {"type": "string", "format": "date-time"},
        "role": {"type": "string", "enum": ["agent", "user"]},
        "text": {"type": "string"},
        "interrupted": {"type": "boolean", "description": "an agent turn the caller cut short"},
        "original_text": {"type": "string", "description": "before the agent corrected the cut turn"},
        "played_ms": {
            "type": "integer",
            "description": "of an interrupted turn: audio played before the cut",
        },
        "sent_ms": {"type": "integer"},
    },
}
_CALL = {
    "type": "object",
    "properties": {
        "call_sid": {"type": ["string", "null"]},
        "kind": {"type": "string"},
        "status": {"type": "string"},
        "outcome": {"type": ["string", "null"]},
        "delivery_id": {"type": ["integer", "null"]},
        "events": {"type": "array", "items": {"type": "object"}},
        "transcript": {"type": "array", "items": _TURN},
    },
}

OPERATIONS += [
    (
        "get",
        "/v1/calls/{call_sid}",
        {
            "summary": "A call: its events and, for an agent conversation, the transcript in order",
            "parameters": [
                {"name": "call_sid", "in": "path", "required": True, "schema": {"type": "string"}}
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
                {"name": "delivery_id", "in": "path", "required": True, "schema": {"type": "integer"}}
            ],
            "responses": {"200": _json(_CALL, "the call"), **_errors(400, 401, 404)},
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
            "requestBody": _body("OutboundCallBody"),
            "responses": {
                "200": _json(
                    {
                        "type": "object",
                        "properties": {
                            "success": {"type": "boolean"},
                            "message": {"type": "string"},
                            "callSid": {"type": ["string", "null"]},
                            "alert_id": {"type": "string"},
                            "delivery_id": {"type": "integer"},
                        },
                    },
                    "placed (callSid) or queued behind the rate limit (callSid null)",
                ),
                "503": _json(_ERROR, "no agent configured"),
                **_errors(400, 401, 409, 415, 422),
            },
        },
    ),
]


def document() -> dict[str, Any]:
    models: list[tuple[type[BaseModel], Any]] = [
        (AlertBody, "validation"),
        (PreviewBody, "validation"),
        (ScheduleBody, "validation"),
        (SchedulePatch, "validation"),
        (OutboundCallBody, "validation"),
    ]
    _, defs = models_json_schema(models, ref_template="#/components/schemas/{model}")
    schemas = dict(defs.get("$defs", {}))
    schemas["Error"] = {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string"},
            "message": {"type": "string"},
            "field": {"type": "string"},
        },
    }
    schemas["ValidationError"] = {
        "type": "object",
        "properties": {
            "error": {"const": "validation_failed"},
            "message": {"type": "string"},
            "problems": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "reason"],
                    "properties": {
                        "field": {"type": "string", "examples": ["recipients[3].phone"]},
                        "reason": {"type": "string"},
                        "index": {"type": "integer"},
                    },
                },
            },
        },
    }
    paths: dict[str, dict[str, Any]] = {}
    for method, path, operation in OPERATIONS:
        paths.setdefault(path, {})[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "announcer",
            "version": "1",
            "description": "Phone announcements with generated speech.",
        },
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearer": []}],
        "paths": paths,
    }
