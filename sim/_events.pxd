# The C types of d7y.sim._events (the simulator's own event queue).

cdef struct Entry:
    double time
    long long priority
    long long eid
    Py_ssize_t slot  # the item's index in EventHeap._items


cdef class EventHeap:
    cdef Entry* _entries
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    # The items, in a list the cyclic collector sees (a C array of references would
    # hide them from it: a queued event referring back to its simulation would keep
    # the whole simulation alive for ever). Popped items leave None in their slot,
    # which _free_slots hands out again.
    cdef list _items
    cdef Py_ssize_t* _free_slots
    cdef Py_ssize_t _free_len

    cpdef push(self, double time, long long priority, long long eid, object item)
    cpdef object pop(self)
    cpdef double first_time(self)
    cpdef bint before(self, tuple entry) except -1
