"""What the scheduler decided: plain, immutable result objects.

The scheduler never does I/O; each call returns one of these and the caller (the
scheduler daemon, or the simulator) turns it into a message or a simulated event.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple


class ParentInfo(NamedTuple):
    """A parent a child may download from, with what the child's picker needs: where to
    connect and the parent host's load (``tx_bandwidth`` reserved, ``upload_limit_bps``)
    to weigh pieces across parents. (A NamedTuple: three are built per decision.)"""

    peer_id: str
    host_id: str
    ip: str
    port: int
    download_port: int
    score: float
    tx_bandwidth: int
    upload_limit_bps: int
    is_seed: bool


@dataclasses.dataclass(frozen=True, slots=True)
class TaskMeta:
    """A task's geometry as the scheduler knows it (None: not known yet)."""

    task_id: str
    content_length: int | None
    piece_length: int | None
    piece_count: int | None


# --- register / reschedule answers -------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class EmptyTask:
    """The task has no bytes: the peer writes an empty file and is done."""

    peer_id: str
    task: TaskMeta


@dataclasses.dataclass(frozen=True, slots=True)
class TinyTask:
    """The task's bytes (<= 128) are answered inline."""

    peer_id: str
    task: TaskMeta
    content: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class SmallTask:
    """One piece: fetch it from this parent, which holds the whole task."""

    peer_id: str
    task: TaskMeta
    parent: ParentInfo


@dataclasses.dataclass(frozen=True, slots=True)
class NormalTask:
    """Candidate parents, best first (DAG edges to each were added)."""

    peer_id: str
    task: TaskMeta
    parents: tuple[ParentInfo, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class NeedBackToSource:
    """Fetch from the origin (the peer was moved to BACK_TO_SOURCE)."""

    peer_id: str
    task: TaskMeta
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class TriggerSeedPeer:
    """The task needs its seed peer: the caller tells seed host ``seed_host_id`` to
    download ``url`` (task ``task``) in the background, and handles ``then``, the
    registering peer's first round (parents, or a Retry), at once: nobody waits for the
    seed (Dragonfly's behaviour). :func:`~d7y.core.scheduling.answers.first_step` does
    both in order."""

    peer_id: str
    task: TaskMeta
    url: str
    seed_host_id: str
    seed_ip: str
    seed_port: int
    then: ScheduleResult


@dataclasses.dataclass(frozen=True, slots=True)
class Retry:
    """No parent this round: call reschedule again after ``retry_after`` seconds."""

    peer_id: str
    task: TaskMeta
    retry_after: float
    round: int
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class ScheduleFailed:
    """``retry_limit`` rounds failed and back-to-source is not allowed: the download fails."""

    peer_id: str
    task: TaskMeta
    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class MetadataOnly:
    """The peer's host already holds the whole task (peer ``holder_peer_id`` succeeded):
    use the local copy. No new peer is created for ``peer_id``."""

    peer_id: str
    task: TaskMeta
    holder_peer_id: str


RegisterResult = (
    EmptyTask
    | TinyTask
    | SmallTask
    | NormalTask
    | NeedBackToSource
    | TriggerSeedPeer
    | Retry
    | ScheduleFailed
    | MetadataOnly
)
ScheduleResult = NormalTask | NeedBackToSource | TriggerSeedPeer | Retry | ScheduleFailed


# --- other events --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class HostAnnounced:
    host_id: str
    new: bool


@dataclasses.dataclass(frozen=True, slots=True)
class PieceFailedResult:
    """``blocklisted``: the parent is now in the peer's blocklist for this task.
    ``reschedule``: the peer has no usable parent left; call reschedule."""

    peer_id: str
    parent_id: str | None
    blocklisted: bool
    reschedule: bool


@dataclasses.dataclass(frozen=True, slots=True)
class PeerLeft:
    """Peers removed, and the children that lost a parent (tell them to reschedule)."""

    peer_ids: tuple[str, ...]
    orphaned_children: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class DownloadEnded:
    """A peer finished or failed; ``orphaned_children`` lost it as a parent (only on
    failure: a finished peer keeps serving)."""

    peer_id: str
    orphaned_children: tuple[str, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class GCResult:
    peers: tuple[str, ...]
    tasks: tuple[str, ...]
    hosts: tuple[str, ...]
    orphaned_children: tuple[str, ...]
