"""The listening sockets of a process and everything it started, and which of them reach beyond
loopback (what another machine could connect to)."""

from __future__ import annotations

import psutil

from sftrl.ports import is_loopback


def listening_sockets(root_pid: int) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every TCP socket listening in ``root_pid``'s process tree."""
    root = psutil.Process(root_pid)
    names = {p.pid: process_name(p) for p in [root, *root.children(recursive=True)]}
    return sorted(
        {(names[c.pid], c.laddr.ip, c.laddr.port) for c in psutil.net_connections("tcp")
         if c.status == psutil.CONN_LISTEN and c.pid in names}
    )  # fmt: skip


def beyond_loopback(sockets: list[tuple[str, str, int]]) -> list[tuple[str, str, int]]:
    """The sockets bound to an address other than loopback ("0.0.0.0" and "::" included)."""
    return [s for s in sockets if not is_loopback(s[1])]


def process_name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return "?"
