"""What a template's header says about its variables holds (an optional one may be left out, a required one
may not), and a template is found by its name without `.j2`, or a near miss is told the name it meant."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from announcer.config import DEFAULT_TEMPLATES_DIR
from announcer.messages.render import MessageRenderer, RenderError
from tests.conftest import AUTH, Service

# A value each required variable of the shipped templates can be rendered with.
SAMPLES = {
    "system": "the billing server",
    "summary": "Payments are failing.",
    "date": "2026-03-03",
    "time": "10:30",
    "org_name": "Acme Clinic",
    "time_of_day": "morning",
    "alertname": "HighLatency",
}
SHIPPED = sorted(p.name for p in DEFAULT_TEMPLATES_DIR.glob("*.j2"))


def _names(header: str, label: str) -> list[str]:
    """The variables a header's `Required:` or `Optional:` paragraph names: each item's first word, the
    items split at the commas outside parentheses."""
    found = re.search(rf"{label}:(.*?)(?:\n\s*(?:Required|Optional|Keys):|#\}})", header, re.S)
    if found is None:
        return []
    items, depth, current = [], 0, ""
    for char in found.group(1):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [m.group(1) for item in items if (m := re.match(r"\s*([a-z_]+)", item))]


def _header(name: str) -> str:
    text = (DEFAULT_TEMPLATES_DIR / name).read_text()
    return text[: text.index("#}") + 2]


@pytest.mark.parametrize("name", SHIPPED)
def test_optional_variables_may_be_left_out_required_ones_may_not(name: str) -> None:
    renderer = MessageRenderer(DEFAULT_TEMPLATES_DIR)
    required = _names(_header(name), "Required")
    optional = _names(_header(name), "Optional")
    assert required or optional, f"{name} declares no variables in its header"
    assert set(required) <= set(SAMPLES), f"no sample value for {set(required) - set(SAMPLES)}"
    # the required ones alone: every optional one is left out
    assert renderer.render(name, {v: SAMPLES[v] for v in required})
    for missing in required:
        with pytest.raises(RenderError, match="missing variable"):
            renderer.render(name, {v: SAMPLES[v] for v in required if v != missing})


def test_the_greeting_header_names_its_optional_variables() -> None:
    assert _names(_header("greeting.j2"), "Optional") == ["caller", "caller_name", "hands_over"]
    assert _names(_header("greeting.j2"), "Required") == ["org_name", "time_of_day"]


def test_a_name_without_its_extension_finds_the_one_template_of_that_stem(tmp_path: Path) -> None:
    renderer = MessageRenderer(DEFAULT_TEMPLATES_DIR)
    assert renderer.prepare(name="alert").name == "alert.j2"
    assert renderer.render("alert", SAMPLES) == renderer.render("alert.j2", SAMPLES)
    # two templates of that stem: the name alone is ambiguous, and both are listed
    (tmp_path / "notice.j2").write_text("Hello.")
    (tmp_path / "notice.txt").write_text("Hi.")
    with pytest.raises(RenderError, match=r"the templates are notice\.j2, notice\.txt"):
        MessageRenderer(tmp_path).prepare(name="notice")


def test_a_typo_is_told_the_nearest_name_and_the_list() -> None:
    with pytest.raises(RenderError) as err:
        MessageRenderer(DEFAULT_TEMPLATES_DIR).prepare(name="alrt.j2")
    assert "did you mean alert.j2?" in str(err.value)
    assert "the templates are " + ", ".join(SHIPPED) in str(err.value)


async def post(service: Service, path: str, body: Any) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(service.base_url + path, json=body, headers=AUTH) as resp,
    ):
        return resp.status, await resp.json()


async def test_preview_of_the_greeting_without_a_caller_name(service: Service) -> None:
    status, answer = await post(
        service,
        "/v1/preview",
        {
            "template": "greeting.j2",
            "variables": {"org_name": "Acme Clinic", "time_of_day": "morning"},
            "recipient": {"phone": "+15550100001"},
        },
    )
    assert status == 200, answer
    assert answer["text"].startswith("Good morning, and thank you for calling Acme Clinic.")


async def test_the_api_finds_alert_and_names_the_field_of_a_typo(service: Service) -> None:
    body: dict[str, Any] = {"variables": SAMPLES, "recipient": {"phone": "+15550100001"}}
    status, answer = await post(service, "/v1/preview", {**body, "template": "alert"})
    assert status == 200 and answer["text"].startswith("Hello. This is an alert about the billing server.")
    status, answer = await post(service, "/v1/preview", {**body, "template": "alrt"})
    assert status == 422, answer
    (problem,) = answer["problems"]
    assert problem["field"] == "template" and "did you mean alert.j2?" in problem["reason"]
    assert "the templates are alert.j2, " in problem["reason"]
