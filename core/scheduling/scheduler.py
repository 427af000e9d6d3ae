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

:class:`Scheduler` owns the state (hosts, tasks, peers, the seed ring) and is the one
entry point; the decisions live beside it, one module each:

- rounds.py: one scheduling round (keep or replace parents, answer);
- candidates.py: sampling and filtering candidate parents; ranking.py: ordering them;
- fallbacks.py: seed trigger, back-to-source, retry and failure limits;
- serving.py: which peers may serve; load.py: edges and the load they reserve;
- geometry.py: a task's length and piece count, and bitmaps sized to them;
- errors.py: the errors a caller can cause; invariants.py: the checks tests run.

Decisions follow DESIGN.md section 4 and Dragonfly v2's scheduler; where they differ
from Dragonfly or DESIGN is silent, the choice is documented at the method.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from types import MappingProxyType, ModuleType
from typing import Any

from d7y.core.pieces import TINY_TASK_MAX_LENGTH, SizeScope
from d7y.core.scheduling.candidates import ParentSelector
from d7y.core.scheduling.config import SchedulerConfig
from d7y.core.scheduling.errors import (
    DuplicatePeer,
    PeerStateError,
    PieceNumberError,
    SchedulerError,
    UnknownHost,
    UnknownPeer,
    UnknownTask,
    check_count,
    check_id,
    check_time,
    fire_reported,
)
from d7y.core.scheduling.evaluator import Evaluator, make_evaluator
from d7y.core.scheduling.fallbacks import Fallbacks
from d7y.core.scheduling.geometry import Geometry, task_meta
from d7y.core.scheduling.hashring import HashRing
from d7y.core.scheduling.invariants import verify_invariants
from d7y.core.scheduling.load import LoadLedger
from d7y.core.scheduling.resource import Host, HostType, Peer, Task
from d7y.core.scheduling.results import (
    DownloadEnded,
    EmptyTask,
    GCResult,
    HostAnnounced,
    MetadataOnly,
    NeedBackToSource,
    PeerLeft,
    PieceFailedResult,
    RegisterResult,
    Retry,
    ScheduleResult,
    SmallTask,
    TaskMeta,
    TinyTask,
    TriggerSeedPeer,
)
from d7y.core.scheduling.rounds import Rounds, parent_info
from d7y.core.scheduling.serving import Servability, has_available_peer
from d7y.core.states import PeerEvent, PeerState, TaskEvent, TaskState

