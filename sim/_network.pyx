# cython: boundscheck=False, wraparound=False, initializedcheck=False
"""The flow-level network model, compiled: a typed port of :mod:`d7y.sim._network_py`.

Same model, same method names, same results bit for bit: every floating-point operation
of the twin is done here on C doubles in the same order (Python floats are C doubles;
setup.py builds this module with -ffp-contract=off so that the C compiler fuses no
multiply-add, and never with -ffast-math). The twin's docstrings explain the model; the
comments here say only what differs in the implementation:

- Resources, pairs and flows are cdef classes with typed fields (``_network.pxd``); the
  methods the simulation calls per event are cdef methods, called without Python's
  argument handling.
- ``_solve``'s water-filling entries (cap, index) live in C arrays sorted by qsort on
  (cap, index): a total order, so the same sequence as the twin's sort of tuples.
- The re-solve queue is a list read from a head index (the twin's deque, FIFO).
- Ordered sets stay dicts and heaps stay heapq lists of tuples: their order decides the
  order of every later loop, and the tie-breaking counters are the twin's.
"""

from libc.math cimport INFINITY, fabs, isinf, nextafter
from libc.stdlib cimport free, qsort, realloc

cimport cython

import math
from heapq import heapify, heappop, heappush

from simpy.events import NORMAL

INF = math.inf
REL_TOL = 1e-9
MAX_FULL_SOLVES = 3
SMALL_GROUP = 32

# The same constants as C values for the inner loops.
cdef double C_INF = INFINITY
cdef double C_REL_TOL = 1e-9
cdef int C_MAX_FULL_SOLVES = 3
cdef Py_ssize_t C_SMALL_GROUP = 32
cdef object _NORMAL = NORMAL


cdef inline double _ulp(double x) noexcept:
    # math.ulp, for the finite non-negative times the simulation has (CPython's algorithm)
    x = fabs(x)
    if isinf(x):
        return x
    cdef double x2 = nextafter(x, C_INF)
    if isinf(x2):
        x2 = nextafter(x, -C_INF)
        return x - x2
    return x2 - x


cdef int _ent_cmp(const void* a, const void* b) noexcept nogil:
    # (c, j) lexicographic, as Python compares the twin's (cap, index) tuples
    cdef const Ent* x = <const Ent*>a
    cdef const Ent* y = <const Ent*>b
    if x.c < y.c:
        return -1
    if x.c > y.c:
        return 1
    if x.j < y.j:
        return -1
    if x.j > y.j:
        return 1
    return 0


@cython.freelist(256)
@cython.final
cdef class _FEnt:
    """An entry of a group's completion heap: the twin's (target, seq, flow) tuple, with
    the comparison in C and the target unboxed. seq is unique, so (target, seq) orders
    the entries totally, as the tuples are ordered: the same pops in the same order."""

    cdef double target
    cdef long long seq
    cdef Flow flow

    def __lt__(self, _FEnt other):
        return self.target < other.target or (
            self.target == other.target and self.seq < other.seq
        )


cdef class Resource:
    """A capacity (bytes/s) and the pairs bottlenecked at it (its group)."""

    def __init__(self, name, cap, hub) -> None:
        self.name = name
        self.cap = float(cap)
        self.hub = hub
        self.members = {}
        self.n = 0
        self.lam = C_INF
        self.V = 0.0
        self.t = 0.0
        self.heap = []
        self.foreign = {}
        self.F = 0.0
        self.hubfor = {}
        self.hubK = {}
        self.xheap = []
        self.evtime = C_INF
        self.queued = False
        self.depth_m = -1
        self.depth_o = -1
        self.epoch = 0
        self.full_solves = 0

    cpdef double load(self) except? -1.0:
        cdef double total = self.F
        cdef Resource hub
        if self.n:
            total += self.n * self.lam
        for hub, k in self.hubK.items():
            total += <Py_ssize_t>k * hub.lam
        return total

    def __repr__(self) -> str:
        return f"<Resource {self.name} cap={self.cap:g} n={self.n} lam={self.lam:g}>"


