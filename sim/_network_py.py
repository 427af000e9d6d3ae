"""Flow-level network (the pure-Python twin of d7y.sim._network; import d7y.sim.network,
which picks one): piece transfers as flows sharing capacities max-min fairly.

Model
-----
A *resource* is a capacity in bytes/s: a host's upload, a host's download, a shared
link (rack uplink, inter-IDC link), the origin's upload. A *flow* is one piece transfer;
it crosses the sender's upload, the links on the path and the receiver's download. Flows
between the same two hosts cross the same resources, so they always get the same rate:
they are kept together as a *pair* with ``k`` flows, which is what the allocator sees.

Rates are max-min fair in structure: every pair is *bottlenecked* at one resource of
its path (its *group*), and all flows bottlenecked at resource R progress at R's level
``lam`` (bytes/s per flow). For a saturated R::

    lam(R) = (cap(R) - load of the pairs crossing R but bottlenecked elsewhere) / n(R)

with n(R) the flows bottlenecked at R. Because a whole group moves at one rate, each
resource keeps a *virtual clock* V (bytes one of its flows has received so far) and a
heap of its flows' finishing points on that clock: a change of level is O(1) for the
group, however many flows it holds, and only the group's next completion is scheduled.

Incremental allocation (the approximation, measured against exact progressive filling
in tests/test_sim_network.py and documented in docs/simulation.md):

- When a flow starts or ends, the resources on its path are re-solved: an exact local
  water-filling at each, where every pair crossing it is capped by what the other
  resources on its path currently give it (their levels, or their spare capacity).
- A re-solve that raises some pairs' rates re-checks the other resources of those
  pairs; one that lowers rates frees capacity there. Propagation goes ``depth`` hops
  (default 0: only the started/ended flow's own resources re-solve fully); beyond it,
  only *mandatory* work is done: a resource whose load went above its capacity lowers
  its level (never raises one), so the allocation is always **feasible** (no resource
  over capacity, checked by :meth:`Network.check`), which is what keeps every simulated
  completion time above the Kumar-Ross bound. Capacity freed far away waits until the
  next start or end at that resource re-solves it (on a busy swarm, a fraction of a
  piece time).
- Every resource keeps the load of the pairs bottlenecked elsewhere as a running sum;
  a hub's (the origin, seed peers' uploads, shared links: many pairs) own level is read
  where needed rather than pushed to every resource its pairs cross, so lowering a hub's
  level on a new flow is O(1). Raising it after a flow ends re-solves all its pairs and
  is deferred until the unused capacity exceeds ``hub_slack`` (0.5 %) of the hub's
  capacity, which bounds the hub's idle capacity by ``hub_slack``.
- At depth 0 a pair's cap at a resource without a group of its own is that resource's
  spare capacity; with propagation it is the level the pair would get by squeezing the
  faster pairs there (:meth:`Network._level_with`), which the exact convergence needs.
  At depth 0 too, a pair that this cap would move to a full non-hub (no spare: its
  pairs are bottlenecked elsewhere) is re-capped with the squeezing level first, and a
  new pair's provisional level there is that level: with the spare capacity alone it
  got about nothing there, and between such a link and two hubs carrying the same
  pairs (a multi-IDC path) it bounced until the re-solve budget ran out and stayed at
  ~0 until a flow ended there (tens of seconds). The tests check after every re-solve
  that no flow gets less than an equal share of the tightest resource of its path
  (its *fair-share floor*, a lower bound of its max-min rate).
- A resource is fully re-solved at most ``MAX_FULL_SOLVES * (depth + 1)`` times per
  instant (a pair two resources limit equally could otherwise bounce between them);
  after that only feasibility is restored.

Time comes from a SimPy environment: completions are SimPy events, and the re-solve
runs once per simulated instant, after every other event of that instant (priority 2),
so a piece that ends and the next request that starts at the same time are one change.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from heapq import heapify, heappop, heappush
from typing import Any

import simpy
from simpy.events import NORMAL

INF = math.inf
#: Relative tolerance on levels: a pair moves between groups only when its rate
#: differs from the group's level by more than this (no flapping on rounding).
REL_TOL = 1e-9
#: Full re-solves of one resource per flush and depth level (then only feasibility is
#: restored): a pair two resources limit equally could otherwise bounce between them.
MAX_FULL_SOLVES = 3
#: Groups smaller than this propagate rate decreases to their pairs' other resources
#: even when they are hubs (cheap, and exact on small systems).
SMALL_GROUP = 32


class Resource:
    """A capacity (bytes/s) and the pairs bottlenecked at it (its group)."""

    __slots__ = (
        "F",
        "V",
        "cap",
        "depth_m",
        "depth_o",
        "epoch",
        "evtime",
        "foreign",
        "full_solves",
        "heap",
        "hub",
        "hubK",
        "hubfor",
        "lam",
        "members",
        "n",
        "name",
        "queued",
        "t",
        "xheap",
    )

    def __init__(self, name: str, cap: float, hub: bool) -> None:
        self.name = name
        self.cap = float(cap)
        self.hub = hub
        self.members: dict[Pair, None] = {}  # pairs bottlenecked here
        self.n = 0  # flows of those pairs
        self.lam = INF  # bytes/s per flow of the group (INF: empty group)
        self.V = 0.0  # virtual clock: bytes per group flow so far
        self.t = 0.0  # time V was last brought up to date
        self.heap: list[tuple[float, int, Flow]] = []  # (finish point on V, seq, flow)
        # Pairs crossing here, bottlenecked at a non-hub resource; F is their load.
        self.foreign: dict[Pair, None] = {}
        self.F = 0.0
        # Pairs crossing here, bottlenecked at another hub H: H -> pairs, and H -> flows
        # (their load, K * H.lam, is read when needed: a hub's level changes often and
        # must not touch every resource its pairs cross).
        self.hubfor: dict[Resource, dict[Pair, None]] = {}
        self.hubK: dict[Resource, int] = {}
        self.xheap: list[tuple[float, int, Pair]] = []  # hubs: foreign pairs by -rate
        self.evtime = INF  # time of this group's scheduled completion event
        self.queued = False
        self.depth_m = -1  # pending mandatory re-solve (depth), -1 none
        self.depth_o = -1  # pending optional re-solve (depth), -1 none
        self.epoch = 0  # the flush in which full_solves was counted
        self.full_solves = 0

    def load(self) -> float:
        total = self.F
        if self.n:
            total += self.n * self.lam
        for hub, k in self.hubK.items():
            total += k * hub.lam
        return total

    def __repr__(self) -> str:
        return f"<Resource {self.name} cap={self.cap:g} n={self.n} lam={self.lam:g}>"


class Pair:
    """The flows between two hosts (same path, so the same rate)."""

    __slots__ = ("flows", "grp", "k", "key", "path")

    def __init__(self, key: Any, path: tuple[Resource, ...]) -> None:
        self.key = key
        self.path = path
        self.k = 0
        self.grp: Resource | None = None
        self.flows: dict[Flow, None] = {}

    @property
    def rate(self) -> float:
        """Bytes/s of each of this pair's flows (0 when it has none)."""
        return self.grp.lam if self.grp is not None else 0.0

    def __repr__(self) -> str:
        return f"<Pair {self.key} k={self.k}>"


