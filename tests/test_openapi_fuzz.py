"""Schemathesis against the real service (`announcer serve`, sandbox mode, its own process): every operation
of /v1/openapi.json, with the bearer token and without it, bounded and derandomized.

Three promises are held here: no request gets a server error; no response contradicts the document (status,
content type, headers, body schema: errors included); and the document states the same rules as the
validation, both ways. A request the document calls invalid (schemathesis' negative cases) is refused
with a 4xx; one it calls valid (the positive cases) is accepted, unless a rule refuses it that no JSON
Schema can state: SEMANTIC_REFUSALS lists those, and any other refusal fails the test naming the problem.

The service runs as its own process, not on this test's event loop: schemathesis calls it with blocking
HTTP requests.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import http.server
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jsonschema_rs  # schemathesis' own validator
import pytest
import requests
import schemathesis
from schemathesis import Case, CheckContext, Config, Response

from announcer.api.openapi import document
from announcer.api.schemas import PATTERN_REASONS
from announcer.config import Settings
from tests.conftest import API_TOKEN, USE_PG, _fresh_pg_database, free_port

# Generated cases per operation in the fuzzing phase; the examples and coverage phases add theirs.
EXAMPLES = 25
ANONYMOUS_EXAMPLES = 3
SEED = 20261207
MAX_RECIPIENTS = Settings.model_fields["announcer_max_recipients"].default
SERVED = document(MAX_RECIPIENTS)  # the test checks that the service serves exactly this


def _config(*, token: bool) -> Config:
    no_feedback = {"extra-data-sources": {"responses": False}}  # same cases every run: nothing learned
    return Config.from_dict(
        {
            "seed": SEED,
            "cache": {"enabled": False},
            "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
            "generation": {
                "max-examples": EXAMPLES if token else ANONYMOUS_EXAMPLES,
                "deterministic": True,
                "database": "none",
                "mode": "all" if token else "positive",
            },
            "phases": {
                "examples": no_feedback,
                "coverage": {**no_feedback, "enabled": token},
                "fuzzing": {**no_feedback, "error-feedback": {"enabled": False}},
                "stateful": {"enabled": False},
            },
            "checks": {
                # replaced by valid_requests_accepted below, which knows the rules no schema states
                "positive_data_acceptance": {"enabled": False},
                "negative_data_rejection": {"expected-statuses": ["4xx"]},
            },
            **({"auth": {"openapi": {"bearer": {"bearer": API_TOKEN}}}} if token else {}),
        }
    )


schema = schemathesis.openapi.from_dict(copy.deepcopy(SERVED), config=_config(token=True))
anonymous = schemathesis.openapi.from_dict(copy.deepcopy(SERVED), config=_config(token=False))

# --- the rules a valid request may still be refused by ---------------------------------------------------

# pydantic's messages for a type, a length, a pattern, a range, a required or an unknown field: a rule the
# document states, never a semantic refusal ("Value error, ..." comes from a validator: a policy may be one)
_NOT_PYDANTIC = r"^(?!String should|Input should|Field required|Extra inputs|List should|Dictionary should)"
_RECIPIENT = r"(recipients\[\d+\]|recipient)"
_PHONE = rf"({_RECIPIENT}\.phone|phone|number)"
SEMANTIC_REFUSALS: list[tuple[str, str]] = [
    # every body (the document's description says so; no schema here can say it of free-form variables)
    (r".*", r"contains a NUL character|nested deeper than"),
    # whether the template exists, compiles and renders with the variables given, within its limits
    (rf"template|template_text|variables|{_RECIPIENT}\.variables", _NOT_PYDANTIC + r"(?!give exactly one)"),
    # whether the number can be dialed (the number library; the destination policy), and is not a duplicate
    (_PHONE, _NOT_PYDANTIC),
    # whether the callback's host may be reached (the outbound policy)
    (r"options\.callback_url", _NOT_PYDANTIC),
    (rf"({_RECIPIENT}|when)\.timezone", r"unknown time zone"),
    (r"when\.(at|start|end)", r"is in the past|not an ISO-8601 date and time|is not after `when.start`"),
    (r"when\.cron", r"^invalid cron expression: (?!expected 5 fields|give days of the week by name)"),
    (r"when", r"this schedule would never fire"),
    (r"options\.quiet_hours", r"start and end are the same"),
    (r"options\.(repeat_key|agent\.key)", r"is already key"),
    (r"options\.agent", r"agent mode needs ELEVENLABS_AGENT_ID"),
    (r"status", r"this schedule has ended"),
    # whether the escalation policy named exists (paging)
    (r"policy_id", r"^no escalation policy"),
    # on call (api/oncall.py): a zone, a day, an instant that exists; ids that name something
    (r"timezone", r"unknown time zone"),
    (r"start_date", r"no such day"),
    (r"starts_at|ends_at|at", r"no such date and time|must be after starts_at"),
    (r"members\[\d+\]|person_id|steps\[\d+\]\.targets\[\d+\]\.id", r"^no such (person|rotation) "),
]
_SEMANTIC = [(re.compile(f, re.DOTALL), re.compile(r)) for f, r in SEMANTIC_REFUSALS]
# A state the request meets, not a form it has: a resource that does not exist (or no longer), a finished
# alert, an Idempotency-Key already used with another body.
SEMANTIC_ERRORS = {
    404: {"not_found"},
    409: {"alert_finished", "idempotency_conflict", "in_use", "incident_state", "integration_in_use"},
}
# The paging sources' webhooks take the integration's own secret, which no generated case has: 401.
_WEBHOOK = re.compile(r"^/v1/integrations/(alertmanager|grafana|json)/\{integration_id\}$")


def _semantic(problem: dict[str, Any]) -> bool:
    name, reason = str(problem.get("field")), str(problem.get("reason"))
    if reason in PATTERN_REASONS.values():  # a pattern of the models, in words: the document states it
        return False
    return any(f.fullmatch(name) and r.search(reason) for f, r in _SEMANTIC)


def valid_requests_accepted(ctx: CheckContext, response: Response, case: Case) -> bool | None:
    """A request the document calls valid is not refused, except by a rule no schema can state."""
    if case.meta is not None and not case.meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if not 400 <= status < 500:
        return None
    if status == 401 and _WEBHOOK.match(case.operation.path):
        return None
    answer = response.json()
    if status == 422 and answer.get("problems") and all(_semantic(p) for p in answer["problems"]):
        return None
    if answer.get("error") in SEMANTIC_ERRORS.get(status, ()):
        return None
    raise AssertionError(
        f"a request valid by the document was refused ({status}) by a rule the document does not state: "
        f"{answer}"
    )


# --- the service ------------------------------------------------------------------------------------------


@dataclass
class Fuzzed:
    base_url: str
    log: list[str]
    callback_url: str
    http: requests.Session = field(default_factory=requests.Session)
    cases: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)


def _serve(tmp: Path, database_url: str) -> tuple[subprocess.Popen[str], list[str], str]:
    """`announcer serve` in sandbox mode, once its start-up log says where calls go."""
    for _ in range(5):
        port = free_port()
        env = {
            k: v
            for k, v in os.environ.items()
            if k.lower() not in Settings.model_fields
            and not k.startswith(("TWILIO_", "ELEVENLABS_", "ANNOUNCER_"))
        }
        env.update(
            PORT=str(port),
            DATABASE_URL=database_url,
            ANNOUNCER_DATA_DIR=str(tmp / "data"),
            ANNOUNCER_API_TOKEN=API_TOKEN,
            ANNOUNCER_LOG_LEVEL="INFO",
            # accepted alerts are canceled at once (see _follow); what is dialed meanwhile ends quickly
            ANNOUNCER_SANDBOX_SPEED="50",
            TWILIO_CPS="10",
            AGENT_MAX_CONVERSATION_S="2",
            # the outbound policy lets the callbacks reach the receiver on the loopback address
            ANNOUNCER_CALLBACK_ALLOW_HOSTS="127.0.0.1",
            ANNOUNCER_CALLBACK_ALLOW_HTTP="true",
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "announcer.cli", "serve"],
            env=env,
            cwd=tmp,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        log: list[str] = []
        ready = threading.Event()

        def read(stream: Any = server.stderr, log: list[str] = log, ready: threading.Event = ready) -> None:
            for line in stream:
                log.append(line)
                if "loopback Twilio" in line:
                    ready.set()
            ready.set()  # ended: the caller finds out from the exit code

        threading.Thread(target=read, daemon=True).start()
        if not ready.wait(60):
            server.kill()
            raise AssertionError(f"the service did not start within 60 s: {''.join(log)}")
        if any("loopback Twilio" in line for line in log):
            return server, log, f"http://127.0.0.1:{port}"
        server.wait()
        if "in use" not in "".join(log):  # free_port's port was taken meanwhile: another one
            raise AssertionError(f"the service exited at start: {''.join(log)}")
    raise AssertionError("no free port after 5 tries")


class _Receiver(http.server.BaseHTTPRequestHandler):
    """Where the accepted alerts' outcome webhooks go: taken, answered 204."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    tmp = tmp_path_factory.mktemp("fuzz")
    with contextlib.ExitStack() as stack:
        if USE_PG:
            database_url = stack.enter_context(_fresh_pg_database())
        else:
            database_url = f"sqlite+aiosqlite:///{tmp / 'announcer.db'}"
        receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
        threading.Thread(target=receiver.serve_forever, daemon=True).start()
        stack.callback(receiver.server_close)
        stack.callback(receiver.shutdown)
        server, log, base_url = _serve(tmp, database_url)
        service = Fuzzed(base_url, log, f"http://127.0.0.1:{receiver.server_address[1]}/outcome")
        try:
            yield service
        finally:
            service.http.close()
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