cdef class Pair:
    """The flows between two hosts (same path, so the same rate)."""

    def __init__(self, key, tuple path) -> None:
        self.key = key
        self.path = path
        self.k = 0
        self.grp = None
        self.flows = {}

    @property
    def rate(self) -> float:
        """Bytes/s of each of this pair's flows (0 when it has none)."""
        return self.grp.lam if self.grp is not None else 0.0

    def __repr__(self) -> str:
        return f"<Pair {self.key} k={self.k}>"


cdef class Flow:
    """One transfer of ``size`` bytes. ``callback(flow)`` runs when it completes."""

    def __init__(self, Pair pair, double size, start, callback, arg) -> None:
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


cdef inline Flow _new_flow(Pair pair, double size, object start, object callback, object arg):
    cdef Flow f = Flow.__new__(Flow)
    f.pair = pair
    f.size = size
    f.start = start
    f.callback = callback
    f.arg = arg
    f.alive = True
    f.target = 0.0
    return f


cdef double _water_fill(
    Ent* order, Py_ssize_t* ks, Py_ssize_t n, double cap, Py_ssize_t total,
    Py_ssize_t* below_out
) noexcept:
    # the twin's _water_fill, over C arrays
    cdef double rem = cap
    cdef double c
    cdef Py_ssize_t below = 0
    cdef Py_ssize_t i, k
    for i in range(n):
        c = order[i].c
        if c * total < rem:
            k = ks[order[i].j]
            rem -= c * k
            total -= k
            below += 1
        else:
            break
    below_out[0] = below
    if total:
        return rem / total
    return C_INF


cdef class _Callback:
    """An already-triggered event that calls ``callbacks`` when SimPy pops it (see the
    twin): the attributes SimPy's step() reads and writes."""

    def __init__(self, callbacks) -> None:
        self._ok = True
        self._value = None
        self.callbacks = callbacks


cdef inline _Callback _new_callback(tuple callbacks):
    cdef _Callback cb = _Callback.__new__(_Callback)
    cb._ok = True
    cb._value = None
    cb.callbacks = callbacks
    return cb