class Flow:
    """One transfer of ``size`` bytes. ``callback(flow)`` runs when it completes."""

    __slots__ = ("alive", "arg", "callback", "pair", "size", "start", "target")

    def __init__(self, pair: Pair, size: float, start: float, callback, arg) -> None:
        self.pair = pair
        self.size = size
        self.start = start
        self.callback = callback
        self.arg = arg
        self.alive = True
        self.target = 0.0

    @property
    def rate(self) -> float:
        return self.pair.rate


def _water_fill(
    order: list[tuple[float, int]], recs: list[tuple[int, Any, int, Any]], cap: float, total: int
) -> tuple[float, int]:
    """Water-filling at one resource of capacity ``cap``: ``order`` holds (cap of the
    entry, index into ``recs``) sorted, ``recs[index][0]`` the entry's flows, ``total``
    all flows. Returns the level of the flows not held below it, and how many entries
    (the first of ``order``) are held below it."""
    rem = cap
    below = 0
    for c, j in order:
        if c * total < rem:
            k = recs[j][0]
            rem -= c * k
            total -= k
            below += 1
        else:
            break
    return (rem / total if total else INF), below


class _Callback:
    """An already-triggered event that calls ``callbacks`` when SimPy pops it from its
    queue: what a Timeout (or a triggered Event) with those callbacks is to SimPy's
    step() -- the same queue entry, so the same order and event count -- without
    Event.__init__, the callback list and its append (a run schedules hundreds of
    thousands of flushes and completion wake-ups)."""

    __slots__ = ("_ok", "_value", "callbacks")

    def __init__(self, callbacks: tuple) -> None:
        self._ok = True
        self._value = None
        self.callbacks = callbacks


