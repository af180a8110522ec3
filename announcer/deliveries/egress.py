"""The outbound HTTP policy for URLs an API user gives us (the outcome webhooks' `callback_url`): which
URLs are accepted, and which addresses a request to one may connect to.

A callback is a POST the service makes from inside its own network, so without a policy any API user could
make it reach what only the service can reach: its own API, a database's HTTP port, a cloud metadata
service (169.254.169.254). Refused by default: every address that is not globally routable (loopback,
private, link-local, multicast, unspecified, reserved, shared 100.64.0.0/10, and the IPv4-mapped,
-compatible, 6to4 and NAT64 forms of those), `http://` (`ANNOUNCER_CALLBACK_ALLOW_HTTP` allows it), user
info, and the service's own endpoints (never allowed). `ANNOUNCER_CALLBACK_ALLOW_HOSTS` names the internal
hosts (names or CIDRs) a self-hosted deployment does post to.

Two layers, because either alone has a hole:

* `EgressPolicy.url_problem` judges the URL itself: at acceptance (a 422 naming `options.callback_url`) and
  again before each send (the settings may have changed since a schedule stored its URL). It catches IP
  literals in every notation, which aiohttp connects to without asking a resolver.
* `GuardedResolver`, the resolver of the sender's own connector, judges the addresses a host name resolves
  to at the moment of connecting: they are the only addresses the connection can use, so a name that
  pointed at a public address when it was accepted and at 127.0.0.1 now (DNS rebinding) is refused.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from announcer.config import HOST_NAME, Settings, split_allow_hosts

Address = IPv4Address | IPv6Address
Network = IPv4Network | IPv6Network

# RFC 6598 carrier-grade NAT space: `ipaddress` calls it neither private nor global, so it is named here.
SHARED_ADDRESS_SPACE = IPv4Network("100.64.0.0/10")
# Special-purpose networks not globally reachable (IANA registries) that `ipaddress` of some Python
# versions does not call private: 3.11's list holds only parts of 192.0.0.0/24, and the 2024 additions
# are missing from every version before them. Named so the policy is the same on each.
SPECIAL_PURPOSE = (
    IPv4Network("192.0.0.0/24"),  # IETF protocol assignments (RFC 6890)
    IPv6Network("3fff::/20"),  # documentation (RFC 9637)
    IPv6Network("5f00::/16"),  # SRv6 SIDs (RFC 9602)
)
# RFC 6052 well-known NAT64 prefix: the last 32 bits are the IPv4 address a NAT64 gateway connects to.
NAT64_WELL_KNOWN = IPv6Network("64:ff9b::/96")
# RFC 8215 local-use NAT64 prefix: where the IPv4 address sits depends on the operator's prefix length,
# so it cannot be read back; refused as a whole.
NAT64_LOCAL = IPv6Network("64:ff9b:1::/48")
# RFC 4291 2.5.5.1, deprecated IPv4-compatible addresses (::a.b.c.d).
IPV4_COMPATIBLE = IPv6Network("::/96")
# Names that are loopback by definition (RFC 6761 6.3) or by every Linux /etc/hosts.
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})

# One part of an IPv4 address as inet_aton(3) reads it: hex (0x..), octal (leading 0) or decimal.
_NUMBER_PART = re.compile(r"0x[0-9a-f]+|0[0-7]*|[1-9][0-9]*")


class EgressRefused(OSError):
    """A connection the policy refuses. An OSError because that is what aiohttp expects from a resolver:
    it arrives wrapped in `aiohttp.ClientConnectorError` (its `os_error`)."""


def embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, 6to4, NAT64), if it is one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in NAT64_WELL_KNOWN or address in IPV4_COMPATIBLE:
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def address_refusal(address: Address) -> str | None:
    """Why `address` is not one a callback may reach by default ("a loopback address"), or None for a
    globally routable one. The classes are the IANA special-purpose registries as `ipaddress` knows them;
    the checks are spelled out because `is_global` alone lets multicast through and differs between
    Python versions for the IPv6 forms of IPv4 addresses."""
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if isinstance(address, IPv6Address):
        if address in NAT64_LOCAL:
            return "a local-use NAT64 address"
        inner = embedded_ipv4(address)
        if inner is not None:
            reason = address_refusal(inner)
            return f"an IPv6 form of {inner}, {reason}" if reason else None
        if address.is_site_local:
            return "a site-local address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_multicast:
        return "a multicast address"
    if isinstance(address, IPv4Address) and address in SHARED_ADDRESS_SPACE:
        return "a shared address (100.64.0.0/10)"
    for network in SPECIAL_PURPOSE:
        if address in network:
            return f"a special-purpose address ({network})"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "an address that is not globally routable"
    return None


def parse_ipv4_legacy(host: str) -> IPv4Address | None:
    """`host` read as an IPv4 address in any notation inet_aton(3) accepts (0x7f000001, 2130706433,
    0177.0.0.1, 127.1), which a resolver would connect to; None when it is not one."""
    parts = host.lower().split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMBER_PART.fullmatch(p) for p in parts):
        return None
    numbers = [int(p, 16) if p.startswith("0x") else int(p, 8) if p[0] == "0" else int(p) for p in parts]
    # Every part but the last is one byte; the last fills the bytes that remain (127.1 = 127.0.0.1).
    *leading, last = numbers
    if any(n > 0xFF for n in leading) or last >= 1 << (8 * (5 - len(numbers))):
        return None
    value = 0
    for n in leading:
        value = value << 8 | n
    return IPv4Address(value << (8 * (5 - len(numbers))) | last)


def literal_address(host: str) -> Address | None:
    """The address an IP-literal host stands for, in any notation; None for a host name."""
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        # With a trailing dot too: "127.0.0.1." is no host name either.
        return parse_ipv4_legacy(host.removesuffix("."))


def _normal_name(host: str) -> str:
    return host.lower().removesuffix(".")


@dataclass(frozen=True)
class EgressPolicy:
    """What outbound requests to user-given URLs may reach. The default refuses every internal address
    and plain http; `from_settings` adds the deployment's allowances and the service's own endpoints."""

    allow_http: bool = False
    allow_names: frozenset[str] = frozenset()
    allow_networks: tuple[Network, ...] = ()
    # The service's own endpoints (normalised host, port), never a callback's target whatever is allowed:
    # PUBLIC_URL's and the listening socket's.
    own: frozenset[tuple[str, int]] = frozenset()
    # Ports the service listens on for every loopback address (HOST is loopback or any address).
    own_loopback_ports: frozenset[int] = frozenset()

    @classmethod
    def from_settings(cls, settings: Settings) -> EgressPolicy:
        names, networks = split_allow_hosts(settings.announcer_callback_allow_hosts)
        own: set[tuple[str, int]] = set()
        loopback_ports: set[int] = set()
        if settings.port:
            own.add((_canonical_host(settings.host), settings.port))
            listening = literal_address(settings.host)
            if _is_loopback_name(settings.host) or (
                listening is not None and (listening.is_loopback or listening.is_unspecified)
            ):
                loopback_ports.add(settings.port)
        if settings.public_url:
            public = URL(settings.public_url)
            if public.host is not None and public.port is not None:
                own.add((_canonical_host(public.host), public.port))
        return cls(
            allow_http=settings.announcer_callback_allow_http,
            allow_names=names,
            allow_networks=networks,
            own=frozenset(own),
            own_loopback_ports=frozenset(loopback_ports),
        )

    def allows_name(self, host: str) -> bool:
        return _normal_name(host) in self.allow_names

    def allows_address(self, address: Address) -> bool:
        """Whether `address` (or the IPv4 address an IPv6 form of it stands for) is in an allowed CIDR."""
        candidates = [address]
        if isinstance(address, IPv6Address) and (inner := embedded_ipv4(address)) is not None:
            candidates.append(inner)
        return any(a in network for a in candidates for network in self.allow_networks)

    def is_own(self, host: str, port: int) -> bool:
        """Whether `host`:`port` (a name or an address) is one of the service's own endpoints."""
        if (_canonical_host(host), port) in self.own:
            return True
        if port not in self.own_loopback_ports:
            return False
        address = literal_address(host)
        if address is None:
            return _is_loopback_name(host)
        if isinstance(address, IPv6Address) and (inner := embedded_ipv4(address)) is not None:
            address = inner
        return address.is_loopback or address.is_unspecified

    def connection_problem(self, host: str, address: Address, port: int) -> str | None:
        """Why connecting to `address`:`port`, which `host` resolved to, is refused, or None: the check
        of every address a resolver returns, at the moment of connecting."""
        if self.is_own(str(address), port):
            return f"{address}:{port} is this service's own address"
        if self.allows_name(host) or self.allows_address(address):
            return None
        reason = address_refusal(address)
        return f"{address} is {reason}" if reason else None

    def url_problem(self, url: str) -> str | None:
        """Why `url` may not be a callback URL, or None. Only what the URL itself shows: a host name's
        addresses are judged when it is resolved, at each send (`GuardedResolver`). The reason names the
        host at most, never the path or query, which may hold the receiver's token."""
        try:
            parsed = URL(url)
            port = parsed.port
        except ValueError:
            return "is not a valid URL"
        if parsed.scheme not in ("http", "https"):
            return "must be an http:// or https:// URL" if self.allow_http else "must be an https:// URL"
        if parsed.scheme == "http" and not self.allow_http:
            return "must be an https:// URL (http:// only with ANNOUNCER_CALLBACK_ALLOW_HTTP)"
        if parsed.user is not None or parsed.password is not None:
            return "must not contain a user name or password"
        host, raw_host = parsed.host, parsed.raw_host
        if not host or not raw_host:
            return "must name a host"
        if parsed.fragment:
            return "must not have a #fragment (it is never sent)"
        if port is None or not 1 <= port <= 65535:
            return "must have a port from 1 to 65535"
        address = literal_address(host)
        if address is None and not HOST_NAME.fullmatch(_normal_name(raw_host)):
            return f"{raw_host!r} is not a valid host name"
        if self.is_own(host, port):
            return "is this service's own address"
        if address is not None:
            return self._literal_problem(host, address)
        if _is_loopback_name(host) and not self.allows_name(host) and not self._allows_loopback():
            return f"{_normal_name(host)} is a loopback name; {_ALLOW_HINT}"
        return None

    def _literal_problem(self, host: str, address: Address) -> str | None:
        # A notation only inet_aton reads (0x7f000001, 127.1): refused even for an allowed or public
        # address, since what a resolver makes of it is not what anybody reads in it.
        legacy = isinstance(address, IPv4Address) and str(address) != host
        reason = None if self.allows_address(address) else address_refusal(address)
        if reason is not None:
            written = f"{host} ({address})" if legacy else host
            return f"{written} is {reason}; {_ALLOW_HINT}"
        if legacy:
            return f"write the IPv4 address {host} as {address}"
        return None

    def _allows_loopback(self) -> bool:
        return self.allows_address(IPv4Address("127.0.0.1")) or self.allows_address(IPv6Address("::1"))


