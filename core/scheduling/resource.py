"""The scheduler's resources: hosts, tasks, peers, and each task's DAG of parent -> child.

Plain Python objects with ``__slots__``, kept in dicts keyed by ID by the
:class:`~d7y.core.scheduling.scheduler.Scheduler`; nothing here does I/O or reads a
clock. The scheduler owns every mutation that must stay consistent across objects (an
edge and the load it reserves, a peer and the indexes that list it); the methods here
only keep one object's own invariants.

Units: bandwidths are bits per second, lengths bytes, times seconds.
"""

from __future__ import annotations

import enum
import math
from array import array
from collections.abc import Iterable, Iterator, Set
from typing import Any, Generic, NamedTuple, TypeVar

from d7y.core.states import PeerState, StateMachine, TaskEvent, TaskState, peer_fsm, task_fsm

T = TypeVar("T")

#: The blocklist of every peer that has blocked nobody yet: one shared empty set instead
#: of an empty ``set()`` (216 bytes) per peer.
NO_PEERS: frozenset[str] = frozenset()


class HostType(enum.Enum):
    """A host's role: a normal peer daemon, or a seed peer that fetches from the origin."""

    NORMAL = "normal"
    SEED = "seed"


class Host:
    """A machine running a peer daemon, with its network identity and live upload load.

    Load counters (changed only by the scheduler, on DAG edges and piece reports):

    - ``tx_bandwidth``: bits/s reserved by the edges this host serves (each edge adds
      piece_length * concurrent pieces * 8);
    - ``concurrent_upload_piece_count``: piece uploads reserved by those edges (each adds
      the child's concurrent piece count) -- the "upload count" of the load formula;
    - ``concurrent_upload_count``: edges (children) served now, checked against
      ``concurrent_upload_limit`` (Dragonfly's free upload slots);
    - ``upload_content_length``: bytes of the tasks those edges will pull (each edge adds
      the task's length);
    - ``upload_count`` / ``upload_failed_count``: edges ever added / piece uploads that
      failed, cumulative (the base evaluator's upload success ratio);
    - ``upload_piece_count``: pieces served, cumulative.
    """

    __slots__ = (
        "announced_tx_bandwidth",
        "concurrent_upload_count",
        "concurrent_upload_limit",
        "concurrent_upload_piece_count",
        "created_at",
        "download_limit_bps",
        "download_port",
        "hostname",
        "id",
        "idc",
        "idc_key",
        "ip",
        "is_seed",
        "location",
        "location_parts",
        "peers",
        "port",
        "tx_bandwidth",
        "type",
        "updated_at",
        "upload_content_length",
        "upload_count",
        "upload_failed_count",
        "upload_limit_bps",
        "upload_piece_count",
    )

    def __init__(
        self,
        id: str,
        *,
        ip: str,
        hostname: str,
        port: int,
        download_port: int,
        idc: str,
        location: str,
        type: HostType,
        upload_limit_bps: int,
        concurrent_upload_limit: int,
        now: float,
    ) -> None:
        self.id = id
        self.peers: dict[str, Peer] = {}
        self.tx_bandwidth = 0
        self.concurrent_upload_piece_count = 0
        self.concurrent_upload_count = 0
        self.upload_content_length = 0
        self.upload_count = 0
        self.upload_failed_count = 0
        self.upload_piece_count = 0
        self.created_at = now
        self.download_limit_bps = 0  # what the host can receive, bits/s (0: unknown)
        self.update(
            ip=ip,
            hostname=hostname,
            port=port,
            download_port=download_port,
            idc=idc,
            location=location,
            type=type,
            upload_limit_bps=upload_limit_bps,
            concurrent_upload_limit=concurrent_upload_limit,
            announced_tx_bandwidth=0,
            now=now,
        )

    def update(
        self,
        *,
        ip: str,
        hostname: str,
        port: int,
        download_port: int,
        idc: str,
        location: str,
        type: HostType,
        upload_limit_bps: int,
        concurrent_upload_limit: int,
        announced_tx_bandwidth: int,
        now: float,
    ) -> None:
        """Apply an announcement (everything but the scheduler's own load counters)."""
        self.ip = ip
        self.hostname = hostname
        self.port = port
        self.download_port = download_port
        self.idc = idc
        self.location = location
        self.type = type
        self.is_seed = type is HostType.SEED
        self.upload_limit_bps = upload_limit_bps
        self.concurrent_upload_limit = concurrent_upload_limit
        self.announced_tx_bandwidth = announced_tx_bandwidth
        self.updated_at = now
        # Affinity is compared case-insensitively on every scoring; fold once here.
        self.idc_key = idc.casefold()
        # Only the first 5 elements ever count (MAX_LOCATION_ELEMENTS in evaluator.py).
        self.location_parts = (
            tuple(p.casefold() for p in location.split("|")[:5]) if location else ()
        )

    @property
    def free_upload_count(self) -> int:
        """Upload slots left (edges this host may still serve)."""
        return self.concurrent_upload_limit - self.concurrent_upload_count

    def __repr__(self) -> str:
        return f"<Host {self.id} {self.type.value} peers={len(self.peers)}>"


