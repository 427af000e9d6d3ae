"""Which scheduler to use, asked of the manager (``manager.address`` instead of
``scheduler.address``).

Every ``manager.refresh_interval`` (60 s, Dragonfly's) the daemon asks the manager for
the schedulers that fit this host (``GET /api/v1/schedulers/search``: the active
schedulers, best-matching cluster first). While the scheduler connection is down, it
health-checks them in that order (a connection to the scheduler's port, with the TLS
handshake when ``security.tls`` is on) and points the
:class:`~d7y.daemons.peer.scheduler_client.SchedulerClient` at the first that answers; the
client's own reconnect loop then connects there. So the daemon keeps the first healthy
scheduler and moves on when it dies. A manager that cannot be reached leaves the list
as it was: the daemon goes on with the schedulers it knew.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any

import aiohttp

from d7y.daemons.manager.caller import ManagerCaller
from d7y.daemons.peer.scheduler_client import SchedulerClient
from d7y.daemons.stream import connect_stream

log = logging.getLogger("d7y.dfdaemon.scheduler")
#: How often the connection's state is looked at (cheap: an Event check).
CHECK_INTERVAL = 0.5
#: A scheduler that does not accept a TCP connection within this is skipped.
HEALTH_TIMEOUT = 1.0


async def reachable(
    address: tuple[str, int], tls: ssl.SSLContext | None = None, timeout: float = HEALTH_TIMEOUT
) -> bool:
    """The scheduler accepts a connection; with ``tls``, the whole handshake too. A bare
    TCP connect to a TLS port would be a handshake the scheduler sees cut (and logs as
    refused), and would not show that this daemon's certificate is accepted there."""
    try:
        stream = await connect_stream(*address, tls=tls, timeout=timeout)
    except (OSError, EOFError):  # TimeoutError and ssl.SSLError are OSErrors
        return False
    stream.close()
    return True


class SchedulerLookup(ManagerCaller):
    def __init__(self, settings: Any, client: SchedulerClient, host: dict[str, str]) -> None:
        """``settings``: the peer config's ``manager`` section; ``host``: hostname, ip,
        idc, location of this host (what the manager scores)."""
        super().__init__(settings)
        self.client = client
        self.host = host
        self.candidates: list[tuple[str, int]] = []
        self._client_started = False
        self._warned = False

    async def _run(self) -> None:
        refresh = float(self.settings.refresh_interval)
        next_refresh = 0.0
        while True:
            if time.monotonic() >= next_refresh:
                await self.refresh()
                next_refresh = time.monotonic() + refresh
            if not self.client.connected.is_set():
                await self._pick()
            await asyncio.sleep(CHECK_INTERVAL)

    async def refresh(self) -> None:
        assert self._session is not None
        try:
            async with self._session.get(
                self.base + "/api/v1/schedulers/search", params=self.host
            ) as response:
                body = await response.json(content_type=None)
                if response.status != 200:
                    message = body.get("message", "") if isinstance(body, dict) else ""
                    raise ValueError(f"{response.status} {message}")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            if not self._warned:  # once per outage
                log.warning(
                    "manager %s: cannot list schedulers (%s); keeping %d known",
                    self.base, exc or exc.__class__.__name__, len(self.candidates),
                )  # fmt: skip
                self._warned = True
            return
        self._warned = False
        found = [(s["ip"], int(s["port"])) for s in body]
        if found != self.candidates:
            log.info(
                "manager %s lists schedulers %s", self.base,
                ",".join(f"{ip}:{port}" for ip, port in found) or "none",
            )  # fmt: skip
        self.candidates = found

    async def _pick(self) -> None:
        """Point the client at the first healthy scheduler (it connects by itself)."""
        for address in self.candidates:
            if await reachable(address, self.client.tls):
                if address != self.client.address or not self._client_started:
                    log.info("using scheduler %s:%d (from the manager)", *address)
                    self.client.address = address
                if not self._client_started:
                    self.client.start()
                    self._client_started = True
                return