class Network:
    """Flows on resources, advanced by ``env`` (see the module docstring)."""

    def __init__(
        self,
        env: simpy.Environment,
        *,
        depth: int = 0,
        hub_slack: float = 0.005,
    ) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be an int >= 0, got {depth!r}")
        if not (0 <= hub_slack < 1):
            raise ValueError(f"hub_slack must be in [0, 1), got {hub_slack!r}")
        self.env = env
        self.depth = depth
        self.hub_slack = hub_slack
        self.resources: list[Resource] = []
        self._pairs: dict[Any, Pair] = {}
        # Group completion events: the distinct times pending (a heap of floats), and
        # the groups due at each, in the order they were scheduled -- the order a heap of
        # (time, seq, group) would pop them in, with cheaper pushes and pops (most
        # entries go stale before their time: the group's event moved; they are kept,
        # as each pending time arms a wake-up).
        self._times: list[float] = []
        self._due: dict[float, list[Resource]] = {}
        self._seq = 0
        self._queue: deque[Resource] = deque()
        self._touched: dict[Resource, None] = {}  # groups whose next event may move
        self._flush_pending = False
        self._wake_at = INF
        self._flush_callbacks = (self._flush,)
        self._wake_callbacks = (self._wake,)
        #: counters, for the bench and the summary
        self.flows_started = 0
        self.flows_completed = 0
        self.flows_cancelled = 0
        self.solves = 0
        self.flushes = 0

    # ------------------------------------------------------------------ building --

    def resource(self, name: str, cap: float, *, hub: bool = False) -> Resource:
        """A new resource of ``cap`` bytes/s. ``hub``: it will carry many pairs (the
        origin, a seed peer's upload, a shared link): see the module docstring."""
        if not (cap > 0 and math.isfinite(cap)):
            raise ValueError(f"resource {name}: capacity must be > 0 bytes/s, got {cap!r}")
        r = Resource(name, cap, hub)
        self.resources.append(r)
        return r

    def pair(self, key: Any, path: Sequence[Resource]) -> Pair:
        """The pair for ``key`` (e.g. (sender, receiver)), created with ``path`` on first
        use. A path must not cross a resource twice."""
        p = self._pairs.get(key)
        if p is None:
            path = tuple(path)
            if not path:
                raise ValueError(f"pair {key!r}: a path needs at least one resource")
            if len(set(map(id, path))) != len(path):
                raise ValueError(f"pair {key!r}: the path crosses a resource twice")
            p = self._pairs[key] = Pair(key, path)
        return p

    # --------------------------------------------------------------------- flows --

    def start_flow(
        self, pair: Pair, size: float, callback: Callable[[Flow], Any], arg: Any = None
    ) -> Flow:
        """Start a transfer of ``size`` bytes (> 0) on ``pair`` now; ``callback(flow)``
        runs when its last byte is through."""
        if not size > 0:
            raise ValueError(f"flow size must be > 0 bytes, got {size!r}")
        now = self.env.now
        flow = Flow(pair, float(size), now, callback, arg)
        self.flows_started += 1
        if pair.k == 0:
            grp = self._initial_group(pair)
            pair.k = 1
            pair.flows[flow] = None
            self._advance(grp, now)
            if grp.n == 0:
                grp.lam = self._join_level(grp, pair)
            pair.grp = grp
            grp.members[pair] = None
            grp.n += 1
            self._push_flow(grp, flow, flow.size)
            self._attach(pair)
        else:
            grp = pair.grp
            assert grp is not None
            self._advance(grp, now)
            pair.k += 1
            grp.n += 1
            pair.flows[flow] = None
            self._push_flow(grp, flow, flow.size)
            self._change_k(pair, 1)
        for r in pair.path:
            self._mark(r, 0, True)
        self._touched[grp] = None
        self._request_flush()
        return flow

    def cancel(self, flow: Flow) -> float:
        """Stop a flow before it completes (its callback never runs). Returns the bytes
        it had transferred."""
        if not flow.alive:
            return 0.0
        now = self.env.now
        grp = flow.pair.grp
        assert grp is not None
        self._advance(grp, now)
        sent = flow.size - max(0.0, flow.target - grp.V)
        self.flows_cancelled += 1
        self._remove_flow(flow)
        self._request_flush()
        return max(0.0, sent)

    # ------------------------------------------------------------ group plumbing --

    def _advance(self, r: Resource, now: float) -> None:
        if r.n:
            r.V += r.lam * (now - r.t)
        r.t = now

    def _push_flow(self, grp: Resource, flow: Flow, remaining: float) -> None:
        flow.target = grp.V + remaining
        self._seq += 1
        heappush(grp.heap, (flow.target, self._seq, flow))

    def _join_level(self, r: Resource, q: Pair) -> float:
        """Per-flow level the first flow of pair ``q`` (not attached yet) gets at ``r``,
        which has no group: provisional, the flush re-solves ``r``. At a full non-hub,
        the level squeezing its faster pairs would give (:meth:`_level_with`), not its
        spare capacity (about nothing), so that the flow never starts starved even if
        that re-solve is cut short; a hub's own re-solve pulls its faster pairs in."""
        spare = r.cap - r.load()
        if not r.hub and spare < r.cap * REL_TOL:
            spare = self._level_with(r, q, 0.0)
        return max(spare, r.cap * 1e-12)

    def _initial_group(self, pair: Pair) -> Resource:
        """Where a pair's first flow is bottlenecked until the re-solve: the resource
        of its path that would give it the smallest level."""
        best = None
        best_level = INF
        for r in pair.path:
            # the level it would share if it joined r's group (or r's spare capacity)
            level = (r.cap - (r.load() - r.n * r.lam)) / (r.n + 1) if r.n else r.cap - r.load()
            if level < best_level:
                best, best_level = r, level
        assert best is not None
        return best

    def _attach(self, q: Pair) -> None:
        """Record q's load at the resources of its path other than its group."""
        g = q.grp
        assert g is not None
        k = q.k
        if g.hub:
            for r in q.path:
                if r is not g:
                    d = r.hubfor.get(g)
                    if d is None:
                        d = r.hubfor[g] = {}
                        r.hubK[g] = 0
                    d[q] = None
                    r.hubK[g] += k
        else:
            x = g.lam
            for r in q.path:
                if r is not g:
                    r.foreign[q] = None
                    r.F += k * x
                    if r.hub:
                        self._seq += 1
                        heappush(r.xheap, (-x, self._seq, q))

    def _detach(self, q: Pair) -> None:
        g = q.grp
        assert g is not None
        k = q.k
        if g.hub:
            for r in q.path:
                if r is not g:
                    d = r.hubfor[g]
                    del d[q]
                    if d:
                        r.hubK[g] -= k
                    else:
                        del r.hubfor[g]
                        del r.hubK[g]
        else:
            x = g.lam
            for r in q.path:
                if r is not g:
                    del r.foreign[q]
                    r.F -= k * x
                    if not r.foreign:
                        r.F = 0.0  # no drift left behind

    def _change_k(self, q: Pair, dk: int) -> None:
        """q gained/lost ``dk`` flows (q.k already updated): its load elsewhere follows."""
        g = q.grp
        assert g is not None
        if g.hub:
            for r in q.path:
                if r is not g:
                    r.hubK[g] += dk
        else:
            dx = dk * g.lam
            for r in q.path:
                if r is not g:
                    r.F += dx

    def _remove_flow(self, flow: Flow) -> None:
        flow.alive = False
        q = flow.pair
        g = q.grp
        assert g is not None
        del q.flows[flow]
        q.k -= 1
        g.n -= 1
        if q.k:
            self._change_k(q, -1)
        else:
            q.k = 1  # detach with the load it had
            self._detach(q)
            q.k = 0
            del g.members[q]
            q.grp = None
        if not g.n:
            g.lam = INF
            g.V = 0.0
            g.heap.clear()
        elif len(g.heap) > 2 * g.n + 64:
            g.heap = [e for e in g.heap if e[2].alive and e[2].pair.grp is g]
            heapify(g.heap)
        for r in q.path:
            self._mark(r, 0, False)
        self._touched[g] = None

    def _leave_group(self, q: Pair, now: float) -> list[tuple[Flow, float]]:
        """Take q out of its group (detached); returns its flows with bytes left."""
        g = q.grp
        assert g is not None
        self._advance(g, now)
        self._detach(q)
        del g.members[q]
        g.n -= q.k
        v = g.V
        # bytes left, max(0.0, f.target - v), without a call (nor a comprehension's frame:
        # most pairs hold one flow)
        flows = []
        for f in q.flows:
            left = f.target - v
            flows.append((f, left if left > 0.0 else 0.0))
        q.grp = None
        if not g.n:
            g.lam = INF
            g.V = 0.0
            g.heap.clear()
        self._touched[g] = None
        return flows

    def _enter_group(self, q: Pair, g: Resource, flows, now: float) -> None:
        self._advance(g, now)
        q.grp = g
        g.members[q] = None
        g.n += q.k
        for f, left in flows:
            self._push_flow(g, f, left)
        self._attach(q)
        self._touched[g] = None

    # ------------------------------------------------------------------ re-solve --

    def _mark(self, r: Resource, depth: int, mandatory: bool) -> None:
        if mandatory:
            if r.depth_m < 0 or depth < r.depth_m:
                r.depth_m = depth
        elif depth > self.depth:
            return  # optional work beyond the propagation depth is never done
        elif r.depth_o < 0 or depth < r.depth_o:
            r.depth_o = depth
        if not r.queued:
            r.queued = True
            self._queue.append(r)

    def _request_flush(self) -> None:
        if not self._flush_pending:
            self._flush_pending = True
            # Priority 2: after every NORMAL (1) event of this instant.
            self.env.schedule(_Callback(self._flush_callbacks), 2)

    def _flush(self, _event: Any = None) -> None:
        self._flush_pending = False
        self.flushes += 1
        epoch = self.flushes
        max_full = MAX_FULL_SOLVES * (self.depth + 1)
        now = self.env.now
        queue = self._queue
        limit = self.depth
        while queue:
            r = queue.popleft()
            r.queued = False
            dm, do = r.depth_m, r.depth_o
            r.depth_m = r.depth_o = -1
            depth = dm if do < 0 or (0 <= dm < do) else do
            # A full re-solve may move pairs to other resources, whose full re-solve may
            # move them back (two resources that limit a pair equally): a bounded number
            # per resource and flush, then only feasibility is restored.
            if r.epoch != epoch:
                r.epoch = epoch
                r.full_solves = 0
            full = r.full_solves < max_full
            if r.hub:
                if r.load() > r.cap * (1 + REL_TOL) or (
                    r.n and self._hub_top(r) > r.lam * (1 + REL_TOL)
                ):
                    # over capacity, or a pair bottlenecked elsewhere gets more than
                    # this hub's level (it should share the level): pull them in
                    self._hub_drop(r, now, depth)
                # Rises at any depth (the hub's own events may be rare: its flows are
                # long), but only past hub_slack; also after a drop, so that a level
                # that started too low rises here.
                if full and r.n and r.cap - r.load() > self.hub_slack * r.cap:
                    r.full_solves += 1
                    self._solve(r, now, depth, True)
            else:
                if not r.n:
                    load = r.F  # r.load(), inline (no group here): most resources
                    for hub, k in r.hubK.items():
                        load += k * hub.lam
                    if load <= r.cap * (1 + REL_TOL):
                        # No pair is bottlenecked here and the pairs crossing it fit: a
                        # re-solve would change nothing (their own groups decide their
                        # rates).
                        continue
                if depth <= limit and full:
                    r.full_solves += 1
                    self._solve(r, now, depth, True)
                elif (dm >= 0 or not full) and r.load() > r.cap * (1 + REL_TOL):
                    self._solve(r, now, depth, False)
        self._reschedule(now)

    def _solve(self, r: Resource, now: float, depth: int, rise_ok: bool) -> None:
        """Exact water-filling at ``r`` given the rest of the network. ``rise_ok``
        False: no pair may get more than now (only restores feasibility)."""
        self.solves += 1
        old = r.lam
        # ``order`` holds (cap, index) so the sort compares floats and ints only;
        # ``recs[index]`` is (flows, object, kind, binding resource). kind: 0 a member
        # (cap: what its other resources allow, and the one that binds), 1 a pair
        # bottlenecked at a non-hub elsewhere (cap: its rate), 2 the pairs bottlenecked
        # at another hub (one block; cap: that hub's level).
        order: list[tuple[float, int]] = []
        recs: list[tuple[int, Any, int, Any]] = []
        order_append = order.append
        recs_append = recs.append
        total = 0
        level_with = self._level_with
        squeeze = self.depth > 0
        spare_capped = INF  # lowest cap of a member bound by a groupless non-hub's spare
        for q in r.members:
            k = q.k
            if rise_ok:
                c = INF
                to = None
                for s in q.path:
                    if s is not r:
                        if s.n:
                            a = s.lam
                        elif squeeze:
                            a = level_with(s, q, old)
                        else:
                            a = s.F  # s.load(), inline (s has no group)
                            for hub, kk in s.hubK.items():
                                a += kk * hub.lam
                            a = (s.cap - a) / k + old
                            if a < 0.0:
                                a = 0.0
                        if a < c:
                            c = a
                            to = s
                if c < spare_capped and not squeeze and not to.n and not to.hub:  # type: ignore[union-attr]
                    spare_capped = c
            else:
                c = old
                to = None
            order_append((c, len(recs)))
            recs_append((k, q, 0, to))
            total += k
        f_sum = 0.0
        for q in r.foreign:
            x = q.grp.lam  # type: ignore[union-attr]
            k = q.k
            f_sum += k * x
            order_append((x, len(recs)))
            recs_append((k, q, 1, None))
            total += k
        r.F = f_sum  # recomputed: no drift
        for hub, k in r.hubK.items():
            order_append((hub.lam, len(recs)))
            recs_append((k, hub, 2, None))
            total += k
        i = len(recs)
        if not i:
            return
        order.sort()
        lam, below = _water_fill(order, recs, r.cap, total)
        if spare_capped < lam * (1 - REL_TOL):  # such a member would leave r
            lam, below = self._recheck_spare_caps(r, old, order, recs, lam, below, total)
        if not rise_ok and lam > old:
            lam = old
        hi = lam * (1 + REL_TOL)
        lo = lam * (1 - REL_TOL)
        leavers = []
        joiners = []
        for idx in range(below):
            c, j = order[idx]
            rec = recs[j]
            if rec[2] == 0 and c < lo:
                leavers.append((rec[1], rec[3], c))
        for idx in range(below, i):
            c, j = order[idx]
            if c > hi:
                rec = recs[j]
                kind = rec[2]
                if kind == 1:
                    joiners.append(rec[1])
                elif kind == 2:
                    joiners.extend(r.hubfor[rec[1]])
        if not leavers and not joiners and (lam == old or (not r.n and lam == INF)):
            return  # nothing moves
        nxt = depth + 1
        if nxt <= self.depth and (lam == INF or lam > old):
            # r has room it did not have: pairs held below its level by another
            # resource may now grow there; re-solve that resource too.
            for idx in range(below):
                _k, obj, kind, _to = recs[order[idx][1]]
                if kind == 1:
                    self._mark(obj.grp, nxt, False)
                elif kind == 2:
                    self._mark(obj, nxt, False)
        self._advance(r, now)
        moved_out = [(q, to, c, self._leave_group(q, now)) for q, to, c in leavers]
        moved_in = []
        for q in joiners:
            g = q.grp
            moved_in.append((q, q.grp.lam, self._leave_group(q, now)))  # type: ignore[union-attr]
            self._mark(g, nxt, False)
        if not r.n and not moved_in:
            lam = INF
        if lam != old and r.n:
            r.lam = lam
            rise = lam > old
            small = len(r.members) <= SMALL_GROUP
            if not r.hub:
                dx = lam - old
                mark = rise or nxt <= self.depth
                for q in r.members:
                    dq = q.k * dx
                    for s in q.path:
                        if s is not r:
                            s.F += dq
                            if s.hub:
                                self._seq += 1
                                heappush(s.xheap, (-lam, self._seq, q))
                            if mark:
                                self._mark(s, nxt, rise)
            elif rise or small:
                for q in r.members:
                    for s in q.path:
                        if s is not r:
                            self._mark(s, nxt, rise)
            else:
                # A hub's level fell: the resources behind it gained slack, used at
                # their next re-solve (not propagated: it would touch every pair).
                for s in r.hubK:
                    self._mark(s, nxt, False)
            self._touched[r] = None
        else:
            r.lam = lam
        for q, x_old, flows in moved_in:
            self._enter_group(q, r, flows, now)
            for s in q.path:
                if s is not r:
                    self._mark(s, nxt, r.lam > x_old)
        for q, to, c, flows in moved_out:
            fresh = not to.n
            if fresh:
                to.lam = max(c, to.cap * 1e-12)  # provisional: re-solved below
            self._enter_group(q, to, flows, now)
            for s in q.path:
                if s is to and fresh:
                    self._mark(s, depth, True)  # a new group's level: solve it fully
                else:
                    self._mark(s, nxt, to.lam > old or s is to)

    def _recheck_spare_caps(
        self,
        r: Resource,
        old: float,
        order: list[tuple[float, int]],
        recs: list[tuple[int, Any, int, Any]],
        lam: float,
        below: int,
        total: int,
    ) -> tuple[float, int]:
        """Depth 0: a member that would leave ``r`` for a resource with no group and no
        spare capacity (a full host link whose pairs are bottlenecked elsewhere) would
        get about nothing there, though that resource's re-solve would squeeze its
        faster pairs and give it a fair share. Re-cap such members with the squeezing
        level (:meth:`_level_with`) and water-fill again; ``order`` and ``recs`` are
        updated in place. Only the would-be leavers are re-capped, so the common case
        (nobody leaves) costs nothing. Hubs are left to their own re-solve, which pulls
        in the faster pairs whatever the budget (:meth:`_hub_drop`)."""
        rechecked: set[int] = set()
        while True:
            lo = lam * (1 - REL_TOL)
            changed = False
            for idx in range(below):
                c, j = order[idx]
                if c >= lo:
                    continue
                k, q, kind, to = recs[j]
                if kind or to is None or to.n or to.hub or j in rechecked:
                    continue
                rechecked.add(j)
                c2 = INF
                to2 = None
                for s in q.path:
                    if s is not r:
                        a = s.lam if s.n else self._level_with(s, q, old)
                        if a < c2:
                            c2 = a
                            to2 = s
                if c2 > c:
                    order[idx] = (c2, j)
                    recs[j] = (k, q, 0, to2)
                    changed = True
            if not changed:
                return lam, below
            order.sort()
            lam, below = _water_fill(order, recs, r.cap, total)

    def _level_with(self, s: Resource, q: Pair, x_q: float) -> float:
        """The per-flow rate pair ``q`` (now at ``x_q`` per flow) could get at ``s``, a
        resource with no group of its own: its spare capacity, or, if more, the level
        water-filling would give q by squeezing the pairs above it (they are
        bottlenecked elsewhere; s's re-solve would pull them down to that level).
        Exact for small resources; a hub's pairs are not scanned (spare only)."""
        k = q.k
        spare = (s.cap - s.load()) / k + x_q
        if s.hub:
            return spare if spare > 0.0 else 0.0
        others = []
        top = 0.0
        for p in s.foreign:
            if p is not q:
                x = p.grp.lam  # type: ignore[union-attr]
                others.append((x, p.k))
                if x > top:
                    top = x
        g = q.grp
        for hub, kk in s.hubK.items():
            if hub is g:
                kk -= k
            if kk:
                x = hub.lam
                others.append((x, kk))
                if x > top:
                    top = x
        if top <= spare:  # nobody above q's spare level: squeezing gains nothing
            return spare if spare > 0.0 else 0.0
        others.sort()
        rem = s.cap
        total = k
        for _c, kk in others:
            total += kk
        for c, kk in others:
            if c * total < rem:
                rem -= c * kk
                total -= kk
            else:
                break
        level = rem / total
        if spare > level:
            level = spare
        return level if level > 0.0 else 0.0

    def _hub_top(self, r: Resource) -> float:
        """The highest per-flow rate among the pairs crossing hub ``r`` but
        bottlenecked elsewhere (-inf if none); drops stale heap entries."""
        top = -INF
        heap = r.xheap
        while heap:
            negx, _s, q = heap[0]
            if q in r.foreign and q.grp.lam == -negx:  # type: ignore[union-attr]
                top = -negx
                break
            heappop(heap)
        for hub in r.hubK:
            if hub.lam > top:
                top = hub.lam
        return top

    def _hub_drop(self, r: Resource, now: float, depth: int) -> None:
        """``r`` (a hub) is over capacity: lower its level, pulling in the pairs whose
        rate exceeds it, highest first. O(pulled pairs x log), never O(all pairs)."""
        self.solves += 1
        old = r.lam
        total = r.n
        rem = r.cap - r.F
        for hub, k in r.hubK.items():
            rem -= k * hub.lam
        heap = r.xheap
        if len(heap) > 4 * len(r.foreign) + 64:
            heap = r.xheap = [(-q.grp.lam, i, q) for i, q in enumerate(r.foreign)]  # type: ignore[union-attr]
            heapify(heap)
        blocks = sorted(r.hubK.items(), key=lambda hk: -hk[0].lam)
        pulled: list[Pair] = []
        taken: set[Pair] = set()  # a pair may sit in the heap twice with one rate
        bi = 0
        while True:
            lam = rem / total if total else -INF
            # best candidate: top of the foreign heap (validated) or the next hub block
            x_heap = -INF
            while heap:
                negx, _s, q = heap[0]
                if q in r.foreign and q.grp.lam == -negx and q not in taken:  # type: ignore[union-attr]
                    x_heap = -negx
                    break
                heappop(heap)  # stale: moved, left, or its rate changed since
            x_block = blocks[bi][0].lam if bi < len(blocks) else -INF
            if x_heap >= x_block:
                if x_heap <= lam * (1 + REL_TOL) or x_heap == -INF:
                    break
                _negx, _s, q = heappop(heap)
                rem += q.k * x_heap
                total += q.k
                pulled.append(q)
                taken.add(q)
            else:
                if x_block <= lam * (1 + REL_TOL):
                    break
                hub, k = blocks[bi]
                bi += 1
                rem += k * x_block
                total += k
                pulled.extend(r.hubfor[hub])
        if total == 0:
            return
        lam = rem / total
        if r.n and lam > old:
            lam = old
        self._advance(r, now)
        nxt = depth + 1
        moved = []
        for q in pulled:
            g = q.grp
            moved.append((q, self._leave_group(q, now)))
            self._mark(g, nxt, False)  # type: ignore[arg-type]
        if r.n and lam != old and len(r.members) <= SMALL_GROUP:
            for q in r.members:
                for s in q.path:
                    if s is not r:
                        self._mark(s, nxt, False)
        r.lam = lam
        for q, flows in moved:
            self._enter_group(q, r, flows, now)
            for s in q.path:
                if s is not r:
                    self._mark(s, nxt, False)
        self._touched[r] = None

    # ---------------------------------------------------------------- completions --

    def _reschedule(self, now: float) -> None:
        times = self._times
        due = self._due
        for g in self._touched:
            t = INF
            gh = g.heap
            while gh:
                target, _s, f = gh[0]
                if f.alive and f.pair.grp is g and f.target == target:
                    if g.lam > 0:
                        t = g.t + (target - g.V) / g.lam
                        if t < now:
                            t = now
                    break
                heappop(gh)
            if t != g.evtime:
                g.evtime = t
                if t < INF:
                    self._seq += 1  # (kept: the flows' heaps share the counter)
                    groups = due.get(t)
                    if groups is None:
                        due[t] = [g]
                        heappush(times, t)
                    else:
                        groups.append(g)
        self._touched.clear()
        if times and times[0] < self._wake_at:
            self._wake_at = t = times[0]
            self.env.schedule(_Callback(self._wake_callbacks), NORMAL, t - now)

    def _wake(self, _event: Any) -> None:
        now = self.env.now
        if now >= self._wake_at:
            self._wake_at = INF
        times = self._times
        due = self._due
        done: list[Flow] = []
        while times and times[0] <= now:
            t = heappop(times)
            for g in due.pop(t):
                if g.evtime != t:
                    continue  # stale: the group's event moved since
                g.evtime = INF
                self._touched[g] = None
                self._advance(g, now)
                # Done: within rounding of its target, or so close that no later instant
                # representable as a float would show progress (4 ulps of ``now``).
                lim = g.V + max(1e-9 * abs(g.V) + 1e-6, 4.0 * g.lam * math.ulp(now))
                gh = g.heap
                while gh:
                    target, _s2, f = gh[0]
                    if not (f.alive and f.pair.grp is g and f.target == target):
                        heappop(gh)
                        continue
                    if target > lim:
                        break
                    heappop(gh)
                    done.append(f)
        for f in done:
            if f.alive:  # an earlier callback may have cancelled it
                self._remove_flow(f)
                self.flows_completed += 1
                f.callback(f)
        if self._touched or self._queue:
            self._request_flush()
        elif times and times[0] < self._wake_at:  # a stale wake: re-arm only
            self._wake_at = t = times[0]
            self.env.schedule(_Callback(self._wake_callbacks), NORMAL, t - now)

    # --------------------------------------------------------------------- checks --

    def check(self, tol: float = 1e-6) -> None:
        """Raise AssertionError on a broken invariant (tests): every resource within
        capacity, group counts and load sums consistent, each flow in its group."""
        for r in self.resources:
            load = 0.0
            n = 0
            for q in self._pairs.values():
                if q.k and r in q.path:
                    load += q.k * q.grp.lam  # type: ignore[union-attr]
            for q in r.members:
                assert q.grp is r, f"{q} listed in {r.name} but in group {q.grp}"
                n += q.k
            assert n == r.n, f"{r.name}: n={r.n} but members hold {n} flows"
            assert load <= r.cap * (1 + tol), f"{r.name}: load {load} > capacity {r.cap}"
            assert abs(load - r.load()) <= tol * r.cap, f"{r.name}: load sums drifted"
            if r.n:
                assert 0 < r.lam < INF, f"{r.name}: level {r.lam} with {r.n} flows"
        for q in self._pairs.values():
            assert q.k == len(q.flows), f"{q}: k={q.k} but {len(q.flows)} flows"
            if q.k:
                assert q.grp is not None and q in q.grp.members
                for r in q.path:
                    if r is q.grp:
                        continue
                    if q.grp.hub:
                        assert q in r.hubfor.get(q.grp, ()), f"{q} missing at {r.name}"
                    else:
                        assert q in r.foreign, f"{q} missing at {r.name}"

    def max_min_error(self) -> float:
        """Largest relative gap between the current rates and exact max-min rates
        (tests; progressive filling over the whole network, numpy on large ones)."""
        from d7y.sim.maxmin_np import solve

        pairs = [q for q in self._pairs.values() if q.k]
        if not pairs:
            return 0.0
        exact = solve(
            [q.path for q in pairs], {r: r.cap for r in self.resources}, [q.k for q in pairs]
        )
        return max(abs(q.rate - e) / e for q, e in zip(pairs, exact, strict=True))
