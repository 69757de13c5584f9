"""Which sockets a local stack's processes listen on, and whether each stays on loopback.

The local stack promises loopback only (README, "Operating it"): with Ray's token auth off, any
listener on a wildcard or routable address is an open door to whoever shares the network. This
lists every TCP socket in LISTEN state, and every unconnected UDP socket, owned by a set of
processes, so a test (and `crosslogic local up`) can check the promise.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Listener:
    pid: int
    process: str  # what the process calls itself: `raylet`, `ray::ServeReplica:…`, `haproxy`, …
    protocol: str  # "tcp" or "udp"
    address: str
    port: int

    @property
    def wildcard(self) -> bool:
        """Bound to every interface: 0.0.0.0, :: (also IPv4-mapped ::ffff:0.0.0.0)."""
        return self._ip().is_unspecified

    @property
    def loopback(self) -> bool:
        """127.0.0.0/8 or ::1, as IPv4-mapped IPv6 too (a dual-stack gRPC server's ::ffff:127.0.0.1)."""
        return self._ip().is_loopback

    def _ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        ip = ipaddress.ip_address(self.address.split("%")[0])  # fe80::1%eth0: drop the zone
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        return ip


def _title(proc: Any) -> str:
    import psutil

    try:
        cmdline = proc.cmdline() or [proc.name()]
    except psutil.Error:
        return "?"
    # Ray and vLLM retitle their processes (`ray::ServeReplica:app:deployment`, `VLLM::EngineCore`);
    # others are a binary path with arguments: its base name is enough to say what it is.
    first = str(cmdline[0]).split(" ")[0]
    if first.startswith(("ray::", "VLLM::")):
        return first
    name = os.path.basename(first)
    if name.startswith("python") and len(cmdline) > 1:
        script = next((a for a in cmdline[1:] if not a.startswith("-")), "")
        return f"{name} {os.path.basename(script)}"
    return name


def listeners(processes: Iterable[Any]) -> list[Listener]:
    """Every socket the given processes (psutil.Process) listen on, sorted by process and port."""
    import psutil

    procs = {p.pid: p for p in processes}
    found: set[Listener] = set()
    for conn in psutil.net_connections(kind="inet"):
        if conn.pid is None or conn.pid not in procs or not conn.laddr:
            continue
        if conn.type == socket.SOCK_STREAM:
            if conn.status != psutil.CONN_LISTEN:
                continue
            protocol = "tcp"
        elif conn.raddr:  # a connected UDP socket only hears its peer
            continue
        else:
            protocol = "udp"
        found.add(Listener(conn.pid, _title(procs[conn.pid]), protocol, conn.laddr.ip, conn.laddr.port))
    return sorted(found, key=lambda item: (item.process, item.pid, item.protocol, item.port))


def table(items: Iterable[Listener]) -> str:
    """A plain-text table of listeners, one a line, for logs and test output."""
    rows = [("pid", "process", "proto", "address", "port", "scope")]
    for item in items:
        scope = "WILDCARD" if item.wildcard else "loopback" if item.loopback else "routable"
        rows.append((str(item.pid), item.process[:60], item.protocol, item.address, str(item.port), scope))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows)
