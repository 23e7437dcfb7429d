"""Loopback addresses and ports: a TCP port free on loopback now, and whether an address is loopback."""

from __future__ import annotations

import ipaddress
import socket


def free_loopback_port() -> int:
    """A port the OS calls free on 127.0.0.1 now (another process may take it later)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def is_loopback(address: str) -> bool:
    """Whether ``address`` (an IP, "localhost", or an IPv4-mapped IPv6 address) is this machine's
    loopback; "0.0.0.0" and "::" (every interface) are not."""
    if address == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback
