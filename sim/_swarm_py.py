"""One simulated run: hosts, peers and one policy on a flow-level network.

This is the source of :mod:`d7y.sim.swarm`, which selects it or its compiled build
(setup.py ``PURE_MODE``, typed by ``_swarm.pxd``).

Simulated peers and the simulated scheduler service run the real :mod:`d7y.core`
code, with nothing of it mirrored here: the Scheduler and its evaluator, the answer
loop (:mod:`d7y.core.scheduling.answers`: retry, trigger the seed) and one
:class:`~d7y.core.scheduling.download.Download` per download (piece choice, timeouts,
busy parents, reschedules, the stall and back-to-source rules). This module only
carries out their actions on a simulated transport:

- a scheduler request/answer (register, reschedule) takes ``peer.scheduler_latency``
  each way; reports (download_started, piece_finished, piece_failed,
  download_finished, leave_peer) are applied when sent (nothing waits for them);
- a piece request takes the path's one-way latency to reach the parent; a parent whose
  upload slots are all taken answers "busy" (one more latency back); otherwise the piece
  is a flow on the network (:mod:`d7y.sim.network`), and its last byte takes the
  latency again to arrive;
- a parent's new pieces reach the downloads following it at once (dfdaemon's children
  subscribe to their parents and are pushed each new piece).

Cut-through relaying (``DownloadConfig.cut_through``, opt-in; the daemons do not have
it): every piece transfer is ``peer.cut_through_blocks`` flows in a row, one block
each, and a block is at the receiver one latency after its flow ends. A peer announces
a piece to its children when the first block of its own transfer of it starts; a
child's request for a piece its parent is still receiving sends each block only once
that block has reached the parent, so the relayed stream is never ahead of the
parent's (store-and-forward per block, not per piece). If the parent's transfer ends
without the piece, its children are told (``Download.parent_lost_piece``) and a
transfer relaying it is cancelled.
"""

from __future__ import annotations

import gc
import math
import random
import uuid
from array import array
from collections.abc import Callable
from heapq import heappop
from typing import Any

import simpy
from simpy.events import NORMAL

from d7y.core import ids
from d7y.core.scheduling import (
    EmptyTask,
    MetadataOnly,
    NeedBackToSource,
    NormalTask,
    ScheduleFailed,
    Scheduler,
    SchedulerError,
    SmallTask,
    TinyTask,
    answers,
)
from d7y.core.scheduling.download import (
    BUSY,
    NOT_FOUND,
    AskParents,
    Cancel,
    Download,
    Fetch,
    Finished,
    Follow,
    GoToOrigin,
    ReportFailed,
    Unfollow,
)
from d7y.core.scheduling.upload_slots import UploadSlots
from d7y.ext.bitmap import backend as bitmaps
from d7y.sim import events
from d7y.sim.network import Flow, Network, Resource
from d7y.sim.scenario import Policy, Scenario, TaskSpec
from d7y.sim.topology import Topology

ORIGIN_ID = "origin"  # the picker's name for the origin (a back-to-source "parent")

#: While a run's event loop goes on, CPython's automatic cyclic collections are paused
#: and one full collection is made every this many events (a power of two) instead.
#: Why: a large run holds millions of long-lived containers (peers, pickers, their
#: parent records, network pairs), and a full collection traverses all of them; CPython
#: makes one whenever the objects that outlived two young collections reach a quarter of
#: the long-lived ones, and at 10,000 hosts most of a run's requests, flows and queued
#: events live that long, so full collections came every ~50,000 events and took 23 %
#: of a BitTorrent run's CPU over its first 4 s (4 % of a whole 1,000-host run): the
#: part of its cost that grew faster than the hosts (bench/RESULTS.md, fifth pass).
#: A run makes next to no cyclic garbage (its objects are freed by reference
#: counting), so the periodic collection only bounds what a scenario making some holds.
#: Each periodic collection also freezes what survived it (``gc.freeze``): the next one
#: then traverses only what was made since, not the whole run again (at 10,000 hosts a
#: full collection of a BitTorrent run's 700 MiB took seconds, 5 % of its CPU). The run
#: unfreezes them when it ends, so a finished simulation is collected as usual. Cyclic
#: garbage made of frozen objects waits for that; a caller that froze objects of its
#: own keeps them frozen and gets collections without freezing.
GC_EVERY = 1 << 22

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
        "routes",
        "slots",
        "up",
        "upload",
        "uploaded",
    )

    def __init__(self, index: int, name: str, attrs: dict[str, Any], net: Network) -> None:
        self.slots = UploadSlots()  # piece uploads being served; set by the policy
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
        #: source host index -> (network pair, latency) of the path to this host
        #: (Simulation._path). Per destination, so a lookup touches a small dict of the
        #: host receiving, not one table of every pair in the run.
        self.routes: dict[int, tuple[Any, float]] = {}
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


