"""The outbound HTTP policy of `callback_url` (deliveries/egress.py): the address classes and URL forms it
refuses, its allowances, the refusal at acceptance (422 naming the field, for alerts and schedules) and at
send time (a name resolved when the connection is made, a schedule's stored URL under today's settings),
where nothing reaches a receiver."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from announcer.app import WEBHOOKS
from announcer.config import ConfigError, load_settings
from announcer.deliveries import callbacks
from announcer.deliveries.callbacks import REFUSED_BY_POLICY, WebhookSender, verify
from announcer.deliveries.egress import (
    EgressPolicy,
    EgressRefused,
    GuardedResolver,
    address_refusal,
    parse_ipv4_legacy,
)
from tests.clock import Clock
from tests.conftest import API_TOKEN, Service, eventually, free_port, make_settings, start_service
from tests.test_alerts import HEARER, RECEIVER_ALLOWED, alert_body, get, post
from tests.test_schedules import schedule_body

SECRET = "whsec_egress_test"
PAYLOAD = {"type": "delivery.finished", "alert_id": "al_1"}

# --- which addresses -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.255.0.9", "loopback"),
        ("::1", "loopback"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),  # cloud metadata services
        ("fe80::1", "link-local"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("ff02::1", "multicast"),
        ("100.64.0.1", "shared"),  # RFC 6598 carrier-grade NAT
        ("100.127.255.254", "shared"),
        ("192.0.0.1", "192.0.0.0/24"),  # IETF protocol assignments
        ("192.0.0.8", "192.0.0.0/24"),  # not private to Python 3.11's ipaddress
        ("3fff::1", "3fff::/20"),  # documentation (2024)
        ("192.0.2.1", ""),  # documentation (TEST-NET-1)
        ("198.18.0.1", ""),  # benchmarking
        ("240.0.0.1", ""),  # reserved
        ("255.255.255.255", ""),
        ("2001:db8::1", ""),  # documentation
        ("fec0::1", "site-local"),
        ("::ffff:127.0.0.1", "IPv6 form of 127.0.0.1, a loopback"),  # IPv4-mapped
        ("::ffff:10.0.0.1", "IPv6 form of 10.0.0.1, a private"),
        ("::ffff:169.254.169.254", "link-local"),
        ("::127.0.0.1", "IPv6 form of 127.0.0.1"),  # IPv4-compatible (deprecated)
        ("2002:7f00:1::", "IPv6 form of 127.0.0.1"),  # 6to4
        ("2002:a9fe:a9fe::1", "link-local"),  # 6to4 of 169.254.169.254
        ("64:ff9b::7f00:1", "IPv6 form of 127.0.0.1"),  # NAT64 well-known prefix
        ("64:ff9b::a00:1", "private"),
        ("64:ff9b:1::a00:1", "local-use NAT64"),
    ],
)
def test_internal_and_special_addresses_are_refused(address: str, reason: str) -> None:
    refusal = address_refusal(ip_address(address))
    assert refusal is not None, address
    assert reason in refusal


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",  # the IPv6 forms of a public address are that address
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_public_addresses_are_allowed(address: str) -> None:
    assert address_refusal(ip_address(address)) is None


def test_the_gaps_of_ipaddress_that_the_policy_fills() -> None:
    """Why the checks are spelled out: `ipaddress` calls 100.64.0.0/10 neither private nor global (so
    `is_private` lets it through), the NAT64 and IPv4-mapped forms of 127.0.0.1 are not loopback to it, and
    a multicast address is not private (and `is_global` on some versions)."""
    shared = IPv4Address("100.64.0.1")
    assert not shared.is_private and not shared.is_global
    assert not IPv6Address("64:ff9b::7f00:1").is_loopback
    assert not IPv6Address("::ffff:127.0.0.1").is_loopback
    assert IPv6Address("::ffff:7f00:1").ipv4_mapped == IPv4Address("127.0.0.1")
    assert not IPv4Address("239.255.255.250").is_private


@pytest.mark.parametrize(
    "form", ["0x7f000001", "2130706433", "0177.0.0.1", "127.1", "0x7f.1", "127.0.1", "017700000001"]
)
def test_legacy_ipv4_notations_read_as_inet_aton_reads_them(form: str) -> None:
    parsed = parse_ipv4_legacy(form)
    assert parsed == IPv4Address("127.0.0.1")
    assert parsed == IPv4Address(socket.inet_aton(form))  # the C library agrees: it is where a resolver goes


@pytest.mark.parametrize("host", ["example.com", "1.2.3.4.5", "256.0.0.1", "08.0.0.1", "0x", "1..2", ""])
def test_names_are_not_legacy_addresses(host: str) -> None:
    assert parse_ipv4_legacy(host) is None


# --- which URLs ------------------------------------------------------------------------------------

# Every form of the hole 2, and the kin of each.
REFUSED_FORMS = [
    ("https://127.0.0.1/hook", "loopback"),
    ("https://localhost/hook", "loopback"),
    ("https://LocalHost./hook", "loopback"),
    ("https://api.localhost/hook", "loopback"),
    ("https://0.0.0.0/hook", "unspecified"),
    ("https://0x7f000001/hook", "loopback"),
    ("https://2130706433/hook", "loopback"),
    ("https://0177.0.0.1/hook", "loopback"),
    ("https://127.1/hook", "loopback"),
    ("https://127.0.0.1./hook", "loopback"),
    ("https://134744072/hook", "as 8.8.8.8"),  # even a public address, in a notation only inet_aton reads
    ("https://[::1]/hook", "loopback"),
    ("https://[::ffff:127.0.0.1]/hook", "loopback"),
    ("https://[64:ff9b::7f00:1]/hook", "loopback"),
    ("https://169.254.169.254/latest/meta-data/", "link-local"),
    ("https://10.0.0.5:9200/_search", "private"),
    ("https://100.64.0.1/hook", "shared"),
    ("https://user:pass@example.com/hook", "user name or password"),
    ("https://user@example.com/hook", "user name or password"),
    ("http://", "https://"),
    ("http://example.com/hook", "https://"),
    ("ftp://example.com/hook", "https://"),
    ("example.com/hook", "https://"),
    ("https://", "host"),
    ("https://example.com:0/hook", "port"),
    ("https://example.com:70000/hook", "not a valid URL"),
    ("https://exa mple.com/hook", "host name"),
    ("https://example.com/hook#frag", "fragment"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED_FORMS)
def test_the_default_policy_refuses_each_form(url: str, reason: str) -> None:
    problem = EgressPolicy().url_problem(url)
    assert problem is not None and reason in problem, (url, problem)


def test_a_reason_never_shows_the_path_or_query() -> None:
    problem = EgressPolicy().url_problem("https://127.0.0.1/hooks/secret-path?token=tok_secret")
    assert problem is not None
    assert "secret" not in problem


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/announcer?token=abc",
        "https://hooks.example.com:8443/x",
        "https://8.8.8.8/hook",
        "https://[2606:4700:4700::1111]/hook",
        "https://xn--bcher-kva.example/hook",
        "https://bücher.example/hook",
        # Names are judged by what they resolve to, at each send: these are only refused then.
        "https://intranet/hook",
        "https://db.internal/hook",
    ],
)
def test_the_default_policy_accepts_public_https_urls(url: str) -> None:
    assert EgressPolicy().url_problem(url) is None


def test_allowances_by_name_by_cidr_and_for_http() -> None:
    names = EgressPolicy(allow_http=True, allow_names=frozenset({"localhost", "hooks.internal"}))
    assert names.url_problem("http://localhost:8000/hook") is None
    assert names.url_problem("http://hooks.internal/hook") is None
    assert names.url_problem("http://127.0.0.1:8000/hook") is not None  # a name allows no address
    cidrs = EgressPolicy(allow_networks=(ip_network("10.0.0.0/8"), ip_network("::1/128")))
    assert cidrs.url_problem("https://10.20.30.40/hook") is None
    assert cidrs.url_problem("https://[::ffff:10.20.30.40]/hook") is None
    assert cidrs.url_problem("https://[::1]/hook") is None
    assert cidrs.url_problem("https://localhost/hook") is None  # resolves into an allowed network
    assert cidrs.url_problem("https://11.0.0.0/hook") is None  # public anyway
    assert cidrs.url_problem("https://192.168.0.1/hook") is not None
    assert cidrs.url_problem("http://10.20.30.40/hook") is not None  # http is not allowed by a CIDR
    assert cidrs.url_problem("https://0xa141e28/hook") is not None  # 10.20.30.40, written for inet_aton


def test_the_services_own_endpoints_are_refused_whatever_is_allowed() -> None:
    settings = load_settings(
        _env_file=None,
        host="127.0.0.1",
        port=8080,
        public_url="https://announcer.example.com",
        announcer_callback_allow_http=True,
        announcer_callback_allow_hosts="127.0.0.0/8, localhost, announcer.example.com",
    )
    policy = EgressPolicy.from_settings(settings)
    for url in [
        "http://127.0.0.1:8080/v1/alerts",
        "http://localhost:8080/v1/alerts",
        "http://127.0.0.2:8080/v1/alerts",
        "https://announcer.example.com/v1/alerts",
        "https://ANNOUNCER.example.com.:443/twilio/status",
    ]:
        problem = policy.url_problem(url)
        assert problem is not None and "own" in problem, url
    assert policy.url_problem("http://127.0.0.1:9000/hook") is None
    assert policy.url_problem("https://announcer.example.com:8443/hook") is None


@pytest.mark.parametrize(
    "value", ["10.0.0.0/33", "https://hooks.example", "*.corp.example", "10.0.0.0/8,bad name"]
)
def test_a_bad_allow_list_is_one_config_error_line(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(_env_file=None, announcer_callback_allow_hosts=value)
    message = str(err.value)
    assert "ANNOUNCER_CALLBACK_ALLOW_HOSTS" in message and "\n" not in message


def test_the_allow_list_reads_names_and_cidrs() -> None:
    settings = load_settings(
        _env_file=None, announcer_callback_allow_hosts=" Hooks.Internal., 10.1.2.3/8 ,::1,, 192.168.5.5"
    )
    policy = EgressPolicy.from_settings(settings)
    assert policy.allow_names == {"hooks.internal"}
    assert policy.allow_networks == (
        IPv4Network("10.0.0.0/8"),
        IPv6Network("::1/128"),
        IPv4Network("192.168.5.5/32"),
    )
    assert not policy.allow_http


# --- at send time ----------------------------------------------------------------------------------


class NameService(AbstractResolver):
    """DNS for names only the test controls: each name answers with its addresses (the port asked)."""

    def __init__(self, names: dict[str, list[str]]) -> None:
        self.names = names
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        if host not in self.names:
            raise OSError(f"{host}: no such name")
        return [
            ResolveResult(
                hostname=host,
                host=a,
                port=port,
                family=socket.AF_INET6 if ":" in a else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for a in self.names[host]
        ]

    async def close(self) -> None:
        pass


async def test_the_guarded_resolver_passes_on_only_allowed_addresses() -> None:
    dns = NameService(
        {
            "mixed.example": ["10.0.0.7", "93.184.216.34", "::1", "2606:4700:4700::1111"],
            "inside.example": ["127.0.0.1", "169.254.169.254"],
            "hooks.internal": ["10.0.0.8"],
        }
    )
    policy = EgressPolicy(allow_names=frozenset({"hooks.internal"}))
    guarded = GuardedResolver(policy, dns)
    kept = await guarded.resolve("mixed.example", 443)
    assert [r["host"] for r in kept] == ["93.184.216.34", "2606:4700:4700::1111"]
    with pytest.raises(EgressRefused, match=r"inside\.example"):
        await guarded.resolve("inside.example", 443)
    assert [r["host"] for r in await guarded.resolve("hooks.internal", 443)] == ["10.0.0.8"]
    own = GuardedResolver(
        EgressPolicy(allow_networks=(ip_network("127.0.0.0/8"),), own_loopback_ports=frozenset({8080})),
        NameService({"me.example": ["127.0.0.1"]}),
    )
    assert await own.resolve("me.example", 9000)
    with pytest.raises(EgressRefused, match="own"):
        await own.resolve("me.example", 8080)


@dataclass
class Hooks:
    """A webhook receiver on 127.0.0.1: every request's body and whether its signature verified."""

    port: int
    secret: str
    received: list[tuple[dict[str, Any], bool]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def url(self, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}/hook?token=tok_secret"

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.received.append(
            (json.loads(raw), verify(self.secret, raw, request.headers[callbacks.SIGNATURE_HEADER]))
        )
        self.arrived.set()
        return web.Response(status=204)


async def _hooks(secret: str) -> AsyncIterator[Hooks]:
    hooks = Hooks(free_port(), secret)
    app = web.Application()
    app.router.add_post("/hook", hooks.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hooks.port).start()
    try:
        yield hooks
    finally:
        await runner.cleanup()


@pytest.fixture
async def hooks() -> AsyncIterator[Hooks]:
    async for h in _hooks(SECRET):
        yield h


@pytest.fixture
async def service_hooks() -> AsyncIterator[Hooks]:
    """The receiver of the service's webhooks (signed with the API token, the service's default)."""
    async for h in _hooks(API_TOKEN):
        yield h


async def _send(sender: WebhookSender, url: str) -> None:
    sender.start()
    try:
        sender.send(url, "evt_1", PAYLOAD)
        await sender.wait_idle(10)
    finally:
        await sender.close(drain_timeout_s=0)


@pytest.mark.parametrize(
    ("host", "dns"),
    [
        ("hooks.example", {"hooks.example": ["127.0.0.1"]}),  # a name that resolves to loopback now
        ("localhost", {"localhost": ["127.0.0.1"]}),
        ("127.0.0.1", {}),  # literals never reach a resolver
        ("0x7f000001", {}),
        ("2130706433", {}),
        ("0177.0.0.1", {}),
        ("[::ffff:127.0.0.1]", {}),
    ],
)
async def test_a_refused_host_at_send_time_reaches_no_receiver_and_is_not_retried(
    hooks: Hooks, host: str, dns: dict[str, list[str]], caplog: pytest.LogCaptureFixture
) -> None:
    sender = WebhookSender(
        SECRET,
        egress=EgressPolicy(allow_http=True),
        resolver=NameService(dns),
        max_attempts=5,
        backoff_s=0.01,
    )
    with caplog.at_level(logging.INFO, logger=callbacks.__name__):
        await _send(sender, hooks.url(host))
    assert hooks.received == []
    assert sender.failed == 1 and sender.delivered == 0
    assert [(a.status, a.error) for a in sender.attempts] == [(None, REFUSED_BY_POLICY)]
    [line] = [r.getMessage() for r in caplog.records if r.name == callbacks.__name__]
    assert "refused" in line and host.strip("[]").lower() in line.lower()
    assert "/hook" not in line and "tok_secret" not in line


async def test_a_name_is_judged_by_what_it_resolves_to_when_sent(hooks: Hooks) -> None:
    """DNS rebinding: acceptable when given (the name says nothing), refused when it points inside."""
    policy = EgressPolicy(allow_http=True)
    dns = NameService({"rebound.example": ["127.0.0.1"]})
    url = hooks.url("rebound.example")
    assert policy.url_problem(url) is None
    sender = WebhookSender(SECRET, egress=policy, resolver=dns)
    await _send(sender, url)
    assert dns.asked == ["rebound.example"]
    assert hooks.received == [] and sender.failed == 1


@pytest.mark.parametrize(
    "policy",
    [
        EgressPolicy(allow_http=True, allow_names=frozenset({"hooks.example"})),
        EgressPolicy(allow_http=True, allow_networks=(ip_network("127.0.0.0/8"),)),
    ],
    ids=["by-name", "by-cidr"],
)
async def test_an_allowed_host_receives_the_signed_webhook(hooks: Hooks, policy: EgressPolicy) -> None:
    sender = WebhookSender(SECRET, egress=policy, resolver=NameService({"hooks.example": ["127.0.0.1"]}))
    await _send(sender, hooks.url("hooks.example"))
    assert hooks.received == [(PAYLOAD, True)]
    assert sender.delivered == 1 and sender.failed == 0


async def test_http_is_refused_at_send_time_unless_allowed(hooks: Hooks) -> None:
    loopback = (ip_network("127.0.0.1/32"),)
    refused = WebhookSender(SECRET, egress=EgressPolicy(allow_networks=loopback))
    await _send(refused, hooks.url())
    assert hooks.received == []
    assert [a.error for a in refused.attempts] == [REFUSED_BY_POLICY]
    allowed = WebhookSender(SECRET, egress=EgressPolicy(allow_http=True, allow_networks=loopback))
    await _send(allowed, hooks.url())
    assert [body for body, _ in hooks.received] == [PAYLOAD]


# --- at acceptance ---------------------------------------------------------------------------------


def _refusal(status: int, answer: Any) -> str:
    assert status == 422, answer
    [problem] = [p for p in answer["problems"] if p["field"] == "options.callback_url"]
    return str(problem["reason"])


@pytest.mark.parametrize("path", ["/v1/alerts", "/v1/schedules"])
async def test_each_refused_form_is_a_422_naming_the_field(service: Service, path: str) -> None:
    urls = [url for url, _ in REFUSED_FORMS] + [
        service.base_url + "/v1/alerts",  # the service's own API
        f"https://{service.settings.host}:{service.settings.port}/v1/alerts",
    ]
    for url in urls:
        if path == "/v1/alerts":
            body = alert_body(HEARER, callback_url=url)
        else:
            body = schedule_body({"cron": "0 8 * * *", "timezone": "UTC"}, callback_url=url)
        status, answer = await post(service, path, body)
        assert _refusal(status, answer), url
    assert not service.sandbox.calls
    _, listing = await get(service, "/v1/schedules")
    assert listing["schedules"] == []


async def test_http_and_internal_hosts_are_accepted_only_as_allowed(
    tmp_path: Path, database_url: str, service_hooks: Hooks
) -> None:
    """With the allowances (http, 127.0.0.1) the receiver is accepted and gets the signed outcomes; the
    service's own API on that same address is still refused, and so is what the allowances leave out."""
    settings = make_settings(tmp_path, database_url, **RECEIVER_ALLOWED)
    runner, service = await start_service(settings)
    try:
        for url, reason in [
            (service.base_url + "/v1/alerts", "own"),
            (f"http://localhost:{settings.port}/v1/alerts", "own"),
            ("http://127.0.0.2/hook", "loopback"),
            ("http://[::1]/hook", "loopback"),
            ("http://10.0.0.1/hook", "private"),
        ]:
            status, answer = await post(service, "/v1/alerts", alert_body(HEARER, callback_url=url))
            assert reason in _refusal(status, answer), url
        status, accepted = await post(
            service, "/v1/alerts", alert_body(HEARER, callback_url=service_hooks.url())
        )
        assert status == 202, accepted
        await eventually(lambda: _has(service_hooks, "alert.completed"), timeout=30)
        assert all(signed for _, signed in service_hooks.received)
        outcomes = [
            b["delivery"]["outcome"] for b, _ in service_hooks.received if b["type"] == "delivery.finished"
        ]
        assert outcomes == ["heard"]
    finally:
        await runner.cleanup()


async def _has(hooks: Hooks, kind: str) -> bool:
    return any(body["type"] == kind for body, _ in hooks.received)


# --- a schedule's stored URL, at each fire -------------------------------------------------------


@pytest.mark.parametrize("still_allowed", [True, False], ids=["still-allowed", "allowance-withdrawn"])
async def test_a_schedules_callback_is_judged_again_at_each_fire(
    clock: Clock, service_hooks: Hooks, still_allowed: bool
) -> None:
    """Accepted while 127.0.0.1 was allowed; the service restarted without that allowance refuses to post
    the fire's outcomes there (the same sender path as an alert's), with it posts them."""
    service = await clock.start(datetime(2027, 6, 10, 10, tzinfo=UTC), **RECEIVER_ALLOWED)
    when = {"at": "2027-06-10T11:00", "timezone": "UTC"}
    status, created = await post(
        service, "/v1/schedules", schedule_body(when, callback_url=service_hooks.url())
    )
    assert status == 201, created
    await clock.stop(service)
    service = await clock.start(
        **(RECEIVER_ALLOWED if still_allowed else {"announcer_callback_allow_http": True})
    )
    await clock.advance_to(datetime(2027, 6, 10, 11, tzinfo=UTC))
    sender = service.app[WEBHOOKS]

    async def both_sent() -> bool:  # the delivery's outcome, then the alert's completion
        return sender.delivered + sender.failed >= 2

    await eventually(both_sent, timeout=30)
    if still_allowed:
        assert sorted(body["type"] for body, _ in service_hooks.received) == [
            "alert.completed",
            "delivery.finished",
        ]
        assert sender.failed == 0
    else:
        assert service_hooks.received == []
        assert [a.error for a in sender.attempts] == [REFUSED_BY_POLICY] * 2
