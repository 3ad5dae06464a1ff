"""Addresses as the rest of the code writes and judges them."""

from __future__ import annotations

import ipaddress
import re

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def host_port(host: str, port: int) -> str:
    """`127.0.0.1:11434`, `[fd7a::1]:11434`: the one spelling used in URLs, logs and status."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_ip(text: str) -> IPAddress:
    """An address, with an IPv4-mapped IPv6 address (::ffff:a.b.c.d) taken as the IPv4 it is:
    the kernel binds ::ffff:0.0.0.0 as every IPv4 interface, so it must be judged as 0.0.0.0."""
    address = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def listen_problem(text: str) -> str | None:
    """Why `text` may not be a proxy listen address, or None. Never every interface, never a
    group address: unspecified, multicast and broadcast are refused, however they are spelled."""
    try:
        address = parse_ip(text)
    except ValueError:
        return f"{text!r} is not an IP address or \"tailscale\""
    if address.is_unspecified:
        return f"{text} would listen on every interface; name the tailnet address or \"tailscale\""
    if address.is_multicast:
        return f"{text} is a multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address == ipaddress.IPv4Address("255.255.255.255"):
        return f"{text} is the broadcast address"
    return None


def canonical(text: str) -> str:
    """The plain spelling of an address (IPv4-mapped addresses as IPv4)."""
    return str(parse_ip(text))


_LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
DNS_NAME = re.compile(rf"{_LABEL}(\.{_LABEL})*\.?")


def is_dns_name(value: str) -> bool:
    return len(value) <= 254 and DNS_NAME.fullmatch(value) is not None