class Followers:
    """A peer's children: the peers whose downloads follow it, in the order they began
    to (as a dict's keys would be), each with its download's ``held`` bitmap.

    Two lists, not a dict: an announcement (:meth:`Simulation._deliver`) reads the
    bitmaps and passes over the children that hold the piece already (half of them)
    without touching the child itself; a dict's iteration takes a reference to every
    key, one cache miss per child in a large run. The download's own ``held`` is
    another bitmap only after it went to the origin, which unfollowed every parent; and
    held pieces stay held, so a bitmap here is never wrong to say "held"."""

    __slots__ = ("held", "peers")

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.held: list[Any] = []

    def __len__(self) -> int:
        return len(self.peers)

    def __iter__(self):
        return iter(self.peers)

    def add(self, child: Peer, held: Any) -> None:
        """``child`` follows (again: it keeps its place, as a dict key would)."""
        i = self._find(child)
        if i < 0:
            self.peers.append(child)
            self.held.append(held)
        else:
            self.held[i] = held

    def discard(self, child: Peer) -> None:
        i = self._find(child)
        if i >= 0:
            del self.peers[i]
            del self.held[i]

    def clear(self) -> None:
        self.peers.clear()
        self.held.clear()

    def _find(self, child: Peer) -> int:
        # by identity, without looking at the other children (list.index would compare
        # each with ==, reading every child's type)
        peers = self.peers
        for i in range(len(peers)):
            if peers[i] is child:
                return i
        return -1


class Peer:
    """One download (of one task on one host), with the daemon's per-download state."""

    __slots__ = (
        "answer_token",
        "arrival",
        "bts_reason",
        "children",
        "dl",
        "done_at",
        "end_at",
        "from_origin",
        "from_peers",
        "from_seeds",
        "host",
        "id",
        "inflight",
        "is_seed",
        "last_announce",
        "lifetime",
        "neighbours",
        "parents",
        "reschedules",
        "state",
        "task",
        "timer_at",
    )

    def __init__(self, peer_id: str, host: Host, task: SimTask, arrival: float) -> None:
        self.id = peer_id
        self.host = host
        self.task = task
        self.arrival = arrival
        self.state = PENDING
        self.dl: Download | None = None  # the core download loop, from the first answer
        self.parents: dict[str, Peer | None] = {}  # parent id -> parent (None: origin)
        self.children = Followers()  # the downloads that have this peer as a parent
        self.neighbours: dict[Peer, None] = {}  # bittorrent connections
        self.inflight: dict[tuple[int, str], Transfer] = {}
        self.is_seed = host.kind == "seed"
        self.done_at = math.nan
        self.end_at = math.nan
        self.from_origin = 0.0
        self.from_seeds = 0.0
        self.from_peers = 0.0
        self.last_announce = -math.inf
        self.timer_at = math.inf
        self.answer_token = 0
        self.bts_reason = ""
        self.reschedules = 0
        self.lifetime = math.inf

    def bitmap(self) -> Any:
        """The pieces this peer holds (what a new child learns from it)."""
        if self.state == DONE:
            return self.task.full
        if self.dl is not None:
            return self.dl.picker.have_bitmap()
        return bitmaps.Bitmap(self.task.count)

    def __repr__(self) -> str:
        return f"<Peer {self.host.name}/{self.task.name} {STATE_NAMES[self.state]}>"


class Transfer:
    """A piece request: request latency, then a flow, then the last byte's latency."""

    __slots__ = (
        "cancelled",
        "feeding",
        "flow",
        "landed",
        "latency",
        "pair",
        "parent",
        "parent_id",
        "peer",
        "piece",
        "sent",
        "size",
        "slot",
        "source",
        "src",
        "start",
    )

    def __init__(self, peer: Peer, piece: int, parent_id: str, src: Host, size: int, start: float):
        self.parent: Peer | None = None  # the uploading peer (None: the origin)
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
        self.slot: Host | None = None  # the host whose upload slot this transfer holds
        # Cut-through only (Simulation.cut_through): blocks whose flow ended, blocks
        # that reached the receiver, the parent's transfer of the piece that this one
        # relays (None: the parent holds the piece whole), and the children's transfers
        # relaying this one.
        self.sent = 0
        self.landed = 0
        self.source: Transfer | None = None
        self.feeding: list[Transfer] | None = None


class _Call:
    """An event that calls ``fn(*args)`` when SimPy processes it: what a Timeout with
    one callback does (the same queue entry, so the same order and event count), in one
    small object instead of a Timeout, its callback list and a closure -- a run
    schedules millions of these."""

    __slots__ = ("_ok", "_value", "args", "callbacks", "fn")

    def __init__(self, fn: Callable, args: tuple) -> None:
        self.fn = fn
        self.args = args
        self.callbacks = _RUN_CALL
        self._ok = True
        self._value = None


def _run_call(event: _Call) -> None:
    event.fn(*event.args)


