"""What a service that calls the manager in the background shares: the manager's base
URL from ``manager.address`` (``http://`` when no scheme is given), one HTTP session that
carries ``manager.token`` as a bearer token, and one background task, started and
stopped with the service. The scheduler's registration (daemons/scheduler/manager_client)
and dfdaemon's scheduler lookup (daemons/peer/manager_lookup) build on it.

Only aiohttp here: importing it does not load the manager's database layer.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp

#: One call to the manager, connection and answer included.
CALL_TIMEOUT = 10.0


class ManagerCaller:
    """Subclasses implement :meth:`_run`, the loop that calls the manager."""

    def __init__(self, settings: Any) -> None:
        """``settings``: the service config's ``manager`` section (address, token)."""
        self.settings = settings
        base = settings.address.rstrip("/")
        self.base = base if "://" in base else "http://" + base
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        token = self.settings.token
        self._session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=aiohttp.ClientTimeout(total=CALL_TIMEOUT),
        )
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        raise NotImplementedError
