"""The application's lifecycle: what is loaded on the way to listening, and what after."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from tests.conftest import eventually, make_settings


async def test_the_sdks_load_once_the_server_listens_not_before(tmp_path: Path, database_url: str) -> None:
    from announcer.app import ELEVENLABS, TWILIO, create_app

    settings = make_settings(tmp_path, database_url)
    runner = web.AppRunner(create_app(settings), handle_signals=False)
    await runner.setup()  # every resource opened: what a start does before it listens
    try:
        app = runner.app
        assert not app[TWILIO].loaded and not app[ELEVENLABS].loaded
        await web.TCPSite(runner, settings.host, settings.port).start()

        async def loaded() -> bool:
            return bool(app[TWILIO].loaded and app[ELEVENLABS].loaded)

        await eventually(loaded, timeout=20)
    finally:
        await runner.cleanup()