# Shared by every _Call: SimPy only iterates an event's callbacks (and then drops them).
_RUN_CALL = (_run_call,)


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
        # env.now, as a plain attribute: both event loops below set it to the time of
        # the event they process (as env.step sets env.now), before its callbacks run.
        self.now = 0.0
        # The SimPy this module's inline scheduling and event loop were written against
        # (run, later): its queue is a heap list of (time, priority, id, event) and ids
        # come from a counter. Otherwise they go through env.schedule and env.step.
        queue = getattr(self.env, "_queue", None)
        inline = type(self.env) is simpy.Environment and isinstance(queue, list)
        self._queue = queue if inline else None
        self._eid = getattr(self.env, "_eid", None) if inline else None
        self._calls = events.EventHeap() if inline else None  # the simulator's own events
        self.net = Network(self.env, depth=scenario.depth, hub_slack=scenario.hub_slack)
        self.topology = topology if topology is not None else scenario.build_topology()
        self.progress = progress
        seed = scenario.seed
        label = policy.label
        self.rng = random.Random(f"{seed}:{label}:peers")  # pickers, uuids
        self.tracker_rng = random.Random(f"{seed}:{label}:tracker")
        spec = scenario.peer
        self.sched_latency = spec.scheduler_latency
        self.download_config = scenario.download_config(policy)
        self._arm_idle_pumps = self.download_config.order != "rarest"  # see pump()
        # A download's parent_has for a piece it holds only records when the parent was
        # last heard of, which nothing reads without a parent idle timeout: then
        # _deliver skips the children holding the piece (half of a swarm's news).
        self._news_timed = self.download_config.parent_idle_timeout < math.inf
        # Cut-through relaying (see the module docstring): piece transfers in blocks.
        self.cut_through = self.download_config.cut_through
        self.blocks = spec.cut_through_blocks
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
        self._gc_freeze = False  # see GC_EVERY
        self.events = 0
        self.end_time = 0.0
        self.scheduler: Scheduler | None = None
        self.scheduler_calls = 0
        self.busy_answers = 0  # piece requests a parent refused (upload slots full)
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
                    download_limit_bps=int(h.download * 8),
                )
        self.cs = policy.name == "client_server"
        self.bt = policy.name == "bittorrent"
        peer_slots, seed_slots, window = scenario.upload_slots(policy)
        for h in self.normal_hosts:
            h.slots = UploadSlots(peer_slots, window)
        for h in self.seed_hosts:
            h.slots = UploadSlots(seed_slots, window)
        if self.bt:
            self.origin.slots = UploadSlots(seed_slots)
            for task in self.tasks:
                seeder = Peer(ORIGIN_ID, self.origin, task, 0.0)
                seeder.state = DONE
                self._swarm_add(task, seeder)

    # ------------------------------------------------------------------ helpers --

    def later(self, delay: float, fn: Callable, *args: Any) -> None:
        """Run ``fn(*args)`` after ``delay`` simulated seconds (now if 0, in order)."""
        if delay < 0:
            raise ValueError(f"negative delay {delay}")
        if self._calls is not None:
            # env.schedule(event, NORMAL, delay), into the simulator's own queue (see
            # _run_inline); a run schedules millions
            self._calls.push(self.now + delay, NORMAL, next(self._eid), _Call(fn, args))
        else:
            self.env.schedule(_Call(fn, args), NORMAL, delay)

    def _path(self, src: Host, dst: Host) -> tuple[Any, float]:
        """The network pair from ``src`` to ``dst`` and the path's one-way latency."""
        hit = dst.routes.get(src.index)
        if hit is not None:
            return hit
        key = (src.index, dst.index)
        links, latency = self.topology.path(src.name, dst.name)
        res = [src.up]
        for link in links:
            r = self._links.get(link.name)
            if r is None:
                r = self._links[link.name] = self.net.resource(link.name, link.capacity, hub=True)
            res.append(r)
        res.append(dst.down)
        hit = dst.routes[src.index] = (self.net.pair(key, res), latency)
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
            if t > self.now:
                yield self.env.timeout(t - self.now)
            self.arrivals_pending -= 1
            if not host.alive or task.name in host.peers:
                self._end_uncounted()
                continue
            uid = uuid.UUID(int=self.rng.getrandbits(128), version=4)
            peer = Peer(ids.peer_id(host.ip, host.name, uid), host, task, self.now)
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
        report = self.progress
        collect = gc.isenabled()  # (a caller that turned the collector off keeps it off)
        self._gc_freeze = collect and gc.get_freeze_count() == 0
        gc.disable()  # see GC_EVERY
        try:
            if self._queue is None:
                # not the SimPy this loop was written against
                n = self._run_stepping(until, collect)
            else:
                n = self._run_inline(env, self._queue, until, collect)
        finally:
            if self._gc_freeze:
                gc.unfreeze()
            if collect:
                gc.enable()
        self.events = n
        self.end_time = min(env.now, until)
        if report is not None:
            report(self)
        return self

    def _run_inline(self, env: simpy.Environment, queue: list, until: float, collect: bool) -> int:
        """The event loop (:meth:`run`); returns the events processed."""
        # Environment.step, inline: a run processes millions of events, and peek()
        # plus step() are two calls per event (5-10 % of a run). The simulator's own
        # events (_Call) wait in self._calls, SimPy's (the arrival processes) in its
        # queue; the next event is the earlier of the two first entries, by (time,
        # priority, id), the ids from SimPy's one counter: the very order of SimPy's
        # one queue. A _Call's one callback is called as step() would call it; SimPy's
        # events are stepped as step() steps them. No event of the simulator fails (an
        # event that did would raise here as in step()).
        n = 0
        inf = math.inf
        calls = self._calls
        while not self.finished:
            if len(calls) and (not queue or calls.before(queue[0])):
                t = calls.first_time()
                if t == inf or t > until:
                    break
                call = calls.pop()
                env._now = t
                self.now = t
                call.callbacks = None
                call.fn(*call.args)
            elif queue:
                entry = queue[0]
                t = entry[0]
                if t == inf or t > until:
                    break
                heappop(queue)
                env._now = t
                self.now = t
                event = entry[3]
                callbacks, event.callbacks = event.callbacks, None
                for callback in callbacks:
                    callback(event)
                if not event._ok and not hasattr(event, "_defused"):
                    # as step() does: a failed event nobody handled ends the run
                    exc = type(event._value)(*event._value.args)
                    exc.__cause__ = event._value
                    raise exc
            else:
                break
            n += 1
            if not n & 4095:
                self._checkpoint(n, collect)
        return n

    def _checkpoint(self, n: int, collect: bool) -> None:
        """Every 4,096 events: the progress report, and every GC_EVERY events a full
        collection (while the collector is paused, see GC_EVERY)."""
        report = self.progress
        if report is not None:
            self.events = n
            report(self)
        if collect and not n & (GC_EVERY - 1):
            gc.collect()
            if self._gc_freeze:
                gc.freeze()

    def _run_stepping(self, until: float, collect: bool) -> int:
        """The event loop through SimPy's public peek() and step(); returns the events
        processed."""
        env = self.env
        step = env.step
        peek = env.peek
        n = 0
        while not self.finished:
            t = peek()
            if t == math.inf or t > until:
                break
            self.now = t
            step()
            n += 1
            if not n & 4095:
                self._checkpoint(n, collect)
        return n

    def _check_finished(self) -> None:
        if self.ended >= self.expected and self.arrivals_pending == 0:
            self.finished = True

    # ------------------------------------------------------ the download loop --

    def run_actions(self, peer: Peer, actions: list) -> None:
        """Carry out what the peer's core download loop asked for, then arm its timer."""
        now = self.now
        for action in actions:
            kind = type(action)
            if kind is Fetch:
                self._request(peer, action.piece, action.parent, now)
            elif kind is Cancel:
                tr = peer.inflight.pop((action.piece, action.parent), None)
                if tr is not None:
                    self._cancel(tr)
            elif kind is ReportFailed:
                self._report_failed(peer, action)
            elif kind is Follow:
                parent = self.peers.get(action.parent)
                if parent is not None:
                    peer.parents[action.parent] = parent
                    if parent.state != DONE:
                        parent.children.add(peer, peer.dl.held)
                        if self.cut_through:
                            self._receiving_news(peer, parent)
            elif kind is Unfollow:
                parent = peer.parents.pop(action.parent, None)
                if parent is not None:
                    parent.children.discard(peer)
                    if self.bt:
                        self._bt_disconnect(peer, parent)
            elif kind is AskParents:
                if self.bt:
                    self._bt_reannounce(peer)
                else:
                    self.request_reschedule(peer, list(action.bad))
            elif kind is GoToOrigin:
                self._went_to_origin(peer, action.reason)
            elif kind is Finished:
                self.finish(peer)
                return
        self._arm(peer)

    def _arm(self, peer: Peer) -> None:
        dl = peer.dl
        if dl is None or peer.state not in (RUNNING, BTS):
            return
        now = self.now
        at = dl.next_timer(now)
        if at == math.inf:
            return
        if at < now:
            at = now
        if at < peer.timer_at or peer.timer_at < now:
            peer.timer_at = at
            self.later(at - now, self._timer, peer, at)

    def _timer(self, peer: Peer, at: float) -> None:
        if peer.timer_at != at:
            return
        peer.timer_at = math.inf
        if peer.dl is not None and peer.state in (RUNNING, BTS):
            self.run_actions(peer, peer.dl.tick(self.now))

    def pump(self, peer: Peer) -> None:
        """Start what the download loop can start now (a parent announced a piece)."""
        dl = peer.dl
        if dl is not None and peer.state in (RUNNING, BTS):
            actions = dl.pump(self.now)
            if actions or self._arm_idle_pumps:
                self.run_actions(peer, actions)
            # No action (rarest first): the loop's state is as it was after its last
            # change, which was followed by _arm (every call into the loop is, but
            # parent_has, which in rarest-first order only delays the parent-idle
            # deadline; in announcement order it also starts a dispatch wait). For a
            # given state next_timer never decreases as time goes on, so arming again
            # would find the timer set early enough and do nothing. Most pumps of a
            # swarm peer are these.

    def _report_failed(self, peer: Peer, action: ReportFailed) -> None:
        """dfdaemon's PieceFailed report; the scheduler may answer with new parents."""
        if self.scheduler is None or action.parent == ORIGIN_ID:
            return
        self.scheduler_calls += 1
        try:
            result = self.scheduler.piece_failed(peer.id, action.piece, action.parent, self.now)
        except SchedulerError:
            return
        if result.reschedule:
            self._server_reschedule(peer, [])

    # -------------------------------------------------------------- transfers --

    def _request(self, peer: Peer, piece: int, parent_id: str, now: float) -> None:
        if parent_id == ORIGIN_ID:
            src, parent = self.origin, None
        else:
            parent = peer.parents.get(parent_id)
            if parent is None:
                return
            src = parent.host
        tr = Transfer(peer, piece, parent_id, src, peer.task.length(piece), now)
        tr.parent = parent
        tr.pair, tr.latency = self._path(src, peer.host)
        peer.inflight[(piece, parent_id)] = tr
        if tr.latency > 0:
            self.later(tr.latency, self._begin, tr)
        else:
            self._begin(tr)

    def _begin(self, tr: Transfer) -> None:
        """The request reached the parent: it serves it, or answers busy when all its
        upload slots are taken (or it no longer holds the task)."""
        if tr.cancelled:
            return
        if self.cut_through:
            self._begin_blocks(tr)
            return
        src = tr.src
        parent = tr.parent
        if (parent is not None and parent.state in (LEFT, FAILED)) or not src.slots.acquire(
            tr.peer.id, self.now
        ):
            self._after_latency(tr, self._busy)
            return
        tr.slot = src
        tr.flow = self.net.start_flow(tr.pair, tr.size, self._flow_done, tr)

    def _busy(self, tr: Transfer) -> None:
        if tr.cancelled:
            return
        peer = tr.peer
        key = (tr.piece, tr.parent_id)
        if peer.inflight.get(key) is not tr or peer.dl is None:
            return
        del peer.inflight[key]
        self.busy_answers += 1
        self.run_actions(peer, peer.dl.piece_failed(tr.piece, tr.parent_id, BUSY, self.now))

    def _free_slot(self, tr: Transfer) -> None:
        host = tr.slot
        if host is not None:
            host.slots.release(tr.peer.id, self.now)
            tr.slot = None

    def _flow_done(self, flow: Flow) -> None:
        tr: Transfer = flow.arg
        tr.flow = None
        tr.src.uploaded += tr.size
        self._free_slot(tr)
        if tr.latency > 0:
            self.later(tr.latency, self._deliver, tr)
        else:
            self._deliver(tr)

    def _cancel(self, tr: Transfer) -> None:
        tr.cancelled = True
        if tr.flow is not None:
            tr.src.uploaded += self.net.cancel(tr.flow)
            tr.flow = None
        self._free_slot(tr)
        if self.cut_through:
            self._unlink(tr)

    def _deliver(self, tr: Transfer) -> None:
        if tr.cancelled:
            return
        if tr.feeding:
            self._release(tr)  # the piece is whole at tr.peer now
        peer = tr.peer
        key = (tr.piece, tr.parent_id)
        if peer.inflight.get(key) is not tr:
            return
        del peer.inflight[key]
        dl = peer.dl
        assert dl is not None
        now = self.now
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
        if dl.held.test(piece):  # an endgame duplicate that lost: nothing to record
            return
        cost = now - tr.start
        parent_id = tr.parent_id
        actions = dl.piece_done(piece, parent_id, cost, now)
        if not peer.is_seed:
            self.pieces_done += 1
            self.piece_times.append(now)
        if self.scheduler is not None:
            self.scheduler_calls += 1
            if parent_id == ORIGIN_ID:
                self.scheduler.piece_finished(peer.id, piece, None, cost, f"crc32:{piece}", now)
            else:
                self.scheduler.piece_finished(peer.id, piece, parent_id, cost, None, now)
        # the children learn the new piece (dfdaemon: pushed on their subscription)
        if peer.children:
            max_in_flight = self.download_config.max_in_flight
            wake = []
            pid = peer.id
            timed = self._news_timed
            followers = peer.children
            held_by = followers.held
            for i in range(len(held_by)):
                if not timed:
                    # (the children holding the piece are passed over untouched:
                    # Followers; with a parent idle timeout every child hears the news)
                    held = held_by[i]
                    if held.test(piece):
                        continue
                child = followers.peers[i]
                cdl = child.dl
                # parent_has True: the child lacks the piece, so a free slot may now
                # start it.
                if (
                    cdl is not None
                    and cdl.parent_has(pid, piece, now)
                    and len(child.inflight) < max_in_flight
                ):
                    wake.append(child)
            # self.pump(child) for each, inline: a swarm peer's pumps are mostly these
            arm_idle = self._arm_idle_pumps
            for child in wake:
                cdl = child.dl
                if cdl is not None and child.state in (RUNNING, BTS):
                    pumped = cdl.pump(now)
                    if pumped or arm_idle:
                        self.run_actions(child, pumped)
        self.run_actions(peer, actions)

    # ------------------------------------------------------------ cut-through --

    def _begin_blocks(self, tr: Transfer) -> None:
        """Cut-through's :meth:`_begin`: a piece the parent holds streams at once; one
        it is receiving streams block by block behind its own transfer; one it neither
        holds nor receives any more is answered "not there"; busy as in _begin."""
        parent = tr.parent
        source = None
        gone = parent is not None and parent.state in (LEFT, FAILED)
        if parent is not None and not gone and not self._holds(parent, tr.piece):
            source = self._receiving(parent, tr.piece)
            if source is None:
                self._after_latency(tr, self._not_there)
                return
        if gone or not tr.src.slots.acquire(tr.peer.id, self.now):
            self._after_latency(tr, self._busy)
            return
        tr.slot = tr.src
        if source is not None:
            self._relay_from(source, tr)
        self._next_block(tr)

    def _after_latency(self, tr: Transfer, then: Callable[[Transfer], None]) -> None:
        """``then(tr)`` once the transfer's one-way latency has passed (at once if none)."""
        if tr.latency > 0:
            self.later(tr.latency, then, tr)
        else:
            then(tr)

    @staticmethod
    def _relay_from(source: Transfer, tr: Transfer) -> None:
        """``tr`` sends the piece block by block behind ``source``, its parent's
        transfer of it."""
        tr.source = source
        if source.feeding is None:
            source.feeding = []
        source.feeding.append(tr)

    @staticmethod
    def _holds(peer: Peer, piece: int) -> bool:
        return peer.state == DONE or (peer.dl is not None and peer.dl.held.test(piece))

    @staticmethod
    def _receiving(peer: Peer, piece: int) -> Transfer | None:
        """``peer``'s transfer of ``piece`` that its sender accepted and that is furthest
        along (None: it is not receiving the piece)."""
        best = None
        for t in peer.inflight.values():
            if (
                t.piece == piece
                and not t.cancelled
                and (t.slot is not None or t.sent)
                and (best is None or t.landed > best.landed)
            ):
                best = t
        return best

    def _next_block(self, tr: Transfer) -> None:
        """Start the transfer's next block, unless it relays a transfer that has not
        landed that block yet (then that transfer's landing starts it)."""
        source = tr.source
        if source is not None and source.landed <= tr.sent:
            return
        first = tr.sent == 0
        tr.flow = self.net.start_flow(tr.pair, tr.size / self.blocks, self._block_done, tr)
        if first:
            self._announce_receiving(tr)

    def _block_done(self, flow: Flow) -> None:
        tr: Transfer = flow.arg
        tr.flow = None
        tr.sent += 1
        tr.src.uploaded += flow.size
        if tr.sent < self.blocks:
            self._next_block(tr)  # the sender streams on
            self._after_latency(tr, self._block_landed)
            return
        self._free_slot(tr)
        self._after_latency(tr, self._deliver)

    def _block_landed(self, tr: Transfer) -> None:
        if tr.cancelled:
            return
        tr.landed += 1
        if tr.feeding:
            for child_tr in tr.feeding:
                if child_tr.flow is None and not child_tr.cancelled:
                    self._next_block(child_tr)

    def _release(self, tr: Transfer) -> None:
        """``tr.peer`` holds the piece whole: the transfers relaying ``tr`` go on from
        its copy, at their own pace."""
        feeding, tr.feeding = tr.feeding, None
        tr.landed = self.blocks
        for child_tr in feeding or ():
            child_tr.source = None
            if child_tr.flow is None and not child_tr.cancelled and child_tr.sent < self.blocks:
                self._next_block(child_tr)

    def _unlink(self, tr: Transfer) -> None:
        """``tr`` was cancelled: it relays nothing any more, and what relays it goes on
        from the parent's piece or another transfer of it, or is taken back."""
        source = tr.source
        if source is not None:
            tr.source = None
            if source.feeding:
                source.feeding.remove(tr)
        feeding = tr.feeding
        if feeding is None:
            return
        tr.feeding = None
        peer = tr.peer
        if self._holds(peer, tr.piece):  # an endgame copy that lost: the other landed
            tr.feeding = feeding
            self._release(tr)
            return
        other = self._receiving(peer, tr.piece)
        if other is not None:  # the same bytes come by another of its transfers
            for child_tr in feeding:
                self._relay_from(other, child_tr)
                if child_tr.flow is None and not child_tr.cancelled:
                    self._next_block(child_tr)
            return
        if peer.state in (LEFT, FAILED):
            return  # its children drop it as a parent (leave): their requests go too
        # Its children heard it was receiving the piece: take that back (the relaying
        # transfers are cancelled by their downloads' Cancel actions).
        self._lost_piece(peer, tr.piece, [child_tr.peer for child_tr in feeding])

    def _lost_piece(self, peer: Peer, piece: int, also: list[Peer]) -> None:
        now = self.now
        told = dict.fromkeys(peer.children)
        told.update(dict.fromkeys(also))
        for child in told:
            cdl = child.dl
            if cdl is not None and child.state in (RUNNING, BTS):
                self.run_actions(child, cdl.parent_lost_piece(peer.id, piece, now))

    def _not_there(self, tr: Transfer) -> None:
        """The parent answered that it neither holds nor receives the piece (the
        transfer it announced the piece for ended without it)."""
        if tr.cancelled:
            return
        peer = tr.peer
        key = (tr.piece, tr.parent_id)
        dl = peer.dl
        if peer.inflight.get(key) is not tr or dl is None:
            return
        now = self.now
        actions = dl.parent_lost_piece(tr.parent_id, tr.piece, now)
        if Cancel(tr.piece, tr.parent_id) not in actions:
            # not taken back as a receiving announcement: a plain "not found"
            del peer.inflight[key]
            tr.cancelled = True
            actions += dl.piece_failed(tr.piece, tr.parent_id, NOT_FOUND, now)
        self.run_actions(peer, actions)

    def _receiving_news(self, peer: Peer, parent: Peer) -> None:
        """``peer`` follows ``parent``: besides the pieces it holds (its bitmap, given
        with the offer), it hears of those the parent is receiving now, as it would
        have had it followed earlier; a pump follows once the actions are carried out."""
        dl = peer.dl
        if dl is None:
            return
        now = self.now
        news = False
        for tr in list(parent.inflight.values()):
            if not tr.cancelled and (tr.flow is not None or tr.sent):
                news = dl.parent_receiving(parent.id, tr.piece, now) or news
        if news:
            self.later(0, self.pump, peer)

    def _announce_receiving(self, tr: Transfer) -> None:
        """``tr.peer`` started receiving ``tr.piece``: its children hear of it (and may
        ask for it) as they hear of a piece it holds."""
        peer = tr.peer
        if not peer.children or peer.dl is None:
            return
        now = self.now
        piece = tr.piece
        pid = peer.id
        max_in_flight = self.download_config.max_in_flight
        wake = []
        for child in peer.children:
            cdl = child.dl
            if (
                cdl is not None
                and cdl.parent_receiving(pid, piece, now)
                and len(child.inflight) < max_in_flight
            ):
                wake.append(child)
        for child in wake:
            self.pump(child)

    # ------------------------------------------------------------ life events --

    def arrive(self, peer: Peer) -> None:
        task = peer.task
        if not peer.is_seed and self.now < task.first_arrival:
            task.first_arrival = self.now
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
                parent.children.discard(peer)
        peer.parents.clear()
        peer.timer_at = math.inf

    def finish(self, peer: Peer) -> None:
        now = self.now
        peer.state = DONE
        peer.done_at = peer.end_at = now
        self._stop_fetching(peer)
        peer.dl = None
        for nb in peer.neighbours:
            nb.children.discard(peer)
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
        now = self.now
        peer.state = LEFT
        peer.end_at = now
        self._stop_fetching(peer)
        peer.dl = None
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
                orphans = self.scheduler.leave_host(host.id, self.now).orphaned_children
            except SchedulerError:
                orphans = ()
        for peer in list(host.peers.values()):
            self.leave(peer, True, tell_scheduler=False)
        for orphan in orphans:
            self._server_reschedule_id(orphan, [])

    def _parent_lost(self, child: Peer, parent: Peer) -> None:
        """``parent`` is gone: the child's download loop drops it (its fetches from it
        fail; dfdaemon's subscription to it ends)."""
        parent.children.discard(child)
        if child.dl is None or child.state not in (RUNNING, BTS):
            child.parents.pop(parent.id, None)
            return
        self.run_actions(child, child.dl.parent_gone(parent.id, self.now))

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
            self.now,
            content_length=task.size,
            piece_length=task.piece_length,
            need_back_to_source=peer.is_seed or self.cs,
        )
        peer.answer_token += 1
        self._server_step(peer, answers.first_step(result), peer.answer_token)

    def _server_step(self, peer: Peer, step: answers.Step | None, token: int) -> None:
        """The scheduler daemon's answer loop (core.scheduling.answers): trigger the
        seed, then answer or wait and run another round."""
        if step is None:
            return
        if step.trigger is not None:
            self._trigger_seed(peer.task, step.trigger.seed_host_id)
        if step.final is not None:
            self.later(self.sched_latency, self._answer, peer, step.final)
        else:
            self.later(step.wait, self._server_retry, peer, token)

    def _server_retry(self, peer: Peer, token: int) -> None:
        if peer.answer_token != token or peer.state not in (PENDING, RUNNING):
            return
        self.scheduler_calls += 1
        step = answers.resume(self.scheduler, peer.id, self.now)  # type: ignore[arg-type]
        self._server_step(peer, step, token)

    def request_reschedule(self, peer: Peer, bad: list[str]) -> None:
        """dfdaemon's Reschedule report (the download loop rate-limits it)."""
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
            result = self.scheduler.reschedule(peer.id, bad, self.now)
        except SchedulerError:
            return
        self._server_step(peer, answers.first_step(result), peer.answer_token)

    def _trigger_seed(self, task: SimTask, seed_host_id: str) -> None:
        host = self.host_by_id.get(seed_host_id)
        if host is None or not host.alive or task.name in host.peers:
            return
        self.later(self.sched_latency, self._seed_starts, host, task)

    def _seed_starts(self, host: Host, task: SimTask) -> None:
        if not host.alive or task.name in host.peers:
            return
        uid = uuid.UUID(int=self.rng.getrandbits(128), version=4)
        peer = Peer(ids.peer_id(host.ip, host.name, uid, seed=True), host, task, self.now)
        self.peers[peer.id] = peer
        host.peers[task.name] = peer
        self.arrive(peer)

    def _new_download(self, peer: Peer) -> Download:
        return Download(
            peer.task.count, self.rng, self.download_config, now=self.now, origin=ORIGIN_ID
        )

    def _answer(self, peer: Peer, result: Any) -> None:
        """dfdaemon acts on the scheduler's answer."""
        state = peer.state
        if state not in (PENDING, RUNNING):
            return
        now = self.now
        if isinstance(result, NormalTask | SmallTask):
            parents = result.parents if isinstance(result, NormalTask) else (result.parent,)
            if state == PENDING:
                peer.state = RUNNING
                peer.dl = self._new_download(peer)
                self.scheduler_calls += 1
                self.scheduler.download_started(peer.id, now)  # type: ignore[union-attr]
            offers = []
            for info in parents:
                parent = self.peers.get(info.peer_id)
                if parent is None or parent.state in (LEFT, FAILED, PENDING):
                    continue
                offers.append(
                    (info.peer_id, parent.bitmap(), info.tx_bandwidth, info.upload_limit_bps)
                )
            self.run_actions(peer, peer.dl.add_parents(offers, now))  # type: ignore[union-attr]
        elif isinstance(result, NeedBackToSource):
            self.back_to_source(peer, "scheduler")
        elif isinstance(result, ScheduleFailed):
            # the scheduler daemon answers it with an error; dfdaemon then goes to the
            # origin by itself (unless back-to-source is disabled, which no scenario does)
            self.back_to_source(peer, "schedule_failed")
        elif isinstance(result, EmptyTask | TinyTask | MetadataOnly):
            # (MetadataOnly needs a second download of the task on one host, which the
            # workload never makes)
            self.finish(peer)

    def back_to_source(self, peer: Peer, reason: str) -> None:
        """The scheduler sends the peer to the origin (``scheduler``: NeedBackToSource;
        ``schedule_failed``: it gave up); the download loop keeps what is held."""
        if peer.state not in (PENDING, RUNNING):
            return
        if peer.dl is None:
            peer.dl = self._new_download(peer)
        self.run_actions(peer, peer.dl.back_to_source(reason, self.now))

    def _went_to_origin(self, peer: Peer, reason: str) -> None:
        """The download loop went to the origin (told to, or on its own: ``stall``,
        the reschedule limit): the scheduler hears of it, the reason is counted."""
        if not peer.is_seed:
            key = reason if reason in ("scheduler", "schedule_failed") else reason.split(":")[0]
            self.fallbacks[key] = self.fallbacks.get(key, 0) + 1
        peer.state = BTS
        peer.bts_reason = reason
        peer.parents = {ORIGIN_ID: None}
        if self.scheduler is not None:
            self.scheduler_calls += 1
            task = peer.task
            self.scheduler.download_started(
                peer.id,
                self.now,
                back_to_source=True,
                content_length=task.size,
                piece_length=task.piece_length,
            )

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
        peer.dl = Download(peer.task.count, self.rng, self.download_config, now=self.now)
        self._swarm_add(peer.task, peer)
        self._bt_reannounce(peer)

    def _bt_reannounce(self, peer: Peer) -> None:
        """The download has nothing to request (or lost a neighbour): ask the tracker
        for more peers, at most once per ``reannounce``."""
        now = self.now
        if now < peer.last_announce + self.scenario.bittorrent.reannounce:
            return
        peer.last_announce = now
        self._bt_announce(peer)

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
            y.children.discard(x)
            x.parents.pop(y.id, None)
            if x.dl is not None and x.state == RUNNING and y.id in x.dl.parents:
                self.run_actions(x, x.dl.parent_gone(y.id, self.now, "disconnected"))

    def _bt_connect(self, a: Peer, b: Peer) -> None:
        a.neighbours[b] = None
        b.neighbours[a] = None
        now = self.now
        for x, y in ((a, b), (b, a)):
            # x downloads from y if x still needs pieces. No announced load: the picker
            # then chooses uniformly among the neighbours holding a piece (a fast
            # neighbour still gets more pieces, as in BitTorrent: its requests finish
            # sooner and free their slots).
            if x.dl is not None and x.state == RUNNING:
                self.run_actions(x, x.dl.add_parents([(y.id, y.bitmap(), 0, 0)], now))
