# The C types of d7y.sim._swarm: its Python source, _swarm_py.py, compiled by Cython's
# pure-Python mode (setup.py PURE_MODE), as core/scheduling/_picker.pxd does for the
# picker. A large run is millions of events, each a few attribute reads and calls among
# peers, transfers and their download loops: here those are C fields and C calls. The
# fields mirror the classes' __slots__ (and Simulation's attributes) one for one, all
# public so results, tests and scripts read them as before; times are C doubles (the
# same operations as on Python floats give the same bits), counts C integers. The
# build calls the compiled download loop (d7y.core.scheduling._download) in C; the
# Python module runs with the Python one.

cimport cython

from d7y.core.scheduling._download cimport Download
from d7y.ext._bitmap cimport Bitmap
from d7y.sim._events cimport EventHeap


cdef class Host:
    cdef public bint alive
    cdef public object down
    cdef public double download
    cdef public object id
    cdef public object idc
    cdef public Py_ssize_t index
    cdef public object ip
    cdef public object kind
    cdef public object location
    cdef public object name
    cdef public dict peers
    cdef public dict routes
    cdef public object slots
    cdef public object up
    cdef public double upload
    cdef public double uploaded


cdef class SimTask:
    cdef public Py_ssize_t count
    cdef public Py_ssize_t expected
    cdef public double first_arrival
    cdef public object full
    cdef public object id
    cdef public Py_ssize_t last_length
    cdef public object name
    cdef public double origin_bytes
    cdef public Py_ssize_t piece_length
    cdef public list plan
    cdef public Py_ssize_t size
    cdef public object spec
    cdef public list swarm
    cdef public dict swarm_index
    cdef public object url

    cpdef Py_ssize_t length(self, Py_ssize_t piece)


cdef class Followers:
    cdef public list held
    cdef public list peers

    cpdef add(self, object child, object held)
    cpdef discard(self, object child)
    cpdef clear(self)
    @cython.locals(peers=list, i=Py_ssize_t)
    cdef Py_ssize_t _find(self, object child)


cdef class Peer:
    cdef public Py_ssize_t answer_token
    cdef public double arrival
    cdef public object bts_reason
    cdef public Followers children
    cdef public Download dl
    cdef public double done_at
    cdef public double end_at
    cdef public double from_origin
    cdef public double from_peers
    cdef public double from_seeds
    cdef public Host host
    cdef public object id
    cdef public dict inflight
    cdef public bint is_seed
    cdef public double last_announce
    cdef public double lifetime
    cdef public dict neighbours
    cdef public dict parents
    cdef public Py_ssize_t reschedules
    cdef public int state
    cdef public SimTask task
    cdef public double timer_at


cdef class Transfer:
    cdef public bint cancelled
    cdef public list feeding
    cdef public object flow
    cdef public Py_ssize_t landed
    cdef public double latency
    cdef public object pair
    cdef public Peer parent
    cdef public object parent_id
    cdef public Peer peer
    cdef public Py_ssize_t piece
    cdef public Py_ssize_t sent
    cdef public Py_ssize_t size
    cdef public Host slot
    cdef public Transfer source
    cdef public Host src
    cdef public double start


cdef class _Call:
    cdef public bint _ok
    cdef public object _value
    cdef public tuple args
    cdef public object callbacks
    cdef public object fn


cdef class Simulation:
    cdef public bint _arm_idle_pumps
    cdef public EventHeap _calls
    cdef public object _eid
    cdef public dict _links
    cdef public bint _news_timed
    cdef public list _queue
    cdef public Py_ssize_t arrivals_pending
    cdef public Py_ssize_t blocks
    cdef public bint bt
    cdef public Py_ssize_t busy_answers
    cdef public bint cs
    cdef public bint cut_through
    cdef public object download_config
    cdef public double end_time
    cdef public Py_ssize_t ended
    cdef public object env
    cdef public Py_ssize_t events
    cdef public Py_ssize_t expected
    cdef public dict fallbacks
    cdef public bint finished
    cdef public bint _gc_freeze
    cdef public dict host_by_id
    cdef public dict hosts
    cdef public object net
    cdef public double now
    cdef public list normal_hosts
    cdef public Host origin
    cdef public dict peers
    cdef public object piece_times
    cdef public Py_ssize_t pieces_done
    cdef public Py_ssize_t pieces_expected
    cdef public object policy
    cdef public object progress
    cdef public object rng
    cdef public object scenario
    cdef public double sched_latency
    cdef public object scheduler
    cdef public Py_ssize_t scheduler_calls
    cdef public list seed_hosts
    cdef public list tasks
    cdef public object topology
    cdef public object tracker_rng

    @cython.locals(entry=tuple, t=double, n=Py_ssize_t, callbacks=object, event=object, call=_Call, calls=EventHeap)
    cpdef Py_ssize_t _run_inline(self, object env, list queue, double until, bint collect) except? -1
    cpdef _check_finished(self)
    cpdef tuple _path(self, Host src, Host dst)
    cpdef run_actions(self, Peer peer, list actions)
    @cython.locals(dl=Download, at=double, now=double)
    cpdef _arm(self, Peer peer)
    cpdef _timer(self, Peer peer, double at)
    @cython.locals(dl=Download)
    cpdef pump(self, Peer peer)
    cpdef _report_failed(self, Peer peer, object action)
    @cython.locals(tr=Transfer, src=Host, parent=Peer)
    cpdef _request(self, Peer peer, Py_ssize_t piece, object parent_id, double now)
    @cython.locals(src=Host, parent=Peer)
    cpdef _begin(self, Transfer tr)
    @cython.locals(peer=Peer)
    cpdef _busy(self, Transfer tr)
    @cython.locals(host=Host)
    cpdef _free_slot(self, Transfer tr)
    @cython.locals(tr=Transfer)
    cpdef _flow_done(self, object flow)
    cpdef _cancel(self, Transfer tr)
    @cython.locals(peer=Peer, dl=Download, cdl=Download, child=Peer, followers=Followers, held_by=list, i=Py_ssize_t, held=Bitmap, src=Host, now=double, piece=Py_ssize_t, size=Py_ssize_t, cost=double, max_in_flight=Py_ssize_t, wake=list, timed=bint, arm_idle=bint)
    cpdef _deliver(self, Transfer tr)
    cpdef _after_latency(self, Transfer tr, object then)
    cpdef finish(self, Peer peer)
    cpdef _bt_reannounce(self, Peer peer)
