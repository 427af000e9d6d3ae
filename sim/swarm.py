"""One simulated run: hosts, peers and one policy on a flow-level network.

Simulated peers behave as dfdaemon does (daemons/peer/p2p.py and task_manager.py), and
the simulated scheduler service as the scheduler daemon does (daemons/scheduler/
server.py); both call the real :mod:`d7y.core.scheduling` objects -- the Scheduler, its
evaluator and one PiecePicker per download. Only the transport is simulated:

- a scheduler request/answer (register, reschedule) takes ``peer.scheduler_latency``
  each way; reports (download_started, piece_finished, piece_failed,
  download_finished, leave_peer) are applied when sent (nothing waits for them);
- a piece request takes the path's one-way latency to reach the parent, then the piece
  is a flow on the network (:mod:`d7y.sim.network`), and its last byte takes the
  latency again to arrive;
- a parent's new pieces reach its children's pickers at once (the daemon polls its
  parents every 100 ms: see docs/simulation.md).

Peer behaviour mirrored from dfdaemon: a register answer with parents starts a P2P
download (parents are added, never replaced, by later answers); with nothing in flight
the peer asks for a reschedule at most every ``reschedule_interval`` and falls back to
the origin after ``stall_timeout`` without progress; a piece timing out is reported
(piece_failed) and a parent failing ``failure_limit`` times is dropped and reported as a
bad parent; NeedBackToSource or a scheduling error sends the download to the origin.
Scheduler behaviour mirrored from the scheduler daemon: Retry and TriggerSeedPeer are
followed server-side (sleep ``retry_after``, reschedule) until a final answer; a seed
host is told to download the task (it registers with need_back_to_source); children of a
peer that leaves are rescheduled.
"""

from __future__ import annotations

import math
import random
import uuid
from array import array
from collections.abc import Callable
from typing import Any

import simpy

from d7y.core import ids
from d7y.core.scheduling import (
    EmptyTask,
    MetadataOnly,
    NeedBackToSource,
    NormalTask,
    PiecePicker,
    Retry,
    ScheduleFailed,
    Scheduler,
    SchedulerError,
    SmallTask,
    TinyTask,
    TriggerSeedPeer,
)
from d7y.ext.bitmap import backend as bitmaps
from d7y.sim.network import Flow, Network, Resource
from d7y.sim.scenario import Policy, Scenario, TaskSpec
from d7y.sim.topology import Topology

ORIGIN_ID = "origin"  # the picker's name for the origin (a back-to-source "parent")

# Peer states (plain ints: compared on every piece).
PENDING, RUNNING, BTS, DONE, LEFT, FAILED = range(6)
STATE_NAMES = ("pending", "running", "back_to_source", "done", "left", "failed")


class Host:
    __slots__ = (
        "alive",
        "down",
        "download",
        "id",
        "idc",
        "index",
        "ip",
        "kind",
        "location",
        "name",
        "peers",
        "up",
        "upload",
        "uploaded",
    )

    def __init__(self, index: int, name: str, attrs: dict[str, Any], net: Network) -> None:
        self.index = index
        self.name = name
        self.kind = attrs["kind"]
        self.upload = float(attrs["upload"])
        self.download = float(attrs.get("download", attrs["upload"]))
        self.idc = attrs.get("idc", "")
        self.location = attrs.get("location", "")
        self.ip = f"10.{index >> 16 & 255}.{index >> 8 & 255}.{index & 255}"
        self.id = ids.host_id(self.ip, name, seed=self.kind == "seed")
        hub = self.kind != "host"  # the origin and seed peers serve many at once
        self.up: Resource = net.resource(f"{name}.up", self.upload, hub=hub)
        self.down: Resource = net.resource(f"{name}.down", self.download)
        self.alive = True
        self.peers: dict[str, Peer] = {}  # task name -> peer on this host
        self.uploaded = 0.0


class SimTask:
    __slots__ = (
        "count",
        "expected",
        "first_arrival",
        "full",
        "id",
        "last_length",
        "name",
        "origin_bytes",
        "piece_length",
        "plan",
        "size",
        "spec",
        "swarm",
        "swarm_index",
        "url",
    )

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.url = f"http://origin.sim/{spec.name}"
        self.id = ids.task_id(self.url)
        self.size = spec.size
        self.piece_length = spec.piece_length
        self.count = spec.piece_count
        self.last_length = self.size - (self.count - 1) * self.piece_length
        self.full = bitmaps.Bitmap(self.count)
        for i in range(self.count):
            self.full.set(i)
        self.origin_bytes = 0.0
        self.first_arrival = math.inf
        self.expected = 0
        self.plan: list[tuple[float, Host]] = []  # (arrival, host) of each download
        # bittorrent: the tracker's list of peers in the swarm (and their positions)
        self.swarm: list[Peer] = []
        self.swarm_index: dict[Peer, int] = {}

    def length(self, piece: int) -> int:
        return self.last_length if piece == self.count - 1 else self.piece_length


