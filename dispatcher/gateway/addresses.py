"""Where a callback URL may lead: public addresses only, however the host is spelled.

A webhook is a POST the dispatcher makes to a URL a producer chose, so a careless
or hostile producer could aim it at this host, the private network or the cloud
metadata service (server-side request forgery). The host is checked twice:

- at enqueue (``vet``): parsed into its one canonical ASCII form (lowercase, IDNA,
  no trailing dot), refused if a ``localhost`` name, and resolved with the system
  resolver, which reads the legacy numeric spellings (``2130706433``, ``0177.1``,
  ``0x7f.1``) as the C library does; every address it gives must be public;
- at delivery, by the webhook client, which resolves once more, vets every
  address the same way and connects to one of those addresses itself, so a DNS
  answer that changes in between (rebinding) cannot lead it elsewhere.

"Public" is ``ipaddress``'s ``is_global``, plus what it misses on Python 3.11:
multicast, the reserved ranges, and IPv4 addresses embedded in IPv6 ones (mapped,
compatible, NAT64, 6to4), which are judged as the IPv4 address they reach.
``AddressPolicy`` lets development setups through: every address, or some
networks (``DISPATCHER_WEBHOOK_ALLOW_PRIVATE``, ``DISPATCHER_WEBHOOK_ALLOWED_CIDRS``).
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from urllib.parse import urlsplit

from dispatcher.errors import UnsafeCallbackError

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network
Resolver = Callable[[str], Iterable[str]]
"""Host name to the addresses a connection could reach (``system_resolver``; tests
inject their own)."""

DEFAULT_PORTS = {"http": 80, "https": 443}

_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_SHARED = IPv4Network("100.64.0.0/10")  # RFC 6598, carrier-grade NAT
_RFC1918 = (IPv4Network("10.0.0.0/8"), IPv4Network("172.16.0.0/12"), IPv4Network("192.168.0.0/16"))
_BROADCAST = IPv4Address("255.255.255.255")
_UNIQUE_LOCAL = IPv6Network("fc00::/7")
_NAT64 = IPv6Network("64:ff9b::/96")  # RFC 6052, the IPv4 address in the last 32 bits
_NAT64_LOCAL = IPv6Network("64:ff9b:1::/48")  # RFC 8215
_COMPATIBLE = IPv6Network("::/96")  # deprecated IPv4-compatible addresses


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses callbacks may reach besides public ones."""

    allow_all: bool = False
    allowed: tuple[IPNetwork, ...] = ()

    def refusal(self, address: IPAddress) -> str | None:
        """Why ``address`` may not be reached (e.g. ``"a loopback address"``), or None."""
        if self.allow_all or self._allowed(address):
            return None
        return why_not_public(address)

    def _allowed(self, address: IPAddress) -> bool:
        reached = [address]
        if isinstance(address, IPv6Address):
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                reached.append(embedded)
        return any(a.version == n.version and a in n for a in reached for n in self.allowed)