class CostWindow:
    """The last ``maxlen`` piece costs of a peer, oldest first: a ring of C doubles.

    It reads like the ``deque(maxlen=...)`` it replaces (``len``, ``[i]``, ``[-1]``,
    iteration, ``maxlen``) at a quarter of its memory: 8 bytes a sample instead of a
    float object and a slot (about 32 bytes), and under 100 bytes while empty instead
    of a deque's 600 -- the scheduler keeps one per peer (issue 13: memory per peer).
    """

    __slots__ = ("_data", "_start", "maxlen")

    def __init__(self, maxlen: int) -> None:
        if maxlen < 1:
            raise ValueError(f"a cost window holds at least 1 sample, got maxlen={maxlen}")
        self.maxlen = maxlen
        self._data = array("d")  # grows to maxlen, then is overwritten in a ring
        self._start = 0  # index of the oldest sample once the ring is full

    def __len__(self) -> int:
        return len(self._data)

    def append(self, cost: float) -> float | None:
        """Add the newest sample; return the one it pushed out (None while filling)."""
        data = self._data
        if len(data) < self.maxlen:
            data.append(cost)
            return None
        start = self._start
        old = data[start]
        data[start] = cost
        self._start = start + 1 if start + 1 < self.maxlen else 0
        return old

    def __getitem__(self, index: int) -> float:
        size = len(self._data)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError("cost window index out of range")
        return self._data[(self._start + index) % size]

    def __iter__(self) -> Iterator[float]:
        data, start = self._data, self._start
        yield from data[start:]
        yield from data[:start]

    def __repr__(self) -> str:
        return f"CostWindow({list(self)!r}, maxlen={self.maxlen})"


class Peer:
    """One download of one task on one host.

    ``finished`` is a Bitmap of the pieces the peer holds (sized to the task's piece count,
    or growing while the task's length is unknown); ``finished_count`` mirrors its
    population so hot paths need not count bits. ``piece_costs`` keeps the last
    ``window`` piece download times with running sums, so the bad-parent test is O(1).
    """

    __slots__ = (
        "_cost_appends",
        "blocklist",
        "concurrent_piece_count",
        "cost_sq_sum",
        "cost_sum",
        "created_at",
        "finished",
        "finished_count",
        "fsm",
        "given_parents",
        "host",
        "id",
        "need_back_to_source",
        "piece_costs",
        "piece_failures",
        "piece_updated_at",
        "schedule_rounds",
        "task",
        "updated_at",
    )

    def __init__(
        self,
        id: str,
        task: Task,
        host: Host,
        *,
        finished: Any,
        concurrent_piece_count: int,
        cost_window: int,
        need_back_to_source: bool,
        now: float,
    ) -> None:
        self.id = id
        self.task = task
        self.host = host
        self.fsm: StateMachine = peer_fsm(f"peer {id}")
        self.finished = finished
        self.finished_count = 0
        self.piece_costs = CostWindow(cost_window)
        self.cost_sum = 0.0
        self.cost_sq_sum = 0.0
        self._cost_appends = 0
        # Parents this peer must not be given again; NO_PEERS until block() adds one.
        self.blocklist: Set[str] = NO_PEERS
        # Every parent a round gave this peer (dragonfly blocklists them on reschedule);
        # None until the first one, so a peer that never needs it costs nothing.
        self.given_parents: set[str] | None = None
        # Failures in a row per parent; None until the first failure (most peers have
        # none, and an empty dict is 64 bytes a peer).
        self.piece_failures: dict[str, int] | None = None
        self.need_back_to_source = need_back_to_source
        self.concurrent_piece_count = concurrent_piece_count
        self.schedule_rounds = 0
        self.created_at = now
        self.updated_at = now
        self.piece_updated_at = now

    @property
    def state(self) -> PeerState:
        return self.fsm.state

    def block(self, peer_ids: Iterable[str]) -> None:
        """Add ``peer_ids`` to the blocklist (its own set, made on the first block)."""
        blocklist = self.blocklist
        if blocklist is NO_PEERS:
            blocklist = self.blocklist = set()
        blocklist.update(peer_ids)  # type: ignore[attr-defined]

    def count_piece_failure(self, parent_id: str) -> int:
        """One more failure in a row from ``parent_id``; returns how many now."""
        failures = self.piece_failures
        if failures is None:
            failures = self.piece_failures = {}
        count = failures[parent_id] = failures.get(parent_id, 0) + 1
        return count

    def record_cost(self, cost: float) -> None:
        """Append a piece cost to the window, keeping running sum and sum of squares."""
        costs = self.piece_costs
        old = costs.append(cost)
        if old is not None:
            self.cost_sum -= old
            self.cost_sq_sum -= old * old
        self.cost_sum += cost
        self.cost_sq_sum += cost * cost
        self._cost_appends += 1
        # Running float sums drift by rounding error on every subtraction; recompute them
        # exactly once per window of appends so the drift stays bounded (amortised O(1)).
        if self._cost_appends >= costs.maxlen:
            self._cost_appends = 0
            self.cost_sum = math.fsum(costs)
            self.cost_sq_sum = math.fsum(c * c for c in costs)

    def __repr__(self) -> str:
        return f"<Peer {self.id} {self.fsm.state.name} pieces={self.finished_count}>"


