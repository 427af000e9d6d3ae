"""The database: the async engine, migrations at start, and the first start's seed data.

SQLAlchemy's asyncio engine with native async drivers (asyncpg for PostgreSQL, aiosqlite
for SQLite) rather than the sync engine in a thread pool: the manager is an asyncio
service like the other daemons, a request waiting on the database then costs no thread,
and asyncpg is the fastest PostgreSQL driver for Python. SQLite runs in WAL mode with a
busy timeout so readers do not block the writer, and with foreign keys enforced.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from pathlib import Path
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from d7y.daemons.manager import auth
from d7y.daemons.manager.models import Cluster, PersonalAccessToken, User
from d7y.daemons.manager.schemas import (
    PeerClusterConfig,
    SchedulerClusterConfig,
    Scopes,
    SeedPeerClusterConfig,
)

log = logging.getLogger("d7y.manager")
MIGRATIONS = Path(__file__).with_name("migrations")
DEFAULT_CLUSTER = "cluster-1"
ROOT_USER = "root"


def create_engine(url: str, *, pool_size: int = 5, connect_timeout: float = 5.0) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    return create_async_engine(
        url,
        pool_size=pool_size,
        # A connection the server closed (a restart) is found before it is used.
        pool_pre_ping=True,
        pool_timeout=connect_timeout,
        connect_args={"timeout": connect_timeout},
    )


def _upgrade(connection: Any) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (alembic); a no-op when it is there."""
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade)


def default_cluster_values() -> dict[str, Any]:
    import msgspec

    return {
        "scopes": msgspec.to_builtins(Scopes()),
        "scheduler_cluster_config": msgspec.to_builtins(SchedulerClusterConfig()),
        "seed_peer_cluster_config": msgspec.to_builtins(SeedPeerClusterConfig()),
        "peer_cluster_config": msgspec.to_builtins(PeerClusterConfig()),
    }


async def seed(
    sessions: async_sessionmaker[AsyncSession],
    *,
    environ: dict[str, str] | None = None,
    token_ttl: float = 365 * 86400,
) -> None:
    """First start: cluster-1 (default), user root, and a token from $D7Y_PAT. Each is
    made only when missing, all in one transaction, so a restart changes nothing."""
    env = os.environ if environ is None else environ
    now = time.time()
    async with sessions() as session, session.begin():
        if (await session.scalar(select(Cluster).limit(1))) is None:
            session.add(
                Cluster(
                    name=DEFAULT_CLUSTER,
                    bio="the default cluster, made at first start",
                    is_default=True,
                    created_at=now,
                    updated_at=now,
                    **default_cluster_values(),
                )
            )
            log.info("seeded cluster name=%s default=true", DEFAULT_CLUSTER)
        root = await session.scalar(select(User).where(User.name == ROOT_USER))
        if root is None:
            password = env.get("D7Y_INITIAL_ROOT_PASSWORD", "")
            generated = not password
            if generated:
                password = secrets.token_urlsafe(18)
            root = User(
                name=ROOT_USER,
                password_hash=auth.hash_password(password),
                role="root",
                state="enable",
                created_at=now,
                updated_at=now,
            )
            session.add(root)
            await session.flush()
            if generated:
                # Printed once, to the log only: it is in no file and cannot be shown again.
                log.warning(
                    "seeded user root with a generated password (shown only now; change it "
                    "with POST /api/v1/users/%d/reset_password): %s",
                    root.id,
                    password,
                )
            else:
                log.info("seeded user root with the password from D7Y_INITIAL_ROOT_PASSWORD")
        pat = env.get("D7Y_PAT", "")
        if pat:
            digest = auth.token_hash(pat)
            found = await session.scalar(
                select(PersonalAccessToken).where(PersonalAccessToken.token_hash == digest)
            )
            if found is None:
                session.add(
                    PersonalAccessToken(
                        name="d7y-pat",
                        bio="from $D7Y_PAT at start",
                        token_hash=digest,
                        token_prefix=pat[:12],
                        scopes=["job", "cluster"],
                        state="active",
                        expires_at=now + token_ttl,
                        user_id=root.id,
                        created_at=now,
                        updated_at=now,
                    )
                )
                log.info("seeded a personal access token from D7Y_PAT scopes=job,cluster")
