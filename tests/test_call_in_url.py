"""`announcer sandbox call-in --url --token` finds the sandbox through the service it is pointed at, not
through a data directory of this machine's."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.conftest import AUTH, Service, run_cli


async def test_call_in_finds_the_sandbox_through_the_service(service: Service, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"  # its default data directory holds no sandbox.json
    elsewhere.mkdir()
    assert not (elsewhere / "data" / "sandbox.json").exists()
    code, out, err = await run_cli(
        elsewhere, service.base_url, "sandbox", "call-in", "--from", "+15551234567", timeout=90
    )
    assert code == 0, (out, err)
    sid = out.splitlines()[0].rsplit(" ", 1)[-1]
    assert sid in service.sandbox.calls
    assert out.strip().splitlines()[-1].startswith("recording: ")


async def test_the_sandbox_route_needs_the_token(service: Service) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(service.base_url + "/v1/sandbox") as resp:
            assert resp.status == 401
        async with http.get(service.base_url + "/v1/sandbox", headers=AUTH) as resp:
            info = await resp.json()
    assert resp.status == 200 and info["account_sid"] == service.providers.account_sid
    assert info["base_url"] == service.providers.twilio_base_url