def why_not_public(address: IPAddress) -> str | None:
    """What kind of non-public address this is, or None for a public unicast one."""
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_loopback:
        return "a loopback address"
    if isinstance(address, IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            inner = why_not_public(embedded)
            if inner is not None:
                return f"{inner} (IPv4 {embedded} inside IPv6)"
            if address.ipv4_mapped is not None or address in _NAT64:
                # These reach exactly the IPv4 address (DNS64 hands out NAT64 ones
                # for every IPv4-only name on an IPv6-only network).
                return None
        if address in _UNIQUE_LOCAL:
            return "a unique-local address"
        if address.is_site_local:
            return "a site-local address"
        if address in _NAT64_LOCAL:
            return "a local NAT64 address"
    if address.is_link_local:
        return "a link-local address (cloud metadata lives there)"
    if address.is_multicast:
        return "a multicast address"
    if address == _BROADCAST:
        return "the broadcast address"
    if isinstance(address, IPv4Address) and address in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if isinstance(address, IPv4Address) and any(address in net for net in _RFC1918):
        return "a private address"
    if address.is_private or address.is_reserved or not address.is_global:
        return "a reserved address (private, documentation, benchmark or future use)"
    return None


def _embedded_ipv4(address: IPv6Address) -> IPv4Address | None:
    """The IPv4 address an IPv6 address delivers to, for the forms that embed one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64 or (address in _COMPATIBLE and int(address) > 1):
        return IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def system_resolver(host: str) -> list[str]:
    """Every address the system resolver gives ``host`` for a TCP connection."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True, slots=True)
class CallbackTarget:
    """A callback URL's scheme, canonical host and port: what is checked is what is used."""

    scheme: str
    host: str
    port: int
    literal: IPAddress | None
    """The address itself, when the host is written as a standard IP address."""


def parse_target(url: str) -> CallbackTarget:
    """The target of an http(s) URL; UnsafeCallbackError for a host no check can vouch for."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeCallbackError("callback_url is not a well-formed URL") from None
    host = parts.hostname
    if parts.scheme not in DEFAULT_PORTS or not host:
        raise UnsafeCallbackError("callback_url must be an http(s) URL with a host")
    port = DEFAULT_PORTS[parts.scheme] if port is None else port
    if "[" in parts.netloc:
        try:
            literal: IPAddress = IPv6Address(host)
        except ValueError:
            raise UnsafeCallbackError("callback_url has a malformed IPv6 address") from None
        return CallbackTarget(parts.scheme, host, port, literal)
    host = canonical_host(host)
    return CallbackTarget(parts.scheme, host, port, _ipv4_literal(host))


def canonical_host(host: str) -> str:
    """``host`` as DNS would be asked: IDNA-encoded ASCII, lowercase, no trailing dot.

    Refuses what is no host name (percent-encoding, empty or over-long labels, odd
    characters) and the ``localhost`` names, which mean this machine (RFC 6761)
    whatever a resolver says.
    """
    if "%" in host:
        raise UnsafeCallbackError("callback_url's host must not be percent-encoded")
    try:
        # The IDNA codec also folds what looks alike: full-width digits and dots, ⓛ.
        ascii_host = host.encode("idna").decode("ascii").lower()
    except UnicodeError:
        raise UnsafeCallbackError("callback_url's host is not a valid host name") from None
    ascii_host = ascii_host.removesuffix(".")
    labels = ascii_host.split(".")
    if len(ascii_host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise UnsafeCallbackError("callback_url's host is not a valid host name")
    if labels[-1] == "localhost":
        raise UnsafeCallbackError("callback_url must reach a public address, not localhost")
    return ascii_host


def _ipv4_literal(host: str) -> IPv4Address | None:
    try:
        return IPv4Address(host)
    except ValueError:
        return None


def vet(target: CallbackTarget, policy: AddressPolicy, resolver: Resolver) -> list[IPAddress]:
    """Every address ``target`` reaches, each allowed by ``policy``; else UnsafeCallbackError.

    A host written as an address is not resolved; a name is, and must resolve. The
    error's message suits the producer (it names no resolved address, which would
    tell an outsider what internal names point at); ``address`` on it is the
    offending address, for the operator.
    """
    if target.literal is not None:
        addresses: list[IPAddress] = [target.literal]
    else:
        addresses = _resolve(target.host, resolver)
    for address in addresses:
        reason = policy.refusal(address)
        if reason is not None:
            where = "is" if target.literal is not None else "resolves to"
            raise UnsafeCallbackError(
                f"callback_url must reach a public address: its host {where} {reason}",
                address=str(address),
            )
    return addresses


def _resolve(host: str, resolver: Resolver) -> list[IPAddress]:
    try:
        found = list(resolver(host))
    except (OSError, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise UnsafeCallbackError(
            f"callback_url's host does not resolve ({why}); it must name a public address"
        ) from None
    if not found:
        raise UnsafeCallbackError("callback_url's host resolves to no address")
    try:
        return [ip_address(address) for address in found]
    except ValueError:
        raise UnsafeCallbackError("callback_url's host resolves to a non-address") from None
