"""Which origins a peer may fetch from when someone else asked for the download.

A seed peer fetches whatever URL the scheduler names in a TriggerSeed, and the
scheduler names whatever URL any host registered. Without a check, anyone who can reach
the scheduler port could make the seed fetch internal addresses (the cloud metadata
service, an admin port on loopback, a private service) with headers of their choice and
then read the bytes from the seed's public ``/download`` endpoint: server-side request
forgery. :class:`SourcePolicy` is that check. It applies only to downloads a remote
party caused; a download asked for on the machine itself (dfget over the local socket)
is the user's own and goes anywhere the user can reach anyway.

The rule, for a host name and every address it resolves to:

1. ``source.deny`` names it (a CIDR holding the address, or a host pattern matching the
   name): refused, whatever else is configured.
2. ``source.allow`` names it: allowed.
3. The address is loopback, private (RFC 1918 / unique local), link-local, a cloud
   metadata address, or otherwise not public (unspecified, multicast, reserved, shared
   address space): refused.
4. Anything else (a public address) is allowed.

Every address a name resolves to is checked, and the check is repeated where the
connection is made (:class:`PolicyResolver` for aiohttp, the fast path's own
``getaddrinfo``) and for every redirect, so neither DNS rebinding nor a redirect to an
internal address gets past it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Iterable
from typing import Any

from aiohttp import TraceConfig
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from d7y.daemons.sources.base import SourceError, display_url

__all__ = ["PolicyResolver", "SourcePolicy", "SourceRefused", "policy_trace"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: Instance metadata services: AWS, GCP, Azure, OpenStack (169.254.169.254), AWS ECS
#: task metadata (169.254.170.2), AWS over IPv6 (fd00:ec2::254), Alibaba Cloud
#: (100.100.100.200). They hand out credentials to whoever asks from the machine.
CLOUD_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200")
)
_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


class SourceRefused(SourceError):
    """The fetch policy refused an origin address; never retried."""


class SourcePolicy:
    """``source.allow`` / ``source.deny`` for downloads a remote party caused.

    Entries are CIDRs (``10.0.0.0/8``, ``fd00::/8``), single addresses, exact host names
    (``origin.internal``) or suffix patterns (``*.corp.example``, which matches names
    below ``corp.example`` but not the name itself). A bad entry is a ValueError that
    names it.
    """

    def __init__(self, allow: Iterable[str] = (), deny: Iterable[str] = ()) -> None:
        self.allow_networks, self.allow_hosts = _parse_entries("source.allow", allow)
        self.deny_networks, self.deny_hosts = _parse_entries("source.deny", deny)

    def check_address(self, host: str, address: str, url: str) -> None:
        """Raise :class:`SourceRefused` unless ``host`` (as named in the URL), resolved
        to ``address``, may be fetched from for a remote party."""
        ip = _unwrap(ipaddress.ip_address(address.split("%", 1)[0]))
        name = _normal_host(host)
        where = f"{address}" if name == str(ip) or name == address else f"{host} ({address})"
        if self._named(name, ip, self.deny_networks, self.deny_hosts):
            raise SourceRefused(
                f"refused to fetch {display_url(url)} for a remote party: {where} is denied "
                f"by source.deny",
                url=url,
            )
        if self._named(name, ip, self.allow_networks, self.allow_hosts):
            return
        reason = restriction(ip)
        if reason is not None:
            subject = address if where == address else f"{host} resolves to {address}, which"
            raise SourceRefused(
                f"refused to fetch {display_url(url)} for a remote party: {subject} is {reason}; "
                f"if this peer may fetch it for others, add it to source.allow (an address, "
                f"a CIDR such as {_example_cidr(ip)}, or the host name)",
                url=url,
            )

    async def check_url(self, url: str) -> None:
        """Check the host of ``url`` and every address it resolves to (before any
        connection: a refused URL costs no request)."""
        try:
            parsed = URL(url)
        except ValueError:
            return  # the request itself reports the bad URL
        host = parsed.host
        if not host:
            return
        literal = _as_address(host)
        if literal is not None:
            self.check_address(host, str(literal), url)
            return
        name = _normal_host(host)
        if _matches(name, self.deny_hosts):
            raise SourceRefused(
                f"refused to fetch {display_url(url)} for a remote party: {host} is denied by "
                f"source.deny",
                url=url,
            )
        if _matches(name, self.allow_hosts):
            return
        port = parsed.port or 0
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except OSError:
            return  # unresolvable: the request fails on its own, with its own message
        for info in infos:
            self.check_address(host, str(info[4][0]), url)

    def session_options(self) -> tuple[AbstractResolver, list[TraceConfig]]:
        """The resolver and trace configs an aiohttp session needs to enforce this
        policy on every connection and redirect (see OriginClient)."""
        return PolicyResolver(self), [policy_trace(self)]

    @staticmethod
    def _named(name: str, ip: IPAddress, networks: list[IPNetwork], hosts: list[str]) -> bool:
        return any(ip in net for net in networks if net.version == ip.version) or _matches(
            name, hosts
        )


def restriction(ip: IPAddress) -> str | None:
    """Why a remote party may not make us fetch from ``ip``, or None for a public one."""
    ip = _unwrap(ip)
    if ip in CLOUD_METADATA:
        return "the cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "not a public address"
    if any(ip in net for net in _PRIVATE if net.version == ip.version):
        return "a private address"
    if not ip.is_global:
        return "not a public address"
    return None


class PolicyResolver(AbstractResolver):
    """aiohttp's resolver, checking every address it returns against a policy: the
    addresses checked are the addresses connected to (no DNS rebinding in between)."""

    def __init__(self, policy: SourcePolicy) -> None:
        self._policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        url = f"http://{host}:{port}/"
        if _matches(_normal_host(host), self._policy.deny_hosts):
            raise SourceRefused(
                f"refused to connect to {host} for a remote party: denied by source.deny",
                url=url,
            )
        if not _matches(_normal_host(host), self._policy.allow_hosts):
            for result in results:
                self._policy.check_address(host, result["host"], url)
        return results

    async def close(self) -> None:
        await self._inner.close()


def policy_trace(policy: SourcePolicy) -> TraceConfig:
    """A TraceConfig that checks the first URL of every request and the target of every
    redirect before aiohttp follows it (IP-literal hosts never reach the resolver)."""

    async def on_start(_session: Any, _ctx: Any, params: Any) -> None:
        await policy.check_url(str(params.url))

    async def on_redirect(_session: Any, _ctx: Any, params: Any) -> None:
        location = params.response.headers.get("Location") or params.response.headers.get("URI")
        if location:
            try:
                target = params.response.url.join(URL(location))
            except ValueError:
                return  # aiohttp refuses the redirect itself
            await policy.check_url(str(target))

    trace = TraceConfig()
    trace.on_request_start.append(on_start)
    trace.on_request_redirect.append(on_redirect)
    return trace


# -- parsing and matching ---------------------------------------------------------------------


def _parse_entries(key: str, entries: Iterable[str]) -> tuple[list[IPNetwork], list[str]]:
    networks: list[IPNetwork] = []
    hosts: list[str] = []
    for entry in entries:
        if not isinstance(entry, str):
            raise ValueError(f"{key!r}: entry {entry!r} must be a string")
        text = entry.strip()
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
            continue
        except ValueError:
            pass
        pattern = _normal_host(text)
        labels = pattern.split(".")
        if labels and labels[0] == "*":
            labels = labels[1:]
        if not labels or not all(_LABEL.match(label) for label in labels) or _looks_numeric(text):
            raise ValueError(
                f"{key!r}: entry {entry!r} is neither a CIDR (10.0.0.0/8, fd00::/8), an "
                f"address, a host name (origin.internal) nor a pattern (*.corp.example)"
            )
        hosts.append(pattern)
    return networks, hosts


def _looks_numeric(text: str) -> bool:
    # "10.0.0.0/33", "1.2.3.4/8/9", "::1/129": a broken CIDR, not a host name.
    return "/" in text or ":" in text or text.replace(".", "").isdigit()


def _matches(name: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        if pattern.startswith("*."):
            if name.endswith(pattern[1:]) and len(name) > len(pattern) - 1:
                return True
        elif name == pattern:
            return True
    return False


def _normal_host(host: str) -> str:
    return host.strip().rstrip(".").lower()


def _as_address(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


def _unwrap(ip: IPAddress) -> IPAddress:
    """::ffff:127.0.0.1 is 127.0.0.1 on the wire: judge the IPv4 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _example_cidr(ip: IPAddress) -> str:
    if ip.is_loopback:
        return "127.0.0.0/8" if ip.version == 4 else "::1/128"
    return f"{ip}/{ip.max_prefixlen}"
