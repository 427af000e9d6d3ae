"""The scheduler service object: registration, parent selection, reports, GC.

Sans-IO: every method takes ``now`` (seconds) where time matters, draws randomness only
from the injected ``random.Random``, mutates in-memory state and returns a plain result
object (:mod:`d7y.core.scheduling.results`). The scheduler daemon turns messages into
these calls and results into messages; the simulator calls the very same methods from
SimPy processes.

Peer life cycle, as the caller drives it::

    register_peer -> (NormalTask | Retry | TriggerSeedPeer ...)
        Retry / TriggerSeedPeer: wait retry_after, then reschedule(peer) -> ...
    download_started(peer [, back_to_source=True])
    piece_finished / piece_failed ... (piece_failed may say: reschedule)
    download_finished | download_failed
    leave_peer

Decisions follow DESIGN.md section 4 and Dragonfly v2's scheduler; where they differ
from Dragonfly or DESIGN is silent, the choice is documented at the method.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from operator import itemgetter
from types import MappingProxyType, ModuleType
from typing import Any

from d7y.core.pieces import (
    TINY_TASK_MAX_LENGTH,
    SizeScope,
    compute_piece_length,
    piece_count,
    size_scope,
)
from d7y.core.scheduling.config import SchedulerConfig
from d7y.core.scheduling.evaluator import Evaluator, make_evaluator
from d7y.core.scheduling.hashring import HashRing
from d7y.core.scheduling.resource import Host, HostType, Peer, Reservation, Task
from d7y.core.scheduling.results import (
    DownloadEnded,
    EmptyTask,
    GCResult,
    HostAnnounced,
    MetadataOnly,
    NeedBackToSource,
    NormalTask,
    ParentInfo,
    PeerLeft,
    PieceFailedResult,
    RegisterResult,
    Retry,
    ScheduleFailed,
    ScheduleResult,
    SmallTask,
    TaskMeta,
    TinyTask,
    TriggerSeedPeer,
)
from d7y.core.states import IllegalTransition, PeerEvent, PeerState, TaskEvent, TaskState

_RUNNING = PeerState.RUNNING
_BTS = PeerState.BACK_TO_SOURCE
_SUCCEEDED = PeerState.SUCCEEDED
_RECEIVED_NORMAL = PeerState.RECEIVED_NORMAL
_SCHEDULABLE = (PeerState.RUNNING, PeerState.RECEIVED_NORMAL, PeerState.RECEIVED_SMALL)
_NEEDS_SEED = (TaskState.PENDING, TaskState.FAILED, TaskState.LEAVE)


class SchedulerError(Exception):
    """Base of the scheduler's errors (the daemon maps them to protocol errors)."""


