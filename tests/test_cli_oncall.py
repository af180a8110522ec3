"""`announcer oncall` as a user meets it: a real subprocess asking the whole service (sandbox mode) who is
on call in each rotation and who is next; exit status 0 when it could say, 2 when it could not."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import Service, free_port, run_cli
from tests.test_alerts import post
from tests.test_oncall_api import ADA, BOB, person, rotation


def row_of(listing: str, name: str) -> list[str]:
    rows = [line for line in listing.splitlines() if line.startswith(name + " ")]
    assert len(rows) == 1, listing
    return re.split(r"\s{2,}", rows[0])


async def test_oncall_shows_now_and_next_per_rotation(service: Service, tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, service.base_url, "oncall", "--at", "2026-03-28T12:00:00+00:00")
    assert code == 0, (out, err)
    assert out.splitlines() == ["on call at 2026-03-28 12:00+00:00", "no rotations"]

    ada, bob = await person(service, "Ada", ADA), await person(service, "Bob", BOB)
    rid = await rotation(service, [ada, bob], name="primary")
    await rotation(service, [bob], name="secondary", timezone="America/New_York", start_date="2026-04-01")
    override = {
        "person_id": ada,
        "starts_at": "2026-03-29T10:00:00+02:00",
        "ends_at": "2026-03-29T12:00:00+02:00",
    }
    status, answer = await post(service, f"/v1/rotations/{rid}/overrides", override)
    assert status == 201, answer

    code, out, err = await run_cli(tmp_path, service.base_url, "oncall", "--at", "2026-03-28T12:00:00+00:00")
    assert code == 0, (out, err)
    lines = out.splitlines()
    assert lines[1].split() == ["ROTATION", "ON", "CALL", "SINCE", "UNTIL", "NEXT", "NEXT", "UNTIL"]
    # Bob's day in Berlin ends at 09:00 CEST (the clocks went forward overnight); Ada's shift next, until
    # her override starts within it
    assert row_of(out, "primary") == [
        "primary",
        "Bob",
        "2026-03-28 09:00+01:00",
        "2026-03-29 09:00+02:00",
        "Ada",
        "2026-03-29 10:00+02:00",
    ]
    # not started yet: nobody, then Bob from the first hand-off
    assert row_of(out, "secondary") == [
        "secondary",
        "nobody",
        "-",
        "2026-04-01 09:00-04:00",
        "Bob",
        "2026-04-02 09:00-04:00",
    ]

    code, out, err = await run_cli(tmp_path, service.base_url, "oncall", "--at", "2026-03-29T11:00:00+02:00")
    assert code == 0, (out, err)
    assert row_of(out, "primary")[1:4] == [
        "Ada (override)",
        "2026-03-29 10:00+02:00",
        "2026-03-29 12:00+02:00",
    ]
    assert row_of(out, "primary")[4] == "Ada"  # back to her own shift after it

    code, out, err = await run_cli(tmp_path, service.base_url, "oncall")  # now
    assert code == 0, (out, err)
    assert row_of(out, "primary")[1] in ("Ada", "Bob")


async def test_oncall_errors_are_one_line_each(service: Service, tmp_path: Path) -> None:
    code, out, err = await run_cli(tmp_path, service.base_url, "oncall", "--at", "next tuesday")
    assert code == 2 and out == ""
    assert (
        err.strip()
        == "error: --at 'next tuesday': expected ISO-8601, e.g. 2026-12-24T09:00 or 2026-12-24T09:00+01:00"
    )
    code, out, err = await run_cli(tmp_path, service.base_url, "oncall", "--at", "1850-01-01T00:00+00:00")
    assert code == 2 and err.startswith("error: the service answered 400 invalid_query: at must be"), err
    nowhere = f"http://127.0.0.1:{free_port()}"
    code, out, err = await run_cli(tmp_path, nowhere, "oncall")
    assert code == 2
    assert err.startswith(f"error: cannot reach the announcer service at {nowhere}"), err
