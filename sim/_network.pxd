# Declarations of d7y.sim._network, the compiled network model (its pure-Python twin is
# d7y.sim._network_py; the docstring of that module is the model's documentation).
#
# The fields mirror the twin's __slots__ one for one, typed: capacities, levels and
# virtual clocks are C doubles (Python floats are C doubles, so the same operations in
# the same order give the same bits), flow counts C integers. The ordered sets (members,
# foreign, hubfor, ...) stay dicts: their insertion order decides the order of every
# later loop, and so the simulated outputs.


cdef struct Ent:
    # one entry of a water-filling: the cap of the entry and its index into the records
    double c
    Py_ssize_t j


cdef class Resource:
    cdef public object name
    cdef public double cap
    cdef public bint hub
    cdef public dict members
    cdef public Py_ssize_t n
    cdef public double lam
    cdef public double V
    cdef public double t
    cdef public list heap
    cdef public dict foreign
    cdef public double F
    cdef public dict hubfor
    cdef public dict hubK
    cdef public list xheap
    cdef public double evtime
    cdef public bint queued
    cdef public int depth_m
    cdef public int depth_o
    cdef public long long epoch
    cdef public long long full_solves

    cpdef double load(self) except? -1.0


cdef class Pair:
    cdef public object key
    cdef public tuple path
    cdef public Py_ssize_t k
    cdef public Resource grp
    cdef public dict flows


cdef class Flow:
    cdef public Pair pair
    cdef public double size
    cdef public object start
    cdef public object callback
    cdef public object arg
    cdef public bint alive
    cdef public double target


cdef class _Callback:
    cdef public object _ok
    cdef public object _value
    cdef public object callbacks


cdef class Network:
    cdef public object env
    cdef public int depth
    cdef public double hub_slack
    cdef public list resources
    cdef public dict _pairs
    # the pending completion times: a binary heap of C doubles, _th_n of _th_cap used
    cdef double* _th
    cdef Py_ssize_t _th_n
    cdef Py_ssize_t _th_cap
    cdef public dict _due
    cdef public long long _seq
    # the re-solve queue: a list read from _qhead (FIFO, as the twin's deque)
    cdef public list _queue
    cdef Py_ssize_t _qhead
    cdef public dict _touched
    cdef public bint _flush_pending
    cdef public double _wake_at
    cdef public tuple _flush_callbacks
    cdef public tuple _wake_callbacks
    cdef object _schedule
    cdef public long long flows_started
    cdef public long long flows_completed
    cdef public long long flows_cancelled
    cdef public long long solves
    cdef public long long flushes
    # _solve's work arrays (it is never re-entered), grown as needed
    cdef Ent* _order
    cdef Py_ssize_t* _ks
    cdef int* _kinds
    cdef Py_ssize_t _cap_recs

    cdef int _grow(self, Py_ssize_t need) except -1
    cdef int _times_push(self, double t) except -1
    cdef double _times_pop(self) noexcept
    cdef void _advance(self, Resource r, double now) noexcept
    cdef int _push_flow(self, Resource grp, Flow flow, double remaining) except -1
    cdef double _join_level(self, Resource r, Pair q) except? -1.0
    cdef Resource _initial_group(self, Pair pair)
    cdef int _attach(self, Pair q) except -1
    cdef int _detach(self, Pair q) except -1
    cdef int _change_k(self, Pair q, Py_ssize_t dk) except -1
    cdef int _remove_flow(self, Flow flow) except -1
    cdef list _leave_group(self, Pair q, double now)
    cdef int _enter_group(self, Pair q, Resource g, list flows, double now) except -1
    cdef int _mark(self, Resource r, int depth, bint mandatory) except -1
    cdef int _request_flush(self) except -1
    cdef int _solve(self, Resource r, double now, int depth, bint rise_ok) except -1
    cdef double _recheck_spare_caps(
        self, Resource r, double old, Py_ssize_t n, list objs, list tos, double lam,
        Py_ssize_t* below, Py_ssize_t total) except? -1.0
    cdef double _level_with(self, Resource s, Pair q, double x_q) except? -1.0
    cdef double _hub_top(self, Resource r) except? -1.0
    cdef int _hub_drop(self, Resource r, double now, int depth) except -1
    cdef int _reschedule(self, double now) except -1