_ALLOW_HINT = "internal hosts are refused unless ANNOUNCER_CALLBACK_ALLOW_HOSTS names them"


def _is_loopback_name(host: str) -> bool:
    name = _normal_name(host)
    return name in LOOPBACK_NAMES or name.endswith(".localhost")


def _canonical_host(host: str) -> str:
    address = literal_address(host.strip("[]"))
    return str(address) if address is not None else _normal_name(host)


class GuardedResolver(AbstractResolver):
    """An aiohttp resolver that passes on only the addresses the policy allows, so a connection can use
    no other (aiohttp connects only to what its resolver returned). An allowed name passes all of its
    addresses but the service's own. Raises `EgressRefused` when nothing is left."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        kept: list[ResolveResult] = []
        problems: list[str] = []
        for result in results:
            try:
                address = ipaddress.ip_address(result["host"])
            except ValueError:
                problems.append(f"{result['host']!r} is not an address")
                continue
            if (problem := self._policy.connection_problem(host, address, result["port"])) is None:
                kept.append(result)
            else:
                problems.append(problem)
        if not kept:
            detail = problems[0] if problems else "no address"
            raise EgressRefused(f"{host} resolves to no address a callback may reach ({detail})")
        return kept

    async def close(self) -> None:
        await self._inner.close()
