"""What the REST API answers, as msgspec types: they give the OpenAPI document its
response schemas, and the tests check real answers against those schemas (no field
more, none missing), so the document cannot drift from the handlers' output."""

from __future__ import annotations

from typing import Literal

from d7y.daemons.manager.schemas import (
    JobState,
    PeerClusterConfig,
    PreheatArgs,
    SchedulerClusterConfig,
    Scopes,
    SeedPeerClusterConfig,
    Struct,
)

Time = str  # RFC 3339, UTC, milliseconds: 2026-12-01T01:20:13.788Z


class UserOut(Struct):
    id: int
    name: str
    email: str
    role: Literal["root", "guest"]
    state: Literal["enable", "disable"]
    created_at: Time
    updated_at: Time


class SignInOut(Struct):
    token: str
    expires_at: Time
    user: UserOut


class RoleOut(Struct):
    name: str
    permissions: str


class TokenOut(Struct):
    id: int
    name: str
    bio: str
    token_prefix: str
    scopes: list[Literal["job", "cluster"]]
    state: Literal["active", "inactive", "expired"]
    expires_at: Time
    user_id: int
    created_at: Time
    updated_at: Time


class TokenCreatedOut(TokenOut):
    #: The token itself: in this answer only.
    token: str


class ClusterOut(Struct):
    id: int
    name: str
    bio: str
    scopes: Scopes
    is_default: bool
    scheduler_cluster_config: SchedulerClusterConfig
    seed_peer_cluster_config: SeedPeerClusterConfig
    peer_cluster_config: PeerClusterConfig
    created_at: Time
    updated_at: Time


class MemberOut(Struct):
    id: int
    hostname: str
    ip: str
    port: int
    idc: str
    location: str
    cluster_id: int
    state: Literal["active", "inactive"]
    last_keepalive_at: Time | None
    created_at: Time
    updated_at: Time


class SchedulerOut(MemberOut):
    features: list[str]


class SchedulerMatchOut(SchedulerOut):
    cluster_name: str
    #: The cluster's scope score for the asking host (0..1).
    score: float


class SeedPeerOut(MemberOut):
    type: Literal["super", "strong", "weak"]
    download_port: int


class ClusterConfigOut(Struct):
    cluster_id: int
    name: str
    scheduler_cluster_config: SchedulerClusterConfig
    seed_peer_cluster_config: SeedPeerClusterConfig
    peer_cluster_config: PeerClusterConfig
    seed_peers: list[SeedPeerOut]


class AuditOut(Struct):
    id: int
    actor_type: Literal["user", "token", "anonymous"]
    actor_name: str
    method: str
    path: str
    status_code: int
    state: Literal["success", "failure"]
    created_at: Time


TaskState = Literal["PENDING", "RUNNING", "SUCCESS", "FAILURE"]


class JobTaskOut(Struct):
    """One URL preheated in one cluster: its task ID (as dfget and dfdaemon compute it),
    the seed peer's host ID once one took it, and why it failed."""

    url: str
    task_id: str
    seed_peer: str
    state: TaskState
    error: str


class JobResultOut(Struct):
    tasks: list[JobTaskOut]


class JobOut(Struct):
    id: int
    type: Literal["preheat"]
    state: JobState
    #: As given, with the password and credential headers shown as "******".
    args: PreheatArgs
    scheduler_cluster_ids: list[int]
    result: JobResultOut
    created_at: Time
    updated_at: Time


class ClaimedTaskOut(Struct):
    """A preheat task handed to a scheduler: what its seed peer (or, by ``scope``, its
    seed peers or every host) fetches; ``application`` and ``piece_length`` (0: derived
    from the length) are part of its task ID as in dfget."""

    id: int
    job_id: int
    url: str
    task_id: str
    tag: str
    filtered_query_params: list[str] | None
    headers: dict[str, str]
    application: str
    piece_length: int
    scope: Literal["single_seed_peer", "all_seed_peers", "all_peers"]
    #: Seconds left before the job times out.
    timeout: float


class JobReportOut(Struct):
    recorded: int
    #: Results for tasks this scheduler no longer holds (requeued, or the job deleted).
    ignored: int


RESPONSE_TYPES: tuple[type, ...] = (
    UserOut,
    SignInOut,
    RoleOut,
    TokenOut,
    TokenCreatedOut,
    ClusterOut,
    SchedulerOut,
    SchedulerMatchOut,
    SeedPeerOut,
    ClusterConfigOut,
    AuditOut,
    JobTaskOut,
    JobResultOut,
    JobOut,
    ClaimedTaskOut,
    JobReportOut,
)