# --- the runs ---------------------------------------------------------------------------------------------

_CALLBACK_FORM = re.compile(r"^https?://")


def _loopback_callbacks(case: Case, receiver: str) -> None:
    """A valid callback_url becomes the test's receiver: no fuzzed URL is ever posted to (or looked up).
    Invalid ones stay as generated, to be refused."""
    options = case.body.get("options") if isinstance(case.body, dict) else None
    url = options.get("callback_url") if isinstance(options, dict) else None
    if isinstance(url, str) and _CALLBACK_FORM.match(url) and len(url) <= 2048:
        assert isinstance(options, dict)
        options["callback_url"] = receiver


def _check(
    service: Fuzzed, case: Case, kind: str, headers: dict[str, str] | None = None
) -> requests.Response:
    service.cases[(case.operation.label, kind)] += 1
    response: requests.Response = case.call_and_validate(
        base_url=service.base_url,
        session=service.http,
        headers=headers,
        additional_checks=[valid_requests_accepted],
        timeout=30,
    )
    return response


def _follow(service: Fuzzed, case: Case, response: requests.Response) -> None:
    """What a client does next with what it created: each read with its real id (so the 200 answers are
    checked against the document too), then cancel or delete it, so no fuzzed alert or schedule keeps the
    service busy."""

    def then(path: str, method: str, body: Any = None, **ids: Any) -> requests.Response:
        operation = schema[path][method]
        made = operation.Case(path_parameters=ids, **({} if body is None else {"body": body}))
        return _check(service, made, "follow-up", {"Authorization": f"Bearer {API_TOKEN}"})

    label, status = case.operation.label, response.status_code
    if label in ("POST /v1/alerts", "POST /outbound-call") and status in (200, 202):
        answer = response.json()
        alert_id = answer.get("alert_id", answer.get("id"))
        then("/v1/alerts/{alert_id}/cancel", "POST", alert_id=alert_id)
        then("/v1/alerts/{alert_id}", "GET", alert_id=alert_id)
        page = then("/v1/alerts/{alert_id}/deliveries", "GET", alert_id=alert_id).json()
        delivery = page["deliveries"][0]["id"]
        if then("/v1/deliveries/{delivery_id}/call", "GET", delivery_id=delivery).status_code == 200:
            sid = page["deliveries"][0]["call_sid"] or answer.get("callSid")
            if sid:
                then("/v1/calls/{call_sid}", "GET", call_sid=sid)
    elif label == "POST /v1/schedules" and status == 201:
        schedule_id = response.json()["id"]
        then("/v1/schedules/{schedule_id}", "GET", schedule_id=schedule_id)
        then("/v1/schedules/{schedule_id}", "PATCH", {"status": "paused"}, schedule_id=schedule_id)
        then("/v1/schedules", "GET")
        then("/v1/schedules/{schedule_id}", "DELETE", schedule_id=schedule_id)
    elif label == "POST /v1/people" and status == 201:
        _follow_oncall(then, response.json()["id"])


