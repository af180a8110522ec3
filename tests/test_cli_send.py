"""`announcer send` as a user meets it: a real subprocess talking to the whole service (sandbox mode) over
HTTP, while the service keeps running on the test's event loop. The exit status tells a script whether
everyone heard the message (0), someone did not (1), or nothing could be sent (2)."""

from __future__ import annotations

import argparse
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from announcer.cli import (
    CommandError,
    _alert_body,
    _recipients_of_args,
    _take_old_names,
    _url_and_token,
    build_parser,
    read_recipients_csv,
)
from announcer.sandbox.twilio_call import PhoneBehavior
from tests.conftest import AUTH, Service, free_port, run_cli

HEARER = "+15550100001"
BUSY = "+15550100002"
OTHER = "+15550100003"
ALERT_ID = re.compile(r"^alert (\S+): (\d+) recipient", re.MULTILINE)


async def deliveries(service: Service, alert_id: str) -> list[dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{service.base_url}/v1/alerts/{alert_id}/deliveries", headers=AUTH) as resp,
    ):
        assert resp.status == 200
        return list((await resp.json())["deliveries"])


@pytest.fixture
async def listener() -> AsyncIterator[tuple[str, list[str]]]:
    """A server that only records what reaches it: proof that a command stopped before any request."""
    seen: list[str] = []

    async def anything(request: web.Request) -> web.Response:
        seen.append(f"{request.method} {request.path}")
        return web.json_response(
            {"error": "unexpected", "message": "this test expects no request"}, status=500
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


async def test_one_recipient_hears_the_message(service: Service, tmp_path: Path) -> None:
    code, out, err = await run_cli(
        tmp_path,
        service.base_url,
        "send",
        "--text",
        "Hello {{ name }}. The {{ system }} is down.",
        "--to",
        HEARER,
        "--recipient-name",
        "Alice",
        "--var",
        "system=billing server",
    )
    assert code == 0, (out, err)
    match = ALERT_ID.search(out)
    assert match and match.group(2) == "1", out
    # a line per change of state, ending with the outcome, then the summary
    assert re.search(rf"{re.escape(HEARER)} \(Alice\): heard$", out, re.MULTILINE), out
    assert "completed after" in out and "heard 1" in out
    assert "not heard" not in out
    (delivery,) = await deliveries(service, match.group(1))
    assert delivery["text"] == "Hello Alice. The billing server is down."


async def test_csv_of_three_with_one_busy_exits_1_and_lists_it(service: Service, tmp_path: Path) -> None:
    service.sandbox.set_behavior(BUSY, PhoneBehavior(answer="busy"))
    people = tmp_path / "people.csv"
    people.write_text(
        "phone,name,room,timezone\n"
        f"{HEARER},Alice,4,Europe/Berlin\n"
        f"{BUSY},Bob,5,\n"
        f"{OTHER},Carol,,\n"  # an empty cell: the shared --var room applies
    )
    code, out, err = await run_cli(
        tmp_path,
        service.base_url,
        "send",
        "--text",
        "{{ name }}, please go to room {{ room }}.",
        "--file",
        str(people),
        "--var",
        "room=1",
    )
    assert code == 1, (out, err)
    match = ALERT_ID.search(out)
    assert match and match.group(2) == "3", out
    # stdout is a pipe, not a terminal: plain progress lines, no carriage returns
    assert "\r" not in out
    assert "3/3 done: heard 2, busy 1" in out
    assert "completed after" in out
    listed = out.split("not heard (1):", 1)[1].strip().splitlines()
    assert len(listed) == 1
    assert BUSY in listed[0] and "(Bob)" in listed[0] and ": busy" in listed[0]
    assert "[people.csv line 3]" in listed[0]
    texts = {d["phone"]: d["text"] for d in await deliveries(service, match.group(1))}
    assert texts == {
        HEARER: "Alice, please go to room 4.",
        BUSY: "Bob, please go to room 5.",
        OTHER: "Carol, please go to room 1.",
    }


async def test_refused_alert_exits_2_naming_the_field_and_places_no_call(
    service: Service, tmp_path: Path
) -> None:
    code, out, err = await run_cli(
        tmp_path, service.base_url, "send", "--text", "Hello {{ name }}, {{ missing }}.", "--to", HEARER
    )
    assert code == 2, (out, err)
    assert "422" in err
    assert re.search(
        rf"^recipients\[0\]\.variables: .*missing.*\[--to {re.escape(HEARER)}\]$", err, re.MULTILINE
    ), err
    assert "alert " not in out
    assert not service.sandbox.calls


async def test_unreachable_service_exits_2_with_one_line_naming_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run_cli(tmp_path, url, "send", "--text", "Hello.", "--to", HEARER)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "cannot reach" in lines[0] and url in lines[0], err
    assert out == ""


@pytest.mark.parametrize(
    ("csv_text", "expected"),
    [
        ("number,name\n+15550100001,Alice\n", "people.csv line 1 (the header): no phone column"),
        ("phone,name\n+15550100001,Alice\n\n+15550100002,Bob,extra\n", "people.csv line 4: 3 cells"),
        ("phone,name\n+15550100001,Alice\n,Bob\n", "people.csv line 3: the phone cell is empty"),
    ],
)
async def test_bad_csv_exits_2_before_any_request(
    tmp_path: Path, listener: tuple[str, list[str]], csv_text: str, expected: str
) -> None:
    url, seen = listener
    people = tmp_path / "people.csv"
    people.write_text(csv_text)
    code, out, err = await run_cli(
        tmp_path, url, "send", "--text", "Hello {{ name }}.", "--file", str(people)
    )
    assert code == 2, (out, err)
    assert expected in err
    assert out == ""
    assert seen == []


def test_csv_columns_from_a_spreadsheet(tmp_path: Path) -> None:
    """A byte-order mark, "Phone" capitalised, spaces around cells and blank lines are what a spreadsheet
    export looks like; variable names keep their case."""
    people = tmp_path / "export.csv"
    people.write_bytes(
        "\ufeffPhone , Name,Room\r\n +15550100001 , Alice ,4B\r\n\r\n+15550100002,,\r\n".encode()
    )
    first, second = read_recipients_csv(people)
    assert first.as_json() == {"phone": "+15550100001", "name": "Alice", "variables": {"Room": "4B"}}
    assert first.file_line == "export.csv line 2"
    assert second.as_json() == {"phone": "+15550100002", "variables": {}}
    assert second.file_line == "export.csv line 4"


def test_csv_header_problems_are_all_named(tmp_path: Path) -> None:
    people = tmp_path / "people.csv"
    people.write_text("name,room,,room\nAlice,4,,5\n")
    with pytest.raises(CommandError) as caught:
        read_recipients_csv(people)
    text = "\n".join(caught.value.lines)
    assert "column 3 has no name" in text and "'room' appears twice" in text and "no phone column" in text
    assert caught.value.code == 2


def test_url_and_token_default_to_what_the_service_uses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without flags: HOST:PORT (a wildcard host is this machine), and the token a service without
    ANNOUNCER_API_TOKEN wrote to its data directory; without any token, a message saying where to get one."""
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    monkeypatch.setenv("ANNOUNCER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HOST", "0.0.0.0")
    monkeypatch.setenv("PORT", "8123")
    flags = argparse.Namespace(url=None, token=None)
    with pytest.raises(CommandError) as caught:
        _url_and_token(flags)
    assert "no API token" in caught.value.lines[0] and "api-token" in caught.value.lines[0]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "api-token").write_text("from-the-file\n")
    assert _url_and_token(flags) == ("http://127.0.0.1:8123", "from-the-file")
    monkeypatch.setenv("ANNOUNCER_API_TOKEN", "from-the-env")
    monkeypatch.setenv("PUBLIC_URL", "https://alerts.example.com/")
    assert _url_and_token(flags) == ("https://alerts.example.com", "from-the-env")
    assert _url_and_token(argparse.Namespace(url="http://h:1/", token="t")) == ("http://h:1", "t")


def _send_body(*argv: str) -> dict[str, Any]:
    args = build_parser().parse_args(["send", "--text", "Hi {{ name }}.", *argv])
    _take_old_names(args)
    return _alert_body(args, _recipients_of_args(args))


def test_send_names_recipients_with_recipient_name_as_schedule_add_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    body = _send_body("--to", HEARER, "--recipient-name", "Alice", "--to", BUSY, "--recipient-name", "Bob")
    assert [r.get("name") for r in body["recipients"]] == ["Alice", "Bob"]
    assert capsys.readouterr().err == ""
    # the first spelling still works, and says which one to use
    body = _send_body("--to", HEARER, "--name", "Alice")
    assert body["recipients"][0]["name"] == "Alice"
    assert "`send --name` is deprecated, use --recipient-name" in capsys.readouterr().err
    with pytest.raises(CommandError, match="--recipient-name only"):
        _send_body("--to", HEARER, "--name", "Alice", "--recipient-name", "Alice")