class Peer:
    """One download (of one task on one host), with the daemon's per-download state."""

    __slots__ = (
        "answer_token",
        "arrival",
        "bad",
        "bts_reason",
        "children",
        "done_at",
        "end_at",
        "from_origin",
        "from_peers",
        "from_seeds",
        "host",
        "id",
        "idle_at",
        "inflight",
        "is_seed",
        "last_progress",
        "last_reschedule",
        "lifetime",
        "neighbours",
        "parents",
        "picker",
        "reschedules",
        "state",
        "task",
        "watchdog_at",
    )

    def __init__(self, peer_id: str, host: Host, task: SimTask, arrival: float) -> None:
        self.id = peer_id
        self.host = host
        self.task = task
        self.arrival = arrival
        self.state = PENDING
        self.picker: PiecePicker | None = None
        self.parents: dict[str, Peer | None] = {}  # parent id -> parent (None: origin)
        self.children: dict[Peer, None] = {}  # downloads that have this peer as parent
        self.neighbours: dict[Peer, None] = {}  # bittorrent connections
        self.inflight: dict[tuple[int, str], Transfer] = {}
        self.bad: set[str] = set()
        self.is_seed = host.kind == "seed"
        self.done_at = math.nan
        self.end_at = math.nan
        self.from_origin = 0.0
        self.from_seeds = 0.0
        self.from_peers = 0.0
        self.last_progress = arrival
        self.last_reschedule = -math.inf
        self.idle_at = math.inf
        self.watchdog_at = math.inf
        self.answer_token = 0
        self.bts_reason = ""
        self.reschedules = 0
        self.lifetime = math.inf

    def bitmap(self) -> Any:
        """The pieces this peer holds (what a new child learns from it)."""
        if self.picker is not None:
            return self.picker.have_bitmap()
        return self.task.full if self.state == DONE else bitmaps.Bitmap(self.task.count)

    def __repr__(self) -> str:
        return f"<Peer {self.host.name}/{self.task.name} {STATE_NAMES[self.state]}>"


class Transfer:
    """A piece request: request latency, then a flow, then the last byte's latency."""

    __slots__ = (
        "cancelled",
        "flow",
        "latency",
        "pair",
        "parent_id",
        "peer",
        "piece",
        "size",
        "src",
        "start",
    )

    def __init__(self, peer: Peer, piece: int, parent_id: str, src: Host, size: int, start: float):
        self.peer = peer
        self.piece = piece
        self.parent_id = parent_id
        self.src = src
        self.size = size
        self.start = start
        self.flow: Flow | None = None
        self.cancelled = False
        self.latency = 0.0
        self.pair = None


