"""The manager's service layer: what creating, changing and deleting clusters, users and
tokens means, apart from how the request came in.

The REST API (api.py) and the console (console/) both call these with a database session
of the request and the principal making it; the caller owns the transaction (commit with
the audit row, or roll back). Refusals are ApiError with the status, the message and the
field, so both front ends say the same thing.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
from sqlalchemy import case, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from d7y.daemons.manager import auth
from d7y.daemons.manager import schemas as s
from d7y.daemons.manager.errors import ApiError
from d7y.daemons.manager.models import (
    ACTIVE,
    INACTIVE,
    Cluster,
    PersonalAccessToken,
    Scheduler,
    SeedPeer,
    User,
)
from d7y.daemons.manager.response_cache import CLUSTERS, mark_changed


async def get_or_404(session: AsyncSession, model: type, ident: int, what: str) -> Any:
    row = await session.get(model, ident)
    if row is None:
        raise ApiError(404, "not_found", f"{what} {ident} does not exist")
    return row


class ManagerOperations:
    """The writes (and the lookups they need) on clusters, members, users and tokens."""

    def __init__(self, keepalive_timeout: float) -> None:
        self.keepalive_timeout = keepalive_timeout

    # -- liveness ----------------------------------------------------------------------

    def is_active(self, last_keepalive_at: float, now: float | None = None) -> bool:
        return (time.time() if now is None else now) - last_keepalive_at < self.keepalive_timeout

    def active_since(self) -> float:
        return time.time() - self.keepalive_timeout

    def member_state(self, row: Scheduler | SeedPeer) -> str:
        return ACTIVE if self.is_active(row.last_keepalive_at) else INACTIVE

    # -- clusters ----------------------------------------------------------------------

    async def _name_free(self, session: AsyncSession, name: str, own_id: int | None) -> None:
        found = await session.scalar(select(Cluster.id).where(Cluster.name == name))
        if found is not None and found != own_id:
            raise ApiError(
                409,
                "conflict",
                f"a cluster named {name!r} exists (id {found}); choose another name",
                "name",
            )

    async def _only_default(self, session: AsyncSession, cluster_id: int) -> None:
        """One default cluster: making one default makes the others not."""
        await session.execute(
            update(Cluster)
            .where(Cluster.id != cluster_id, Cluster.is_default.is_(True))
            .values(is_default=False)
        )

    async def create_cluster(self, session: AsyncSession, body: s.ClusterCreate) -> Cluster:
        await self._name_free(session, body.name, None)
        now = time.time()
        cluster = Cluster(
            name=body.name, bio=body.bio, is_default=body.is_default,
            scopes=msgspec.to_builtins(body.scopes),
            scheduler_cluster_config=msgspec.to_builtins(body.scheduler_cluster_config),
            seed_peer_cluster_config=msgspec.to_builtins(body.seed_peer_cluster_config),
            peer_cluster_config=msgspec.to_builtins(body.peer_cluster_config),
            created_at=now, updated_at=now,
        )  # fmt: skip
        session.add(cluster)
        await session.flush()
        if cluster.is_default:
            await self._only_default(session, cluster.id)
        mark_changed(session, CLUSTERS)
        return cluster

    async def update_cluster(
        self, session: AsyncSession, cluster_id: int, body: s.ClusterUpdate
    ) -> Cluster:
        cluster = await get_or_404(session, Cluster, cluster_id, "cluster")
        if body.name is not msgspec.UNSET:
            await self._name_free(session, body.name, cluster.id)
        for name in body.__struct_fields__:
            value = getattr(body, name)
            if value is not msgspec.UNSET:
                setattr(cluster, name, msgspec.to_builtins(value))
        cluster.updated_at = time.time()
        if body.is_default is True:
            await self._only_default(session, cluster.id)
        mark_changed(session, CLUSTERS)
        return cluster

    async def delete_cluster(self, session: AsyncSession, cluster_id: int) -> None:
        cluster = await get_or_404(session, Cluster, cluster_id, "cluster")
        since = self.active_since()
        busy = []
        for model, what in ((Scheduler, "scheduler"), (SeedPeer, "seed peer")):
            rows = await session.scalars(
                select(model).where(model.cluster_id == cluster.id, model.last_keepalive_at > since)
            )
            busy += [f"{what} {r.id} ({r.hostname})" for r in rows]
        if busy:
            raise ApiError(
                409,
                "conflict",
                f"cluster {cluster.name!r} has active members: {', '.join(busy)}; stop them "
                f"(or move them to another cluster) and wait {self.keepalive_timeout:g}s "
                "for them to turn inactive",
            )
        for model in (Scheduler, SeedPeer):
            await session.execute(delete(model).where(model.cluster_id == cluster.id))
        await session.delete(cluster)
        mark_changed(session, CLUSTERS)

    async def members(
        self, session: AsyncSession, model: type, cluster_id: int, *, active_only: bool = False
    ) -> list[Any]:
        """The schedulers (or seed peers) of a cluster, by ID."""
        statement = select(model).where(model.cluster_id == cluster_id).order_by(model.id)
        if active_only:
            statement = statement.where(model.last_keepalive_at > self.active_since())
        return list(await session.scalars(statement))

    async def member_counts(self, session: AsyncSession, model: type) -> dict[int, tuple[int, int]]:
        """cluster ID -> (active, all) schedulers (or seed peers)."""
        since = self.active_since()
        rows = await session.execute(
            select(
                model.cluster_id,
                func.count(),
                func.sum(case((model.last_keepalive_at > since, 1), else_=0)),
            ).group_by(model.cluster_id)
        )
        return {cluster_id: (int(active or 0), int(total)) for cluster_id, total, active in rows}

    # -- users -------------------------------------------------------------------------

    async def create_user(self, session: AsyncSession, body: s.UserCreate) -> User:
        if await session.scalar(select(User.id).where(User.name == body.name)) is not None:
            raise ApiError(
                409, "conflict", f"user {body.name!r} exists; choose another name", "name"
            )
        now = time.time()
        hashed = await asyncio.to_thread(auth.hash_password, body.password)
        user = User(
            name=body.name,
            email=body.email,
            role=body.role,
            state="enable",
            password_hash=hashed,
            created_at=now,
            updated_at=now,
        )
        session.add(user)
        await session.flush()
        return user

    async def update_user(self, session: AsyncSession, user_id: int, body: s.UserUpdate) -> User:
        user = await get_or_404(session, User, user_id, "user")
        demoting = (body.role is not msgspec.UNSET and body.role != "root") or (
            body.state is not msgspec.UNSET and body.state != "enable"
        )
        if demoting and user.role == "root":
            await self._keep_a_root(session, user)
        for name in ("email", "role", "state"):
            value = getattr(body, name)
            if value is not msgspec.UNSET:
                setattr(user, name, value)
        user.updated_at = time.time()
        return user

    async def _keep_a_root(self, session: AsyncSession, user: User) -> None:
        others = await session.scalar(
            select(func.count())
            .select_from(User)
            .where(User.role == "root", User.state == "enable", User.id != user.id)
        )
        if not others:
            raise ApiError(
                409,
                "conflict",
                f"user {user.name!r} is the last enabled root; make another user root first",
            )

    async def delete_user(self, session: AsyncSession, user_id: int) -> None:
        user = await get_or_404(session, User, user_id, "user")
        if user.role == "root":
            await self._keep_a_root(session, user)
        await session.execute(
            delete(PersonalAccessToken).where(PersonalAccessToken.user_id == user.id)
        )
        await session.delete(user)

    # -- personal access tokens -----------------------------------------------------------

    def tokens_of(self, who: auth.Principal) -> Any:
        """The statement listing the tokens ``who`` may see (root: everyone's)."""
        statement = select(PersonalAccessToken).order_by(PersonalAccessToken.id)
        if who.role != "root":
            statement = statement.where(PersonalAccessToken.user_id == who.user_id)
        return statement

    async def create_token(
        self, session: AsyncSession, who: auth.Principal, body: s.TokenCreate
    ) -> tuple[PersonalAccessToken, str]:
        """The new row and the token itself (shown once, never stored)."""
        now = time.time()
        token = auth.new_token()
        row = PersonalAccessToken(
            name=body.name, bio=body.bio, token_hash=auth.token_hash(token),
            token_prefix=token[:12], scopes=sorted(set(body.scopes)), state=ACTIVE,
            expires_at=now + body.expires_in, user_id=who.user_id,
            created_at=now, updated_at=now,
        )  # fmt: skip
        session.add(row)
        await session.flush()
        return row, token

    async def own_token(
        self, session: AsyncSession, who: auth.Principal, token_id: int
    ) -> PersonalAccessToken:
        row = await get_or_404(session, PersonalAccessToken, token_id, "token")
        if who.role != "root" and row.user_id != who.user_id:
            raise ApiError(404, "not_found", f"token {row.id} does not exist")
        return row

    async def update_token(
        self, session: AsyncSession, who: auth.Principal, token_id: int, body: s.TokenUpdate
    ) -> PersonalAccessToken:
        row = await self.own_token(session, who, token_id)
        if body.state is not msgspec.UNSET:
            row.state = body.state
        if body.bio is not msgspec.UNSET:
            row.bio = body.bio
        row.updated_at = time.time()
        return row

    async def delete_token(self, session: AsyncSession, who: auth.Principal, token_id: int) -> None:
        await session.delete(await self.own_token(session, who, token_id))
