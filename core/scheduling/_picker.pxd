# The C types of d7y.core.scheduling._picker: its Python source, _picker_py.py, compiled
# by Cython's pure-Python mode (setup.py PURE_MODE). The fields mirror the classes'
# __slots__ one for one; the methods declared here are the per-event ones (a swarm peer
# is told of every piece its neighbours get), as cpdef so Python callers keep them, and
# their hot loops' locals are typed (@cython.locals) so that a parent's fields and its
# bitmap's methods are reached in C. Times are C doubles (Python floats are C doubles:
# the same operations give the same bits), counts C integers. Bitmaps are the compiled
# kernel's (d7y.ext._bitmap): the build runs on it only, as the Python module runs on
# the kernel's Python twin (D7Y_NO_EXTENSIONS=1 selects both). Ids and containers stay
# Python objects.

cimport cython

from d7y.ext._bitmap cimport Bitmap, RarityCounter


cdef class _Parent:
    cdef public bint able
    cdef public Py_ssize_t active
    cdef public Bitmap bitmap
    cdef public double busy_until
    cdef public double cost_total
    cdef public Py_ssize_t failures
    cdef public object id
    cdef public object max_tx
    cdef public Py_ssize_t order
    cdef public Py_ssize_t pieces_done
    cdef public bint reported
    cdef public object tx
    cdef public double weight


@cython.locals(p=_Parent, union=Bitmap)
cpdef Bitmap _union(list parents)


cdef class PiecePicker:
    cdef public list _able
    cdef public Py_ssize_t _able_limit
    cdef public dict _announced
    cdef public double _backoff_at
    cdef public object _backoffs
    cdef public object _bitmaps
    cdef public dict _by_piece
    cdef public double _clock
    cdef public dict _failed_for
    cdef public object _getrandbits
    cdef public Bitmap _have
    cdef public Py_ssize_t _have_count
    cdef public bint _inline_draws
    cdef public Py_ssize_t _live
    cdef public Bitmap _need
    cdef public Py_ssize_t _order
    cdef public dict _parents
    cdef public dict _partial
    cdef public bint _quiet
    cdef public RarityCounter _rarity
    cdef public Bitmap _reach
    cdef public bint _reach_exact
    cdef public dict _requests
    cdef public dict _retry
    cdef public Bitmap _retry_set
    cdef public double dispatch_wait
    cdef public bint endgame
    cdef public Py_ssize_t failure_limit
    cdef public Bitmap held
    cdef public Py_ssize_t max_in_flight
    cdef public object order
    cdef public Py_ssize_t per_parent_limit
    cdef public double piece_timeout
    cdef public object rng
    cdef public Py_ssize_t size
    cdef public bint streaming
    cdef public Py_ssize_t streaming_window

    @cython.locals(state=_Parent)
    cpdef bint parent_has(self, object parent_id, Py_ssize_t piece, double now=*)
    @cython.locals(state=_Parent)
    cpdef bint parent_has_if_known(self, object parent_id, Py_ssize_t piece, double now)
    @cython.locals(bitmap=Bitmap)
    cdef bint _news(self, _Parent state, Py_ssize_t piece, double now)
    cdef _holds(self, _Parent state, Py_ssize_t piece, double now)
    @cython.locals(reach=Bitmap, retry_set=Bitmap, able=list, started=list, slots=Py_ssize_t, limit=Py_ssize_t)
    cpdef list next_requests(self, double now)
    cpdef bint nothing_to_start(self, double now)
    @cython.locals(reachable=Bitmap, need=Bitmap, candidates=Bitmap)
    cpdef Py_ssize_t _start_rarest(self, double now, Py_ssize_t slots, list started, list able, Py_ssize_t limit)
    cpdef bint _able_kept(self, double now, Py_ssize_t limit)
    cdef _first_backoff_changed(self)
    @cython.locals(p=_Parent)
    cpdef list _able_now(self, double now, Py_ssize_t limit)
    cpdef _refresh(self, _Parent p)
    cpdef _leave(self, _Parent p)
    cpdef object _reach_now(self)
    cpdef Py_ssize_t _parent_limit(self)
    cpdef bint _try_start(self, Py_ssize_t piece, object exclude, double now, list started, list able, Py_ssize_t limit)
    @cython.locals(p=_Parent, at=double)
    cpdef double wakeup(self, double now)
    cpdef Py_ssize_t _choose_piece(self, object candidates)
    cpdef object _randbelow(self, object n)
    @cython.locals(p=_Parent, holders=list, total=double, point=double)
    cpdef _Parent _choose_parent(self, Py_ssize_t piece, object exclude, list able)
    @cython.locals(state=_Parent)
    cpdef _start(self, Py_ssize_t piece, object parent, double now)
    @cython.locals(state=_Parent)
    cpdef bint _drop_request(self, Py_ssize_t piece, object parent)
    @cython.locals(state=_Parent)
    cpdef bint piece_busy(self, Py_ssize_t piece, object parent, double now, double backoff)
    @cython.locals(state=_Parent, parents=dict)
    cpdef list piece_done(self, Py_ssize_t piece, object parent, double cost, double now)
