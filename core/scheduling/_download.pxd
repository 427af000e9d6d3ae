# The C types of d7y.core.scheduling._download: its Python source, _download_py.py,
# compiled by Cython's pure-Python mode (setup.py PURE_MODE); see _picker.pxd.

from d7y.core.scheduling._picker cimport PiecePicker
from d7y.ext._bitmap cimport Bitmap

cdef class Download:
    cdef public object _bitmaps
    cdef public set bad
    cdef public object config
    cdef public Bitmap held
    cdef public double last_progress
    cdef public double last_reschedule
    cdef public double mean_cost
    cdef public Py_ssize_t min_parents
    cdef public bint news_timed
    cdef public object origin
    cdef public object origin_reason
    cdef public dict origin_tokens
    cdef public object origin_window
    cdef public dict parents
    cdef public PiecePicker picker
    cdef public Py_ssize_t reschedules
    cdef public object rng
    cdef public Py_ssize_t size
    cdef public object state
    cdef public bint streaming
    cdef public Py_ssize_t top_up_parents

    cpdef bint parent_has(self, object parent_id, Py_ssize_t piece, double now)
    cpdef list pump(self, double now)
    cpdef list piece_done(self, Py_ssize_t piece, object parent, double cost, double now)
    cpdef list tick(self, double now)
    cpdef list piece_failed(self, Py_ssize_t piece, object parent, object kind, double now, object reason=*)
    cpdef double next_timer(self, double now)
    cpdef _pump(self, double now, list actions)
    cpdef _want_more(self, double now, list actions)
    cpdef bint _wants_parents(self, Py_ssize_t requests)
    cpdef bint _ask_due(self, double now)