_RUNNING = PeerState.RUNNING
_BTS = PeerState.BACK_TO_SOURCE
_SUCCEEDED = PeerState.SUCCEEDED
_SCHEDULABLE = (PeerState.RUNNING, PeerState.RECEIVED_NORMAL, PeerState.RECEIVED_SMALL)
_NEEDS_SEED = (TaskState.PENDING, TaskState.FAILED, TaskState.LEAVE)


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
        # The decisions, each in its own module, working on the state above.
        self._geometry = Geometry(self._bitmap_cls)
        self._serving = Servability(self.config.early_parents)
        self._ledger = LoadLedger(self.config.default_piece_length, self._serving)
        self._selector = ParentSelector(self.config, rng, self.evaluator, self._serving)
        self._fallbacks = Fallbacks(self.config, rng, self._hosts, self._ring, self._ledger)
        self._rounds = Rounds(self.config, self._selector, self._fallbacks, self._ledger)

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

    def seed_hosts_for(self, task_id: str) -> list[str]:
        """Seed hosts in the hash ring's order for ``task_id``, its owner first: the
        seed a peer's registration would trigger, then the ones that take over."""
        return list(self._ring.iter_nodes(task_id))

    def piece_digests(self, task_id: str) -> Mapping[int, str]:
        """Piece number -> digest recorded from the origin fetch (read-only view)."""
        return MappingProxyType(self.task(task_id).piece_digests)

    def task_meta(self, task_id: str) -> TaskMeta:
        return task_meta(self.task(task_id))

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
        check_id("host_id", host_id)
        check_time(now)
        for name, value in (
            ("ip", ip),
            ("hostname", hostname),
            ("idc", idc),
            ("location", location),
        ):
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a str, got {value!r}")
        check_count("port", port)
        check_count("download_port", download_port)
        check_count("upload_limit_bps", upload_limit_bps)
        check_count("tx_bandwidth", tx_bandwidth)
        check_count("download_limit_bps", download_limit_bps)
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
        check_count("concurrent_upload_limit", concurrent_upload_limit, 1)
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
        check_id("peer_id", peer_id)
        check_id("task_id", task_id)
        check_id("host_id", host_id)
        if not isinstance(url, str):
            raise TypeError(f"url must be a str, got {url!r}")
        check_time(now)
        if concurrent_piece_count is None:
            concurrent_piece_count = self.config.concurrent_piece_count
        check_count("concurrent_piece_count", concurrent_piece_count, 1)
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
        self._geometry.learn(task, content_length, piece_length)
        task.updated_at = now
        task_state = task.fsm.state
        on_host = task.peers_by_host.get(host_id)
        if on_host:
            for other in on_host.values():
                if other.fsm.state is _SUCCEEDED:
                    return MetadataOnly(peer_id, task_meta(task), other.id)

        bitmap = self._bitmap_cls(task.piece_count if task.piece_count is not None else 0)
        peer = self._add_peer(
            peer_id, task, host, bitmap, concurrent_piece_count, bool(need_back_to_source), now
        )

        scope = task.scope
        if scope is not None:
            if scope is SizeScope.EMPTY:
                peer.fsm.fire(PeerEvent.REGISTER_EMPTY)
                return EmptyTask(peer_id, task_meta(task))
            if scope is SizeScope.TINY and task.direct_piece is not None:
                peer.fsm.fire(PeerEvent.REGISTER_TINY)
                return TinyTask(peer_id, task_meta(task), task.direct_piece)
            if scope is SizeScope.SMALL:
                small = self._selector.success_parent(peer)
                if small is not None:
                    peer.fsm.fire(PeerEvent.REGISTER_SMALL)
                    parent, score = small
                    info = parent_info(parent, score)
                    self._ledger.add_edge(parent, peer)
                    return SmallTask(peer_id, task_meta(task), info)

        peer.fsm.fire(PeerEvent.REGISTER_NORMAL)
        trigger: Host | None = None
        if not peer.need_back_to_source:
            available = has_available_peer(peer)
            if host.is_seed:
                if not available:
                    return self._fallbacks.back_to_source(
                        peer, "seed peer: no peer serves the task yet"
                    )
            else:
                # Dragonfly triggers the seed on the task's state as it was before this
                # peer joined (Pending, Failed, Left; Succeeded with nobody able to
                # serve), in the background: the peer goes straight into a round. A
                # running task that nobody serves, whose trigger produced no seed peer
                # within seed_peer_trigger_timeout, is triggered again (the trigger was
                # lost: the seed host died or restarted).
                if task_state in _NEEDS_SEED or not available:
                    trigger = self._fallbacks.seed_to_trigger(task, now)
                if (
                    trigger is None
                    and not available
                    and not self._fallbacks.seed_pending(task, now)
                    and self._fallbacks.can_back_to_source(peer)
                ):
                    return self._fallbacks.back_to_source(
                        peer, "no peer serves the task and no seed peer is usable"
                    )
        cfg = self.config
        if cfg.register_backoff_max > 0 and not peer.need_back_to_source:
            backoff = self.rng.uniform(cfg.register_backoff_min, cfg.register_backoff_max)
            first: ScheduleResult = Retry(
                peer_id, task_meta(task), backoff, 0, "registration backoff"
            )
        else:
            first = self._rounds.run(peer)
        if trigger is None:
            return first
        return TriggerSeedPeer(
            peer_id,
            task_meta(task),
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
        check_id("peer_id", peer_id)
        check_id("task_id", task_id)
        check_time(now)
        host = self.host(host_id)
        if peer_id in self._peers:
            raise DuplicatePeer(f"peer {peer_id!r} is already registered")
        task = self._tasks.get(task_id)
        if task is None:
            task = self._tasks[task_id] = Task(
                task_id, url, content_length=None, piece_length=None, piece_count=None, now=now
            )
        self._geometry.learn(task, content_length, piece_length)
        count = task.piece_count or 0
        if succeeded:
            # ``finished`` says nothing more (usually empty)
            bitmap = self._geometry.full_bitmap(count)
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
        self._serving.refresh(peer)

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
        check_time(now)
        if isinstance(bad_parents, str):
            raise TypeError("bad_parents must be an iterable of peer IDs, not one str")
        peer.updated_at = now
        dag = peer.task.dag
        in_edges = dag.parents(peer_id)
        for bad in bad_parents:
            check_id("bad parent", bad)
            peer.block((bad,))
            if bad in in_edges:
                self._ledger.delete_edge(peer.task, bad, peer)
        if self.config.blocklist_previous_parents and peer.given_parents:
            # Dragonfly: a peer asks again only when all its parents' streams ended, and
            # the scheduler never offers those parents again.
            peer.block(peer.given_parents)
        state = peer.fsm.state
        if state is _BTS:
            return NeedBackToSource(peer_id, task_meta(peer.task), "peer is already back-to-source")
        if state not in _SCHEDULABLE:
            raise PeerStateError(f"peer {peer_id!r} is {state.name}: there is nothing to schedule")
        return self._rounds.run(peer)

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
        check_time(now)
        self._geometry.learn(peer.task, content_length, piece_length)
        if back_to_source:
            self._fallbacks.back_to_source(peer, "peer started back-to-source")
        else:
            fire_reported(peer, PeerEvent.DOWNLOAD)
            self._serving.refresh(peer)
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
            finished = peer.finished = self._geometry.grown_bitmap(finished, number + 1)
        if not 0 <= number < len(finished):
            raise PieceNumberError(
                f"piece number {number} is outside task {task.id!r} of {len(finished)} pieces"
            )
        if not finished.test(number):
            finished.set(number)
            peer.finished_count += 1
            if peer.finished_count == 1:
                self._serving.refresh(peer)
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
        check_time(now)
        check_count("piece number", number)
        peer.updated_at = now
        if parent_id is None:
            return PieceFailedResult(peer_id, None, False, False)
        check_id("parent_id", parent_id)
        parent = self._peers.get(parent_id)
        if parent is not None:
            parent.host.upload_failed_count += 1
        failures = peer.count_piece_failure(parent_id)
        blocklisted = False
        task = peer.task
        if (
            failures >= self.config.blocklist_after_piece_failures
            and parent_id not in peer.blocklist
        ):
            peer.block((parent_id,))
            blocklisted = True
            if parent_id in task.dag.parents(peer_id):
                self._ledger.delete_edge(task, parent_id, peer)
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
        check_time(now)
        task = peer.task
        if content is not None:
            if not isinstance(content, bytes | bytearray | memoryview):
                raise TypeError(f"content must be bytes, got {type(content).__name__}")
            content = bytes(content)
            if content_length is None and task.content_length is None:
                content_length = len(content)
        self._geometry.learn(task, content_length, None)
        if content is not None:
            if len(content) != task.content_length:
                raise ValueError(
                    f"content has {len(content)} bytes but the task has {task.content_length}"
                )
            if len(content) <= TINY_TASK_MAX_LENGTH:
                task.direct_piece = content
        fire_reported(peer, PeerEvent.DOWNLOAD_SUCCEEDED)
        # back_to_source_limit caps concurrent origin downloads (Dragonfly): a peer
        # whose back-to-source download succeeded no longer counts.
        task.back_to_source_peers.discard(peer.id)
        if task.piece_count is not None and peer.finished_count != task.piece_count:
            peer.finished = self._geometry.full_bitmap(task.piece_count)
            peer.finished_count = task.piece_count
        self._ledger.delete_in_edges(peer)
        self._serving.refresh(peer)
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
        check_time(now)
        was_bts = peer.fsm.state is _BTS
        fire_reported(peer, PeerEvent.DOWNLOAD_FAILED)
        task = peer.task
        task.back_to_source_peers.discard(peer.id)
        self._ledger.delete_in_edges(peer)
        orphans = self._ledger.delete_out_edges(peer)
        self._serving.refresh(peer)
        if peer.id in task.seed_peers:
            self._fallbacks.forget_seed_peer(task, peer, failed=True)
        if was_bts and task.fsm.state is TaskState.RUNNING:
            alive = any(p.fsm.state in (_BTS, _SUCCEEDED) for p in task.servable.items)
            if not alive:
                task.fire(TaskEvent.DOWNLOAD_FAILED)
        peer.updated_at = now
        task.updated_at = now
        return DownloadEnded(peer_id, tuple(orphans))

    # --------------------------------------------------------------- leave and GC --

    def leave_peer(self, peer_id: str, now: float) -> PeerLeft:
        """The peer is gone (its daemon deleted the task or shut down). Returns the
        children that lost it as a parent."""
        peer = self.peer(peer_id)
        check_time(now)
        orphans = self._remove_peer(peer)
        return PeerLeft((peer_id,), tuple(orphans))

    def _remove_peer(self, peer: Peer) -> list[str]:
        state = peer.fsm.state
        if state is not PeerState.LEAVE:
            peer.fsm.fire(PeerEvent.LEAVE)
        task = peer.task
        self._ledger.delete_in_edges(peer)
        orphans = self._ledger.delete_out_edges(peer)
        if peer.id in task.seed_peers:
            # A seed peer leaving before it finished counts as a failed seed for the task.
            self._fallbacks.forget_seed_peer(task, peer, failed=state is not _SUCCEEDED)
        task.dag.delete_vertex(peer.id)
        del task.peers[peer.id]
        on_host = task.peers_by_host[peer.host.id]
        del on_host[peer.id]
        if not on_host:
            del task.peers_by_host[peer.host.id]
        task.peer_list.discard(peer)
        task.servable.discard(peer)
        task.starting.discard(peer)
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
        check_time(now)
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

    def _sample(self, peer: Peer) -> list[Peer]:
        """One round's sample of candidate parents (candidates.py); for tests that check
        its distribution."""
        return self._selector.sample(peer)

    # ---------------------------------------------------------------- invariants --

    def verify_invariants(self) -> None:
        """Raise AssertionError naming the first broken invariant (tests, simulator):
        every DAG acyclic; no self or same-host edge; no edge from a blocklisted parent;
        in-degree <= max_parents; every host's load counters equal the sum of the
        reservations on its edges and are never negative."""
        verify_invariants(self._hosts, self._tasks, self.config.max_parents)


__all__ = [
    "DuplicatePeer",
    "PeerStateError",
    "PieceNumberError",
    "Scheduler",
    "SchedulerError",
    "UnknownHost",
    "UnknownPeer",
    "UnknownTask",
]
