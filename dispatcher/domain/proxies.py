"""Who is calling: the client's address, through the proxies the operator trusts.

Behind a reverse proxy every request comes from the proxy's address, and the
client's own is in ``X-Forwarded-For``, which anyone can also send. So the header
is read only when the direct peer is one of ``DISPATCHER_TRUSTED_PROXIES``, and
then from the right: each trusted proxy appends the address it saw, so the first
address from the right that is not a trusted proxy is the client. Whatever lies
further left came from the client itself and is never believed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

UNKNOWN = "unknown"
"""The address of a request whose peer is not known (a test client, a Unix socket)."""


def parse_networks(items: Iterable[str]) -> tuple[Network, ...]:
    """Addresses and CIDRs (``10.0.0.0/8``, ``::1``) as networks; ValueError naming a bad one."""
    networks: list[Network] = []
    for item in items:
        text = item.strip()
        if not text:
            continue
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            raise ValueError(f"{text!r} is not an IP address or CIDR") from None
    return tuple(networks)


def _address(text: str) -> Address | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:
        # [2001:db8::1]:443, as some proxies write an IPv6 peer with its port.
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]  # 192.0.2.1:443
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _trusted(address: Address, networks: Sequence[Network]) -> bool:
    return any(address.version == n.version and address in n for n in networks)


def client_address(
    peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> str:
    """The client's address: ``peer`` unless it is a trusted proxy, else the first
    address from the right of the ``X-Forwarded-For`` values that is not one.

    Always an address in canonical text (or ``unknown``), never the header's own
    text, so it is safe to log and to key on.
    """
    current = _address(peer) if peer else None
    if current is None:
        return UNKNOWN
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    while trusted and _trusted(current, trusted) and hops:
        previous = _address(hops.pop())
        if previous is None:
            # Not an address: a trusted proxy would not write it, so the client did.
            break
        current = previous
    return str(current)