def _follow_oncall(then: Any, person_id: str) -> None:
    """A person made: a rotation of them, an override, a policy paging both, each read back (the 200s
    checked against the document), then all of it deleted again."""
    then("/v1/people/{person_id}", "GET", person_id=person_id)
    then("/v1/people/{person_id}", "PATCH", {"name": "renamed"}, person_id=person_id)
    rotation = {
        "name": "primary",
        "timezone": "Europe/Berlin",
        "shift_unit": "days",
        "start_date": "2026-03-27",
        "members": [person_id],
    }
    made = then("/v1/rotations", "POST", rotation)
    rotation_id = made.json()["id"]
    then("/v1/rotations/{rotation_id}", "GET", rotation_id=rotation_id)
    then("/v1/rotations/{rotation_id}", "PATCH", {"shift_length": 2}, rotation_id=rotation_id)
    window = {"person_id": person_id, "starts_at": "2026-03-28T10:00:00Z", "ends_at": "2026-03-28T12:00:00Z"}
    override = then("/v1/rotations/{rotation_id}/overrides", "POST", window, rotation_id=rotation_id).json()
    then("/v1/rotations/{rotation_id}/overrides", "GET", rotation_id=rotation_id)
    then("/v1/oncall", "GET")
    step = {
        "delay_s": 60,
        "targets": [{"type": "person", "id": person_id}, {"type": "rotation", "id": rotation_id}],
    }
    policy_id = then("/v1/escalation-policies", "POST", {"name": "ops", "steps": [step]}).json()["id"]
    then("/v1/escalation-policies/{policy_id}", "GET", policy_id=policy_id)
    then("/v1/escalation-policies/{policy_id}", "PATCH", {"repeat": 1}, policy_id=policy_id)
    then("/v1/escalation-policies", "GET")
    then("/v1/rotations/{rotation_id}", "DELETE", rotation_id=rotation_id)  # 409: the policy names it
    then("/v1/escalation-policies/{policy_id}", "DELETE", policy_id=policy_id)
    path = "/v1/rotations/{rotation_id}/overrides/{override_id}"
    then(path, "DELETE", rotation_id=rotation_id, override_id=override["id"])
    then("/v1/rotations/{rotation_id}", "DELETE", rotation_id=rotation_id)
    then("/v1/people/{person_id}", "DELETE", person_id=person_id)


