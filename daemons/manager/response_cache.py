"""A Redis cache of whole answers of the manager's hot reads (``GET /api/v1/clusters``),
when ``redis.address`` is set; without Redis every read goes to the database.

Invalidation is by generation: each cached resource has a counter in Redis
(``<prefix>cache:<resource>:gen``) that is part of every cached answer's key. A request
that changed the resource increments it after its transaction committed, so every
answer cached before (including one computed from rows read before the commit and
stored after it) is never read again and expires by ``redis.cache_ttl``. Every manager
process sharing the Redis sees the same counter.

The cache never decides an answer: a Redis that fails or is slow makes the read go to
the database (logged once per outage), and writes still commit.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

log = logging.getLogger("d7y.manager")

#: Resources whose answers are cached; a write marks the ones it changed (mark_changed).
CLUSTERS = "clusters"
#: Seconds one Redis command may take before the cache is skipped for this request.
REDIS_TIMEOUT = 1.0


class CachedAnswer(msgspec.Struct, array_like=True):
    body: bytes
    headers: dict[str, str]


def mark_changed(session: AsyncSession, resource: str) -> None:
    """Note in the session that this transaction changes ``resource``: its cached answers
    are dropped once the transaction committed (see :meth:`ResponseCache.invalidate`)."""
    session.info.setdefault("changed_resources", set()).add(resource)


def changed_resources(session: AsyncSession) -> set[str]:
    return set(session.info.pop("changed_resources", ()))


class ResponseCache:
    """Cached answers in Redis; ``enabled`` is False without Redis or with a TTL of 0,
    and then every method does nothing."""

    def __init__(
        self, address: str = "", *, password: str = "", db: int = 0, prefix: str = "d7y:",
        ttl: float = 0.0,
    ) -> None:  # fmt: skip
        self.address = address if not address or "://" in address else f"redis://{address}"
        self.shown = re.sub(r"//[^@/]*@", "//", self.address)
        self.password = password or None
        self.db = db
        self.prefix = prefix
        self.ttl = ttl
        self.client = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        return self.client is not None

    async def start(self) -> None:
        if not self.address or self.ttl <= 0:
            return
        import redis.asyncio as aioredis  # present: the job queue checked it first

        self.client = aioredis.Redis.from_url(
            self.address,
            password=self.password,
            db=self.db,
            socket_timeout=REDIS_TIMEOUT,
            socket_connect_timeout=REDIS_TIMEOUT,
        )

    async def close(self) -> None:
        if self.client is not None:
            await self.client.aclose()
            self.client = None

    def _gen_key(self, resource: str) -> str:
        return f"{self.prefix}cache:{resource}:gen"

    async def get(self, resource: str, variant: str) -> tuple[CachedAnswer | None, str]:
        """The cached answer for ``variant`` (e.g. the query string) of ``resource`` and
        the key to store a fresh one under (empty: do not store)."""
        if self.client is None:
            return None, ""
        try:
            generation = int(await self.client.get(self._gen_key(resource)) or 0)
            key = f"{self.prefix}cache:{resource}:{generation}:{variant}"
            raw = await self.client.get(key)
        except Exception as exc:  # redis down, timeout, bad answer: the database answers
            self._failed(exc)
            return None, ""
        self._recovered()
        if raw is None:
            return None, key
        try:
            return msgspec.msgpack.decode(raw, type=CachedAnswer), key
        except msgspec.DecodeError:
            return None, key  # not ours (or an old format): overwrite it

    async def put(self, key: str, body: bytes, headers: dict[str, str]) -> None:
        if self.client is None or not key:
            return
        try:
            value = msgspec.msgpack.encode(CachedAnswer(body, headers))
            await self.client.set(key, value, ex=max(1, round(self.ttl)))
        except Exception as exc:
            self._failed(exc)

    async def invalidate(self, resources: Iterable[str]) -> None:
        """After a commit that changed ``resources``: answers cached so far are stale."""
        if self.client is None:
            return
        for resource in resources:
            try:
                await self.client.incr(self._gen_key(resource))
            except Exception as exc:
                # Stale answers live at most cache_ttl: say so, the write itself stands.
                log.warning(
                    "response cache: cannot invalidate %s at %s (answers may be stale for "
                    "up to redis.cache_ttl): %s", resource, self.shown, exc,
                )  # fmt: skip

    def _failed(self, exc: Exception) -> None:
        if not self._failing:
            self._failing = True
            log.warning(
                "response cache: Redis at %s failed, reading from the database: %s",
                self.shown, exc,
            )  # fmt: skip

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            log.info("response cache: Redis at %s answers again", self.shown)
