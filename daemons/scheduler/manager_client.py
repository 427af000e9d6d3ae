"""The scheduler's side of the manager: register, keep alive, apply the cluster config.

With ``manager.address`` set, the scheduler registers with the manager at start
(hostname, ip, port, idc, location, cluster), sends a keepalive every
``manager.keepalive_interval`` (5 s, Dragonfly's) and fetches its cluster's config every
``manager.config_interval`` (1 min), applying the parent limits without a restart. The
manager being away costs nothing but a log line: the scheduler serves on with the config
it has and registers again when the manager answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from collections.abc import Callable
from typing import Any

import aiohttp

from d7y.core.scheduling.config import SchedulerConfig
from d7y.daemons.manager.caller import ManagerCaller

log = logging.getLogger("d7y.scheduler")


class ManagerClient(ManagerCaller):
    def __init__(
        self,
        settings: Any,  # scheduler config's ManagerConfig section
        *,
        port: int,
        get_config: Callable[[], SchedulerConfig],
        set_config: Callable[[SchedulerConfig], None],
    ) -> None:
        super().__init__(settings)
        self.port = port
        self.get_config = get_config
        self.set_config = set_config
        self.scheduler_id: int | None = None
        #: Set while the scheduler is registered (scheduler_id is known).
        self.registered = asyncio.Event()
        self.applied: dict[str, int] = {}
        self._unreachable = False  # warned once; the next warning waits for a success

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One call to the manager on this client's session: (status, decoded JSON)."""
        return await self._call(method, path, body)

    async def _call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self._session is not None
        async with self._session.request(method, self.base + path, json=body) as response:
            data = await response.json(content_type=None) if response.content_length else None
            return response.status, data

    async def _run(self) -> None:
        keepalive = float(self.settings.keepalive_interval)
        config_every = float(self.settings.config_interval)
        since_config = config_every  # fetch right after registering
        while True:
            try:
                if self.scheduler_id is None:
                    await self._register()
                else:
                    await self._keepalive()
                if self.scheduler_id is not None and since_config >= config_every:
                    await self._fetch_config()
                    since_config = 0.0
                if self._unreachable:
                    log.info("manager %s reachable again", self.base)
                    self._unreachable = False
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                # Once per outage at warning: a keepalive every 5 s must not flood the log.
                level = logging.DEBUG if self._unreachable else logging.WARNING
                log.log(
                    level,
                    "manager %s unreachable: %s (serving on; retrying every %gs)",
                    self.base,
                    exc.__class__.__name__,
                    keepalive,
                )
                self._unreachable = True
            await asyncio.sleep(keepalive)
            since_config += keepalive

    async def _register(self) -> None:
        s = self.settings
        body = {
            "hostname": s.hostname or socket.gethostname(),
            "ip": s.ip,
            "port": s.advertise_port or self.port,
            "cluster_id": s.cluster_id,
            "idc": s.idc,
            "location": s.location,
        }
        status, answer = await self._call("POST", "/api/v1/schedulers", body)
        if status in (200, 201):
            self.scheduler_id = answer["id"]
            self.registered.set()
            log.info(
                "registered with the manager id=%d cluster=%d", self.scheduler_id, s.cluster_id
            )
        else:
            log.warning("the manager refused the registration: %s %s", status, _message(answer))

    async def _keepalive(self) -> None:
        status, answer = await self._call(
            "POST", f"/api/v1/schedulers/{self.scheduler_id}/keepalive"
        )
        if status == 404:  # deleted meanwhile: register again
            self.scheduler_id = None
            self.registered.clear()
        elif status != 200:
            log.warning("keepalive refused: %s %s", status, _message(answer))

    async def _fetch_config(self) -> None:
        status, answer = await self._call(
            "GET", f"/api/v1/clusters/{self.settings.cluster_id}/config"
        )
        if status != 200:
            log.warning("cannot read the cluster config: %s %s", status, _message(answer))
            return
        limits = answer.get("scheduler_cluster_config", {})
        wanted = {
            k: int(limits[k])
            for k in ("candidate_parent_limit", "filter_parent_limit")
            if isinstance(limits.get(k), int)
        }
        if not wanted or wanted == self.applied:
            return
        current = self.get_config()
        changes = dict(wanted)
        # A round may hand out candidate_parent_limit parents: a peer must be able to hold them.
        changes["max_parents"] = max(current.max_parents, wanted.get("candidate_parent_limit", 0))
        try:
            self.set_config(dataclasses.replace(current, **changes))
        except ValueError as exc:
            log.warning("cluster config not applied: %s", exc)
            return
        self.applied = wanted
        log.info(
            "applied cluster config %s",
            " ".join(f"{k}={v}" for k, v in sorted(wanted.items())),
        )


def _message(answer: Any) -> str:
    return answer.get("message", "") if isinstance(answer, dict) else ""