class Simulation:
    """Runs ``scenario`` with one ``policy``; :meth:`run` returns the raw outcome."""

    def __init__(
        self,
        scenario: Scenario,
        policy: Policy,
        topology: Topology | None = None,
        *,
        progress: Callable[[Simulation], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.policy = policy
        self.env = simpy.Environment()
        self.net = Network(self.env, depth=scenario.depth, hub_slack=scenario.hub_slack)
        self.topology = topology if topology is not None else scenario.build_topology()
        self.progress = progress
        seed = scenario.seed
        label = policy.label
        self.rng = random.Random(f"{seed}:{label}:peers")  # pickers, uuids
        self.tracker_rng = random.Random(f"{seed}:{label}:tracker")
        spec = scenario.peer
        self.max_in_flight = spec.max_in_flight
        self.piece_timeout = spec.piece_timeout
        self.stall_timeout = spec.stall_timeout
        self.reschedule_interval = spec.reschedule_interval
        self.sched_latency = spec.scheduler_latency
        self.endgame = spec.endgame
        # hosts
        g = self.topology.graph
        self.hosts: dict[str, Host] = {}
        names = [self.topology.origin, *self.topology.seeds, *self.topology.hosts]
        for i, name in enumerate(names):
            self.hosts[name] = Host(i, name, g.nodes[name], self.net)
        self.origin = self.hosts[self.topology.origin]
        self.normal_hosts = [self.hosts[n] for n in self.topology.hosts]
        self.seed_hosts = [self.hosts[n] for n in self.topology.seeds]
        self.host_by_id = {h.id: h for h in self.hosts.values()}
        self._links: dict[str, Resource] = {}
        self._route: dict[tuple[int, int], tuple[Any, float]] = {}
        self.tasks = [SimTask(t) for t in scenario.tasks]
        self.peers: dict[str, Peer] = {}
        # outcome
        self.piece_times = array("d")  # when each piece reached a (normal) peer
        self.pieces_expected = 0
        self.pieces_done = 0
        self.ended = 0  # normal peers done, left or failed
        self.expected = 0
        self.arrivals_pending = 0
        self.finished = False
        self.events = 0
        self.end_time = 0.0
        self.scheduler: Scheduler | None = None
        self.scheduler_calls = 0
        self.fallbacks: dict[str, int] = {}  # back-to-source downloads by reason
        if policy.uses_scheduler:
            cfg = scenario.scheduler_config(policy)
            self.scheduler = Scheduler(cfg, rng=random.Random(f"{seed}:{label}:scheduler"))
            for h in [*self.seed_hosts, *self.normal_hosts]:
                self.scheduler.announce_host(
                    h.id,
                    0.0,
                    ip=h.ip,
                    hostname=h.name,
                    idc=h.idc,
                    location=h.location,
                    type="seed" if h.kind == "seed" else "normal",
                    upload_limit_bps=int(h.upload * 8),
                )
        self.cs = policy.name == "client_server"
        self.bt = policy.name == "bittorrent"
        if self.bt:
            for task in self.tasks:
                seeder = Peer(ORIGIN_ID, self.origin, task, 0.0)
                seeder.state = DONE
                self._swarm_add(task, seeder)

    # ------------------------------------------------------------------ helpers --

    def later(self, delay: float, fn: Callable, *args: Any) -> None:
        """Run ``fn(*args)`` after ``delay`` simulated seconds (now if 0, in order)."""
        ev = self.env.timeout(delay)
        ev.callbacks.append(lambda _e: fn(*args))

    def _path(self, src: Host, dst: Host) -> tuple[Any, float]:
        """The network pair from ``src`` to ``dst`` and the path's one-way latency."""
        key = (src.index, dst.index)
        hit = self._route.get(key)
        if hit is not None:
            return hit
        links, latency = self.topology.path(src.name, dst.name)
        res = [src.up]
        for link in links:
            r = self._links.get(link.name)
            if r is None:
                r = self._links[link.name] = self.net.resource(link.name, link.capacity, hub=True)
            res.append(r)
        res.append(dst.down)
        hit = self._route[key] = (self.net.pair(key, res), latency)
        return hit

    # ---------------------------------------------------------------- workload --

    def _workload(self) -> None:
        """Arrivals, churn lifetimes and failures: drawn from the scenario's seed only,
        so every policy sees the very same workload."""
        rng = random.Random(f"{self.scenario.seed}:workload")
        churn = self.scenario.churn_rate
        for task in self.tasks:
            spec = task.spec
            hosts = list(self.normal_hosts)
            if spec.peers is not None:
                if spec.peers > len(hosts):
                    raise ValueError(
                        f"task {spec.name}: peers={spec.peers} but the topology has "
                        f"{len(hosts)} hosts"
                    )
                hosts = rng.sample(hosts, spec.peers)
            a = spec.arrival
            t = a.start
            plan = []
            for i, host in enumerate(hosts):
                if a.kind == "poisson":
                    t += rng.expovariate(a.rate)
                elif a.kind == "staggered" and i:
                    t += a.interval
                life = rng.expovariate(churn) if churn > 0 else math.inf
                plan.append((t, host, life))
            task.plan = [(t, h) for t, h, _life in plan]
            task.expected = len(plan)
            task.first_arrival = plan[0][0] if plan else math.inf
            self.expected += len(plan)
            self.pieces_expected += len(plan) * task.count
            self.arrivals_pending += len(plan)
            self.env.process(self._arrivals(task, plan))
        for failure in self.scenario.failures:
            host = self.hosts.get(failure.host)
            if host is None or host is self.origin:
                raise ValueError(
                    f"failure names host {failure.host!r}, which is not a seed or host of "
                    f"the topology"
                )
            self.later(failure.at, self.fail_host, host)

    def _arrivals(self, task: SimTask, plan):
        for t, host, life in plan:
            if t > self.env.now:
                yield self.env.timeout(t - self.env.now)
            self.arrivals_pending -= 1
            if not host.alive or task.name in host.peers:
                self._end_uncounted()
                continue
            uid = uuid.UUID(int=self.rng.getrandbits(128), version=4)
            peer = Peer(ids.peer_id(host.ip, host.name, uid), host, task, self.env.now)
            peer.lifetime = life
            self.peers[peer.id] = peer
            host.peers[task.name] = peer
            if life < math.inf:
                self.later(life, self._churn, peer)
            self.arrive(peer)

    def _end_uncounted(self) -> None:
        self.ended += 1
        self._check_finished()

    # --------------------------------------------------------------------- run --

    def run(self) -> Simulation:
        self._workload()
        env = self.env
        until = self.scenario.until
        step = env.step
        peek = env.peek
        report = self.progress
        n = 0
        while not self.finished:
            t = peek()
            if t == math.inf or t > until:
                break
            step()
            n += 1
            if report is not None and not n & 4095:
                self.events = n
                report(self)
        self.events = n
        self.end_time = min(env.now, until)
        if report is not None:
            report(self)
        return self

    def _check_finished(self) -> None:
        if self.ended >= self.expected and self.arrivals_pending == 0:
            self.finished = True

    # -------------------------------------------------------------- transfers --

    def pump(self, peer: Peer) -> None:
        """Start what the picker wants to start now."""
        picker = peer.picker
        if picker is None:
            return
        now = self.env.now
        reqs = picker.next_requests(now)
        if reqs:
            for piece, parent_id in reqs:
                self._request(peer, piece, parent_id, now)
            if peer.watchdog_at == math.inf and peer.state == RUNNING:
                self._arm_watchdog(peer)
        if not peer.inflight and (peer.state == RUNNING or peer.state == BTS):
            self._idle(peer)

    def _request(self, peer: Peer, piece: int, parent_id: str, now: float) -> None:
        # the picker only names parents this peer added (the origin included)
        src = self.origin if parent_id == ORIGIN_ID else peer.parents[parent_id].host  # type: ignore[union-attr]
        tr = Transfer(peer, piece, parent_id, src, peer.task.length(piece), now)
        tr.pair, tr.latency = self._path(src, peer.host)
        peer.inflight[(piece, parent_id)] = tr
        if tr.latency > 0:
            self.later(tr.latency, self._begin, tr)
        else:
            self._begin(tr)

    def _begin(self, tr: Transfer) -> None:
        if not tr.cancelled:
            tr.flow = self.net.start_flow(tr.pair, tr.size, self._flow_done, tr)

    def _flow_done(self, flow: Flow) -> None:
        tr: Transfer = flow.arg
        tr.flow = None
        tr.src.uploaded += tr.size
        if tr.latency > 0:
            self.later(tr.latency, self._deliver, tr)
        else:
            self._deliver(tr)

    def _cancel(self, tr: Transfer) -> None:
        tr.cancelled = True
        if tr.flow is not None:
            tr.src.uploaded += self.net.cancel(tr.flow)
            tr.flow = None

    def _deliver(self, tr: Transfer) -> None:
        if tr.cancelled:
            return
        peer = tr.peer
        key = (tr.piece, tr.parent_id)
        if peer.inflight.get(key) is not tr:
            return
        del peer.inflight[key]
        picker = peer.picker
        assert picker is not None
        now = self.env.now
        piece = tr.piece
        size = tr.size
        src = tr.src
        if src is self.origin:
            peer.from_origin += size
            peer.task.origin_bytes += size
        elif src.kind == "seed":
            peer.from_seeds += size
        else:
            peer.from_peers += size
        if picker.has(piece):  # an endgame duplicate that lost: nothing to record
            return
        cost = now - tr.start
        parent_id = tr.parent_id
        for other in picker.piece_done(piece, parent_id, cost, now):
            lost = peer.inflight.pop(other, None)
            if lost is not None:
                self._cancel(lost)
        peer.last_progress = now
        if not peer.is_seed:
            self.pieces_done += 1
            self.piece_times.append(now)
        if self.scheduler is not None:
            self.scheduler_calls += 1
            if parent_id == ORIGIN_ID:
                self.scheduler.piece_finished(peer.id, piece, None, cost, f"crc32:{piece}", now)
            else:
                self.scheduler.piece_finished(peer.id, piece, parent_id, cost, None, now)
        # the children learn the new piece (dfdaemon: their next poll of this parent)
        if peer.children:
            max_in_flight = self.max_in_flight
            wake = []
            pid = peer.id
            for child in peer.children:
                cp = child.picker
                # True: the child lacks the piece, so a free slot may now start it.
                if cp.parent_has(pid, piece) and len(child.inflight) < max_in_flight:  # type: ignore[union-attr]
                    wake.append(child)
            for child in wake:
                if child.picker is not None:
                    self.pump(child)
        if picker.done:
            self.finish(peer)
        else:
            self.pump(peer)

    # ----------------------------------------------------------- timers (daemon) --

    def _arm_watchdog(self, peer: Peer) -> None:
        if not peer.inflight:
            peer.watchdog_at = math.inf
            return
        oldest = next(iter(peer.inflight.values())).start
        peer.watchdog_at = at = oldest + self.piece_timeout + 1e-6
        self.later(at - self.env.now, self._watchdog, peer, at)

    def _watchdog(self, peer: Peer, at: float) -> None:
        if peer.watchdog_at != at:
            return
        peer.watchdog_at = math.inf
        if peer.picker is None or peer.state not in (RUNNING, BTS):
            return
        now = self.env.now
        for failure in peer.picker.check_timeouts(now):
            tr = peer.inflight.pop((failure.piece, failure.parent), None)
            if tr is not None:
                self._cancel(tr)
            self.piece_failed(peer, failure.piece, failure.parent, failure.report_parent)
        if peer.state in (RUNNING, BTS):
            self._arm_watchdog(peer)
            self.pump(peer)

    def _idle(self, peer: Peer) -> None:
        """Nothing in flight: dfdaemon's loop asks for new parents at most every
        reschedule_interval and falls back to the origin after stall_timeout (the
        comparisons are written as ``now >= deadline`` everywhere, so the next check is
        always strictly later: no zero-delay loop on float rounding)."""
        now = self.env.now
        if self.bt:
            due = peer.last_reschedule + self.scenario.bittorrent.reannounce
            if now >= due:
                peer.last_reschedule = now
                self._bt_announce(peer)
                due = now + self.scenario.bittorrent.reannounce
            at = due
        else:
            if peer.state == BTS:
                return
            stall_at = peer.last_progress + self.stall_timeout
            if now >= stall_at:
                self.back_to_source(peer, "stall")
                return
            self.request_reschedule(peer, [])  # rate-limited to reschedule_interval
            at = min(peer.last_reschedule + self.reschedule_interval, stall_at)
        if at < peer.idle_at or peer.idle_at <= now:
            peer.idle_at = at
            self.later(at - now, self._idle_check, peer, at)

    def _idle_check(self, peer: Peer, at: float) -> None:
        if peer.idle_at != at:
            return
        peer.idle_at = math.inf
        if peer.state in (RUNNING, BTS) and not peer.inflight and peer.picker is not None:
            self.pump(peer)

    # ------------------------------------------------------------ life events --

    def arrive(self, peer: Peer) -> None:
        task = peer.task
        if not peer.is_seed and self.env.now < task.first_arrival:
            task.first_arrival = self.env.now
        if self.bt:
            self._bt_join(peer)
        else:
            self.later(self.sched_latency, self._register, peer)

    def _stop_fetching(self, peer: Peer) -> None:
        """The peer downloads nothing more: its transfers stop, its parents stop
        telling it of new pieces (it may stay a parent of its own children)."""
        for tr in peer.inflight.values():
            self._cancel(tr)
        peer.inflight.clear()
        for parent in peer.parents.values():
            if parent is not None:
                parent.children.pop(peer, None)
        peer.picker = None

    def finish(self, peer: Peer) -> None:
        now = self.env.now
        peer.state = DONE
        peer.done_at = peer.end_at = now
        self._stop_fetching(peer)
        for nb in peer.neighbours:
            nb.children.pop(peer, None)
        if self.scheduler is not None:
            self.scheduler_calls += 1
            self.scheduler.download_finished(peer.id, now)
        if not peer.is_seed:
            self.ended += 1
            linger = self.scenario.linger
            if linger < math.inf:
                self.later(linger, self.leave, peer, False)
            self._check_finished()

    def _churn(self, peer: Peer) -> None:
        if peer.state in (PENDING, RUNNING, BTS):
            self.leave(peer, True)

    def leave(self, peer: Peer, counted: bool = True, tell_scheduler: bool = True) -> None:
        """The peer goes away (churn, linger over, host failure)."""
        if peer.state in (LEFT, FAILED):
            return
        was_active = peer.state in (PENDING, RUNNING, BTS)
        now = self.env.now
        peer.state = LEFT
        peer.end_at = now
        self._stop_fetching(peer)
        peer.parents.clear()
        if peer.host.peers.get(peer.task.name) is peer:
            del peer.host.peers[peer.task.name]
        orphans = ()
        if self.scheduler is not None and tell_scheduler:
            self.scheduler_calls += 1
            try:
                orphans = self.scheduler.leave_peer(peer.id, now).orphaned_children
            except SchedulerError:
                orphans = ()
        if self.bt:
            self._swarm_remove(peer.task, peer)
            for nb in list(peer.neighbours):
                nb.neighbours.pop(peer, None)
                self._parent_lost(nb, peer)
            peer.neighbours.clear()
        else:
            for child in list(peer.children):
                self._parent_lost(child, peer)
        peer.children.clear()
        for orphan in orphans:
            self._server_reschedule_id(orphan, [])
        if was_active and not peer.is_seed and counted:
            self.ended += 1
            self._check_finished()

    def fail_host(self, host: Host) -> None:
        """A host dies: its peers leave, the scheduler drops the host."""
        if not host.alive:
            return
        host.alive = False
        orphans = ()
        if self.scheduler is not None:
            self.scheduler_calls += 1
            try:
                orphans = self.scheduler.leave_host(host.id, self.env.now).orphaned_children
            except SchedulerError:
                orphans = ()
        for peer in list(host.peers.values()):
            self.leave(peer, True, tell_scheduler=False)
        for orphan in orphans:
            self._server_reschedule_id(orphan, [])

    def _parent_lost(self, child: Peer, parent: Peer) -> None:
        """``parent`` is gone: the child's fetches from it fail (dfdaemon reports each
        and drops the parent as bad)."""
        if child.picker is None or child.state not in (RUNNING, BTS):
            child.parents.pop(parent.id, None)
            return
        failed = child.picker.parent_removed(parent.id)
        child.parents.pop(parent.id, None)
        for key in failed:
            tr = child.inflight.pop(key, None)
            if tr is not None:
                self._cancel(tr)
        if self.bt:
            if len(child.neighbours) < self.scenario.bittorrent.neighbours // 2:
                self._bt_announce(child)
            self.pump(child)
            return
        if self.scheduler is not None:
            now = self.env.now
            for piece, _pid in failed:
                self.scheduler_calls += 1
                self.scheduler.piece_failed(child.id, piece, parent.id, now)
        child.bad.add(parent.id)
        self.request_reschedule(child, [parent.id])
        self.pump(child)

    def piece_failed(self, peer: Peer, piece: int, parent_id: str, report: bool) -> None:
        """A piece request timed out (dfdaemon: PieceFailed; a parent at the failure
        limit is dropped and reported as bad)."""
        if self.scheduler is not None:
            self.scheduler_calls += 1
            result = self.scheduler.piece_failed(
                peer.id, piece, None if parent_id == ORIGIN_ID else parent_id, self.env.now
            )
            if result.reschedule:
                self._server_reschedule(peer, [])
        if report and self.bt:
            # drop the connection; a later announce may pick that peer again
            other = peer.parents.get(parent_id)
            if other is not None:
                self._bt_disconnect(peer, other)
            return
        if report and parent_id != ORIGIN_ID:
            parent = peer.parents.pop(parent_id, None)
            if parent is not None:
                parent.children.pop(peer, None)
            if peer.picker is not None:
                for key in peer.picker.parent_removed(parent_id):
                    tr = peer.inflight.pop(key, None)
                    if tr is not None:
                        self._cancel(tr)
            peer.bad.add(parent_id)
            self.request_reschedule(peer, [parent_id])

    # ------------------------------------------------------- scheduler policies --

    def _register(self, peer: Peer) -> None:
        if peer.state != PENDING:
            return
        task = peer.task
        self.scheduler_calls += 1
        result = self.scheduler.register_peer(  # type: ignore[union-attr]
            peer.id,
            task.id,
            peer.host.id,
            task.url,
            self.env.now,
            content_length=task.size,
            piece_length=task.piece_length,
            need_back_to_source=peer.is_seed or self.cs,
        )
        peer.answer_token += 1
        self._server_answer(peer, result, peer.answer_token)

    def _server_answer(self, peer: Peer, result: Any, token: int) -> None:
        """The scheduler daemon's answer loop: follow Retry/TriggerSeedPeer, then answer."""
        if isinstance(result, Retry | TriggerSeedPeer):
            if isinstance(result, TriggerSeedPeer):
                self._trigger_seed(peer.task, result.seed_host_id)
            self.later(result.retry_after, self._server_retry, peer, token)
            return
        self.later(self.sched_latency, self._answer, peer, result)

    def _server_retry(self, peer: Peer, token: int) -> None:
        if peer.answer_token != token or peer.state not in (PENDING, RUNNING):
            return
        self.scheduler_calls += 1
        try:
            result = self.scheduler.reschedule(peer.id, [], self.env.now)  # type: ignore[union-attr]
        except SchedulerError:
            return
        self._server_answer(peer, result, token)

    def request_reschedule(self, peer: Peer, bad: list[str]) -> None:
        """dfdaemon's Reschedule report (rate-limited unless it names bad parents)."""
        now = self.env.now
        if not bad and now < peer.last_reschedule + self.reschedule_interval:
            return
        peer.last_reschedule = now
        self.later(self.sched_latency, self._server_reschedule, peer, bad)

    def _server_reschedule_id(self, peer_id: str, bad: list[str]) -> None:
        peer = self.peers.get(peer_id)
        if peer is not None:
            self._server_reschedule(peer, bad)

    def _server_reschedule(self, peer: Peer, bad: list[str]) -> None:
        if peer.state not in (PENDING, RUNNING, BTS) or self.scheduler is None:
            return
        peer.answer_token += 1
        peer.reschedules += 1
        self.scheduler_calls += 1
        try:
            result = self.scheduler.reschedule(peer.id, bad, self.env.now)
        except SchedulerError:
            return
        self._server_answer(peer, result, peer.answer_token)

    def _trigger_seed(self, task: SimTask, seed_host_id: str) -> None:
        host = self.host_by_id.get(seed_host_id)
        if host is None or not host.alive or task.name in host.peers:
            return
        self.later(self.sched_latency, self._seed_starts, host, task)

    def _seed_starts(self, host: Host, task: SimTask) -> None:
        if not host.alive or task.name in host.peers:
            return
        uid = uuid.UUID(int=self.rng.getrandbits(128), version=4)
        peer = Peer(ids.peer_id(host.ip, host.name, uid, seed=True), host, task, self.env.now)
        self.peers[peer.id] = peer
        host.peers[task.name] = peer
        self.arrive(peer)

    def _new_picker(self, peer: Peer) -> PiecePicker:
        return PiecePicker(
            peer.task.count,
            self.rng,
            max_in_flight=self.max_in_flight,
            piece_timeout=self.piece_timeout,
            endgame=self.endgame,
        )

    def _answer(self, peer: Peer, result: Any) -> None:
        """dfdaemon acts on the scheduler's answer."""
        state = peer.state
        if state not in (PENDING, RUNNING):
            return
        if isinstance(result, NormalTask | SmallTask):
            parents = result.parents if isinstance(result, NormalTask) else (result.parent,)
            if state == PENDING:
                peer.state = RUNNING
                peer.picker = self._new_picker(peer)
                peer.last_progress = self.env.now
                self.scheduler_calls += 1
                self.scheduler.download_started(peer.id, self.env.now)  # type: ignore[union-attr]
            for info in parents:
                pid = info.peer_id
                if pid in peer.parents or pid in peer.bad or pid == peer.id:
                    continue
                parent = self.peers.get(pid)
                if parent is None or parent.state in (LEFT, FAILED, PENDING):
                    continue
                peer.parents[pid] = parent
                peer.picker.parent_added(  # type: ignore[union-attr]
                    pid, parent.bitmap(), tx=info.tx_bandwidth, max_tx=info.upload_limit_bps
                )
                if parent.state != DONE:
                    parent.children[peer] = None
            self.pump(peer)
        elif isinstance(result, NeedBackToSource):
            self.back_to_source(peer, "scheduler")
        elif isinstance(result, ScheduleFailed):
            # the scheduler daemon answers it with an error; dfdaemon then goes to the
            # origin by itself (unless back-to-source is disabled, which no scenario does)
            self.back_to_source(peer, "schedule_failed")
        elif isinstance(result, EmptyTask | TinyTask | MetadataOnly):
            # (MetadataOnly needs a second download of the task on one host, which the
            # workload never makes)
            peer.picker = None
            self.finish(peer)

    def back_to_source(self, peer: Peer, reason: str) -> None:
        """Fetch the missing pieces from the origin (keeping what is held). ``reason``:
        ``scheduler`` (NeedBackToSource), ``schedule_failed`` (the scheduler gave up:
        retry_limit rounds failed with back_to_source_limit reached), ``stall``."""
        if peer.state not in (PENDING, RUNNING):
            return
        peer.bts_reason = reason
        if not peer.is_seed:
            self.fallbacks[reason] = self.fallbacks.get(reason, 0) + 1
        now = self.env.now
        for tr in peer.inflight.values():
            self._cancel(tr)
        peer.inflight.clear()
        for parent in peer.parents.values():
            if parent is not None:
                parent.children.pop(peer, None)
        peer.parents.clear()
        # A fresh picker over what is held, with the origin as the only "parent" and no
        # piece timeout: dfdaemon fetches from the origin with plain ranged GETs, not
        # through the P2P picker and its 30 s piece timeout.
        held = peer.picker.have_bitmap() if peer.picker is not None else None
        peer.picker = PiecePicker(
            peer.task.count,
            self.rng,
            have=held,
            max_in_flight=self.max_in_flight,
            piece_timeout=1e12,
            endgame=False,
        )
        peer.watchdog_at = math.inf
        peer.state = BTS
        peer.last_progress = now
        if self.scheduler is not None:
            self.scheduler_calls += 1
            task = peer.task
            self.scheduler.download_started(
                peer.id,
                now,
                back_to_source=True,
                content_length=task.size,
                piece_length=task.piece_length,
            )
        peer.parents[ORIGIN_ID] = None
        peer.picker.parent_added(
            ORIGIN_ID, peer.task.full, tx=0, max_tx=int(self.origin.upload * 8)
        )
        self.pump(peer)

    # ---------------------------------------------------------------- bittorrent --

    def _swarm_add(self, task: SimTask, peer: Peer) -> None:
        task.swarm_index[peer] = len(task.swarm)
        task.swarm.append(peer)

    def _swarm_remove(self, task: SimTask, peer: Peer) -> None:
        i = task.swarm_index.pop(peer, None)
        if i is None:
            return
        last = task.swarm.pop()
        if last is not peer:
            task.swarm[i] = last
            task.swarm_index[last] = i

    def _bt_join(self, peer: Peer) -> None:
        peer.state = RUNNING
        peer.picker = self._new_picker(peer)
        self._bt_announce(peer)
        self._swarm_add(peer.task, peer)
        self.pump(peer)

    def _bt_announce(self, peer: Peer) -> None:
        """Ask the tracker for random peers of the swarm and connect to them (both
        ways, within max_connections on each side)."""
        spec = self.scenario.bittorrent
        swarm = peer.task.swarm
        want = spec.neighbours - len(peer.neighbours)
        if want <= 0 or not swarm:
            return
        k = min(len(swarm), want + 5)
        for other in self.tracker_rng.sample(swarm, k):
            if want <= 0:
                break
            if other is peer or other in peer.neighbours or other.state in (LEFT, FAILED):
                continue
            if len(other.neighbours) >= spec.max_connections:
                continue
            self._bt_connect(peer, other)
            want -= 1

    def _bt_disconnect(self, a: Peer, b: Peer) -> None:
        a.neighbours.pop(b, None)
        b.neighbours.pop(a, None)
        for x, y in ((a, b), (b, a)):
            y.children.pop(x, None)
            if x.parents.pop(y.id, None) is not None and x.picker is not None:
                for key in x.picker.parent_removed(y.id):
                    tr = x.inflight.pop(key, None)
                    if tr is not None:
                        self._cancel(tr)

    def _bt_connect(self, a: Peer, b: Peer) -> None:
        a.neighbours[b] = None
        b.neighbours[a] = None
        for x, y in ((a, b), (b, a)):
            # x downloads from y if x still needs pieces
            if x.picker is not None and x.state == RUNNING:
                x.parents[y.id] = y
                # No announced load: the picker then chooses uniformly among the
                # neighbours holding a piece (a fast neighbour still gets more pieces,
                # as in BitTorrent: its requests finish sooner and free their slots).
                x.picker.parent_added(y.id, y.bitmap(), tx=0, max_tx=0)
                if y.state != DONE:
                    y.children[x] = None
        if b.picker is not None and b.state == RUNNING and len(b.inflight) < self.max_in_flight:
            self.pump(b)
