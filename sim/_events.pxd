# The C types of d7y.sim._events (the simulator's own event queue).

from cpython.ref cimport PyObject


cdef struct Entry:
    double time
    long long priority
    long long eid
    PyObject* item  # a strong reference, owned by the heap


cdef class EventHeap:
    cdef Entry* _entries
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap

    cpdef push(self, double time, long long priority, long long eid, object item)
    cpdef object pop(self)
    cpdef double first_time(self)
    cpdef bint before(self, tuple entry) except -1
