# Declarations of d7y.ext._bitmap, so other Cython modules can `cimport` the types and
# call the unchecked c_* methods without Python overhead.
#
# Layout: bit i (piece i) is bit (i % 64) of _words[i // 64]; the pad bits of the last
# word (indexes >= size) are always zero, which every kernel relies on. _words is
# allocated once in __cinit__ and freed only in __dealloc__, so a pointer taken from a
# live Bitmap stays valid while the object does. Up to 4 words (256 pieces:
# a 1 GiB task in 4 MiB pieces) _words points into the object itself (_inline): no
# second allocation, and one cache line fewer to reach per test (a large swarm's
# pickers hold a bitmap per parent and test them on every announcement).

from libc.stdint cimport uint32_t, uint64_t


cdef class Bitmap:
    cdef uint64_t* _words
    cdef Py_ssize_t _nwords
    cdef uint64_t _inline[4]
    cdef readonly Py_ssize_t size

    # Unchecked kernels: the caller guarantees 0 <= i < size and 0 <= start <= size.
    cdef bint c_test(self, Py_ssize_t i) noexcept nogil
    cdef void c_set(self, Py_ssize_t i) noexcept nogil
    cdef void c_clear(self, Py_ssize_t i) noexcept nogil
    cdef Py_ssize_t c_count(self) noexcept nogil
    cdef Py_ssize_t c_first_clear(self, Py_ssize_t start) noexcept nogil
    cdef Py_ssize_t c_first_set(self, Py_ssize_t start) noexcept nogil

    # Checked helpers (raise on bad input).
    cdef Py_ssize_t _index(self, object index) except -1
    cdef Bitmap _peer(self, object other)

    # The per-event Python API, as cpdef: typed callers (the compiled picker) call it
    # in C, with the same checks.
    cpdef set(self, index)
    cpdef clear(self, index)
    cpdef bint test(self, index) except -1
    cpdef bint any(self) except -1
    cpdef update(self, other)
    cpdef Bitmap copy(self)
    cpdef Bitmap and_not(self, other)
    cpdef Py_ssize_t count(self) except -1


cdef class RarityCounter:
    cdef uint32_t* _counts
    cdef readonly Py_ssize_t size
    cdef Py_ssize_t _bitmaps

    # Unchecked: the caller guarantees candidates.size == size and 0 <= start <= size.
    cdef Py_ssize_t c_rarest(self, Bitmap candidates, Py_ssize_t start) noexcept nogil

    cdef Bitmap _bitmap_arg(self, object bitmap, str what)

    cpdef increment(self, index)
    cpdef decrement(self, index)
    cpdef Py_ssize_t rarest(self, candidates, start=*) except -2
