"""Which client an ingress request comes from, for throttling failed authentication.

Behind Ray Serve's HAProxy direct ingress the replica's uvicorn sees HAProxy's address for every
client: Ray's HAProxy template (ray/serve/_private/haproxy_templates.py) has neither
`option forwardfor` nor `send-proxy`, and reuses its connections to the replica across clients. It
also passes a client's own `X-Forwarded-For` through untouched, and uvicorn (proxy_headers on by
default, FORWARDED_ALLOW_IPS defaulting to 127.0.0.1,::1) then *replaces* the peer with that
header's last entry, because the peer, the local HAProxy, is loopback. So `request.client` is
whatever the client wrote, and must not be used as is.

Rules here:
- `forwarded_for_hops: 0` (default: nothing in front of HAProxy appends the header): the header is
  never believed. When uvicorn rewrote the peer from it (the peer equals one of its entries), the
  real peer was a trusted proxy (loopback), so the client is keyed as that proxy. All clients coming
  through one HAProxy then share one address: the address budget becomes a per-replica cap on
  failed lookups, and what keeps legitimate keys working is that proven keys are never throttled.
- `forwarded_for_hops: N`, for an operator whose N load balancers in front each *append* the
  address they saw: when the peer is a trusted proxy (`trusted_proxies`, or rewritten by uvicorn)
  the client is the N-th entry from the right, the one our own front proxy wrote; entries a client
  put to its left are ignored. With fewer entries the request bypassed the front proxy: the peer
  is used. Only enable this when clients cannot reach HAProxy except through that proxy.
IPv6 clients are keyed by their /64 (one host usually holds a whole /64); loopback is one key.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

LOOPBACK = "loopback"
UNKNOWN = "unknown"
_MAX_KEY_CHARS = 64


class ClientAddressConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    forwarded_for_hops: int = Field(default=0, ge=0, le=8)
    trusted_proxies: list[str] = Field(default_factory=lambda: ["127.0.0.0/8", "::1/128"])
    ipv6_prefix: int = Field(default=64, ge=32, le=128)

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for network in value:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad entry
        return value

    def of_scope(self, asgi_scope: Mapping[str, Any] | None) -> str:
        """The throttling key of an ASGI request (None: a caller without an HTTP request)."""
        if asgi_scope is None:
            return UNKNOWN
        client = asgi_scope.get("client")
        peer = str(client[0]) if client else None
        forwarded = [
            value.decode("latin-1")
            for name, value in asgi_scope.get("headers", ())
            if name == b"x-forwarded-for"
        ]
        return self.resolve(peer, forwarded)

    def resolve(self, peer: str | None, forwarded_for: Sequence[str] = ()) -> str:
        """The throttling key of a request from `peer` carrying these X-Forwarded-For values."""
        entries = [_host(item) for value in forwarded_for for item in value.split(",") if item.strip()]
        if not entries:
            return self.normalize(peer)
        rewritten = peer is not None and peer in entries
        trusted = rewritten or self._trusted(peer)
        if self.forwarded_for_hops and trusted and len(entries) >= self.forwarded_for_hops:
            return self.normalize(entries[-self.forwarded_for_hops])
        # uvicorn rewrites only for its trusted hosts, loopback by default: the local HAProxy.
        return LOOPBACK if rewritten else self.normalize(peer)

    def normalize(self, host: str | None) -> str:
        if not host:
            return UNKNOWN
        address = _ip(host)
        if address is None:
            return f"host:{host[:_MAX_KEY_CHARS]}"
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if address.is_loopback:
            return LOOPBACK
        if isinstance(address, ipaddress.IPv6Address):
            return str(ipaddress.ip_network(f"{address}/{self.ipv6_prefix}", strict=False))
        return str(address)

    def _trusted(self, peer: str | None) -> bool:
        address = _ip(peer) if peer else None
        return address is not None and any(
            address in ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies
        )


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _host(item: str) -> str:
    """The host of one X-Forwarded-For entry: `1.2.3.4`, `1.2.3.4:5678`, `[::1]:5678` or `::1`."""
    item = item.strip()
    if item.startswith("["):
        return item[1 : item.find("]")] if "]" in item else item
    if item.count(":") == 1:
        return item.split(":", 1)[0]
    return item