def test_the_service_serves_the_document_fuzzed_here(fuzzed: Fuzzed) -> None:
    answer = fuzzed.http.get(fuzzed.base_url + "/v1/openapi.json", timeout=30)
    assert answer.status_code == 200 and answer.json() == SERVED


_BASE = {"recipients": [{"phone": "+14155550100"}]}
_CRON = {"cron": "0 8 * * mon-fri", "timezone": "Europe/Berlin"}
_TEXT = {"template_text": "Hello."}
_ALERT = {"template": "alert.j2", "variables": {"system": "the billing server", "summary": "It is down."}}
# (template part, when): every combination of the either-or rules, given and not
EITHER_OR: list[tuple[dict[str, Any], dict[str, Any]]] = [
    (_TEXT, _CRON),
    (_ALERT, _CRON),
    ({**_TEXT, "template": None}, _CRON),
    ({**_ALERT, "template_text": None}, _CRON),
    ({**_TEXT, **_ALERT}, _CRON),
    ({}, _CRON),
    ({"template": None, "template_text": None}, _CRON),
    (_TEXT, {"at": "2099-01-05T08:00:00+01:00"}),
    (_TEXT, {"at": "2099-01-05T08:00:00Z", "timezone": "Europe/Berlin"}),
    (_TEXT, {"at": "2099-01-05T08:00", "timezone": "Europe/Berlin"}),
    (_TEXT, {"at": "2099-01-05T08:00"}),
    (_TEXT, {"at": "2099-01-05T08:00:00+01:00", **_CRON}),
    (_TEXT, {"at": "2099-01-05T08:00:00+01:00", "start": "2099-01-01T00:00"}),
    (_TEXT, {"at": "2099-01-05T08:00:00+01:00", "cron": None, "end": None}),
    (_TEXT, {**_CRON, "start": "2099-01-01T00:00", "end": "2099-12-31T00:00"}),
    (_TEXT, {**_CRON, "at": None}),
    (_TEXT, {"cron": "0 8 * * mon-fri"}),
    (_TEXT, {"timezone": "Europe/Berlin"}),
    (_TEXT, {}),
]