class UnknownHost(SchedulerError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class UnknownPeer(SchedulerError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class UnknownTask(SchedulerError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


class DuplicatePeer(SchedulerError, ValueError):
    """A peer ID registered twice."""


class PeerStateError(SchedulerError, ValueError):
    """A call that makes no sense in the peer's current state."""


def _cap(parent: Host, child: Host, factor: int) -> int:
    """Children a parent host feeds at full speed: its upload over the child's download
    (the child's upload when its download is not announced), times ``factor``; a parent
    of unknown upload is not capped, a child of unknown speed takes a whole parent."""
    up = parent.upload_limit_bps
    if up <= 0:
        return 1 << 30
    down = child.download_limit_bps or child.upload_limit_bps
    if down <= 0:
        return factor
    return factor * max(1, up // down)


def _nearness(parent: Host, child: Host) -> int:
    """Same IDC (case-insensitive) counts most, then equal leading location elements."""
    near = 8 if parent.idc_key and parent.idc_key == child.idc_key else 0
    for a, b in zip(parent.location_parts, child.location_parts, strict=False):
        if a != b:
            break
        near += 1
    return near


def _has_parents(peer: Peer) -> bool:
    return bool(peer.task.dag._parents[peer.id])


class PieceNumberError(SchedulerError, IndexError):
    """A piece number outside the task."""


def _fire(peer: Peer, event: PeerEvent) -> None:
    """``peer.fsm.fire(event)`` for an event a caller reported: an illegal transition is
    the caller's error (a PeerStateError the daemon answers), not the scheduler's."""
    try:
        peer.fsm.fire(event)
    except IllegalTransition:
        raise PeerStateError(
            f"peer {peer.id!r} is {peer.fsm.state.name}: {event.name} is not allowed there"
        ) from None


def _check_id(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    return value


def _check_count(name: str, value: object, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_time(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"now must be a number of seconds, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"now must be a finite number of seconds, got {value!r}")
    return value


class Scheduler:
    """Hosts, tasks, peers and the per-task DAGs, plus the decisions on them.

    ``rng`` is the only source of randomness (sampling candidates, retry jitter, the
    random evaluator): the same seed and the same sequence of calls give the same
    decisions. ``evaluator`` defaults to the one named by ``config.algorithm``.
    ``bitmaps`` is the bitmap backend module (default ``d7y.ext.bitmap.backend``); tests
    pass each implementation in turn.
    """

    def __init__(
        self,
        config: SchedulerConfig | None = None,
        *,
        rng: random.Random,
        evaluator: Evaluator | None = None,
        bitmaps: ModuleType | None = None,
    ) -> None:
        if not isinstance(rng, random.Random):
            raise TypeError(
                f"rng must be a random.Random (core has no global randomness), got {rng!r}"
            )
        self.config = config if config is not None else SchedulerConfig()
        if not isinstance(self.config, SchedulerConfig):
            raise TypeError(f"config must be a SchedulerConfig, got {config!r}")
        self.rng = rng
        self.evaluator = (
            evaluator if evaluator is not None else make_evaluator(self.config.algorithm, rng)
        )
        if bitmaps is None:
            from d7y.ext.bitmap import backend as bitmaps
        self._bitmap_cls = bitmaps.Bitmap
        self._hosts: dict[str, Host] = {}
        self._tasks: dict[str, Task] = {}
        self._peers: dict[str, Peer] = {}
        self._ring = HashRing(vnodes=self.config.hash_ring_vnodes)

    # ------------------------------------------------------------------ accessors --

    def host(self, host_id: str) -> Host:
        """The live Host object (read it, do not mutate it)."""
        try:
            return self._hosts[host_id]
        except KeyError:
            raise UnknownHost(f"host {host_id!r} is unknown: announce it first") from None

    def task(self, task_id: str) -> Task:
        """The live Task object (read it, do not mutate it)."""
        try:
            return self._tasks[task_id]
        except KeyError:
            raise UnknownTask(
                f"task {task_id!r} is unknown: register a peer for it first"
            ) from None

    def peer(self, peer_id: str) -> Peer:
        """The live Peer object (read it, do not mutate it)."""
        try:
            return self._peers[peer_id]
        except KeyError:
            raise UnknownPeer(
                f"peer {peer_id!r} is unknown: it never registered, or it left or was "
                f"garbage-collected; register it again"
            ) from None

    @property
    def hosts(self) -> Mapping[str, Host]:
        return MappingProxyType(self._hosts)

    @property
    def tasks(self) -> Mapping[str, Task]:
        return MappingProxyType(self._tasks)

    @property
    def peers(self) -> Mapping[str, Peer]:
        return MappingProxyType(self._peers)

    @property
    def seed_hosts(self) -> frozenset[str]:
        return self._ring.nodes

    def piece_digests(self, task_id: str) -> Mapping[int, str]:
        """Piece number -> digest recorded from the origin fetch (read-only view)."""
        return MappingProxyType(self.task(task_id).piece_digests)

    def task_meta(self, task_id: str) -> TaskMeta:
        return self._meta(self.task(task_id))

    # ---------------------------------------------------------------------- hosts --

    def announce_host(
        self,
        host_id: str,
        now: float,
        *,
        ip: str,
        hostname: str,
        port: int = 4000,
        download_port: int = 4005,
        idc: str = "",
        location: str = "",
        type: HostType | str = HostType.NORMAL,
        upload_limit_bps: int = 0,
        concurrent_upload_limit: int | None = None,
        tx_bandwidth: int = 0,
        download_limit_bps: int = 0,
    ) -> HostAnnounced:
        """Add or refresh a host (resets its TTL). ``upload_limit_bps`` is the host's
        upload capacity in bits/s (the evaluators' max_tx); ``tx_bandwidth`` is what the
        host measured itself sending, kept as ``announced_tx_bandwidth`` for the daemon
        (scoring uses the scheduler's own reservations, which an announcement must not
        overwrite or reservations could never be released exactly). A host that turns
        into or out of a seed joins or leaves the seed ring."""
        _check_id("host_id", host_id)
        _check_time(now)
        for name, value in (
            ("ip", ip),
            ("hostname", hostname),
            ("idc", idc),
            ("location", location),
        ):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {value!r}")
        _check_count("port", port)
        _check_count("download_port", download_port)
        _check_count("upload_limit_bps", upload_limit_bps)
        _check_count("tx_bandwidth", tx_bandwidth)
        _check_count("download_limit_bps", download_limit_bps)
        try:
            host_type = type if isinstance(type, HostType) else HostType(type)
        except ValueError:
            raise ValueError(f"host type {type!r} is unknown: use 'normal' or 'seed'") from None
        if concurrent_upload_limit is None or concurrent_upload_limit == 0:
            concurrent_upload_limit = (
                self.config.seed_peer_concurrent_upload_limit
                if host_type is HostType.SEED
                else self.config.peer_concurrent_upload_limit
            )
        _check_count("concurrent_upload_limit", concurrent_upload_limit, 1)
        fields = dict(
            ip=ip,
            hostname=hostname,
            port=port,
            download_port=download_port,
            idc=idc,
            location=location,
            type=host_type,
            upload_limit_bps=upload_limit_bps,
            concurrent_upload_limit=concurrent_upload_limit,
            now=now,
        )
        host = self._hosts.get(host_id)
        new = host is None
        if host is None:
            host = self._hosts[host_id] = Host(host_id, **fields)  # type: ignore[arg-type]
            host.announced_tx_bandwidth = tx_bandwidth
        else:
            host.update(announced_tx_bandwidth=tx_bandwidth, **fields)  # type: ignore[arg-type]
        host.download_limit_bps = download_limit_bps
        if host.is_seed:
            self._ring.add(host_id)
        else:
            self._ring.remove(host_id)
        return HostAnnounced(host_id, new)

    def leave_host(self, host_id: str, now: float) -> PeerLeft:
        """A host shuts down: its peers leave, their children are orphaned."""
        host = self.host(host_id)
        return self._remove_host(host)

    def _remove_host(self, host: Host) -> PeerLeft:
        removed: list[str] = []
        orphans: list[str] = []
        for peer in list(host.peers.values()):
            removed.append(peer.id)
            orphans.extend(self._remove_peer(peer))
        del self._hosts[host.id]
        self._ring.remove(host.id)
        gone = set(removed)
        return PeerLeft(tuple(removed), tuple(dict.fromkeys(c for c in orphans if c not in gone)))

    # ------------------------------------------------------------------- register --

    def register_peer(
        self,
        peer_id: str,
        task_id: str,
        host_id: str,
        url: str,
        now: float,
        *,
        content_length: int | None = None,
        piece_length: int | None = None,
        need_back_to_source: bool = False,
        concurrent_piece_count: int | None = None,
    ) -> RegisterResult:
        """A peer starts downloading a task; the answer says how.

        In order: metadata-only if a peer of this task on the same host already
        succeeded (no new peer is created); EMPTY answered inline; TINY answered inline
        when the task's bytes are known (a finished peer reported them); SMALL gets one
        parent that holds the whole task, if one passes the filters; otherwise the peer
        is NORMAL. A normal peer on a normal host finding no peer of the task able to
        serve triggers the seed host the ring assigns to the task (unless a seed peer is
        already on it or was triggered less than ``seed_peer_trigger_timeout`` ago), or
        goes back to source when there is no usable seed. Else one scheduling round runs
        (see :meth:`reschedule`). A seed peer with nobody to fetch from goes to source.
        """
        _check_id("peer_id", peer_id)
        _check_id("task_id", task_id)
        _check_id("host_id", host_id)
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {url!r}")
        _check_time(now)
        if concurrent_piece_count is None:
            concurrent_piece_count = self.config.concurrent_piece_count
        _check_count("concurrent_piece_count", concurrent_piece_count, 1)
        host = self.host(host_id)
        if peer_id in self._peers:
            raise DuplicatePeer(
                f"peer {peer_id!r} is already registered: a peer ID names one download, "
                f"use a new one (or leave_peer first)"
            )
        task = self._tasks.get(task_id)
        if task is None:
            task = self._tasks[task_id] = Task(
                task_id, url, content_length=None, piece_length=None, piece_count=None, now=now
            )
        self._set_geometry(task, content_length, piece_length)
        task.updated_at = now
        task_state = task.fsm.state
        on_host = task.peers_by_host.get(host_id)
        if on_host:
            for other in on_host.values():
                if other.fsm.state is _SUCCEEDED:
                    return MetadataOnly(peer_id, self._meta(task), other.id)

        bitmap = self._bitmap_cls(task.piece_count if task.piece_count is not None else 0)
        peer = self._add_peer(
            peer_id, task, host, bitmap, concurrent_piece_count, bool(need_back_to_source), now
        )

        scope = task.scope
        if scope is not None:
            if scope is SizeScope.EMPTY:
                peer.fsm.fire(PeerEvent.REGISTER_EMPTY)
                return EmptyTask(peer_id, self._meta(task))
            if scope is SizeScope.TINY and task.direct_piece is not None:
                peer.fsm.fire(PeerEvent.REGISTER_TINY)
                return TinyTask(peer_id, self._meta(task), task.direct_piece)
            if scope is SizeScope.SMALL:
                small = self._find_success_parent(peer)
                if small is not None:
                    peer.fsm.fire(PeerEvent.REGISTER_SMALL)
                    parent, score = small
                    info = self._parent_info(parent, score)
                    self._add_edge(parent, peer)
                    return SmallTask(peer_id, self._meta(task), info)

        peer.fsm.fire(PeerEvent.REGISTER_NORMAL)
        trigger: Host | None = None
        if not peer.need_back_to_source:
            available = self._has_available_peer(peer)
            if host.is_seed:
                if not available:
                    return self._back_to_source(peer, "seed peer: no peer serves the task yet")
            else:
                # Dragonfly triggers the seed on the task's state as it was before this
                # peer joined (Pending, Failed, Left; Succeeded with nobody able to
                # serve), in the background: the peer goes straight into a round. A
                # running task that nobody serves, whose trigger produced no seed peer
                # within seed_peer_trigger_timeout, is triggered again (the trigger was
                # lost: the seed host died or restarted).
                if task_state in _NEEDS_SEED or not available:
                    trigger = self._seed_to_trigger(task, now)
                if (
                    trigger is None
                    and not available
                    and not self._seed_pending(task, now)
                    and self._can_back_to_source(peer)
                ):
                    return self._back_to_source(
                        peer, "no peer serves the task and no seed peer is usable"
                    )
        cfg = self.config
        if cfg.register_backoff_max > 0 and not peer.need_back_to_source:
            backoff = self.rng.uniform(cfg.register_backoff_min, cfg.register_backoff_max)
            first: ScheduleResult = Retry(
                peer_id, self._meta(task), backoff, 0, "registration backoff"
            )
        else:
            first = self._schedule_round(peer, now)
        if trigger is None:
            return first
        return TriggerSeedPeer(
            peer_id,
            self._meta(task),
            task.url,
            trigger.id,
            trigger.ip,
            trigger.port,
            first,
        )

    def restore_peer(
        self,
        peer_id: str,
        task_id: str,
        host_id: str,
        url: str,
        now: float,
        *,
        content_length: int,
        piece_length: int,
        finished: Iterable[int] | bytes,
        succeeded: bool,
        digests: Mapping[int, str] | None = None,
    ) -> None:
        """Re-create a peer a daemon still has after a scheduler restart (the scheduler
        keeps everything in memory and rebuilds from these re-announcements): RUNNING
        with ``finished`` (piece numbers, or a BitTorrent bitfield), or SUCCEEDED. No
        scheduling happens; the peer can serve at once. Running peers call
        :meth:`reschedule` to get parents again.

        ``digests`` are the piece digests the daemon stored (each checked against the
        recorded digest when it was fetched); they become the task's recorded digests
        where the restarted scheduler has none yet, the first report winning as for
        origin fetches, so children can verify pieces again."""
        _check_id("peer_id", peer_id)
        _check_id("task_id", task_id)
        _check_time(now)
        host = self.host(host_id)
        if peer_id in self._peers:
            raise DuplicatePeer(f"peer {peer_id!r} is already registered")
        task = self._tasks.get(task_id)
        if task is None:
            task = self._tasks[task_id] = Task(
                task_id, url, content_length=None, piece_length=None, piece_count=None, now=now
            )
        self._set_geometry(task, content_length, piece_length)
        count = task.piece_count or 0
        if succeeded:
            bitmap = self._full(count)  # ``finished`` says nothing more (usually empty)
        elif isinstance(finished, bytes | bytearray | memoryview):
            bitmap = self._bitmap_cls.from_bytes(finished, count)
        else:
            bitmap = self._bitmap_cls(count)
            for number in finished:
                bitmap.set(number)
        peer = self._add_peer(
            peer_id, task, host, bitmap, self.config.concurrent_piece_count, False, now
        )
        peer.finished_count = bitmap.count()
        for number, digest in (digests or {}).items():
            if not isinstance(digest, str):
                raise TypeError(f"digest must be a str like 'crc32:123', got {digest!r}")
            task.piece_digests.setdefault(number, digest)
        peer.fsm.fire(PeerEvent.REGISTER_NORMAL)
        if succeeded:
            peer.fsm.fire(PeerEvent.DOWNLOAD_SUCCEEDED)
            if task.fsm.state is TaskState.RUNNING:
                task.fire(TaskEvent.DOWNLOAD_SUCCEEDED)
        else:
            peer.fsm.fire(PeerEvent.DOWNLOAD)
        self._refresh_servable(peer)

    def _add_peer(
        self,
        peer_id: str,
        task: Task,
        host: Host,
        bitmap: Any,
        concurrent_piece_count: int,
        need_back_to_source: bool,
        now: float,
    ) -> Peer:
        """Create a PENDING peer and enter it in every index."""
        peer = Peer(
            peer_id,
            task,
            host,
            finished=bitmap,
            concurrent_piece_count=concurrent_piece_count,
            cost_window=self.config.piece_cost_window,
            need_back_to_source=need_back_to_source,
            now=now,
        )
        self._peers[peer_id] = peer
        host.peers[peer_id] = peer
        task.peers[peer_id] = peer
        task.peers_by_host.setdefault(host.id, {})[peer_id] = peer
        task.peer_list.add(peer)
        task.dag.add_vertex(peer_id)
        if host.is_seed:
            task.seed_peers.add(peer_id)
            if task.seed_host_id is None:
                task.seed_host_id = host.id
        if task.fsm.state in (TaskState.PENDING, TaskState.FAILED, TaskState.LEAVE):
            task.fire(TaskEvent.DOWNLOAD)
        return peer

    # ----------------------------------------------------------------- scheduling --

    def reschedule(self, peer_id: str, bad_parents: Iterable[str], now: float) -> ScheduleResult:
        """One scheduling round for a peer (after Retry/TriggerSeedPeer, or when its
        parents fail). ``bad_parents`` join the peer's blocklist and their edges go.

        A round (Dragonfly's ScheduleCandidateParents loop, one iteration per call since
        core cannot sleep): if the task may still go to source and the peer asked for it
        or has failed ``retry_back_to_source_limit`` rounds -> NeedBackToSource; if it has
        failed ``retry_limit`` rounds -> ScheduleFailed; else its in-edges are dropped and
        candidates chosen: found -> NormalTask (round counter reset); none -> the counter
        grows and the limits are checked again at once (a terminal answer now rather than
        after a pointless wait), else Retry after ``retry_interval`` +- jitter.

        A peer already back-to-source gets NeedBackToSource again (nothing changes);
        a peer that finished, failed or only registered empty/tiny is a PeerStateError.
        """
        peer = self.peer(peer_id)
        _check_time(now)
        if isinstance(bad_parents, str):
            raise TypeError("bad_parents must be an iterable of peer IDs, not one str")
        peer.updated_at = now
        dag = peer.task.dag
        in_edges = dag.parents(peer_id)
        for bad in bad_parents:
            _check_id("bad parent", bad)
            peer.blocklist.add(bad)
            if bad in in_edges:
                self._release(peer.task, bad, dag.delete_edge(bad, peer_id))
                self._refresh_servable(peer)
        if self.config.blocklist_previous_parents and peer.given_parents:
            # Dragonfly: a peer asks again only when all its parents' streams ended, and
            # the scheduler never offers those parents again.
            peer.blocklist.update(peer.given_parents)
        state = peer.fsm.state
        if state is _BTS:
            return NeedBackToSource(
                peer_id, self._meta(peer.task), "peer is already back-to-source"
            )
        if state not in _SCHEDULABLE:
            raise PeerStateError(f"peer {peer_id!r} is {state.name}: there is nothing to schedule")
        return self._schedule_round(peer, now)

    def _schedule_round(self, peer: Peer, now: float) -> ScheduleResult:
        """One round. dragonfly: the peer's parents are replaced by the best
        ``candidate_parent_limit`` candidates. d7y: parents that still serve are kept and
        up to ``candidate_parent_limit`` new ones are added while the peer has fewer
        than ``max_parents``; a round that adds nobody while the peer still has parents
        is not a failed round (it has parents to download from)."""
        terminal = self._limit_decision(peer)
        if terminal is not None:
            return terminal
        cfg = self.config
        task = peer.task
        additive = cfg.max_parents > cfg.candidate_parent_limit
        if additive:
            self._drop_unusable_parents(peer)
            room = cfg.max_parents - task.dag.in_degree(peer.id)
            limit = min(cfg.candidate_parent_limit, room)
        else:
            self._delete_in_edges(peer)
            limit = cfg.candidate_parent_limit
        chosen = self._find_candidate_parents(peer, limit) if limit > 0 else []
        if chosen or (additive and task.dag.in_degree(peer.id)):
            peer.schedule_rounds = 0
            infos = []
            given = peer.given_parents
            if given is None and cfg.blocklist_previous_parents:
                given = peer.given_parents = set()
            for parent, score in chosen:
                infos.append(self._parent_info(parent, score))
                self._add_edge(parent, peer)
                if given is not None:
                    given.add(parent.id)
            return NormalTask(peer.id, self._meta(task), tuple(infos))
        peer.schedule_rounds += 1
        terminal = self._limit_decision(peer)
        if terminal is not None:
            return terminal
        return Retry(
            peer.id,
            self._meta(task),
            self._retry_after(),
            peer.schedule_rounds,
            "no candidate parent passed the filters",
        )

    def _drop_unusable_parents(self, peer: Peer) -> None:
        """Remove the in-edges from parents that can no longer serve (left the
        servable set, became bad or blocklisted)."""
        task = peer.task
        in_edges = task.dag.parents(peer.id)
        if not in_edges:
            return
        is_bad = self.evaluator.is_bad_parent
        servable = task.servable._index
        for pid in list(in_edges):
            parent = task.peers[pid]
            if pid in peer.blocklist or parent not in servable or is_bad(parent):
                self._release(task, pid, task.dag.delete_edge(pid, peer.id))
                self._refresh_servable(peer)

    def _limit_decision(self, peer: Peer) -> ScheduleResult | None:
        cfg = self.config
        rounds = peer.schedule_rounds
        if self._can_back_to_source(peer):
            if peer.need_back_to_source:
                return self._back_to_source(peer, "peer asked to go back to source")
            if rounds >= cfg.retry_back_to_source_limit:
                return self._back_to_source(
                    peer, f"{rounds} scheduling rounds failed (retry_back_to_source_limit)"
                )
        if rounds >= cfg.retry_limit:
            self._delete_in_edges(peer)
            peer.schedule_rounds = 0
            return ScheduleFailed(
                peer.id,
                self._meta(peer.task),
                f"{rounds} scheduling rounds failed (retry_limit) and the task may not go "
                f"back to source ({len(peer.task.back_to_source_peers)} peers already did)",
            )
        return None

    def _retry_after(self) -> float:
        cfg = self.config
        return cfg.retry_interval * (1.0 + cfg.retry_jitter * (2.0 * self.rng.random() - 1.0))

    def _can_back_to_source(self, peer: Peer) -> bool:
        """Seed peers always may (fetching from the origin is their job); a normal peer
        may while fewer than ``back_to_source_limit`` normal peers of the task did."""
        if peer.host.is_seed:
            return True
        bts = peer.task.back_to_source_peers
        return peer.id in bts or len(bts) < self.config.back_to_source_limit

    def _back_to_source(self, peer: Peer, reason: str) -> NeedBackToSource:
        self._delete_in_edges(peer)
        if peer.fsm.state is not _BTS:
            _fire(peer, PeerEvent.DOWNLOAD_BACK_TO_SOURCE)
        if not peer.host.is_seed:
            peer.task.back_to_source_peers.add(peer.id)
        peer.schedule_rounds = 0
        self._refresh_servable(peer)
        return NeedBackToSource(peer.id, self._meta(peer.task), reason)

    def _about_to_serve(self, peer: Peer) -> bool:
        """d7y (``early_parents``): a normal peer just given parents, whose download has
        not started yet, is already a candidate. In a registration burst the next
        peer's round often comes before the first one's DownloadStarted; without this
        it finds no parent with room and takes an over-full one (the seed)."""
        return (
            self.config.early_parents
            and peer.fsm.state is _RECEIVED_NORMAL
            and bool(peer.task.dag._parents[peer.id])
        )

    @staticmethod
    def _can_serve(peer: Peer) -> bool:
        """Whether a peer may be offered as a parent at all (before the bad-parent test).

        Dragonfly's filter: succeeded and back-to-source peers; a running peer that has
        parents in the DAG (it will have pieces soon, even with none yet) or already
        holds pieces; a running seed peer (seed hosts skip the in-degree check).
        Pending or registered-only peers, failed and left peers do not serve.
        """
        state = peer.fsm.state
        if state is _SUCCEEDED or state is _BTS:
            return True
        if state is _RUNNING:
            return (
                peer.finished_count > 0
                or peer.host.is_seed
                or bool(peer.task.dag._parents[peer.id])
            )
        return False

    def _refresh_servable(self, peer: Peer) -> None:
        if self._can_serve(peer) or self._about_to_serve(peer):
            peer.task.servable.add(peer)
        else:
            peer.task.servable.discard(peer)

    def _has_available_peer(self, peer: Peer) -> bool:
        """Some peer of the task can serve, on another host and not blocklisted."""
        host = peer.host
        blocklist = peer.blocklist
        for other in peer.task.servable.items:
            if other.host is not host and other.id not in blocklist:
                return True
        return False

    def _seed_pending(self, task: Task, now: float) -> bool:
        """A seed peer is on the task (and did not fail) or was triggered recently."""
        if task.seed_peers:
            return True
        at = task.seed_triggered_at
        return (
            at is not None
            and now - at < self.config.seed_peer_trigger_timeout
            and task.seed_host_id in self._hosts
        )

    def _seed_to_trigger(self, task: Task, now: float) -> Host | None:
        """The seed host to trigger for ``task`` now, or None (one is pending, or no seed
        host is usable). Ring order from the task ID, skipping seeds whose peer failed
        this task, so another seed takes over when the first one dies."""
        if self._seed_pending(task, now):
            return None
        for host_id in self._ring.iter_nodes(task.id):
            if host_id not in task.failed_seed_hosts:
                task.seed_host_id = host_id
                task.seed_triggered_at = now
                return self._hosts[host_id]
        return None

    def _sample(self, peer: Peer) -> list[Peer]:
        """Up to ``filter_parent_limit`` distinct peers of the task, uniformly at random.

        For a large pool, draws indexes with ``rng.random()`` until k distinct ones
        (expected k + k^2/2n draws): several times cheaper than ``random.sample``'s
        general path, and the distribution is the same (uniform k-subsets, random
        order; the float-to-index step has a bias below 2**-40 for any real pool).
        """
        task = peer.task
        pool = task.servable.items if self.config.sample_servable_only else task.peer_list.items
        k = self.config.filter_parent_limit
        n = len(pool)
        if n <= 4 * k:
            return self.rng.sample(pool, k if k < n else n)
        rand = self.rng.random
        chosen: set[int] = set()
        out: list[Peer] = []
        while len(out) < k:
            i = int(rand() * n)
            if i not in chosen:
                chosen.add(i)
                out.append(pool[i])
        return out

    def _filter(self, peer: Peer, sample: list[Peer], succeeded_only: bool) -> list[Peer]:
        """DESIGN's filters, in order: the peer itself, its host, its blocklist, peers that
        cannot serve, bad parents, and any edge that would close a cycle (Dragonfly has
        no upload-slot filter: the limits exist but the filter does not read them), and
        for the d7y policy the peer's current parents."""
        host = peer.host
        blocklist = peer.blocklist
        task = peer.task
        servable = task.servable._index  # membership without a method call (hot path)
        in_edges = task.dag._parents
        is_bad = self.evaluator.is_bad_parent
        descendants: set[str] | None = None
        kept: list[Peer] = []
        current = in_edges[peer.id]
        for cand in sample:
            if cand is peer or cand.host is host or cand.id in blocklist or cand.id in current:
                continue
            if cand not in servable:
                continue
            if succeeded_only and cand.fsm.state is not _SUCCEEDED:
                continue
            if is_bad(cand) and not self._about_to_serve(cand):
                continue
            # A cycle needs a path peer -> ... -> cand, so cand must have a parent: roots
            # (succeeded, back-to-source and seed peers, usually) are safe without a walk.
            if in_edges[cand.id]:
                if descendants is None:
                    # The peer's descendants, once per round: empty for a new peer; in a
                    # dense swarm (1,000 running peers, 3 parents each) most of the DAG,
                    # and then this walk is the largest cost of a round.
                    dag = task.dag
                    descendants = dag.descendants(peer.id) if dag.out_degree(peer.id) else set()
                if cand.id in descendants:
                    continue
            kept.append(cand)
        return kept

    def _rank(self, peer: Peer, candidates: list[Peer], limit: int) -> list[tuple[Peer, float]]:
        total = peer.task.piece_count or 0
        score = self.evaluator.score
        scored = [(cand, score(cand, peer, total)) for cand in candidates]
        if self.config.prefer_locality:
            # d7y: nearer first (same IDC, then more equal leading location elements),
            # the score within a tier: on an oversubscribed network (rack uplinks, IDC
            # links) each rack should pull a piece across its uplink about once and
            # share it inside; a weight in a sum cannot guarantee that.
            host = peer.host
            scored.sort(key=lambda x: (_nearness(x[0].host, host), x[1]), reverse=True)
        else:
            # Stable, so equal scores keep the (random) sample order.
            scored.sort(key=itemgetter(1), reverse=True)
        return scored[:limit]

    def _find_candidate_parents(self, peer: Peer, limit: int) -> list[tuple[Peer, float]]:
        candidates = self._filter(peer, self._sample(peer), succeeded_only=False)
        if not candidates:
            return []
        factor = self.config.children_per_capacity
        if factor:
            # d7y: a parent takes about as many children as its upload can feed at their
            # download speed (a 16 MiB/s seed with fast children: one; a 10 Gbit/s seed
            # with 1 Gbit/s children: ten, times the factor), so its bandwidth goes to
            # few children that relay, instead of trickling to all. Over-full parents
            # are used only when the peer would otherwise have none.
            host = peer.host
            room = [
                c for c in candidates if c.host.concurrent_upload_count < _cap(c.host, host, factor)
            ]
            if room or _has_parents(peer):
                candidates = room
            if not candidates:
                return []
        return self._rank(peer, candidates, limit)

    def _find_success_parent(self, peer: Peer) -> tuple[Peer, float] | None:
        candidates = self._filter(peer, self._sample(peer), succeeded_only=True)
        if not candidates:
            return None
        return self._rank(peer, candidates, 1)[0]

    def _parent_info(self, parent: Peer, score: float) -> ParentInfo:
        host = parent.host
        return ParentInfo(
            parent.id,
            host.id,
            host.ip,
            host.port,
            host.download_port,
            score,
            host.tx_bandwidth,
            host.upload_limit_bps,
            host.is_seed,
        )

    # ---------------------------------------------------------- edges and load --

    def _add_edge(self, parent: Peer, child: Peer) -> None:
        """parent -> child, reserving load on the parent's host (DESIGN section 4). The
        caller has filtered out cycles; the reservation is stored on the edge so it is
        released exactly, even if the task's geometry is learnt in between."""
        task = child.task
        pieces = child.concurrent_piece_count
        piece_length = task.piece_length or self.config.default_piece_length
        reservation = Reservation(piece_length * pieces * 8, pieces, task.content_length or 0)
        task.dag._add_edge_unchecked(parent.id, child.id, reservation)
        host = parent.host
        host.tx_bandwidth += reservation.tx_bandwidth
        host.concurrent_upload_piece_count += pieces
        host.upload_content_length += reservation.content_length
        host.concurrent_upload_count += 1
        host.upload_count += 1
        if child.finished_count == 0:
            self._refresh_servable(child)  # a running peer with a parent may serve

    def _release(self, task: Task, parent_id: str, reservation: Reservation) -> None:
        host = task.peers[parent_id].host
        host.tx_bandwidth -= reservation.tx_bandwidth
        host.concurrent_upload_piece_count -= reservation.pieces
        host.upload_content_length -= reservation.content_length
        host.concurrent_upload_count -= 1

    def _delete_in_edges(self, peer: Peer) -> None:
        task = peer.task
        if task.dag.in_degree(peer.id):
            for parent_id, _, reservation in task.dag.delete_in_edges(peer.id):
                self._release(task, parent_id, reservation)
            if peer.finished_count == 0:
                self._refresh_servable(peer)

    def _delete_out_edges(self, peer: Peer) -> list[str]:
        task = peer.task
        if not task.dag.out_degree(peer.id):
            return []
        orphans = []
        for _, child_id, reservation in task.dag.delete_out_edges(peer.id):
            self._release(task, peer.id, reservation)
            orphans.append(child_id)
        return orphans

    # ------------------------------------------------------------------- reports --

    def download_started(
        self,
        peer_id: str,
        now: float,
        *,
        back_to_source: bool = False,
        content_length: int | None = None,
        piece_length: int | None = None,
    ) -> None:
        """The peer began downloading: from parents (RUNNING) or, with
        ``back_to_source``, from the origin (a peer may decide that on its own, e.g. when
        it lost the scheduler; it is then counted against ``back_to_source_limit`` even
        past the limit, since it is already happening). A back-to-source peer reports
        the task's length (and piece length) once the origin told it."""
        peer = self.peer(peer_id)
        _check_time(now)
        self._set_geometry(peer.task, content_length, piece_length)
        if back_to_source:
            self._back_to_source(peer, "peer started back-to-source")
        else:
            _fire(peer, PeerEvent.DOWNLOAD)
            self._refresh_servable(peer)
        peer.updated_at = peer.piece_updated_at = now
        peer.task.updated_at = now

    def piece_finished(
        self,
        peer_id: str,
        number: int,
        parent_id: str | None,
        cost: float,
        digest: str | None,
        now: float,
    ) -> None:
        """The peer holds piece ``number`` now, fetched from ``parent_id`` (None: from the
        origin) in ``cost`` seconds. Updates the peer's bitmap and cost window, the
        parent's TTL and its host's served-piece count, and, for an origin fetch, the
        task's recorded digest. Hot path: kept to a few dict and attribute operations.

        The cost joins the *reporting* peer's window, as in Dragonfly: a peer is judged
        as a parent by how its own latest downloads went (a host whose network degrades
        shows it in its own piece costs before its children complain)."""
        try:
            peer = self._peers[peer_id]
        except KeyError:
            raise UnknownPeer(f"peer {peer_id!r} is unknown: it left or never registered") from None
        state = peer.fsm.state
        if state is not _RUNNING and state is not _BTS:
            raise PeerStateError(
                f"peer {peer_id!r} is {state.name}: report download_started before pieces"
            )
        if not cost >= 0.0 or cost == math.inf:  # also rejects NaN and non-numbers' < >
            raise ValueError(f"cost must be a finite number of seconds >= 0, got {cost!r}")
        finished = peer.finished
        task = peer.task
        if task.piece_count is None and isinstance(number, int) and number >= len(finished):
            finished = peer.finished = self._grown(finished, number + 1)
        if not 0 <= number < len(finished):
            raise PieceNumberError(
                f"piece number {number} is outside task {task.id!r} of {len(finished)} pieces"
            )
        if not finished.test(number):
            finished.set(number)
            peer.finished_count += 1
            if peer.finished_count == 1:
                self._refresh_servable(peer)
        peer.record_cost(cost)
        peer.updated_at = peer.piece_updated_at = now
        task.updated_at = now
        if parent_id is None:
            if digest is not None:
                recorded = task.piece_digests.get(number)
                if recorded is None:
                    if not isinstance(digest, str):
                        raise TypeError(f"digest must be a str like 'crc32:123', got {digest!r}")
                    task.piece_digests[number] = digest
                elif recorded != digest:
                    task.digest_conflicts += 1
            return
        parent = self._peers.get(parent_id)
        if parent is not None:  # it may have left since
            parent.updated_at = now
            parent.host.upload_piece_count += 1
        if peer.piece_failures:
            peer.piece_failures.pop(parent_id, None)

    def piece_failed(
        self, peer_id: str, number: int, parent_id: str | None, now: float
    ) -> PieceFailedResult:
        """A piece download failed. From the origin: nothing to decide (the caller
        retries). From a parent: the parent's host gets an upload failure; after
        ``blocklist_after_piece_failures`` failures in a row from that parent (1, as in
        Dragonfly) the child blocklists it for this task and its edge (and reserved load)
        goes. ``reschedule`` is True when the child is left without a usable parent."""
        peer = self.peer(peer_id)
        _check_time(now)
        _check_count("piece number", number)
        peer.updated_at = now
        if parent_id is None:
            return PieceFailedResult(peer_id, None, False, False)
        _check_id("parent_id", parent_id)
        parent = self._peers.get(parent_id)
        if parent is not None:
            parent.host.upload_failed_count += 1
        failures = peer.piece_failures.get(parent_id, 0) + 1
        peer.piece_failures[parent_id] = failures
        blocklisted = False
        task = peer.task
        if (
            failures >= self.config.blocklist_after_piece_failures
            and parent_id not in peer.blocklist
        ):
            peer.blocklist.add(parent_id)
            blocklisted = True
            if parent_id in task.dag.parents(peer_id):
                self._release(task, parent_id, task.dag.delete_edge(parent_id, peer_id))
                self._refresh_servable(peer)
        usable = False
        if peer.fsm.state is not _BTS:
            is_bad = self.evaluator.is_bad_parent
            for pid in task.dag.parents(peer_id):
                if pid not in peer.blocklist and not is_bad(task.peers[pid]):
                    usable = True
                    break
        else:
            usable = True  # fetching from the origin: no parent needed
        return PieceFailedResult(peer_id, parent_id, blocklisted, not usable)

    def download_finished(
        self,
        peer_id: str,
        now: float,
        *,
        content_length: int | None = None,
        content: bytes | None = None,
    ) -> DownloadEnded:
        """The peer holds the whole task. It keeps serving (out-edges stay); its own
        in-edges go and release their parents' load. A peer that fetched a TINY task
        passes its ``content`` so later peers get it inline."""
        peer = self.peer(peer_id)
        _check_time(now)
        task = peer.task
        if content is not None:
            if not isinstance(content, bytes | bytearray | memoryview):
                raise TypeError(f"content must be bytes, got {type(content).__name__}")
            content = bytes(content)
            if content_length is None and task.content_length is None:
                content_length = len(content)
        self._set_geometry(task, content_length, None)
        if content is not None:
            if len(content) != task.content_length:
                raise ValueError(
                    f"content has {len(content)} bytes but the task has {task.content_length}"
                )
            if len(content) <= TINY_TASK_MAX_LENGTH:
                task.direct_piece = content
        _fire(peer, PeerEvent.DOWNLOAD_SUCCEEDED)
        # back_to_source_limit caps concurrent origin downloads (Dragonfly): a peer
        # whose back-to-source download succeeded no longer counts.
        task.back_to_source_peers.discard(peer.id)
        if task.piece_count is not None and peer.finished_count != task.piece_count:
            peer.finished = self._full(task.piece_count)
            peer.finished_count = task.piece_count
        self._delete_in_edges(peer)
        self._refresh_servable(peer)
        if task.fsm.state in (TaskState.RUNNING, TaskState.FAILED, TaskState.LEAVE):
            task.fire(TaskEvent.DOWNLOAD_SUCCEEDED)
        peer.schedule_rounds = 0
        peer.updated_at = peer.piece_updated_at = now
        task.updated_at = now
        return DownloadEnded(peer_id, ())

    def download_failed(self, peer_id: str, now: float) -> DownloadEnded:
        """The peer gave up. Its edges go both ways (its children are returned: they
        must reschedule). A seed peer's failure makes the task's next registration
        trigger the next seed on the ring. When the last peer fetching from the origin
        fails and nobody finished, the task fails."""
        peer = self.peer(peer_id)
        _check_time(now)
        was_bts = peer.fsm.state is _BTS
        _fire(peer, PeerEvent.DOWNLOAD_FAILED)
        task = peer.task
        task.back_to_source_peers.discard(peer.id)
        self._delete_in_edges(peer)
        orphans = self._delete_out_edges(peer)
        self._refresh_servable(peer)
        if peer.id in task.seed_peers:
            self._forget_seed_peer(task, peer, failed=True)
        if was_bts and task.fsm.state is TaskState.RUNNING:
            alive = any(p.fsm.state in (_BTS, _SUCCEEDED) for p in task.servable.items)
            if not alive:
                task.fire(TaskEvent.DOWNLOAD_FAILED)
        peer.updated_at = now
        task.updated_at = now
        return DownloadEnded(peer_id, tuple(orphans))

    def _forget_seed_peer(self, task: Task, peer: Peer, failed: bool) -> None:
        """A seed peer stops serving the task; if it ``failed`` (or left unfinished), its
        host is skipped for this task so the next trigger goes to the next seed."""
        task.seed_peers.discard(peer.id)
        if failed:
            task.failed_seed_hosts.add(peer.host.id)
        if task.seed_host_id == peer.host.id and not task.seed_peers:
            task.seed_host_id = None
            task.seed_triggered_at = None

    # --------------------------------------------------------------- leave and GC --

    def leave_peer(self, peer_id: str, now: float) -> PeerLeft:
        """The peer is gone (its daemon deleted the task or shut down). Returns the
        children that lost it as a parent."""
        peer = self.peer(peer_id)
        _check_time(now)
        orphans = self._remove_peer(peer)
        return PeerLeft((peer_id,), tuple(orphans))

    def _remove_peer(self, peer: Peer) -> list[str]:
        state = peer.fsm.state
        if state is not PeerState.LEAVE:
            peer.fsm.fire(PeerEvent.LEAVE)
        task = peer.task
        self._delete_in_edges(peer)
        orphans = self._delete_out_edges(peer)
        if peer.id in task.seed_peers:
            # A seed peer leaving before it finished counts as a failed seed for the task.
            self._forget_seed_peer(task, peer, failed=state is not _SUCCEEDED)
        task.dag.delete_vertex(peer.id)
        del task.peers[peer.id]
        on_host = task.peers_by_host[peer.host.id]
        del on_host[peer.id]
        if not on_host:
            del task.peers_by_host[peer.host.id]
        task.peer_list.discard(peer)
        task.servable.discard(peer)
        task.back_to_source_peers.discard(peer.id)
        del peer.host.peers[peer.id]
        del self._peers[peer.id]
        return orphans

    def gc(self, now: float) -> GCResult:
        """Reclaim what timed out (Dragonfly's GC rules, one pass):

        - hosts that have not announced for ``host_ttl``: removed with their peers;
        - peers that failed or left; downloading peers with no piece for
          ``piece_download_timeout``; peers not updated for ``peer_ttl``;
        - tasks without peers, and tasks not updated for ``task_ttl`` (with their peers).
        """
        _check_time(now)
        cfg = self.config
        peers: list[str] = []
        orphans: list[str] = []
        hosts: list[str] = []
        for host in list(self._hosts.values()):
            if now - host.updated_at > cfg.host_ttl:
                left = self._remove_host(host)
                hosts.append(host.id)
                peers.extend(left.peer_ids)
                orphans.extend(left.orphaned_children)
        for peer in list(self._peers.values()):
            state = peer.fsm.state
            if (
                state is PeerState.FAILED
                or state is PeerState.LEAVE
                or (
                    (state is _RUNNING or state is _BTS)
                    and now - peer.piece_updated_at > cfg.piece_download_timeout
                )
                or now - peer.updated_at > cfg.peer_ttl
            ):
                peers.append(peer.id)
                orphans.extend(self._remove_peer(peer))
        tasks: list[str] = []
        for task in list(self._tasks.values()):
            if task.peers and now - task.updated_at <= cfg.task_ttl:
                continue
            for peer in list(task.peers.values()):
                peers.append(peer.id)
                orphans.extend(self._remove_peer(peer))
            del self._tasks[task.id]
            tasks.append(task.id)
        gone = set(peers)
        return GCResult(
            tuple(peers),
            tuple(tasks),
            tuple(hosts),
            tuple(dict.fromkeys(c for c in orphans if c not in gone)),
        )

    # ------------------------------------------------------------------ geometry --

    def _meta(self, task: Task) -> TaskMeta:
        meta = task.meta
        if meta is None:
            meta = task.meta = TaskMeta(
                task.id, task.content_length, task.piece_length, task.piece_count
            )
        return meta

    def _set_geometry(
        self, task: Task, content_length: int | None, piece_length: int | None
    ) -> None:
        """Learn a task's length and piece length; a value that contradicts what is
        known is a ValueError (two origins disagree, or a caller bug). The piece length
        defaults to the one DESIGN derives from the length. Once the piece count is
        known, every peer's bitmap is resized to it."""
        if content_length is None and piece_length is None:
            return
        if content_length is not None:
            _check_count("content_length", content_length)
            if task.content_length is not None and task.content_length != content_length:
                raise ValueError(
                    f"task {task.id}: content_length {content_length} contradicts the known "
                    f"{task.content_length}"
                )
        if piece_length is not None:
            _check_count("piece_length", piece_length, 1)
            if task.piece_length is not None and task.piece_length != piece_length:
                raise ValueError(
                    f"task {task.id}: piece_length {piece_length} contradicts the known "
                    f"{task.piece_length}"
                )
        new_length = content_length if content_length is not None else task.content_length
        new_piece_length = piece_length if piece_length is not None else task.piece_length
        if new_piece_length is None and new_length is not None:
            new_piece_length = compute_piece_length(new_length)
        new_count = task.piece_count
        if new_count is None and new_length is not None and new_piece_length is not None:
            new_count = piece_count(new_length, new_piece_length)
            for peer in task.peers.values():
                highest = len(peer.finished) - 1
                while highest >= 0 and not peer.finished.test(highest):
                    highest -= 1
                if highest >= new_count:
                    raise ValueError(
                        f"task {task.id}: a length of {new_length} bytes gives {new_count} "
                        f"pieces, but peer {peer.id} reported piece {highest}"
                    )
        changed = (
            new_length != task.content_length
            or new_piece_length != task.piece_length
            or new_count != task.piece_count
        )
        if not changed:
            return
        task.content_length = new_length
        task.piece_length = new_piece_length
        if new_count is not None and task.piece_count is None:
            task.piece_count = new_count
            task.scope = size_scope(new_length, new_piece_length)  # type: ignore[arg-type]
            for peer in task.peers.values():
                peer.finished = self._resized(peer.finished, new_count)
        task.meta = None

    def _full(self, size: int) -> Any:
        """A bitmap with all ``size`` pieces set."""
        data = bytearray(b"\xff" * ((size + 7) // 8))
        if size % 8:
            data[-1] = (0xFF << (8 - size % 8)) & 0xFF
        return self._bitmap_cls.from_bytes(bytes(data), size)

    def _grown(self, bitmap: Any, needed: int) -> Any:
        """A copy of a growing bitmap (task length unknown) able to hold ``needed`` pieces."""
        size = max(needed, 2 * len(bitmap), 64)
        return self._resized(bitmap, size)

    def _resized(self, bitmap: Any, size: int) -> Any:
        # Piece i lives in byte i // 8 whatever the size (BitTorrent order), so resizing
        # is appending or dropping whole bytes and zeroing the new pad bits.
        data = bitmap.to_bytes()
        want = (size + 7) // 8
        if len(data) < want:
            data += bytes(want - len(data))
        else:
            data = data[:want]
            if size % 8 and data:
                mask = (0xFF << (8 - size % 8)) & 0xFF
                data = data[:-1] + bytes([data[-1] & mask])
        return self._bitmap_cls.from_bytes(data, size)

    # ---------------------------------------------------------------- invariants --

    def verify_invariants(self) -> None:
        """Raise AssertionError naming the first broken invariant (tests, simulator):
        every DAG acyclic; no self or same-host edge; no edge from a blocklisted parent;
        in-degree <= candidate_parent_limit; every host's load counters equal the sum of
        the reservations on its edges and are never negative."""
        expected: dict[str, list[int]] = {h: [0, 0, 0, 0] for h in self._hosts}
        limit = self.config.max_parents
        for task in self._tasks.values():
            dag = task.dag
            if not dag.is_acyclic():
                raise AssertionError(f"task {task.id}: the DAG has a cycle")
            if not dag.is_consistent():
                raise AssertionError(f"task {task.id}: the DAG's edge indexes disagree")
            for parent_id, child_id, res in dag.edges():
                parent = task.peers[parent_id]
                child = task.peers[child_id]
                if parent is child or parent.host is child.host:
                    raise AssertionError(f"edge {parent_id} -> {child_id} within one host")
                if parent_id in child.blocklist:
                    raise AssertionError(
                        f"edge {parent_id} -> {child_id} from a blocklisted parent"
                    )
                acc = expected[parent.host.id]
                acc[0] += res.tx_bandwidth
                acc[1] += res.pieces
                acc[2] += res.content_length
                acc[3] += 1
            for peer_id in task.peers:
                if dag.in_degree(peer_id) > limit:
                    raise AssertionError(f"peer {peer_id} has {dag.in_degree(peer_id)} parents")
        for host_id, (tx, pieces, length, edges) in expected.items():
            host = self._hosts[host_id]
            got = (
                host.tx_bandwidth,
                host.concurrent_upload_piece_count,
                host.upload_content_length,
                host.concurrent_upload_count,
            )
            want = (tx, pieces, length, edges)
            if got != want or min(got) < 0:
                raise AssertionError(f"host {host_id}: load counters {got} != reservations {want}")


__all__ = [
    "DuplicatePeer",
    "PeerStateError",
    "Scheduler",
    "SchedulerError",
    "UnknownHost",
    "UnknownPeer",
    "UnknownTask",
]