cdef class Network:
    """Flows on resources, advanced by ``env`` (see the twin's module docstring)."""

    def __cinit__(self, *args, **kwargs):
        self._th = NULL
        self._th_n = 0
        self._th_cap = 0
        self._order = NULL
        self._ks = NULL
        self._kinds = NULL
        self._cap_recs = 0

    def __dealloc__(self):
        free(self._th)
        free(self._order)
        free(self._ks)
        free(self._kinds)

    def __init__(self, env, *, depth=0, hub_slack=0.005) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be an int >= 0, got {depth!r}")
        if not (0 <= hub_slack < 1):
            raise ValueError(f"hub_slack must be in [0, 1), got {hub_slack!r}")
        self.env = env
        self.depth = depth
        self.hub_slack = hub_slack
        self.resources = []
        self._pairs = {}
        self._th_n = 0
        self._due = {}
        self._seq = 0
        self._queue = []
        self._qhead = 0
        self._touched = {}
        self._flush_pending = False
        self._wake_at = C_INF
        self._flush_callbacks = (self._flush,)
        self._wake_callbacks = (self._wake,)
        self._schedule = env.schedule
        self.flows_started = 0
        self.flows_completed = 0
        self.flows_cancelled = 0
        self.solves = 0
        self.flushes = 0

    cdef int _grow(self, Py_ssize_t need) except -1:
        cdef Py_ssize_t cap = self._cap_recs
        if need <= cap:
            return 0
        while cap < need:
            cap = cap * 2 if cap else 64
        cdef Ent* order = <Ent*>realloc(self._order, cap * sizeof(Ent))
        if order == NULL:
            raise MemoryError()
        self._order = order
        cdef Py_ssize_t* ks = <Py_ssize_t*>realloc(self._ks, cap * sizeof(Py_ssize_t))
        if ks == NULL:
            raise MemoryError()
        self._ks = ks
        cdef int* kinds = <int*>realloc(self._kinds, cap * sizeof(int))
        if kinds == NULL:
            raise MemoryError()
        self._kinds = kinds
        self._cap_recs = cap
        return 0

    # The pending completion times: a heap of C doubles (the twin's heapq list of
    # floats). The times are distinct (one entry per time, its groups in _due) and never
    # NaN, so any heap pops them in the twin's order.

    cdef int _times_push(self, double t) except -1:
        cdef Py_ssize_t cap = self._th_cap
        cdef double* th
        if self._th_n == cap:
            cap = cap * 2 if cap else 64
            th = <double*>realloc(self._th, cap * sizeof(double))
            if th == NULL:
                raise MemoryError()
            self._th = th
            self._th_cap = cap
        th = self._th
        cdef Py_ssize_t i = self._th_n
        cdef Py_ssize_t parent
        self._th_n += 1
        while i > 0:
            parent = (i - 1) >> 1
            if t < th[parent]:
                th[i] = th[parent]
                i = parent
            else:
                break
        th[i] = t
        return 0

    cdef double _times_pop(self) noexcept:
        # the caller checks _th_n > 0
        cdef double* th = self._th
        cdef double top = th[0]
        cdef Py_ssize_t n = self._th_n - 1
        cdef double last = th[n]
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t child
        self._th_n = n
        if n == 0:
            return top
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n and th[child + 1] < th[child]:
                child += 1
            if th[child] < last:
                th[i] = th[child]
                i = child
            else:
                break
        th[i] = last
        return top

    @property
    def _times(self) -> list:
        """The pending completion times, sorted (a copy, for tests and debugging)."""
        cdef Py_ssize_t i
        return sorted([self._th[i] for i in range(self._th_n)])

    # ------------------------------------------------------------------ building --

    def resource(self, name, cap, *, hub=False) -> Resource:
        """A new resource of ``cap`` bytes/s (see the twin)."""
        if not (cap > 0 and math.isfinite(cap)):
            raise ValueError(f"resource {name}: capacity must be > 0 bytes/s, got {cap!r}")
        r = Resource(name, cap, hub)
        self.resources.append(r)
        return r

    def pair(self, key, path) -> Pair:
        """The pair for ``key``, created with ``path`` on first use (see the twin)."""
        p = self._pairs.get(key)
        if p is None:
            path = tuple(path)
            if not path:
                raise ValueError(f"pair {key!r}: a path needs at least one resource")
            if len(set(map(id, path))) != len(path):
                raise ValueError(f"pair {key!r}: the path crosses a resource twice")
            for r in path:
                if not isinstance(r, Resource):
                    raise TypeError(f"pair {key!r}: {r!r} is not a Resource of this model")
            p = self._pairs[key] = Pair(key, path)
        return p

    # --------------------------------------------------------------------- flows --

    def start_flow(self, Pair pair not None, size, callback, arg=None) -> Flow:
        """Start a transfer of ``size`` bytes (> 0) on ``pair`` now; ``callback(flow)``
        runs when its last byte is through."""
        if not size > 0:
            raise ValueError(f"flow size must be > 0 bytes, got {size!r}")
        now_obj = self.env.now
        cdef double now = now_obj
        cdef Flow flow = _new_flow(pair, float(size), now_obj, callback, arg)
        cdef Resource grp, r
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

    def cancel(self, Flow flow not None) -> float:
        """Stop a flow before it completes (its callback never runs). Returns the bytes
        it had transferred."""
        if not flow.alive:
            return 0.0
        cdef double now = self.env.now
        cdef Resource grp = flow.pair.grp
        assert grp is not None
        self._advance(grp, now)
        cdef double left = flow.target - grp.V
        cdef double sent = flow.size - (left if left > 0.0 else 0.0)
        self.flows_cancelled += 1
        self._remove_flow(flow)
        self._request_flush()
        return sent if sent > 0.0 else 0.0

    # ------------------------------------------------------------ group plumbing --

    cdef void _advance(self, Resource r, double now) noexcept:
        if r.n:
            r.V += r.lam * (now - r.t)
        r.t = now

    cdef int _push_flow(self, Resource grp, Flow flow, double remaining) except -1:
        flow.target = grp.V + remaining
        self._seq += 1
        cdef _FEnt e = _FEnt.__new__(_FEnt)
        e.target = flow.target
        e.seq = self._seq
        e.flow = flow
        heappush(grp.heap, e)
        return 0

    cdef double _join_level(self, Resource r, Pair q) except? -1.0:
        cdef double spare = r.cap - r.load()
        if not r.hub and spare < r.cap * C_REL_TOL:
            spare = self._level_with(r, q, 0.0)
        cdef double floor = r.cap * 1e-12
        return floor if floor > spare else spare

    cdef Resource _initial_group(self, Pair pair):
        cdef Resource best = None
        cdef Resource r
        cdef double best_level = C_INF
        cdef double level
        for r in pair.path:
            if r.n:
                level = (r.cap - (r.load() - r.n * r.lam)) / (r.n + 1)
            else:
                level = r.cap - r.load()
            if level < best_level:
                best = r
                best_level = level
        assert best is not None
        return best

    cdef int _attach(self, Pair q) except -1:
        cdef Resource g = q.grp
        cdef Resource r
        cdef Py_ssize_t k = q.k
        cdef double x
        cdef dict d
        if g.hub:
            for r in q.path:
                if r is not g:
                    d = r.hubfor.get(g)
                    if d is None:
                        d = {}
                        r.hubfor[g] = d
                        r.hubK[g] = 0
                    d[q] = None
                    r.hubK[g] = <Py_ssize_t>r.hubK[g] + k
        else:
            x = g.lam
            for r in q.path:
                if r is not g:
                    r.foreign[q] = None
                    r.F += k * x
                    if r.hub:
                        self._seq += 1
                        heappush(r.xheap, (-x, self._seq, q))
        return 0

    cdef int _detach(self, Pair q) except -1:
        cdef Resource g = q.grp
        cdef Resource r
        cdef Py_ssize_t k = q.k
        cdef double x
        cdef dict d
        if g.hub:
            for r in q.path:
                if r is not g:
                    d = r.hubfor[g]
                    del d[q]
                    if d:
                        r.hubK[g] = <Py_ssize_t>r.hubK[g] - k
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
        return 0

    cdef int _change_k(self, Pair q, Py_ssize_t dk) except -1:
        cdef Resource g = q.grp
        cdef Resource r
        cdef double dx
        if g.hub:
            for r in q.path:
                if r is not g:
                    r.hubK[g] = <Py_ssize_t>r.hubK[g] + dk
        else:
            dx = dk * g.lam
            for r in q.path:
                if r is not g:
                    r.F += dx
        return 0

    cdef int _remove_flow(self, Flow flow) except -1:
        flow.alive = False
        cdef Pair q = flow.pair
        cdef Resource g = q.grp
        cdef Resource r
        cdef Flow f
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
            g.lam = C_INF
            g.V = 0.0
            g.heap.clear()
        elif len(g.heap) > 2 * g.n + 64:
            g.heap = [
                e for e in g.heap if (<_FEnt>e).flow.alive and (<_FEnt>e).flow.pair.grp is g
            ]
            heapify(g.heap)
        for r in q.path:
            self._mark(r, 0, False)
        self._touched[g] = None
        return 0

    cdef list _leave_group(self, Pair q, double now):
        cdef Resource g = q.grp
        cdef Flow f
        cdef double v, left
        self._advance(g, now)
        self._detach(q)
        del g.members[q]
        g.n -= q.k
        v = g.V
        flows = []
        for f in q.flows:
            left = f.target - v
            flows.append((f, left if left > 0.0 else 0.0))
        q.grp = None
        if not g.n:
            g.lam = C_INF
            g.V = 0.0
            g.heap.clear()
        self._touched[g] = None
        return flows

    cdef int _enter_group(self, Pair q, Resource g, list flows, double now) except -1:
        self._advance(g, now)
        q.grp = g
        g.members[q] = None
        g.n += q.k
        for f, left in flows:
            self._push_flow(g, <Flow>f, <double>left)
        self._attach(q)
        self._touched[g] = None
        return 0

    # ------------------------------------------------------------------ re-solve --

    cdef int _mark(self, Resource r, int depth, bint mandatory) except -1:
        if mandatory:
            if r.depth_m < 0 or depth < r.depth_m:
                r.depth_m = depth
        elif depth > self.depth:
            return 0  # optional work beyond the propagation depth is never done
        elif r.depth_o < 0 or depth < r.depth_o:
            r.depth_o = depth
        if not r.queued:
            r.queued = True
            self._queue.append(r)
        return 0

    cdef int _request_flush(self) except -1:
        if not self._flush_pending:
            self._flush_pending = True
            # Priority 2: after every NORMAL (1) event of this instant.
            self._schedule(_new_callback(self._flush_callbacks), 2)
        return 0

    def _flush(self, _event=None) -> None:
        self._flush_pending = False
        self.flushes += 1
        cdef long long epoch = self.flushes
        cdef long long max_full = C_MAX_FULL_SOLVES * (self.depth + 1)
        cdef double now = self.env.now
        cdef list queue = self._queue
        cdef int limit = self.depth
        cdef Resource r, hub
        cdef int dm, do, depth
        cdef bint full
        cdef double load
        while self._qhead < len(queue):
            r = <Resource>queue[self._qhead]
            self._qhead += 1
            r.queued = False
            dm = r.depth_m
            do = r.depth_o
            r.depth_m = -1
            r.depth_o = -1
            depth = dm if do < 0 or (0 <= dm < do) else do
            if r.epoch != epoch:
                r.epoch = epoch
                r.full_solves = 0
            full = r.full_solves < max_full
            if r.hub:
                if r.load() > r.cap * (1 + C_REL_TOL) or (
                    r.n and self._hub_top(r) > r.lam * (1 + C_REL_TOL)
                ):
                    self._hub_drop(r, now, depth)
                if full and r.n and r.cap - r.load() > self.hub_slack * r.cap:
                    r.full_solves += 1
                    self._solve(r, now, depth, True)
            else:
                if not r.n:
                    load = r.F  # r.load(), inline (no group here)
                    for hub, k in r.hubK.items():
                        load += <Py_ssize_t>k * hub.lam
                    if load <= r.cap * (1 + C_REL_TOL):
                        continue
                if depth <= limit and full:
                    r.full_solves += 1
                    self._solve(r, now, depth, True)
                elif (dm >= 0 or not full) and r.load() > r.cap * (1 + C_REL_TOL):
                    self._solve(r, now, depth, False)
        del queue[:]
        self._qhead = 0
        self._reschedule(now)

    cdef int _solve(self, Resource r, double now, int depth, bint rise_ok) except -1:
        self.solves += 1
        cdef double old = r.lam
        cdef Py_ssize_t cap_need = len(r.members) + len(r.foreign) + len(r.hubK)
        if cap_need == 0:
            r.F = 0.0  # the twin's recomputed (empty) foreign sum
            return 0
        self._grow(cap_need)
        cdef Ent* order = self._order
        cdef Py_ssize_t* ks = self._ks
        cdef int* kinds = self._kinds
        # the records' objects (pair or hub) and binding resources, by index
        cdef list objs = []
        cdef list tos = []
        cdef Py_ssize_t i = 0
        cdef Py_ssize_t total = 0
        cdef Py_ssize_t k, kk
        cdef Pair q
        cdef Resource s, to, hub, g
        cdef double c, a, x, f_sum
        cdef bint squeeze = self.depth > 0
        cdef double spare_capped = C_INF
        for q in r.members:
            k = q.k
            if rise_ok:
                c = C_INF
                to = None
                for s in q.path:
                    if s is not r:
                        if s.n:
                            a = s.lam
                        elif squeeze:
                            a = self._level_with(s, q, old)
                        else:
                            a = s.F  # s.load(), inline (s has no group)
                            for hub, kko in s.hubK.items():
                                a += <Py_ssize_t>kko * hub.lam
                            a = (s.cap - a) / k + old
                            if a < 0.0:
                                a = 0.0
                        if a < c:
                            c = a
                            to = s
                if c < spare_capped and not squeeze and not to.n and not to.hub:
                    spare_capped = c
            else:
                c = old
                to = None
            order[i].c = c
            order[i].j = i
            ks[i] = k
            kinds[i] = 0
            objs.append(q)
            tos.append(to)
            i += 1
            total += k
        f_sum = 0.0
        for q in r.foreign:
            x = q.grp.lam
            k = q.k
            f_sum += k * x
            order[i].c = x
            order[i].j = i
            ks[i] = k
            kinds[i] = 1
            objs.append(q)
            tos.append(None)
            i += 1
            total += k
        r.F = f_sum  # recomputed: no drift
        for hub, kko in r.hubK.items():
            order[i].c = hub.lam
            order[i].j = i
            ks[i] = <Py_ssize_t>kko
            kinds[i] = 2
            objs.append(hub)
            tos.append(None)
            i += 1
            total += <Py_ssize_t>kko
        cdef Py_ssize_t n = i
        qsort(order, n, sizeof(Ent), _ent_cmp)
        cdef Py_ssize_t below
        cdef double lam = _water_fill(order, ks, n, r.cap, total, &below)
        if spare_capped < lam * (1 - C_REL_TOL):  # such a member would leave r
            lam = self._recheck_spare_caps(r, old, n, objs, tos, lam, &below, total)
            order = self._order  # (not reallocated: no _solve inside, but be plain)
            ks = self._ks
            kinds = self._kinds
        if not rise_ok and lam > old:
            lam = old
        cdef double hi = lam * (1 + C_REL_TOL)
        cdef double lo = lam * (1 - C_REL_TOL)
        cdef list leavers = []
        cdef list joiners = []
        cdef Py_ssize_t idx, j
        cdef int kind
        for idx in range(below):
            c = order[idx].c
            j = order[idx].j
            if kinds[j] == 0 and c < lo:
                leavers.append((objs[j], tos[j], c))
        for idx in range(below, n):
            c = order[idx].c
            if c > hi:
                j = order[idx].j
                kind = kinds[j]
                if kind == 1:
                    joiners.append(objs[j])
                elif kind == 2:
                    joiners.extend(r.hubfor[objs[j]])
        if not leavers and not joiners and (lam == old or (not r.n and lam == C_INF)):
            return 0  # nothing moves
        cdef int nxt = depth + 1
        if nxt <= self.depth and (lam == C_INF or lam > old):
            for idx in range(below):
                j = order[idx].j
                kind = kinds[j]
                if kind == 1:
                    self._mark((<Pair>objs[j]).grp, nxt, False)
                elif kind == 2:
                    self._mark(<Resource>objs[j], nxt, False)
        self._advance(r, now)
        cdef list moved_out = []
        for item in leavers:
            q = <Pair>item[0]
            moved_out.append((q, item[1], item[2], self._leave_group(q, now)))
        cdef list moved_in = []
        cdef double x_old
        for item in joiners:
            q = <Pair>item
            g = q.grp
            x_old = g.lam  # read before _leave_group clears q.grp
            moved_in.append((q, x_old, self._leave_group(q, now)))
            self._mark(g, nxt, False)
        if not r.n and not moved_in:
            lam = C_INF
        cdef bint rise, small, mark
        cdef double dx, dq
        if lam != old and r.n:
            r.lam = lam
            rise = lam > old
            small = len(r.members) <= C_SMALL_GROUP
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
                for s in r.hubK:
                    self._mark(s, nxt, False)
            self._touched[r] = None
        else:
            r.lam = lam
        for item in moved_in:
            q = <Pair>item[0]
            x_old = item[1]
            self._enter_group(q, r, item[2], now)
            for s in q.path:
                if s is not r:
                    self._mark(s, nxt, r.lam > x_old)
        cdef bint fresh
        cdef double cc
        for item in moved_out:
            q = <Pair>item[0]
            to = <Resource>item[1]
            cc = item[2]
            fresh = not to.n
            if fresh:
                a = to.cap * 1e-12
                to.lam = a if a > cc else cc  # provisional: re-solved below
            self._enter_group(q, to, item[3], now)
            for s in q.path:
                if s is to and fresh:
                    self._mark(s, depth, True)  # a new group's level: solve it fully
                else:
                    self._mark(s, nxt, to.lam > old or s is to)
        return 0

    cdef double _recheck_spare_caps(
        self, Resource r, double old, Py_ssize_t n, list objs, list tos, double lam,
        Py_ssize_t* below, Py_ssize_t total
    ) except? -1.0:
        cdef Ent* order = self._order
        cdef Py_ssize_t* ks = self._ks
        cdef int* kinds = self._kinds
        cdef set rechecked = set()
        cdef double lo, c, c2, a
        cdef bint changed
        cdef Py_ssize_t idx, j
        cdef Pair q
        cdef Resource to, to2, s
        while True:
            lo = lam * (1 - C_REL_TOL)
            changed = False
            for idx in range(below[0]):
                c = order[idx].c
                j = order[idx].j
                if c >= lo:
                    continue
                to = tos[j]
                if kinds[j] or to is None or to.n or to.hub or j in rechecked:
                    continue
                rechecked.add(j)
                q = <Pair>objs[j]
                c2 = C_INF
                to2 = None
                for s in q.path:
                    if s is not r:
                        a = s.lam if s.n else self._level_with(s, q, old)
                        if a < c2:
                            c2 = a
                            to2 = s
                if c2 > c:
                    order[idx].c = c2
                    tos[j] = to2
                    kinds[j] = 0
                    changed = True
            if not changed:
                return lam
            qsort(order, n, sizeof(Ent), _ent_cmp)
            lam = _water_fill(order, ks, n, r.cap, total, below)

    cdef double _level_with(self, Resource s, Pair q, double x_q) except? -1.0:
        cdef Py_ssize_t k = q.k
        cdef double spare = (s.cap - s.load()) / k + x_q
        if s.hub:
            return spare if spare > 0.0 else 0.0
        others = []
        cdef double top = 0.0
        cdef double x
        cdef Pair p
        cdef Resource g, hub
        cdef Py_ssize_t kk
        for p in s.foreign:
            if p is not q:
                x = p.grp.lam
                others.append((x, p.k))
                if x > top:
                    top = x
        g = q.grp
        for hub, kko in s.hubK.items():
            kk = kko
            if hub is g:
                kk -= k
            if kk:
                x = hub.lam
                others.append((x, kk))
                if x > top:
                    top = x
        if top <= spare:
            return spare if spare > 0.0 else 0.0
        others.sort()
        cdef double rem = s.cap
        cdef Py_ssize_t total = k
        cdef double c
        for item in others:
            total += <Py_ssize_t>item[1]
        for item in others:
            c = item[0]
            kk = item[1]
            if c * total < rem:
                rem -= c * kk
                total -= kk
            else:
                break
        cdef double level = rem / total
        if spare > level:
            level = spare
        return level if level > 0.0 else 0.0

    cdef double _hub_top(self, Resource r) except? -1.0:
        cdef double top = -C_INF
        cdef list heap = r.xheap
        cdef Pair q
        cdef Resource hub
        cdef double negx
        while heap:
            entry = heap[0]
            negx = entry[0]
            q = <Pair>entry[2]
            if q in r.foreign and q.grp.lam == -negx:
                top = -negx
                break
            heappop(heap)
        for hub in r.hubK:
            if hub.lam > top:
                top = hub.lam
        return top

    cdef int _hub_drop(self, Resource r, double now, int depth) except -1:
        self.solves += 1
        cdef double old = r.lam
        cdef Py_ssize_t total = r.n
        cdef double rem = r.cap - r.F
        cdef Resource hub, g, s
        cdef Pair q
        cdef Py_ssize_t k
        for hub, kko in r.hubK.items():
            rem -= <Py_ssize_t>kko * hub.lam
        cdef list heap = r.xheap
        if len(heap) > 4 * len(r.foreign) + 64:
            heap = [(-(<Pair>q).grp.lam, i, q) for i, q in enumerate(r.foreign)]
            r.xheap = heap
            heapify(heap)
        blocks = sorted(r.hubK.items(), key=_neg_hub_level)
        cdef list pulled = []
        cdef set taken = set()  # a pair may sit in the heap twice with one rate
        cdef Py_ssize_t bi = 0
        cdef Py_ssize_t nblocks = len(blocks)
        cdef double lam, x_heap, x_block, negx
        while True:
            lam = rem / total if total else -C_INF
            x_heap = -C_INF
            while heap:
                entry = heap[0]
                negx = entry[0]
                q = <Pair>entry[2]
                if q in r.foreign and q.grp.lam == -negx and q not in taken:
                    x_heap = -negx
                    break
                heappop(heap)
            x_block = (<Resource>blocks[bi][0]).lam if bi < nblocks else -C_INF
            if x_heap >= x_block:
                if x_heap <= lam * (1 + C_REL_TOL) or x_heap == -C_INF:
                    break
                entry = heappop(heap)
                q = <Pair>entry[2]
                rem += q.k * x_heap
                total += q.k
                pulled.append(q)
                taken.add(q)
            else:
                if x_block <= lam * (1 + C_REL_TOL):
                    break
                hub = <Resource>blocks[bi][0]
                k = blocks[bi][1]
                bi += 1
                rem += k * x_block
                total += k
                pulled.extend(r.hubfor[hub])
        if total == 0:
            return 0
        lam = rem / total
        if r.n and lam > old:
            lam = old
        self._advance(r, now)
        cdef int nxt = depth + 1
        cdef list moved = []
        for item in pulled:
            q = <Pair>item
            g = q.grp
            moved.append((q, self._leave_group(q, now)))
            self._mark(g, nxt, False)
        if r.n and lam != old and len(r.members) <= C_SMALL_GROUP:
            for q in r.members:
                for s in q.path:
                    if s is not r:
                        self._mark(s, nxt, False)
        r.lam = lam
        for item in moved:
            q = <Pair>item[0]
            self._enter_group(q, r, item[1], now)
            for s in q.path:
                if s is not r:
                    self._mark(s, nxt, False)
        self._touched[r] = None
        return 0

    # ---------------------------------------------------------------- completions --

    cdef int _reschedule(self, double now) except -1:
        cdef dict due = self._due
        cdef Resource g
        cdef Flow f
        cdef list gh
        cdef double t, target
        cdef _FEnt fe
        for g in self._touched:
            t = C_INF
            gh = g.heap
            while gh:
                fe = <_FEnt>gh[0]
                target = fe.target
                f = fe.flow
                if f.alive and f.pair.grp is g and f.target == target:
                    if g.lam > 0:
                        t = g.t + (target - g.V) / g.lam
                        if t < now:
                            t = now
                    break
                heappop(gh)
            if t != g.evtime:
                g.evtime = t
                if t < C_INF:
                    self._seq += 1  # (kept: the flows' heaps share the counter)
                    groups = due.get(t)
                    if groups is None:
                        due[t] = [g]
                        self._times_push(t)
                    else:
                        (<list>groups).append(g)
        self._touched.clear()
        cdef double first
        if self._th_n:
            first = self._th[0]
            if first < self._wake_at:
                self._wake_at = first
                self._schedule(_new_callback(self._wake_callbacks), _NORMAL, first - now)
        return 0

    def _wake(self, _event=None) -> None:
        cdef double now = self.env.now
        if now >= self._wake_at:
            self._wake_at = C_INF
        cdef dict due = self._due
        cdef list done = []
        cdef Resource g
        cdef Flow f
        cdef list gh
        cdef double t, lim, a, b, target
        cdef _FEnt fe
        while self._th_n and self._th[0] <= now:
            t = self._times_pop()
            for g in due.pop(t):
                if g.evtime != t:
                    continue  # stale: the group's event moved since
                g.evtime = C_INF
                self._touched[g] = None
                self._advance(g, now)
                # Done: within rounding of its target, or so close that no later instant
                # representable as a float would show progress (4 ulps of ``now``).
                a = 1e-9 * fabs(g.V) + 1e-6
                b = 4.0 * g.lam * _ulp(now)
                lim = g.V + (b if b > a else a)
                gh = g.heap
                while gh:
                    fe = <_FEnt>gh[0]
                    target = fe.target
                    f = fe.flow
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
        cdef double first
        if self._touched or self._qhead < len(self._queue):
            self._request_flush()
        elif self._th_n:
            first = self._th[0]
            if first < self._wake_at:  # a stale wake: re-arm only
                self._wake_at = first
                self._schedule(_new_callback(self._wake_callbacks), _NORMAL, first - now)

    # --------------------------------------------------------------------- checks --

    def check(self, tol=1e-6) -> None:
        """Raise AssertionError on a broken invariant (tests): see the twin."""
        for r in self.resources:
            load = 0.0
            n = 0
            for q in self._pairs.values():
                if q.k and r in q.path:
                    load += q.k * q.grp.lam
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
        """Largest relative gap between the current rates and exact max-min rates."""
        from d7y.sim.maxmin_np import solve

        pairs = [q for q in self._pairs.values() if q.k]
        if not pairs:
            return 0.0
        exact = solve(
            [q.path for q in pairs], {r: r.cap for r in self.resources}, [q.k for q in pairs]
        )
        return max(abs(q.rate - e) / e for q, e in zip(pairs, exact, strict=True))


def _neg_hub_level(hk):
    return -(<Resource>hk[0]).lam
