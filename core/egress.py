"""Which addresses an agent call may reach: the SSRF policy, as a pure value.

Workers call whatever URL an automation names, so by default they refuse every
address that is not on the public internet: loopback, private (RFC 1918),
link-local (cloud metadata lives at 169.254.169.254), shared/CGNAT, unique-local,
multicast, unspecified and reserved ranges, and the IPv6 forms that embed one of
these (IPv4-mapped, NAT64, 6to4). An allowlist (`STEPWISE_AGENT_ALLOW`: host names,
addresses or CIDRs, each optionally with `:port`) opens what a deployment needs.

`tasks/agent.py` applies the policy to every address of every connection, redirects
included, and connects to the address it checked; `core.automation` applies the
literal part at save time so an obviously internal URL is refused with a message.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket  # only inet_aton: parsing, no I/O
from dataclasses import dataclass
from urllib.parse import urlsplit

from core.errors import ConfigError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
# Names that resolve to cloud metadata services or to this machine whatever the DNS says.
INTERNAL_NAMES = frozenset(
    {"localhost", "metadata", "metadata.google.internal", "metadata.goog", "instance-data"}
)


@dataclass(frozen=True)
class Allowed:
    """One allowlist entry: a host name or a network, on one port or any."""

    host: str | None = None
    network: Network | None = None
    port: int | None = None

    def admits(self, host: str, address: Address | None, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host is not None:
            return host.lower().rstrip(".") == self.host
        return address is not None and self.network is not None and address in self.network


@dataclass(frozen=True)
class EgressPolicy:
    allow: tuple[Allowed, ...] = ()

    def refusal(self, host: str, address: Address | None, port: int) -> str | None:
        """Why connecting to `address` (resolved from `host`) on `port` is refused, or None."""
        host = resolver_form(host)
        if any(entry.admits(host, address, port) for entry in self.allow):
            return None
        if host.lower().rstrip(".") in INTERNAL_NAMES or host.lower().endswith(".localhost"):
            return f"the host name {host} is internal"
        if address is not None and not is_public(address):
            if literal_address(host) == address:
                return f"{host} is an internal address"
            return f"{host} resolves to an internal address ({address})"
        return None

    def refusal_of_url(self, url: str) -> str | None:
        """The save-time check: what the URL alone shows (a literal address or a known name)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return None  # a bad port is reported by URL validation
        return self.refusal(host, literal_address(host), port)


def is_public(address: Address) -> bool:
    """True for an address on the public internet, including through an IPv6 embedding."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public(embedded)
    return address.is_global and not (address.is_multicast or address.is_reserved)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _NAT64:
        return ipaddress.IPv4Address(address.packed[-4:])
    return address.sixtofour


def resolver_form(host: str) -> str:
    """`host` as a resolver reads it: IDNA-folded (`①②⑦` is `127`, `。` is a dot,
    full-width letters are letters), lower-case, without a trailing dot. A host IDNA
    refuses stays as given (it cannot be resolved; the URL check says so)."""
    if ":" in host:  # an IPv6 literal
        return host.lower()
    with contextlib.suppress(UnicodeError):
        host = host.encode("idna").decode("ascii")
    return host.lower().removesuffix(".")


def literal_address(host: str) -> Address | None:
    """The address a host name spells, in any form a resolver accepts (0x7f000001,
    2130706433, `①②⑦.0.0.1`, `127.0.0.1.`)."""
    text = resolver_form(host.strip("[]"))
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    try:  # inet_aton forms: what getaddrinfo would turn into an address without DNS
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def parse_allowlist(text: str, *, variable: str = "STEPWISE_AGENT_ALLOW") -> EgressPolicy:
    """`host`, `address` or `cidr`, each optionally `:port`, separated by commas or spaces."""
    entries = []
    for item in text.replace(",", " ").split():
        try:
            entries.append(_entry(item))
        except ValueError as exc:
            problem = f"{variable}: {item!r} is not a host, address or CIDR ({exc})"
            raise ConfigError(problem) from exc
    return EgressPolicy(tuple(entries))


def _entry(item: str) -> Allowed:
    target, port = item, None
    if item.startswith("["):  # [v6]:port or [v6/len]:port
        if "]" not in item:
            raise ValueError("unclosed [")
        target, _, rest = item[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else None
    elif item.count(":") == 1:
        target, _, port_text = item.partition(":")
        port = int(port_text)
    if port is not None and not 0 < port < 65536:
        raise ValueError("port out of range")
    try:
        return Allowed(network=ipaddress.ip_network(target, strict=False), port=port)
    except ValueError:
        if not target or "/" in target:
            raise
        return Allowed(host=target.lower().rstrip("."), port=port)
