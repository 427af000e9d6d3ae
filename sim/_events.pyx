# cython: boundscheck=False, wraparound=False, initializedcheck=False
"""The simulator's own event queue, compiled: the twin of :mod:`d7y.sim._events_py`,
whose docstrings explain it. The entries live in one C array (a binary heap on
(time, priority, eid)), each holding a strong reference to its item."""

from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.math cimport INFINITY
from libc.stdlib cimport free, realloc

__all__ = ["EventHeap"]


cdef inline bint _less(Entry* a, Entry* b) noexcept nogil:
    if a.time != b.time:
        return a.time < b.time
    if a.priority != b.priority:
        return a.priority < b.priority
    return a.eid < b.eid


cdef class EventHeap:

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self._len):
            Py_DECREF(<object>self._entries[i].item)
        free(self._entries)
        self._entries = NULL
        self._len = 0

    def __len__(self):
        return self._len

    cpdef push(self, double time, long long priority, long long eid, object item):
        cdef Py_ssize_t i, parent, cap
        cdef Entry* grown
        cdef Entry entry
        if self._len == self._cap:
            cap = 1024 if self._cap == 0 else self._cap * 2
            grown = <Entry*>realloc(self._entries, <size_t>cap * sizeof(Entry))
            if grown == NULL:
                raise MemoryError(f"cannot grow the event queue to {cap} entries")
            self._entries = grown
            self._cap = cap
        entry.time = time
        entry.priority = priority
        entry.eid = eid
        entry.item = <PyObject*>item
        Py_INCREF(item)
        # sift up: move parents down until the new entry's place is found
        i = self._len
        self._len += 1
        while i > 0:
            parent = (i - 1) >> 1
            if not _less(&entry, &self._entries[parent]):
                break
            self._entries[i] = self._entries[parent]
            i = parent
        self._entries[i] = entry

    cpdef object pop(self):
        cdef Py_ssize_t i, child, n
        cdef Entry last
        cdef object item
        if self._len == 0:
            raise IndexError("pop from an empty EventHeap")
        item = <object>self._entries[0].item  # a new reference, taken over below
        Py_DECREF(item)
        self._len -= 1
        n = self._len
        if n:
            # sift down the last entry from the root
            last = self._entries[n]
            i = 0
            while True:
                child = 2 * i + 1
                if child >= n:
                    break
                if child + 1 < n and _less(&self._entries[child + 1], &self._entries[child]):
                    child += 1
                if not _less(&self._entries[child], &last):
                    break
                self._entries[i] = self._entries[child]
                i = child
            self._entries[i] = last
        return item

    cpdef double first_time(self):
        if self._len == 0:
            return INFINITY
        return self._entries[0].time

    cpdef bint before(self, tuple entry) except -1:
        cdef Entry other
        if self._len == 0:
            return False
        other.time = entry[0]
        other.priority = entry[1]
        other.eid = entry[2]
        return _less(&self._entries[0], &other)