class IndexedSet(Generic[T]):
    """Items in a list with O(1) add, remove (swap with last) and membership.

    The list is what ``random.sample`` needs to draw without copying a dict's keys; its
    order depends only on the sequence of calls, so sampling stays deterministic.
    """

    __slots__ = ("_index", "items")

    def __init__(self) -> None:
        self.items: list[T] = []
        self._index: dict[T, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __contains__(self, item: object) -> bool:
        return item in self._index

    def __iter__(self) -> Iterator[T]:
        return iter(self.items)

    def add(self, item: T) -> None:
        if item not in self._index:
            self._index[item] = len(self.items)
            self.items.append(item)

    def discard(self, item: T) -> None:
        at = self._index.pop(item, None)
        if at is None:
            return
        last = self.items.pop()
        if at < len(self.items):
            self.items[at] = last
            self._index[last] = at


class Reservation(NamedTuple):
    """Load an edge reserved on its parent's host; released exactly on edge removal."""

    tx_bandwidth: int
    pieces: int
    content_length: int


class DAG:
    """A directed acyclic graph of peer IDs: an edge parent -> child means the child
    downloads from the parent. Each edge carries a value (the scheduler stores the
    :class:`Reservation` there).

    :meth:`add_edge` refuses (returns False, changes nothing) a self-loop, an edge that
    exists, and an edge that would close a cycle; it raises KeyError for an unknown
    vertex.

    The DAG keeps a topological order: an integer per vertex, every parent's before its
    children's (Pearce and Kelly's dynamic topological sort). A path only goes forward
    in that order, so "can X be reached from V?" is no at once when X comes before V,
    and otherwise a walk from V need not enter any vertex ordered after X: it covers the
    part of the swarm between the two instead of all that V reaches; see
    :meth:`reachable_among`. An edge that goes against the order moves vertices ordered
    between its two ends (only those), to an end of the order or among themselves, so
    that the order holds again (:meth:`_reorder`).
    """

    __slots__ = ("_child_lists", "_children", "_end", "_order", "_parents", "_start")

    def __init__(self) -> None:
        self._parents: dict[str, dict[str, Any]] = {}
        self._children: dict[str, dict[str, Any]] = {}
        # The children again, as lists: the descendant walk extends its stack from these
        # about 25 % faster than from dicts (it is the cost of a round in dense swarms).
        self._child_lists: dict[str, list[str]] = {}
        # The topological order: _order[parent] < _order[child] for every edge. Values
        # are distinct. Those from _start up to _end (excluded) have been given out; a
        # new vertex takes _end (it has no edges: any free value would do), and
        # _reorder may move vertices to either end.
        self._order: dict[str, int] = {}
        self._start = 0
        self._end = 0

    def __len__(self) -> int:
        return len(self._parents)

    def __contains__(self, vertex: object) -> bool:
        return vertex in self._parents

    def add_vertex(self, vertex: str) -> None:
        if vertex not in self._parents:
            self._parents[vertex] = {}
            self._children[vertex] = {}
            self._child_lists[vertex] = []
            self._order[vertex] = self._end
            self._end += 1

    def delete_vertex(self, vertex: str) -> list[tuple[str, str, Any]]:
        """Remove ``vertex`` and its edges; return the removed (parent, child, value)."""
        removed = self.delete_in_edges(vertex) + self.delete_out_edges(vertex)
        del self._parents[vertex]
        del self._children[vertex]
        del self._child_lists[vertex]
        del self._order[vertex]
        return removed

    def _check(self, vertex: str) -> None:
        if vertex not in self._parents:
            raise KeyError(f"vertex {vertex!r} is not in the DAG: add it first")

    def descendants(self, vertex: str) -> set[str]:
        """Every vertex reachable from ``vertex`` (not including itself). A whole walk:
        to test given vertices, :meth:`reachable_among` walks less."""
        self._check(vertex)
        children = self._child_lists
        seen: set[str] = set()
        add = seen.add
        stack = list(children[vertex])
        pop = stack.pop
        extend = stack.extend
        while stack:
            v = pop()
            if v not in seen:
                add(v)
                kids = children[v]
                if kids:
                    extend(kids)
        return seen

    def reachable_among(self, source: str, targets: Iterable[str]) -> set[str]:
        """The ``targets`` reachable from ``source`` (``source`` itself excluded): the
        descendants of ``source`` among them, each found by :meth:`_reaches` but for
        those ordered before ``source``, which need no walk."""
        self._check(source)
        order = self._order
        start = order[source]
        # A descendant comes after its ancestor in the order.
        return {t for t in targets if order[t] > start and self._reaches(source, t)}

    def _reaches(self, source: str, target: str) -> bool:
        """Whether a path leads from ``source`` to ``target`` (ordered after it), by two
        walks taking turns: forward from ``source`` through the child lists, skipping
        vertices ordered after ``target``, and back from ``target`` through the parents,
        skipping those ordered before ``source`` (no path between the two leaves that
        span). They meet if there is a path; if either runs out first there is none.
        Each takes one step a turn, so the answer costs at most twice the smaller walk.

        Either walk alone can be long in a dense swarm: with 100,000 hosts a peer near
        the top of the DAG reaches thousands of vertices before a candidate's order,
        while the candidate may be reached from a few hundred after the peer's, and the
        other way round for a peer further down. Over the first 0.8 % of that run the
        forward walks alone visited 35 M vertices, the smaller walk of each test 7 M.
        """
        order = self._order
        children = self._child_lists
        parents = self._parents
        low, high = order[source], order[target]
        ahead = {source}  # reached from source
        behind = {target}  # reaching target
        forward = list(children[source])
        back = list(parents[target])
        while forward and back:
            v = forward.pop()
            if v not in ahead and order[v] <= high:
                if v in behind:
                    return True
                ahead.add(v)
                forward.extend(children[v])
            u = back.pop()
            if u not in behind and order[u] >= low:
                if u in ahead:
                    return True
                behind.add(u)
                back.extend(parents[u])
        return False

    def can_add_edge(self, parent: str, child: str) -> bool:
        """Whether ``add_edge(parent, child)`` would succeed."""
        self._check(parent)
        self._check(child)
        if parent == child or child in self._children[parent]:
            return False
        if not self._children[child]:  # a leaf child cannot reach anything
            return True
        return not self.reachable_among(child, (parent,))

    def add_edge(self, parent: str, child: str, value: Any = None) -> bool:
        """Add parent -> child; False (and no change) if it is a self-loop, a duplicate,
        or would close a cycle."""
        if not self.can_add_edge(parent, child):
            return False
        self._add_edge_unchecked(parent, child, value)
        return True

    def _add_edge_unchecked(self, parent: str, child: str, value: Any) -> None:
        """Add an edge the caller has already proven new and acyclic (scheduler hot path)."""
        self._children[parent][child] = value
        self._child_lists[parent].append(child)
        self._parents[child][parent] = value
        if self._order[parent] > self._order[child]:
            self._reorder(parent, child)

    def _reorder(self, parent: str, child: str) -> None:
        """Restore the order after adding parent -> child with the child ordered before
        the parent. Only vertices ordered between the two can be out of place now: the
        child and what it reaches there, which must come after the parent, and the
        parent and what reaches it there, which must come before the child.

        When the first group is all that the child reaches (often the child alone: a
        peer taking its first parents has no children yet), it moves past every vertex;
        else when the second is all that reaches the parent, it moves before every
        vertex. Either is one walk over one group. Otherwise (Pearce-Kelly) both groups
        are walked and share out their own order values. Each way keeps a group's inner
        order and moves nothing that must stay put, so no other edge turns against the
        order. In a 100,000-host flash crowd the parent's group is the large one (a
        peer that took its parents moments ago has about 2,000 ancestors there, the
        child's group 70 vertices): with Pearce-Kelly's two walks for every such edge,
        reordering took 90 % of the first five CPU minutes; with the shortcuts, 10 %.
        """
        order = self._order
        low, high = order[child], order[parent]
        reached, all_reached = self._between(child, self._child_lists, low, high)
        if all_reached:
            self._to_end(reached)
            return
        reaching, all_reaching = self._between(parent, self._parents, low, high)
        if all_reaching:
            self._to_start(reaching)
            return
        self._share_out(reaching, reached)

    def _share_out(self, first: list[str], then: list[str]) -> None:
        """Give the order values of both groups to ``first`` and then to ``then``, each
        group in its present order."""
        order = self._order
        by_order = order.__getitem__
        moved = sorted(first, key=by_order) + sorted(then, key=by_order)
        values = sorted(order[v] for v in moved)
        for vertex, value in zip(moved, values, strict=True):
            order[vertex] = value

    def _between(self, start: str, neighbours: Any, low: int, high: int) -> tuple[list[str], bool]:
        """``start`` and what it leads to through ``neighbours`` (the child lists, or the
        parents for the other way) without leaving the order values from ``low`` to
        ``high`` (nothing outside them can be out of place, see :meth:`_reorder`), and
        whether that is everything it leads to."""
        order = self._order
        region = [start]
        seen = {start}
        stack = [start]
        everything = True
        while stack:
            for v in neighbours[stack.pop()]:
                if v in seen:
                    continue
                if low <= order[v] <= high:
                    seen.add(v)
                    region.append(v)
                    stack.append(v)
                else:
                    everything = False
        return region, everything

    def _to_end(self, vertices: list[str]) -> None:
        """Give ``vertices`` fresh order values after every other, in their present
        order: valid when nothing they lead to is left behind."""
        order = self._order
        for vertex in sorted(vertices, key=order.__getitem__):
            order[vertex] = self._end
            self._end += 1

    def _to_start(self, vertices: list[str]) -> None:
        """Give ``vertices`` fresh order values before every other, in their present
        order: valid when nothing that leads to them is left ahead."""
        order = self._order
        for vertex in sorted(vertices, key=order.__getitem__, reverse=True):
            self._start -= 1
            order[vertex] = self._start

    def delete_edge(self, parent: str, child: str) -> Any:
        """Remove parent -> child and return its value; KeyError if there is no such edge."""
        try:
            value = self._children[parent].pop(child)
        except KeyError:
            raise KeyError(f"no edge {parent!r} -> {child!r}") from None
        self._child_lists[parent].remove(child)
        del self._parents[child][parent]
        return value

    def delete_in_edges(self, vertex: str) -> list[tuple[str, str, Any]]:
        """Remove every edge into ``vertex``; return the removed (parent, child, value)."""
        self._check(vertex)
        parents = self._parents[vertex]
        removed = [(p, vertex, v) for p, v in parents.items()]
        for p in parents:
            del self._children[p][vertex]
            self._child_lists[p].remove(vertex)
        parents.clear()
        return removed

    def delete_out_edges(self, vertex: str) -> list[tuple[str, str, Any]]:
        """Remove every edge out of ``vertex``; return the removed (parent, child, value)."""
        self._check(vertex)
        children = self._children[vertex]
        removed = [(vertex, c, v) for c, v in children.items()]
        for c in children:
            del self._parents[c][vertex]
        children.clear()
        self._child_lists[vertex].clear()
        return removed

    def parents(self, vertex: str) -> dict[str, Any]:
        """The parents of ``vertex`` mapped to their edge values (do not mutate)."""
        self._check(vertex)
        return self._parents[vertex]

    def children(self, vertex: str) -> dict[str, Any]:
        """The children of ``vertex`` mapped to their edge values (do not mutate)."""
        self._check(vertex)
        return self._children[vertex]

    def in_degree(self, vertex: str) -> int:
        self._check(vertex)
        return len(self._parents[vertex])

    def out_degree(self, vertex: str) -> int:
        self._check(vertex)
        return len(self._children[vertex])

    def edges(self) -> Iterator[tuple[str, str, Any]]:
        for parent, children in self._children.items():
            for child, value in children.items():
                yield parent, child, value

    def edge_count(self) -> int:
        return sum(len(c) for c in self._children.values())

    def order(self, vertex: str) -> int:
        """The vertex's place in the topological order (for tests: it changes as edges
        are added)."""
        self._check(vertex)
        return self._order[vertex]

    def is_consistent(self) -> bool:
        """Parents, children and the walk's child lists describe the same edges, and the
        topological order gives every vertex a distinct value, before its children's."""
        order = self._order
        if order.keys() != self._parents.keys() or len(set(order.values())) != len(order):
            return False
        for v, children in self._children.items():
            if sorted(self._child_lists[v]) != sorted(children):
                return False
            for c, value in children.items():
                if self._parents[c].get(v, self) is not value or order[v] >= order[c]:
                    return False
        return sum(len(p) for p in self._parents.values()) == self.edge_count()

    def is_acyclic(self) -> bool:
        """Kahn's algorithm over the whole graph (for tests and assertions)."""
        indegree = {v: len(p) for v, p in self._parents.items()}
        ready = [v for v, d in indegree.items() if d == 0]
        seen = 0
        while ready:
            v = ready.pop()
            seen += 1
            for c in self._children[v]:
                indegree[c] -= 1
                if indegree[c] == 0:
                    ready.append(c)
        return seen == len(indegree)


class Task:
    """The bytes behind one URL, with the peers downloading them and their DAG.

    ``content_length``/``piece_length``/``piece_count`` may be unknown (None) until a
    peer that fetched from the origin reports them. ``piece_digests`` records the digest
    of each piece as reported by whoever fetched it from the origin (the first report
    wins; later, different reports are counted in ``digest_conflicts``).
    """

    __slots__ = (
        "back_to_source_peers",
        "content_length",
        "created_at",
        "dag",
        "digest_conflicts",
        "direct_piece",
        "failed_seed_hosts",
        "fsm",
        "id",
        "meta",
        "peer_list",
        "peers",
        "peers_by_host",
        "piece_count",
        "piece_digests",
        "piece_length",
        "scope",
        "seed_host_id",
        "seed_peers",
        "seed_triggered_at",
        "servable",
        "starting",
        "updated_at",
        "url",
    )

    def __init__(
        self,
        id: str,
        url: str,
        *,
        content_length: int | None,
        piece_length: int | None,
        piece_count: int | None,
        now: float,
    ) -> None:
        self.id = id
        self.url = url
        self.content_length = content_length
        self.piece_length = piece_length
        self.piece_count = piece_count
        #: SizeScope once the geometry is known (set by the scheduler), else None.
        self.scope: Any = None
        self.fsm: StateMachine = task_fsm(f"task {id}")
        self.dag = DAG()
        self.peers: dict[str, Peer] = {}
        self.peer_list: IndexedSet[Peer] = IndexedSet()
        # host ID -> this task's peers on that host ("does this host hold the task?"
        # must not scan a seed host's peers of every other task).
        self.peers_by_host: dict[str, dict[str, Peer]] = {}
        # Peers able to serve (see serving.can_serve), kept incrementally so "is any
        # peer available" and the servable-only sampling knob cost O(1), not O(peers).
        self.servable: IndexedSet[Peer] = IndexedSet()
        # Peers just given parents whose download has not started (RECEIVED_NORMAL with
        # an in-edge): the d7y policy's parents of last resort (see candidates.py).
        self.starting: IndexedSet[Peer] = IndexedSet()
        self.back_to_source_peers: set[str] = set()
        self.piece_digests: dict[int, str] = {}
        self.digest_conflicts = 0
        self.direct_piece: bytes | None = None
        self.seed_host_id: str | None = None
        self.seed_triggered_at: float | None = None
        self.failed_seed_hosts: set[str] = set()
        #: Peers of this task on seed hosts (so "is a seed peer already on it" is O(1)).
        self.seed_peers: set[str] = set()
        #: Cached TaskMeta result object, rebuilt by the scheduler when the geometry changes.
        self.meta: Any = None
        self.created_at = now
        self.updated_at = now

    @property
    def state(self) -> TaskState:
        return self.fsm.state

    def fire(self, event: TaskEvent) -> None:
        self.fsm.fire(event)

    def __repr__(self) -> str:
        return f"<Task {self.id[:12]} {self.fsm.state.name} peers={len(self.peers)}>"
