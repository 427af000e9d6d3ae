"""The manager's tables (SQLAlchemy 2 declarative); alembic migrations create them.

Times are UNIX seconds (floats): the same on SQLite and PostgreSQL, and keepalive
arithmetic needs no time-zone handling. Structured settings (scopes, cluster configs,
scopes of a token) are JSON columns: they are read and written whole.

A cluster is Dragonfly's scheduler cluster and seed-peer cluster, which are 1:1 there,
kept as one row here.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ACTIVE = "active"
INACTIVE = "inactive"


class Base(DeclarativeBase):
    pass


class Cluster(Base):
    __tablename__ = "clusters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    bio: Mapped[str] = mapped_column(Text, default="")
    scopes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    is_default: Mapped[bool] = mapped_column(default=False)
    scheduler_cluster_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    seed_peer_cluster_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    peer_cluster_config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Scheduler(Base):
    __tablename__ = "schedulers"
    __table_args__ = (UniqueConstraint("hostname", "ip", "cluster_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hostname: Mapped[str] = mapped_column(String(256))
    ip: Mapped[str] = mapped_column(String(64))
    port: Mapped[int] = mapped_column(Integer)
    idc: Mapped[str] = mapped_column(String(256), default="")
    location: Mapped[str] = mapped_column(String(1024), default="")
    features: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default=INACTIVE)
    last_keepalive_at: Mapped[float] = mapped_column(Float, default=0.0)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class SeedPeer(Base):
    __tablename__ = "seed_peers"
    __table_args__ = (UniqueConstraint("hostname", "ip", "cluster_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hostname: Mapped[str] = mapped_column(String(256))
    type: Mapped[str] = mapped_column(String(16), default="super")
    ip: Mapped[str] = mapped_column(String(64))
    port: Mapped[int] = mapped_column(Integer)
    download_port: Mapped[int] = mapped_column(Integer)
    idc: Mapped[str] = mapped_column(String(256), default="")
    location: Mapped[str] = mapped_column(String(1024), default="")
    state: Mapped[str] = mapped_column(String(16), default=INACTIVE)
    last_keepalive_at: Mapped[float] = mapped_column(Float, default=0.0)
    cluster_id: Mapped[int] = mapped_column(ForeignKey("clusters.id"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256), unique=True)
    email: Mapped[str] = mapped_column(String(256), default="")
    password_hash: Mapped[str] = mapped_column(String(512))
    role: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), default="enable")
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class PersonalAccessToken(Base):
    __tablename__ = "personal_access_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    bio: Mapped[str] = mapped_column(Text, default="")
    #: SHA-256 of the token (hex): the token itself is shown once and never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    #: The first characters, so an operator can tell tokens apart in a listing.
    token_prefix: Mapped[str] = mapped_column(String(32))
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    state: Mapped[str] = mapped_column(String(16), default=ACTIVE)
    expires_at: Mapped[float] = mapped_column(Float)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class Audit(Base):
    __tablename__ = "audits"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    actor_type: Mapped[str] = mapped_column(String(16))  # user | token | anonymous
    actor_name: Mapped[str] = mapped_column(String(256), default="")
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(1024))
    status_code: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16))  # success | failure
    created_at: Mapped[float] = mapped_column(Float, index=True)


class Job(Base):
    """A job (preheat): its arguments as given and its state; its work is in job_tasks."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    type: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(16), index=True)  # PENDING RUNNING SUCCESS FAILURE
    args: Mapped[dict[str, Any]] = mapped_column(JSON)
    scheduler_cluster_ids: Mapped[list[int]] = mapped_column(JSON)
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    #: When the job fails as a whole if tasks are still unfinished (UNIX seconds).
    deadline: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class JobTask(Base):
    """One URL of a job in one cluster: queued (PENDING), held by a scheduler (RUNNING),
    then SUCCESS or FAILURE with the seed peer that did it and the error."""

    __tablename__ = "job_tasks"
    __table_args__ = (Index("ix_job_tasks_cluster_state", "cluster_id", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    cluster_id: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(Text)
    task_id: Mapped[str] = mapped_column(String(64), default="")
    tag: Mapped[str] = mapped_column(String(256), default="")
    filtered_query_params: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    #: Headers for the origin (a registry token obtained for the job included).
    headers: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16))
    seed_peer: Mapped[str] = mapped_column(String(512), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    scheduler_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    claimed_at: Mapped[float] = mapped_column(Float, default=0.0)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)
