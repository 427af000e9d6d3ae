"""Where preheat tasks wait for a scheduler of their cluster, and the cluster's rate.

Two backends with one interface, picked by ``redis.address``:

- :class:`SqlJobQueue` (the default): the ``job_tasks`` rows in state PENDING are the
  queue; a scheduler waiting for work is woken by this process when it queues tasks,
  and looks again every second for tasks another manager process queued.
- :class:`RedisJobQueue`: one Redis list per cluster (``<prefix>preheat:cluster:<id>``)
  holds the task IDs; a waiting scheduler blocks in BLPOP, so any manager process that
  queues a task wakes it (Dragonfly's manager queues its jobs in Redis too).

Either way the database row stays the record: what a queue hands out is only a
candidate, which the job service claims with a conditional update (PENDING ->
RUNNING), so a task is never run twice and a deleted job's IDs are skipped.

``job_rate_limit`` (a cluster's scheduler_cluster_config) caps the tasks handed to the
cluster's schedulers per second: a one-second window counter, kept in this process for
SQL and in Redis (shared by every manager process) for Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from d7y.daemons.manager.models import JobTask


class QueueUnavailable(Exception):
    """The queue's server (Redis) cannot be reached; the message says which."""


#: How often a waiting claim looks at the table again (SQL: other managers' tasks).
SQL_POLL = 1.0


class JobQueue(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def push(self, cluster_id: int, task_ids: list[int]) -> None: ...

    async def pop(self, cluster_id: int, count: int, timeout: float) -> list[int]: ...

    async def take(self, cluster_id: int, want: int, limit: int) -> tuple[int, float]:
        """(tasks granted now, seconds until more may be granted)."""
        ...

    async def give_back(self, cluster_id: int, count: int) -> None: ...


class _Window:
    """A one-second window counter per cluster, in this process."""

    def __init__(self, clock=time.time) -> None:
        self._counts: dict[int, tuple[int, int]] = {}
        self.clock = clock

    def take(self, cluster_id: int, want: int, limit: int) -> tuple[int, float]:
        now = self.clock()
        second = int(now)
        window, used = self._counts.get(cluster_id, (second, 0))
        if window != second:
            used = 0
        granted = max(0, min(want, limit - used))
        self._counts[cluster_id] = (second, used + granted)
        return granted, second + 1 - now

    def give_back(self, cluster_id: int, count: int) -> None:
        window, used = self._counts.get(cluster_id, (0, 0))
        if window == int(self.clock()):
            self._counts[cluster_id] = (window, max(0, used - count))


class SqlJobQueue:
    name = "sql"

    def __init__(self, sessions: async_sessionmaker[AsyncSession], clock=time.time) -> None:
        self.sessions = sessions
        self._events: dict[int, asyncio.Event] = {}
        self._window = _Window(clock)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    def _event(self, cluster_id: int) -> asyncio.Event:
        return self._events.setdefault(cluster_id, asyncio.Event())

    async def push(self, cluster_id: int, task_ids: list[int]) -> None:
        # The rows are the queue; wake whoever waits for this cluster.
        event = self._event(cluster_id)
        event.set()
        event.clear()

    async def pop(self, cluster_id: int, count: int, timeout: float) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            event = self._event(cluster_id)
            waiter = asyncio.ensure_future(event.wait())
            try:
                async with self.sessions() as session:
                    ids = list(await session.scalars(
                        select(JobTask.id)
                        .where(JobTask.cluster_id == cluster_id, JobTask.state == "PENDING")
                        .order_by(JobTask.id)
                        .limit(count)
                    ))  # fmt: skip
                left = deadline - time.monotonic()
                if ids or left <= 0:
                    return ids
                await asyncio.wait([waiter], timeout=min(left, SQL_POLL))
            finally:
                waiter.cancel()

    async def take(self, cluster_id: int, want: int, limit: int) -> tuple[int, float]:
        return self._window.take(cluster_id, want, limit)

    async def give_back(self, cluster_id: int, count: int) -> None:
        self._window.give_back(cluster_id, count)


class RedisJobQueue:
    name = "redis"

    def __init__(
        self, address: str, *, password: str = "", db: int = 0, prefix: str = "d7y:",
        clock=time.time,
    ) -> None:  # fmt: skip
        self.clock = clock
        self.address = address if "://" in address else f"redis://{address}"
        #: The address for messages: without a password it may carry.
        self.shown = re.sub(r"//[^@/]*@", "//", self.address)
        self.password = password or None
        self.db = db
        self.prefix = prefix
        self.client = None

    async def start(self) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:
            raise RuntimeError(
                "redis.address is set but the redis package is not installed: "
                "pip install 'd7y[redis]'"
            ) from None
        self.client = aioredis.Redis.from_url(
            self.address, password=self.password, db=self.db, decode_responses=True
        )
        await self.client.ping()

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()

    def _key(self, cluster_id: int) -> str:
        return f"{self.prefix}preheat:cluster:{cluster_id}"

    async def push(self, cluster_id: int, task_ids: list[int]) -> None:
        if task_ids:
            async with self._errors():
                await self.client.rpush(self._key(cluster_id), *task_ids)

    @contextlib.asynccontextmanager
    async def _errors(self):
        from redis.exceptions import RedisError

        try:
            yield
        except (RedisError, OSError, TimeoutError) as exc:
            raise QueueUnavailable(
                f"the job queue in Redis at {self.shown} cannot be reached "
                f"({exc.__class__.__name__}: {exc})"
            ) from None

    async def pop(self, cluster_id: int, count: int, timeout: float) -> list[int]:
        async with self._errors():
            return await self._pop(cluster_id, count, timeout)

    async def _pop(self, cluster_id: int, count: int, timeout: float) -> list[int]:
        key = self._key(cluster_id)
        first = await self.client.lpop(key)
        if first is None:
            if timeout <= 0:
                return []
            popped = await self.client.blpop([key], timeout=max(timeout, 0.01))
            if popped is None:
                return []
            first = popped[1]
        ids = [int(first)]
        if count > 1:
            more = await self.client.lpop(key, count - 1)
            ids += [int(i) for i in more or ()]
        return ids

    async def take(self, cluster_id: int, want: int, limit: int) -> tuple[int, float]:
        async with self._errors():
            return await self._take(cluster_id, want, limit)

    async def _take(self, cluster_id: int, want: int, limit: int) -> tuple[int, float]:
        now = self.clock()
        second = int(now)
        key = f"{self.prefix}rate:{cluster_id}:{second}"
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.incrby(key, want)
            pipe.expire(key, 2)
            used, _ = await pipe.execute()
        over = int(used) - limit
        granted = want if over <= 0 else max(0, want - over)
        if granted < want:
            await self.client.decrby(key, want - granted)
        return granted, second + 1 - now

    async def give_back(self, cluster_id: int, count: int) -> None:
        if count > 0:
            key = f"{self.prefix}rate:{cluster_id}:{int(self.clock())}"
            async with self._errors(), self.client.pipeline(transaction=True) as pipe:
                pipe.decrby(key, count)
                pipe.expire(key, 2)
                await pipe.execute()