def test_the_either_or_rules_hold_both_ways(fuzzed: Fuzzed) -> None:
    """Each combination of template/template_text and of at/cron/start/end/timezone: the service accepts
    exactly the bodies the document calls valid (validated as schemathesis does, with jsonschema_rs)."""
    validator = jsonschema_rs.Draft202012Validator({**SERVED, "$ref": "#/components/schemas/ScheduleBody"})
    headers = {"Authorization": f"Bearer {API_TOKEN}"}
    verdicts = []
    for template, when in EITHER_OR:
        body = {**_BASE, **template, "when": when}
        verdicts.append(validator.is_valid(body))
        answer = fuzzed.http.post(f"{fuzzed.base_url}/v1/schedules", json=body, headers=headers, timeout=30)
        assert answer.status_code == (201 if validator.is_valid(body) else 422), (body, answer.text)
        if answer.status_code == 201:
            url = f"{fuzzed.base_url}/v1/schedules/{answer.json()['id']}"
            assert fuzzed.http.delete(url, headers=headers, timeout=30).status_code == 204
    assert verdicts.count(True) == 10 and verdicts.count(False) == 9  # both kinds, as listed


@pytest.mark.parametrize(
    "cron", ["0 8 * * ²", "0\t8 * *  mon ", "0 8 * * mon\n", "0 8\x1c* * * mon", "0 8 * * 1"]
)
def test_a_cron_line_is_read_as_the_document_reads_it(fuzzed: Fuzzed, cron: str) -> None:
    """Fields apart by spaces and tabs, days of the week not in ASCII digits: the same to the document's
    pattern and to the service, so a line the document calls valid is refused, if at all, for its values."""
    validator = jsonschema_rs.Draft202012Validator({**SERVED, "$ref": "#/components/schemas/WhenBody"})
    when = {"cron": cron, "timezone": "UTC"}
    body = {**_BASE, **_TEXT, "when": when}
    answer = fuzzed.http.post(
        f"{fuzzed.base_url}/v1/schedules",
        json=body,
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=30,
    )
    if validator.is_valid(when):
        assert answer.status_code == 201 or all(_semantic(p) for p in answer.json()["problems"]), answer.text
        if answer.status_code == 201:
            url = f"{fuzzed.base_url}/v1/schedules/{answer.json()['id']}"
            fuzzed.http.delete(url, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=30)
    else:
        assert answer.status_code == 422, answer.text


@schema.parametrize()
def test_every_operation_with_the_token(case: Case, fuzzed: Fuzzed) -> None:
    _loopback_callbacks(case, fuzzed.callback_url)
    mode = case.meta.generation.mode.value if case.meta is not None else "positive"
    response = _check(fuzzed, case, mode)
    _follow(fuzzed, case, response)


@anonymous.parametrize()
def test_every_operation_without_the_token(case: Case, fuzzed: Fuzzed) -> None:
    _loopback_callbacks(case, fuzzed.callback_url)
    fuzzed.cases[(case.operation.label, "no token")] += 1
    response = case.call_and_validate(base_url=fuzzed.base_url, session=fuzzed.http, timeout=30)
    if case.operation.path == "/v1/openapi.json":
        assert response.status_code == 200  # public: the contract is readable without the token
    else:
        assert response.status_code == 401, response.text


def test_every_operation_ran_and_the_service_logged_no_error(
    fuzzed: Fuzzed, request: pytest.FixtureRequest
) -> None:
    """After the runs above (in this module's order): the cases per operation, printed; each operation had
    valid and invalid cases with the token and some without; the service's log has no error in it."""
    if not fuzzed.cases:
        pytest.skip("counts the cases of the runs above; run the whole module")
    operations = sorted({label for label, _ in fuzzed.cases})
    assert operations == sorted(op.label for op in _operations())
    kinds = ("positive", "negative", "follow-up", "no token")
    lines = [f"{'schemathesis cases':<40}" + "".join(f"{k:>11}" for k in kinds)]
    for label in operations:
        lines.append(f"{label:<40}" + "".join(f"{fuzzed.cases[(label, k)]:>11}" for k in kinds))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n" + "\n".join(lines))
    for label in operations:
        assert fuzzed.cases[(label, "positive")] > 0 and fuzzed.cases[(label, "no token")] > 0, label
        if label != "GET /v1/schedules":  # no input: nothing to make invalid
            assert fuzzed.cases[(label, "negative")] > 0, label
    errors = [line for line in fuzzed.log if " ERROR " in line or "Traceback" in line]
    assert not errors, "".join(errors)


def _operations() -> list[Any]:
    return [result.ok() for result in schema.get_all_operations()]
