"""Settings: sandbox detection, and one clear line naming every bad variable."""

from __future__ import annotations

import pytest

from announcer.config import ConfigError, load_settings


def test_no_credentials_means_sandbox() -> None:
    settings = load_settings(_env_file=None)
    assert settings.twilio_sandbox and settings.tts_sandbox
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")


def test_every_bad_variable_is_named_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "not-a-port")
    monkeypatch.setenv("TWILIO_CPS", "-1")
    monkeypatch.setenv("ANNOUNCER_TIMEZONE", "Mars/Olympus")
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None)
    message = str(err.value)
    assert "\n" not in message
    for name in ("PORT", "TWILIO_CPS", "ANNOUNCER_TIMEZONE"):
        assert name in message


def test_half_credentials_are_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", "AC" + "0" * 32)
    with pytest.raises(ConfigError, match="TWILIO_AUTH_TOKEN"):
        load_settings(_env_file=None)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", "secret-token-value")
    with pytest.raises(ConfigError, match="PUBLIC_URL") as err:
        load_settings(_env_file=None)
    assert "secret-token-value" not in str(err.value)


def test_secrets_do_not_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ELEVENLABS_API_KEY", "sk-very-secret")
    settings = load_settings(_env_file=None)
    assert "sk-very-secret" not in repr(settings)
    assert not settings.tts_sandbox
