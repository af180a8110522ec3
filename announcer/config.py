"""Settings: every environment variable of the service, in one place, validated at start.

Names are a contract (design.md, "Configuration"): deployments set them, so they are never renamed.
Values come from the environment or `.env`; secrets are `SecretStr` so they never reach a log or repr.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TEMPLATES_DIR = PROJECT_ROOT / "templates"

_ACCOUNT_SID = re.compile(r"^AC[0-9a-fA-F]{32}$")
_E164 = re.compile(r"^\+[1-9][0-9]{6,14}$")

# A DNS host name, lower case without the trailing dot: letter-digit-hyphen labels (underscores too, which
# DNS carries and some internal names use), 253 characters at most.
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")

PositiveFloat = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(gt=0)]
# A comma list in the environment ("US, GB"), not JSON (NoDecode: pydantic-settings would parse it as JSON).
CommaList = Annotated[frozenset[str], NoDecode]

# The number types ANNOUNCER_ALLOWED_NUMBER_TYPES may name: phonenumbers' PhoneNumberType, lower case.
NUMBER_TYPES = frozenset(
    name.lower() for name in vars(phonenumbers.PhoneNumberType) if name.isupper() and name != "UNKNOWN"
)


class ConfigError(Exception):
    """A missing or malformed setting; the message names every offending variable on one line."""


def _http_url(value: str | None, *, name: str) -> str | None:
    if value is None:
        return None
    value = value.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError(f"{name} must be an http(s) URL, got {value!r}")
    return value


# DATABASE_URL's schemes as written (Heroku, Render, libpq, SQLAlchemy) and the driver the service uses
_DATABASE_SCHEMES = {
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "postgresql+asyncpg": "postgresql+asyncpg",
    "sqlite": "sqlite+aiosqlite",
    "sqlite+aiosqlite": "sqlite+aiosqlite",
}
_DATABASE_EXAMPLE = (
    "postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE or sqlite:////absolute/path/announcer.db"
)


def database_url(value: str) -> str:
    """DATABASE_URL as SQLAlchemy opens it with our drivers: `postgres://` and `postgresql://` (as hosting
    providers and libpq write it) mean asyncpg, `sqlite://` aiosqlite, and libpq's `sslmode` is asyncpg's
    `ssl`. ValueError for anything else; its message never repeats the URL (it may hold a password)."""
    value = value.strip()
    scheme, sep, rest = value.partition("://")
    if not sep or not scheme:
        raise ValueError(f"expected a URL such as {_DATABASE_EXAMPLE}")
    driver = _DATABASE_SCHEMES.get(scheme.lower())
    if driver is None:
        base = scheme.lower().split("+", 1)[0]
        if base in ("postgres", "postgresql", "sqlite"):
            raise ValueError(
                f"the driver {scheme.split('+', 1)[1]!r} is not one announcer installs: write "
                f"{_DATABASE_SCHEMES[base]}:// or {base}:// (e.g. {_DATABASE_EXAMPLE})"
            )
        raise ValueError(f"{scheme!r} databases are not supported: use {_DATABASE_EXAMPLE}")
    if driver.startswith("postgresql"):
        if not rest.split("?", 1)[0].split("@")[-1].split("/", 1)[0]:
            raise ValueError(f"no host: expected {_DATABASE_EXAMPLE}")
        rest = re.sub(r"([?&])sslmode=", r"\1ssl=", rest)
    return f"{driver}://{rest}"


def split_allow_hosts(
    value: str,
) -> tuple[frozenset[str], tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]]:
    """ANNOUNCER_CALLBACK_ALLOW_HOSTS ("hooks.internal, 10.0.0.0/8, ::1") as host names and networks; a
    bare address is a one-address network. ValueError naming the first item that is neither."""
    names: set[str] = set()
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for item in value.split(","):
        item = item.strip().lower()
        if not item:
            continue
        try:
            # strict=False: 10.1.2.3/8 means 10.0.0.0/8, as routers read it.
            networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            continue
        except ValueError:
            if "/" in item or not HOST_NAME.fullmatch(item.removesuffix(".")):
                raise ValueError(
                    f"{item!r} is neither a host name nor a CIDR (e.g. hooks.internal, 10.0.0.0/8)"
                ) from None
        names.add(item.removesuffix("."))
    return frozenset(names), tuple(networks)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", frozen=True, case_sensitive=False, env_ignore_empty=True
    )

    # Where Twilio reaches us (webhooks are signed over this URL; the media websocket is derived from it).
    public_url: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: SecretStr | None = None
    twilio_phone_number: str | None = None
    twilio_api_base_url: str = "https://api.twilio.com"
    twilio_cps: PositiveFloat = 1.0
    twilio_timeout_s: PositiveFloat = 10.0
    max_concurrent_calls: PositiveInt = 10
    elevenlabs_api_key: SecretStr | None = None
    elevenlabs_voice_id: str = "21m00Tcm4TlvDq8ikWAM"
    elevenlabs_model_id: str = "eleven_flash_v2_5"
    elevenlabs_agent_id: str | None = None
    elevenlabs_base_url: str = "https://api.elevenlabs.io"
    elevenlabs_timeout_s: PositiveFloat = 5.0
    # Agent mode: the greeting line hands its callers to the agent after the greeting; a conversation
    # is cut (with a spoken goodbye) after this long.
    greeting_agent: bool = False
    agent_max_conversation_s: PositiveFloat = 600.0
    database_url: str | None = None
    announcer_api_token: SecretStr | None = None
    # Signs outcome webhooks (X-Announcer-Signature); the API token when unset.
    announcer_webhook_secret: SecretStr | None = None
    announcer_data_dir: Path = Path("data")
    announcer_templates_dir: Path = DEFAULT_TEMPLATES_DIR
    announcer_greeting_template: str = "greeting.j2"
    announcer_org_name: str = "our office"
    announcer_timezone: str = "UTC"
    announcer_sandbox_speed: PositiveFloat = 1.0
    announcer_log_level: str = "INFO"
    # "json": one JSON object per line (for a log shipper); "text" for people
    announcer_log_format: Literal["text", "json"] = "text"
    announcer_max_recipients: PositiveInt = 10_000
    announcer_max_text_chars: PositiveInt = 2_000
    announcer_max_body_bytes: PositiveInt = 8 * 2**20
    # Numbers given without +country are read as this region's (e.g. US)
    announcer_default_region: str | None = None
    # Where calls may go (messages/destinations.py): ISO 3166 alpha-2 codes; empty = every country.
    announcer_allowed_countries: CommaList = frozenset()
    # Number types refused by default (premium rate, shared cost, ...) that this deployment calls anyway.
    announcer_allowed_number_types: CommaList = frozenset()
    # A claimed delivery must have its Call SID within this time, else it is reconciled with Twilio.
    announcer_claim_lease_s: PositiveFloat = 60.0
    # How long a request waits for a database connection when all are busy before it is answered 503 with
    # Retry-After (the SQLite file has one connection; PostgreSQL a pool of five plus ten).
    announcer_db_wait_s: PositiveFloat = 10.0
    # Schedules due within this many seconds (plus their pre-synthesis lead) are armed in memory; the
    # rest wait in the table until they come near. At least two syncs (4 s) long.
    announcer_schedule_horizon_s: Annotated[float, Field(ge=4)] = 3600.0
    # GET /metrics asks for the API's bearer token (default: open, like /healthz; see README "Metrics").
    announcer_metrics_auth: bool = False
    # Outcome webhooks (callback_url): plain http:// is refused unless allowed; so is every internal address
    # (loopback, private, link-local...) unless its host name or a CIDR holding it is listed here.
    announcer_callback_allow_http: bool = False
    announcer_callback_allow_hosts: str = ""
    # Outcome webhook delivery (deliveries/callbacks.py, sent from the outbox): the time one attempt may
    # take, attempts in all, the backoff's first wait and its cap (full jitter), and how long sent and
    # failed events stay in the outbox table before they are deleted.
    announcer_webhook_timeout_s: PositiveFloat = 10.0
    announcer_webhook_max_attempts: PositiveInt = 8
    announcer_webhook_backoff_s: Annotated[float, Field(ge=0)] = 1.0
    announcer_webhook_max_backoff_s: Annotated[float, Field(ge=0)] = 300.0
    announcer_webhook_retention_s: PositiveFloat = 7 * 86_400.0
    # Twilio's answering machine detection tuning, with Twilio's defaults and allowed ranges (a value outside
    # them would make Twilio refuse every call with error 21234): how long it may take to decide (then
    # `unknown`), speech longer than this is a machine's, silence that ends speech, initial silence before
    # `unknown`. Asked for on every outbound call unless its options say machine_detection: false.
    announcer_amd_timeout_s: Annotated[int, Field(ge=3, le=59)] = 30
    announcer_amd_speech_threshold_ms: Annotated[int, Field(ge=1000, le=6000)] = 2400
    announcer_amd_speech_end_threshold_ms: Annotated[int, Field(ge=500, le=5000)] = 1200
    announcer_amd_silence_timeout_ms: Annotated[int, Field(ge=2000, le=10_000)] = 5000
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080

    @field_validator("public_url")
    @classmethod
    def _check_public_url(cls, v: str | None) -> str | None:
        return _http_url(v, name="PUBLIC_URL")

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, v: str | None) -> str | None:
        return None if v is None else database_url(v)

    @field_validator("twilio_api_base_url", "elevenlabs_base_url")
    @classmethod
    def _check_base_url(cls, v: str) -> str:
        checked = _http_url(v, name="base URL")
        assert checked is not None
        return checked

    @field_validator("announcer_callback_allow_hosts")
    @classmethod
    def _check_allow_hosts(cls, v: str) -> str:
        split_allow_hosts(v)
        return v

    @field_validator("twilio_account_sid")
    @classmethod
    def _check_sid(cls, v: str | None) -> str | None:
        if v is not None and not _ACCOUNT_SID.match(v):
            raise ValueError("must be 'AC' followed by 32 hex digits")
        return v

    @field_validator("twilio_phone_number")
    @classmethod
    def _check_number(cls, v: str | None) -> str | None:
        if v is not None and not _E164.match(v):
            raise ValueError("must be an E.164 number such as +15551234567")
        return v

    @field_validator("announcer_timezone")
    @classmethod
    def _check_tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown time zone {v!r}") from err
        return v

    @field_validator("announcer_allowed_countries", "announcer_allowed_number_types", mode="before")
    @classmethod
    def _split_list(cls, v: Any) -> Any:
        if isinstance(v, str):
            return frozenset(part.strip() for part in v.split(",") if part.strip())
        return v

    @field_validator("announcer_allowed_countries")
    @classmethod
    def _check_countries(cls, v: frozenset[str]) -> frozenset[str]:
        codes = frozenset(code.upper() for code in v)
        if unknown := sorted(codes - phonenumbers.SUPPORTED_REGIONS):
            hint = "; the United Kingdom is GB" if "UK" in unknown else ""
            raise ValueError(f"not ISO 3166 alpha-2 codes: {', '.join(unknown)} (e.g. US, GB, DE{hint})")
        return codes

    @field_validator("announcer_allowed_number_types")
    @classmethod
    def _check_number_types(cls, v: frozenset[str]) -> frozenset[str]:
        names = frozenset(name.lower() for name in v)
        if unknown := sorted(names - NUMBER_TYPES):
            raise ValueError(
                f"unknown number types: {', '.join(unknown)} (known: {', '.join(sorted(NUMBER_TYPES))})"
            )
        return names

    @field_validator("announcer_log_level")
    @classmethod
    def _check_level(cls, v: str) -> str:
        if v.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
        return v.upper()

    @model_validator(mode="after")
    def _check_pairs(self) -> Self:
        problems = []
        if (self.twilio_account_sid is None) != (self.twilio_auth_token is None):
            missing = "TWILIO_AUTH_TOKEN" if self.twilio_auth_token is None else "TWILIO_ACCOUNT_SID"
            problems.append(f"{missing}: required when the other Twilio credential is set")
        if self.twilio_account_sid is not None:
            if self.public_url is None:
                problems.append(
                    "PUBLIC_URL: required with Twilio credentials (Twilio must reach the webhooks)"
                )
            if self.twilio_phone_number is None:
                problems.append("TWILIO_PHONE_NUMBER: required with Twilio credentials")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    # --- derived values -------------------------------------------------------------------------

    @property
    def twilio_sandbox(self) -> bool:
        """No Twilio credentials: the loopback Twilio runs in-process."""
        return self.twilio_account_sid is None

    @property
    def tts_sandbox(self) -> bool:
        """No ElevenLabs key: the loopback ElevenLabs (speaking with the local voice) runs in-process."""
        return self.elevenlabs_api_key is None

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.announcer_data_dir / 'announcer.db').resolve()}"

    @property
    def database_setting(self) -> str:
        """The setting that chose the database, for messages about it."""
        return "DATABASE_URL" if self.database_url else "ANNOUNCER_DATA_DIR"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.announcer_timezone)


def _env_name(loc: tuple[int | str, ...]) -> str:
    return str(loc[0]).upper() if loc else "settings"


def load_settings(**overrides: object) -> Settings:
    """Build the settings, turning every validation problem into one `ConfigError` line."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as err:
        parts = []
        for e in err.errors():
            msg = str(e["msg"]).removeprefix("Value error, ")
            parts.append(msg if not e["loc"] else f"{_env_name(e['loc'])}: {msg}")
        raise ConfigError("invalid configuration: " + "; ".join(parts)) from None
