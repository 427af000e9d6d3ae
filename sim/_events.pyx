# cython: boundscheck=False, wraparound=False, initializedcheck=False
"""The simulator's own event queue, compiled: the twin of :mod:`d7y.sim._events_py`,
whose docstrings explain it. The entries live in one C array (a binary heap on
(time, priority, eid)); each names its item's slot in a Python list, which the cyclic
collector traverses."""

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

    def __cinit__(self):
        self._items = []

    def __dealloc__(self):
        free(self._entries)
        free(self._free_slots)
        self._entries = NULL
        self._free_slots = NULL
        self._len = 0
        self._free_len = 0

    def __len__(self):
        return self._len

    cpdef push(self, double time, long long priority, long long eid, object item):
        cdef Py_ssize_t i, parent, cap
        cdef Entry* grown
        cdef Py_ssize_t* grown_free
        cdef Entry entry
        if self._len == self._cap:
            # (the free slots never outnumber the entries' capacity: every slot was
            # an entry's once)
            cap = 1024 if self._cap == 0 else self._cap * 2
            grown = <Entry*>realloc(self._entries, <size_t>cap * sizeof(Entry))
            if grown == NULL:
                raise MemoryError(f"cannot grow the event queue to {cap} entries")
            self._entries = grown
            grown_free = <Py_ssize_t*>realloc(self._free_slots, <size_t>cap * sizeof(Py_ssize_t))
            if grown_free == NULL:
                raise MemoryError(f"cannot grow the event queue to {cap} entries")
            self._free_slots = grown_free
            self._cap = cap
        entry.time = time
        entry.priority = priority
        entry.eid = eid
        if self._free_len:
            self._free_len -= 1
            entry.slot = self._free_slots[self._free_len]
            self._items[entry.slot] = item
        else:
            entry.slot = len(self._items)
            self._items.append(item)
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
        cdef Py_ssize_t i, child, n, slot
        cdef Entry last
        cdef object item
        if self._len == 0:
            raise IndexError("pop from an empty EventHeap")
        slot = self._entries[0].slot
        item = self._items[slot]
        self._items[slot] = None
        self._free_slots[self._free_len] = slot
        self._free_len += 1
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
