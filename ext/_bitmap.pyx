# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled piece bitfields and rarity counts (d7y.ext._bitmap).

``d7y.ext.bitmap`` documents the API; ``d7y.ext._bitmap_py`` is the pure-Python twin
with the same semantics. Here a Bitmap is an array of uint64 words (bit i of the piece
set is bit i % 64 of word i // 64, pad bits above ``size`` kept zero), and a
RarityCounter an array of uint32 counts.

Kernels that walk a large array release the GIL (above the _NOGIL_* thresholds below,
far beyond any real task: the release costs more than it saves on small arrays). Only
kernels that build a new object or only read do so; in-place updates keep the GIL so
that each call is atomic as it is in the twin. A reader running without the GIL while
another thread mutates the same object sees some mix of before and after, never
invalid memory: arrays are allocated once per object and freed only when it dies.
"""

cimport cython
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.long cimport PyLong_CheckExact
from cpython.number cimport PyNumber_Index
from libc.stdint cimport UINT32_MAX, uint32_t, uint64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcmp, memcpy

cdef extern from *:
    """
    #include <stdint.h>
    #if defined(__GNUC__) || defined(__clang__)
    static inline int d7y_popcount64(uint64_t x) { return __builtin_popcountll(x); }
    /* Undefined for x == 0: callers check first. */
    static inline int d7y_ctz64(uint64_t x) { return __builtin_ctzll(x); }
    #else
    static inline int d7y_popcount64(uint64_t x) {
        x = x - ((x >> 1) & 0x5555555555555555ULL);
        x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
        x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
        return (int)((x * 0x0101010101010101ULL) >> 56);
    }
    static inline int d7y_ctz64(uint64_t x) {
        int n = 0;
        while (!(x & 1)) { x >>= 1; n++; }
        return n;
    }
    #endif
    /* Reverse the bit order inside each byte of x (bytes stay in place): turns "bit j
       of byte k is piece 8k+j" into BitTorrent's "bit 7-j of byte k is piece 8k+j". */
    static inline uint64_t d7y_reverse_byte_bits(uint64_t x) {
        x = ((x >> 1) & 0x5555555555555555ULL) | ((x & 0x5555555555555555ULL) << 1);
        x = ((x >> 2) & 0x3333333333333333ULL) | ((x & 0x3333333333333333ULL) << 2);
        x = ((x >> 4) & 0x0F0F0F0F0F0F0F0FULL) | ((x & 0x0F0F0F0F0F0F0F0FULL) << 4);
        return x;
    }
    """
    int d7y_popcount64(uint64_t x) noexcept nogil
    int d7y_ctz64(uint64_t x) noexcept nogil
    uint64_t d7y_reverse_byte_bits(uint64_t x) noexcept nogil

__all__ = ["MAX_COUNT", "MAX_SIZE", "Bitmap", "RarityCounter"]

MAX_SIZE = 1 << 28
MAX_COUNT = UINT32_MAX

cdef Py_ssize_t _MAX_SIZE = MAX_SIZE
cdef uint64_t _ALL = <uint64_t>0xFFFFFFFFFFFFFFFFULL
# Word-parallel loops: 1 << 15 words is 2 Mi pieces, tens of microseconds of work.
cdef Py_ssize_t _NOGIL_WORDS = 1 << 15
# Per-piece loops (rarity): 1 << 20 pieces.
cdef Py_ssize_t _NOGIL_PIECES = 1 << 20


# ---------------------------------------------------------------- argument checks
# Messages match the twin's word for word.

cdef object _as_int(object value, str what):
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not bool")
    try:
        return PyNumber_Index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None


cdef extern from "Python.h":
    # PyLong_AsSsize_t without Cython's error propagation: _exact_int clears the
    # OverflowError of a huge int and lets the slow path report it.
    Py_ssize_t _ssize_of_int "PyLong_AsSsize_t"(object value) noexcept


cdef inline bint _exact_int(object value, Py_ssize_t* out) noexcept:
    """True, with the value in ``*out``, for an int (not a subclass, not a bool) that
    fits a Py_ssize_t; False (and no error set) for anything else. The fast paths of
    the checks below: swarm pickers test and make bitmaps millions of times."""
    if not PyLong_CheckExact(value):
        return False
    out[0] = _ssize_of_int(value)
    if out[0] == -1 and PyErr_Occurred() != NULL:
        PyErr_Clear()  # too large: the slow path reports it
        return False
    return True


cdef inline Py_ssize_t _check_size(object size) except -1:
    cdef Py_ssize_t n
    if _exact_int(size, &n) and 0 <= n <= _MAX_SIZE:
        return n
    return _check_size_slow(size)


cdef Py_ssize_t _check_size_slow(object size) except -1:
    cdef object n = _as_int(size, "size")
    if n < 0:
        raise ValueError(f"size must be >= 0, got {n}")
    if n > _MAX_SIZE:
        raise ValueError(f"size {n} exceeds MAX_SIZE ({MAX_SIZE}); no task has that many pieces")
    return n


cdef object _index_error(object index, Py_ssize_t size):
    if size == 0:
        return IndexError(f"piece index {index} is out of range: size is 0, so no index is valid")
    return IndexError(
        f"piece index {index} is out of range for size {size}: valid indexes are 0 to "
        f"{size - 1} (negative indexes are not supported)"
    )


cdef inline Py_ssize_t _check_index(object index, Py_ssize_t size) except -1:
    # Anything but an int in range (a bool, an int subclass, an index object, out of
    # range) goes the general way, which gives the errors.
    cdef Py_ssize_t i
    if _exact_int(index, &i) and 0 <= i < size:
        return i
    return _check_index_slow(index, size)


cdef Py_ssize_t _check_index_slow(object index, Py_ssize_t size) except -1:
    cdef object n = _as_int(index, "piece index")
    cdef Py_ssize_t i
    try:
        i = n
    except OverflowError:  # far out of range either way
        raise _index_error(n, size) from None
    if i < 0 or i >= size:
        raise _index_error(n, size)
    return i


cdef Py_ssize_t _check_start(object start, Py_ssize_t size) except -1:
    cdef object n = _as_int(start, "start")
    cdef Py_ssize_t s
    if n < 0 or n > size:
        raise IndexError(f"start {n} is out of range for size {size}: it must be 0 to {size}")
    s = n
    return s


cdef inline Py_ssize_t _nwords_for(Py_ssize_t size) noexcept nogil:
    return (size + 63) >> 6


cdef inline uint64_t _last_mask(Py_ssize_t size) noexcept nogil:
    """Mask of the valid bits of the last word (all of them when size % 64 == 0)."""
    cdef int r = size & 63
    return _ALL if r == 0 else ((<uint64_t>1 << r) - 1)


cdef inline uint64_t _range_mask(Py_ssize_t w, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    """Bits of word w whose index lies in [lo, hi); requires lo < hi and w in range."""
    cdef uint64_t m = _ALL
    if w == (lo >> 6):
        m &= _ALL << (lo & 63)
    if w == ((hi - 1) >> 6):
        m &= _last_mask(hi)
    return m


# ---------------------------------------------------------------- word kernels

cdef void _and_not_words(uint64_t* out, const uint64_t* mine, const uint64_t* other,
                         Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n):
        out[k] = other[k] & ~mine[k]


cdef void _or_words(uint64_t* out, const uint64_t* a, const uint64_t* b,
                    Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k
    for k in range(n):
        out[k] = a[k] | b[k]


cdef Py_ssize_t _popcount_words(const uint64_t* words, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t k, total = 0
    for k in range(n):
        total += d7y_popcount64(words[k])
    return total


cdef void _words_to_bitfield(unsigned char* out, const uint64_t* words,
                             Py_ssize_t nbytes) noexcept nogil:
    cdef Py_ssize_t k, j, stop
    cdef uint64_t w
    for k in range((nbytes + 7) >> 3):
        w = d7y_reverse_byte_bits(words[k])
        stop = min(8, nbytes - (k << 3))
        for j in range(stop):  # explicit shifts: correct on any host byte order
            out[(k << 3) + j] = <unsigned char>(w >> (j << 3))


cdef void _bitfield_to_words(uint64_t* words, const unsigned char* data,
                             Py_ssize_t nbytes) noexcept nogil:
    cdef Py_ssize_t k, j, stop
    cdef uint64_t w
    for k in range((nbytes + 7) >> 3):
        w = 0
        stop = min(8, nbytes - (k << 3))
        for j in range(stop):
            w |= (<uint64_t>data[(k << 3) + j]) << (j << 3)
        words[k] = d7y_reverse_byte_bits(w)


# ---------------------------------------------------------------- Bitmap

@cython.final
cdef class Bitmap:
    """A fixed-size piece bitfield; see ``d7y.ext.bitmap`` for the full contract."""

    def __cinit__(self, size):
        cdef Py_ssize_t n = _check_size(size)
        self.size = n
        self._nwords = _nwords_for(n)
        if self._nwords <= sizeof(self._inline) // sizeof(uint64_t):
            self._words = self._inline  # zeroed with the object (see _bitmap.pxd)
        else:
            self._words = <uint64_t*>calloc(self._nwords, sizeof(uint64_t))
            if self._words == NULL:
                raise MemoryError(f"cannot allocate a bitmap of {n} pieces")

    def __dealloc__(self):
        if self._words != self._inline:
            free(self._words)
        self._words = NULL

    # -- unchecked kernels (declared in _bitmap.pxd)

    cdef bint c_test(self, Py_ssize_t i) noexcept nogil:
        return (self._words[i >> 6] >> (i & 63)) & 1

    cdef void c_set(self, Py_ssize_t i) noexcept nogil:
        self._words[i >> 6] |= <uint64_t>1 << (i & 63)

    cdef void c_clear(self, Py_ssize_t i) noexcept nogil:
        self._words[i >> 6] &= ~(<uint64_t>1 << (i & 63))

    cdef Py_ssize_t c_count(self) noexcept nogil:
        return _popcount_words(self._words, self._nwords)

    cdef Py_ssize_t c_first_clear(self, Py_ssize_t start) noexcept nogil:
        cdef Py_ssize_t w, i
        cdef uint64_t x
        if start >= self.size:
            return -1
        w = start >> 6
        x = ~self._words[w] & (_ALL << (start & 63))
        while True:
            if x:
                # Pad bits are zero, so inverted they look clear: cut them off here.
                i = (w << 6) + d7y_ctz64(x)
                return i if i < self.size else -1
            w += 1
            if w >= self._nwords:
                return -1
            x = ~self._words[w]

    cdef Py_ssize_t c_first_set(self, Py_ssize_t start) noexcept nogil:
        cdef Py_ssize_t w
        cdef uint64_t x
        if start >= self.size:
            return -1
        w = start >> 6
        x = self._words[w] & (_ALL << (start & 63))
        while True:
            if x:
                return (w << 6) + d7y_ctz64(x)
            w += 1
            if w >= self._nwords:
                return -1
            x = self._words[w]

    # -- checked helpers

    cdef Py_ssize_t _index(self, object index) except -1:
        return _check_index(index, self.size)

    cdef Bitmap _peer(self, object other):
        if type(other) is not Bitmap:
            raise TypeError(
                f"expected a {__name__}.Bitmap, got {type(other).__module__}."
                f"{type(other).__qualname__} (convert between backends with "
                f"to_bytes()/from_bytes())"
            )
        cdef Bitmap o = <Bitmap>other
        if o.size != self.size:
            raise ValueError(f"bitmap sizes differ: {self.size} != {o.size}")
        return o

    # -- Python API

    def __len__(self):
        return self.size

    cpdef set(self, index):
        """Mark piece ``index`` as present."""
        self.c_set(_check_index(index, self.size))

    cpdef clear(self, index):
        """Mark piece ``index`` as absent."""
        self.c_clear(_check_index(index, self.size))

    cpdef bint test(self, index) except -1:
        """True if piece ``index`` is present."""
        return self.c_test(_check_index(index, self.size))

    def __getitem__(self, index):
        return self.c_test(_check_index(index, self.size))

    def __contains__(self, index):
        return self.c_test(_check_index(index, self.size))

    def __iter__(self):
        raise TypeError("Bitmap is not iterable: use iter_set() or iter_clear()")

    cpdef Py_ssize_t count(self) except -1:
        """Number of set bits."""
        cdef Py_ssize_t n
        if self._nwords >= _NOGIL_WORDS:
            with nogil:
                n = self.c_count()
        else:
            n = self.c_count()
        return n

    def all(self):
        """True if every bit is set (True for size 0)."""
        cdef Py_ssize_t k
        if self._nwords == 0:
            return True
        for k in range(self._nwords - 1):
            if self._words[k] != _ALL:
                return False
        return self._words[self._nwords - 1] == _last_mask(self.size)

    cpdef bint any(self) except -1:
        """True if some bit is set (False for size 0)."""
        cdef Py_ssize_t k
        for k in range(self._nwords):
            if self._words[k]:
                return True
        return False

    def first_clear(self, start=0):
        """Lowest clear index >= ``start`` (0 <= start <= size), or -1."""
        return self.c_first_clear(_check_start(start, self.size))

    def first_set(self, start=0):
        """Lowest set index >= ``start`` (0 <= start <= size), or -1."""
        return self.c_first_set(_check_start(start, self.size))

    def iter_set(self):
        """Iterator over the set indexes, ascending, of the bits as they are now."""
        return _BitIterator._snapshot(self, False)

    def iter_clear(self):
        """Iterator over the clear indexes, ascending, of the bits as they are now."""
        return _BitIterator._snapshot(self, True)

    cpdef Bitmap and_not(self, other):
        """New Bitmap of the pieces ``other`` has and this one lacks: ``other & ~self``."""
        cdef Bitmap o = self._peer(other)
        cdef Bitmap out = Bitmap.__new__(Bitmap, self.size)
        if self._nwords >= _NOGIL_WORDS:
            with nogil:
                _and_not_words(out._words, self._words, o._words, self._nwords)
        else:
            _and_not_words(out._words, self._words, o._words, self._nwords)
        return out

    def missing_from(self, other):
        """Alias of :meth:`and_not`: ``other & ~self``."""
        return self.and_not(other)

    def union(self, other):
        """New Bitmap of the pieces either has: ``self | other``."""
        cdef Bitmap o = self._peer(other)
        cdef Bitmap out = Bitmap.__new__(Bitmap, self.size)
        if self._nwords >= _NOGIL_WORDS:
            with nogil:
                _or_words(out._words, self._words, o._words, self._nwords)
        else:
            _or_words(out._words, self._words, o._words, self._nwords)
        return out

    cpdef update(self, other):
        """In place: set every bit that ``other`` has (``self |= other``)."""
        cdef Bitmap o = self._peer(other)
        # Keeps the GIL: an in-place update is atomic, as in the twin.
        _or_words(self._words, self._words, o._words, self._nwords)

    def to_bytes(self):
        """BitTorrent bitfield: MSB-first, ceil(size / 8) bytes, zero pad bits."""
        cdef Py_ssize_t nbytes = (self.size + 7) >> 3
        cdef bytes out = PyBytes_FromStringAndSize(NULL, nbytes)
        cdef unsigned char* buf = <unsigned char*>PyBytes_AS_STRING(out)
        if self._nwords >= _NOGIL_WORDS:
            with nogil:
                _words_to_bitfield(buf, self._words, nbytes)
        else:
            _words_to_bitfield(buf, self._words, nbytes)
        return out

    @classmethod
    def from_bytes(cls, data, size):
        """Parse a BitTorrent bitfield of ``size`` pieces (inverse of ``to_bytes``)."""
        cdef Py_ssize_t n = _check_size(size)
        cdef Py_ssize_t nbytes = (n + 7) >> 3
        cdef Py_buffer view
        cdef Bitmap out
        if isinstance(data, str):
            raise TypeError(
                "data must be a bytes-like object (bytes, bytearray, memoryview), not str"
            )
        try:
            mv = memoryview(data)
        except TypeError:
            raise TypeError(
                f"data must be a bytes-like object (bytes, bytearray, memoryview), "
                f"not {type(data).__name__}"
            ) from None
        with mv:
            if not mv.c_contiguous:
                raise TypeError("data must be a C-contiguous buffer")
            # PyBUF_SIMPLE: the raw bytes whatever the format; view.len is in bytes.
            PyObject_GetBuffer(mv, &view, PyBUF_SIMPLE)
            try:
                if view.len != nbytes:
                    raise ValueError(
                        f"a bitfield of {n} pieces is {nbytes} bytes, got {view.len}"
                    )
                out = Bitmap.__new__(Bitmap, n)
                if out._nwords >= _NOGIL_WORDS:
                    with nogil:
                        _bitfield_to_words(out._words, <const unsigned char*>view.buf, nbytes)
                else:
                    _bitfield_to_words(out._words, <const unsigned char*>view.buf, nbytes)
            finally:
                PyBuffer_Release(&view)
        if out._nwords and (out._words[out._nwords - 1] & ~_last_mask(n)):
            raise ValueError(
                f"bitfield of {n} pieces has nonzero pad bits in its last byte; "
                f"pad bits must be zero"
            )
        return out

    cpdef Bitmap copy(self):
        """An independent copy."""
        cdef Bitmap out = Bitmap.__new__(Bitmap, self.size)
        if self._nwords:
            memcpy(out._words, self._words, <size_t>self._nwords * sizeof(uint64_t))
        return out

    def __copy__(self):
        return self.copy()

    def __deepcopy__(self, memo):
        return self.copy()

    def __reduce__(self):
        return (_restore_bitmap, (self.size, self.to_bytes()))

    def __eq__(self, other):
        if type(other) is not Bitmap:
            return NotImplemented
        cdef Bitmap o = <Bitmap>other
        if o.size != self.size:
            return False
        if self._nwords == 0:
            return True
        return memcmp(self._words, o._words, <size_t>self._nwords * sizeof(uint64_t)) == 0

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    # Mutable and compared by value, so unhashable (like set and bytearray).
    __hash__ = None

    def __repr__(self):
        cdef Py_ssize_t i
        head = f"<Bitmap size={self.size} count={self.c_count()}"
        if self.size <= 64:
            digits = "".join(["1" if self.c_test(i) else "0" for i in range(self.size)])
            return f"{head} bits={digits}>"
        return head + ">"


def _restore_bitmap(size, data):
    """Unpickle helper."""
    return Bitmap.from_bytes(data, size)


@cython.final
cdef class _BitIterator:
    """Ascending indexes of the set (or clear) bits of a snapshot of a Bitmap."""

    cdef uint64_t* _words  # private copy, inverted for iter_clear, pad bits zero
    cdef Py_ssize_t _nwords
    cdef Py_ssize_t _w      # index of the word that _cur came from
    cdef uint64_t _cur      # bits of word _w not yet returned

    def __cinit__(self):
        self._w = -1

    def __dealloc__(self):
        free(self._words)
        self._words = NULL

    @staticmethod
    cdef _BitIterator _snapshot(Bitmap bitmap, bint clear):
        cdef _BitIterator it = _BitIterator.__new__(_BitIterator)
        cdef Py_ssize_t k, n = bitmap._nwords
        if n:
            it._words = <uint64_t*>malloc(<size_t>n * sizeof(uint64_t))
            if it._words == NULL:
                raise MemoryError(f"cannot allocate an iterator over {bitmap.size} pieces")
            if clear:
                for k in range(n):
                    it._words[k] = ~bitmap._words[k]
                it._words[n - 1] &= _last_mask(bitmap.size)
            else:
                memcpy(it._words, bitmap._words, <size_t>n * sizeof(uint64_t))
        it._nwords = n
        return it

    def __iter__(self):
        return self

    def __next__(self):
        cdef uint64_t x = self._cur
        while x == 0:
            if self._w + 1 >= self._nwords:
                self._w = self._nwords
                raise StopIteration
            self._w += 1
            x = self._words[self._w]
        self._cur = x & (x - 1)
        return (self._w << 6) + d7y_ctz64(x)


# ---------------------------------------------------------------- RarityCounter

cdef Py_ssize_t _add_counts(uint32_t* counts, const uint64_t* words,
                             Py_ssize_t nwords) noexcept nogil:
    """counts[i] += 1 for every set bit i; on overflow undo and return i, else -1."""
    cdef Py_ssize_t k, i
    cdef uint64_t x
    for k in range(nwords):
        x = words[k]
        while x:
            i = (k << 6) + d7y_ctz64(x)
            if counts[i] == UINT32_MAX:
                _undo(counts, words, i, False)
                return i
            counts[i] += 1
            x &= x - 1
    return -1


cdef Py_ssize_t _remove_counts(uint32_t* counts, const uint64_t* words,
                                Py_ssize_t nwords) noexcept nogil:
    """counts[i] -= 1 for every set bit i; if one is 0, undo and return i, else -1."""
    cdef Py_ssize_t k, i
    cdef uint64_t x
    for k in range(nwords):
        x = words[k]
        while x:
            i = (k << 6) + d7y_ctz64(x)
            if counts[i] == 0:
                _undo(counts, words, i, True)
                return i
            counts[i] -= 1
            x &= x - 1
    return -1


cdef void _undo(uint32_t* counts, const uint64_t* words, Py_ssize_t stop, bint add) noexcept nogil:
    """Revert a partial _add_counts (add=False) or _remove_counts (add=True) below stop."""
    cdef Py_ssize_t k, i
    cdef uint64_t x
    if stop == 0:
        return
    for k in range(((stop - 1) >> 6) + 1):
        x = words[k] & _range_mask(k, 0, stop)
        while x:
            i = (k << 6) + d7y_ctz64(x)
            if add:
                counts[i] += 1
            else:
                counts[i] -= 1
            x &= x - 1


cdef bint _scan_rarest(const uint32_t* counts, const uint64_t* words, Py_ssize_t lo,
                       Py_ssize_t hi, Py_ssize_t* best_i, uint64_t* best_c) noexcept nogil:
    """Fold the set bits in [lo, hi) into (best_i, best_c); True once a count of 1 is hit."""
    cdef Py_ssize_t w, i, last
    cdef uint64_t x, c
    if lo >= hi:
        return False
    last = (hi - 1) >> 6
    for w in range(lo >> 6, last + 1):
        x = words[w] & _range_mask(w, lo, hi)
        while x:
            i = (w << 6) + d7y_ctz64(x)
            x &= x - 1
            c = counts[i]
            # Strict <: among equal counts the first one met (in scan order) wins.
            if c != 0 and c < best_c[0]:
                best_c[0] = c
                best_i[0] = i
                if c == 1:  # nothing can beat 1
                    return True
    return False


@cython.final
cdef class RarityCounter:
    """Per-piece count of how many added bitmaps have each piece; see ``d7y.ext.bitmap``."""

    def __cinit__(self, size):
        cdef Py_ssize_t n = _check_size(size)
        self.size = n
        if n:
            self._counts = <uint32_t*>calloc(n, sizeof(uint32_t))
            if self._counts == NULL:
                raise MemoryError(f"cannot allocate a rarity counter of {n} pieces")

    def __dealloc__(self):
        free(self._counts)
        self._counts = NULL

    cdef Bitmap _bitmap_arg(self, object bitmap, str what):
        if type(bitmap) is not Bitmap:
            raise TypeError(
                f"{what} must be a {__name__}.Bitmap, got {type(bitmap).__module__}."
                f"{type(bitmap).__qualname__}"
            )
        cdef Bitmap b = <Bitmap>bitmap
        if b.size != self.size:
            raise ValueError(f"{what} has size {b.size} but the counter has size {self.size}")
        return b

    cdef Py_ssize_t c_rarest(self, Bitmap candidates, Py_ssize_t start) noexcept nogil:
        cdef Py_ssize_t best_i = -1
        cdef uint64_t best_c = <uint64_t>UINT32_MAX + 1
        # [start, size) first, then wrap around to [0, start).
        if not _scan_rarest(self._counts, candidates._words, start, self.size, &best_i, &best_c):
            _scan_rarest(self._counts, candidates._words, 0, start, &best_i, &best_c)
        return best_i

    @property
    def bitmaps(self):
        """Number of bitmaps added and not yet removed."""
        return self._bitmaps

    def add(self, bitmap):
        """Count every piece of ``bitmap`` once more (a parent joined)."""
        cdef Bitmap b = self._bitmap_arg(bitmap, "bitmap")
        # Keeps the GIL: add must be atomic (all or nothing), as in the twin.
        cdef Py_ssize_t bad = _add_counts(self._counts, b._words, b._nwords)
        if bad >= 0:
            raise OverflowError(f"count of piece {bad} would exceed MAX_COUNT ({MAX_COUNT})")
        self._bitmaps += 1

    def remove(self, bitmap):
        """Undo one ``add(bitmap)`` (a parent left); ValueError if it was not added."""
        cdef Bitmap b = self._bitmap_arg(bitmap, "bitmap")
        if self._bitmaps == 0:
            raise ValueError("remove() without a matching add(): no bitmap is counted")
        cdef Py_ssize_t bad = _remove_counts(self._counts, b._words, b._nwords)
        if bad >= 0:
            raise ValueError(
                f"cannot remove: piece {bad} has count 0, so this bitmap was not added "
                f"(or was already removed)"
            )
        self._bitmaps -= 1

    cpdef increment(self, index):
        """Count piece ``index`` once more (a parent announced a new piece)."""
        cdef Py_ssize_t i = _check_index(index, self.size)
        if self._counts[i] == UINT32_MAX:
            raise OverflowError(f"count of piece {i} would exceed MAX_COUNT ({MAX_COUNT})")
        self._counts[i] += 1

    cpdef decrement(self, index):
        """Undo one ``increment(index)``; ValueError if the count is already 0."""
        cdef Py_ssize_t i = _check_index(index, self.size)
        if self._counts[i] == 0:
            raise ValueError(f"cannot decrement piece {i}: its count is already 0")
        self._counts[i] -= 1

    def count(self, index):
        """How many counted bitmaps have piece ``index``."""
        return self._counts[_check_index(index, self.size)]

    def to_list(self):
        """All counts, index order."""
        cdef Py_ssize_t i
        return [self._counts[i] for i in range(self.size)]

    cpdef Py_ssize_t rarest(self, candidates, start=0) except -2:
        """Set index of ``candidates`` with the smallest nonzero count, or -1.

        Ties go to the first such index at or after ``start`` (0 <= start <= size),
        wrapping around to 0.
        """
        cdef Bitmap c = self._bitmap_arg(candidates, "candidates")
        cdef Py_ssize_t s = _check_start(start, self.size)
        cdef Py_ssize_t found
        if self.size >= _NOGIL_PIECES:
            with nogil:
                found = self.c_rarest(c, s)
        else:
            found = self.c_rarest(c, s)
        return found

    def __reduce__(self):
        return (_restore_counter, (self.size, self._bitmaps, self.to_list()))

    def __repr__(self):
        return f"<RarityCounter size={self.size} bitmaps={self._bitmaps}>"


def _restore_counter(size, bitmaps, counts):
    """Unpickle helper; validates so a tampered pickle cannot break the invariants."""
    cdef RarityCounter counter = RarityCounter(size)
    cdef Py_ssize_t i
    n = _as_int(bitmaps, "bitmaps")
    if n < 0:
        raise ValueError(f"bitmaps must be >= 0, got {n}")
    values = [_as_int(c, "count") for c in counts]
    if len(values) != counter.size:
        raise ValueError(f"expected {counter.size} counts, got {len(values)}")
    for i in range(counter.size):
        c = values[i]
        if c < 0 or c > MAX_COUNT:
            raise ValueError(f"count of piece {i} is {c}, outside 0..{MAX_COUNT}")
    for i in range(counter.size):
        counter._counts[i] = values[i]
    counter._bitmaps = n
    return counter
