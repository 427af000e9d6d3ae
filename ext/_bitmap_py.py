"""Pure-Python twin of ``d7y.ext._bitmap``: piece bitfields and rarity counts.

Same API, semantics, error types and messages as the Cython module; ``d7y.ext.bitmap``
documents them. Here a :class:`Bitmap` is one Python int with bit ``i`` standing for
piece ``i`` (so big-int operations do the word-level work in C), and the BitTorrent
MSB-first order appears only in :meth:`Bitmap.to_bytes` / :meth:`Bitmap.from_bytes`.
:class:`RarityCounter` keeps its counts in a list, capped at ``MAX_COUNT`` as the
compiled module's uint32 array is.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from typing import Any

__all__ = ["MAX_COUNT", "MAX_SIZE", "Bitmap", "RarityCounter"]

#: Largest number of pieces a Bitmap or RarityCounter may have. Pieces are at least
#: 4 MiB, so 2**28 of them is an exabyte; anything larger is a bug, and refusing it
#: keeps a bad size from reserving gigabytes (the compiled counter uses 4 bytes a piece).
MAX_SIZE = 1 << 28
#: Largest count RarityCounter can hold for one piece (the compiled module's uint32).
MAX_COUNT = (1 << 32) - 1

# _REVERSE[b] is byte b with its bit order reversed: converts between bit i = piece i
# inside a little-endian byte string and BitTorrent's "bit 0 is the high bit" order.
_REVERSE = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def _as_int(value: object, what: str) -> int:
    """``operator.index(value)``, refusing bool (a True index is almost surely a bug)."""
    if type(value) is int:
        return value
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None


def _check_size(size: object) -> int:
    n = _as_int(size, "size")
    if n < 0:
        raise ValueError(f"size must be >= 0, got {n}")
    if n > MAX_SIZE:
        raise ValueError(f"size {n} exceeds MAX_SIZE ({MAX_SIZE}); no task has that many pieces")
    return n


def _index_error(index: int, size: int) -> IndexError:
    if size == 0:
        return IndexError(f"piece index {index} is out of range: size is 0, so no index is valid")
    return IndexError(
        f"piece index {index} is out of range for size {size}: valid indexes are 0 to "
        f"{size - 1} (negative indexes are not supported)"
    )


def _check_index(index: object, size: int) -> int:
    i = _as_int(index, "piece index")
    if i < 0 or i >= size:
        raise _index_error(i, size)
    return i


def _check_start(start: object, size: int) -> int:
    s = _as_int(start, "start")
    if s < 0 or s > size:
        raise IndexError(f"start {s} is out of range for size {size}: it must be 0 to {size}")
    return s


def _ones(bits: int) -> Iterator[int]:
    """Ascending positions of the set bits of ``bits`` (>= 0)."""
    # One bin() call, then str.find: far faster than peeling bits off a big int, where
    # every step would copy the whole number.
    digits = bin(bits)[:1:-1]  # reversed, without "0b": digits[i] is bit i
    i = digits.find("1")
    while i != -1:
        yield i
        i = digits.find("1", i + 1)


def _buffer_bytes(data: object) -> bytes:
    """The raw bytes of a contiguous bytes-like object."""
    if isinstance(data, str):
        raise TypeError("data must be a bytes-like object (bytes, bytearray, memoryview), not str")
    try:
        view = memoryview(data)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            f"data must be a bytes-like object (bytes, bytearray, memoryview), "
            f"not {type(data).__name__}"
        ) from None
    with view:
        if not view.c_contiguous:
            raise TypeError("data must be a C-contiguous buffer")
        return view.tobytes()


class Bitmap:
    """A fixed-size piece bitfield; see ``d7y.ext.bitmap`` for the full contract."""

    __slots__ = ("_bits", "_size")
    # Mutable and compared by value, so unhashable (like set and bytearray).
    __hash__ = None  # type: ignore[assignment]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # The compiled Bitmap is final; keep the twin the same.
        raise TypeError("Bitmap cannot be subclassed; wrap it instead")

    # Built in __new__ (no __init__), as the compiled type is in __cinit__: calling
    # __init__ again on a live object then does nothing in either backend.
    def __new__(cls, size: int) -> Bitmap:
        return Bitmap._with_bits(_check_size(size), 0)

    @staticmethod
    def _with_bits(size: int, bits: int) -> Bitmap:
        new = object.__new__(Bitmap)
        new._size = size
        new._bits = bits
        return new

    def _peer(self, other: object) -> Bitmap:
        """Check that ``other`` is a Bitmap of this backend and of the same size."""
        if type(other) is not Bitmap:
            raise TypeError(
                f"expected a {__name__}.Bitmap, got {type(other).__module__}."
                f"{type(other).__qualname__} (convert between backends with "
                f"to_bytes()/from_bytes())"
            )
        if other._size != self._size:
            raise ValueError(f"bitmap sizes differ: {self._size} != {other._size}")
        return other

    @property
    def size(self) -> int:
        """Number of pieces (bits)."""
        return self._size

    def __len__(self) -> int:
        return self._size

    def set(self, index: int) -> None:
        """Mark piece ``index`` as present."""
        self._bits |= 1 << _check_index(index, self._size)

    def clear(self, index: int) -> None:
        """Mark piece ``index`` as absent."""
        i = _check_index(index, self._size)
        if (self._bits >> i) & 1:
            self._bits ^= 1 << i

    def test(self, index: int) -> bool:
        """True if piece ``index`` is present."""
        return bool((self._bits >> _check_index(index, self._size)) & 1)

    __getitem__ = test
    __contains__ = test

    def __iter__(self) -> Iterator[int]:
        raise TypeError("Bitmap is not iterable: use iter_set() or iter_clear()")

    def count(self) -> int:
        """Number of set bits."""
        return self._bits.bit_count()

    def all(self) -> bool:
        """True if every bit is set (True for size 0)."""
        return self._bits == (1 << self._size) - 1

    def any(self) -> bool:
        """True if some bit is set (False for size 0)."""
        return self._bits != 0

    def first_clear(self, start: int = 0) -> int:
        """Lowest clear index >= ``start`` (0 <= start <= size), or -1."""
        s = _check_start(start, self._size)
        rest = self._bits >> s
        # (rest + 1) & ~rest isolates the lowest zero bit of rest.
        i = s + ((rest + 1) & ~rest).bit_length() - 1
        return i if i < self._size else -1

    def first_set(self, start: int = 0) -> int:
        """Lowest set index >= ``start`` (0 <= start <= size), or -1."""
        s = _check_start(start, self._size)
        rest = self._bits >> s
        if not rest:
            return -1
        return s + (rest & -rest).bit_length() - 1

    def iter_set(self) -> Iterator[int]:
        """Iterator over the set indexes, ascending, of the bits as they are now."""
        return _ones(self._bits)

    def iter_clear(self) -> Iterator[int]:
        """Iterator over the clear indexes, ascending, of the bits as they are now."""
        return _ones(self._bits ^ ((1 << self._size) - 1))

    def and_not(self, other: Bitmap) -> Bitmap:
        """New Bitmap of the pieces ``other`` has and this one lacks: ``other & ~self``."""
        return Bitmap._with_bits(self._size, self._peer(other)._bits & ~self._bits)

    missing_from = and_not

    def union(self, other: Bitmap) -> Bitmap:
        """New Bitmap of the pieces either has: ``self | other``."""
        return Bitmap._with_bits(self._size, self._bits | self._peer(other)._bits)

    def update(self, other: Bitmap) -> None:
        """In place: set every bit that ``other`` has (``self |= other``)."""
        self._bits |= self._peer(other)._bits

    def to_bytes(self) -> bytes:
        """BitTorrent bitfield: MSB-first, ceil(size / 8) bytes, zero pad bits."""
        return self._bits.to_bytes((self._size + 7) >> 3, "little").translate(_REVERSE)

    @classmethod
    def from_bytes(cls, data: bytes, size: int) -> Bitmap:
        """Parse a BitTorrent bitfield of ``size`` pieces (inverse of ``to_bytes``)."""
        n = _check_size(size)
        raw = _buffer_bytes(data)
        nbytes = (n + 7) >> 3
        if len(raw) != nbytes:
            raise ValueError(f"a bitfield of {n} pieces is {nbytes} bytes, got {len(raw)}")
        bits = int.from_bytes(raw.translate(_REVERSE), "little")
        if bits >> n:
            raise ValueError(
                f"bitfield of {n} pieces has nonzero pad bits in its last byte; "
                f"pad bits must be zero"
            )
        return Bitmap._with_bits(n, bits)

    def copy(self) -> Bitmap:
        """An independent copy."""
        return Bitmap._with_bits(self._size, self._bits)

    def __copy__(self) -> Bitmap:
        return self.copy()

    def __deepcopy__(self, memo: dict[int, Any]) -> Bitmap:
        return self.copy()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_bitmap, (self._size, self.to_bytes()))

    def __eq__(self, other: object) -> bool:
        if type(other) is not Bitmap:
            return NotImplemented
        return self._size == other._size and self._bits == other._bits

    def __repr__(self) -> str:
        head = f"<Bitmap size={self._size} count={self.count()}"
        if self._size <= 64:
            digits = format(self._bits, f"0{self._size}b")[::-1] if self._size else ""
            return f"{head} bits={digits}>"
        return head + ">"


def _restore_bitmap(size: int, data: bytes) -> Bitmap:
    """Unpickle helper."""
    return Bitmap.from_bytes(data, size)


class RarityCounter:
    """Per-piece count of how many added bitmaps have each piece; see ``d7y.ext.bitmap``."""

    __slots__ = ("_bitmaps", "_counts", "_size")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        raise TypeError("RarityCounter cannot be subclassed; wrap it instead")

    def __new__(cls, size: int) -> RarityCounter:  # see Bitmap.__new__
        new = object.__new__(RarityCounter)
        new._size = _check_size(size)
        new._counts = [0] * new._size
        new._bitmaps = 0
        return new

    def _bitmap_bits(self, bitmap: object, what: str) -> int:
        if type(bitmap) is not Bitmap:
            raise TypeError(
                f"{what} must be a {__name__}.Bitmap, got {type(bitmap).__module__}."
                f"{type(bitmap).__qualname__}"
            )
        if bitmap._size != self._size:
            raise ValueError(
                f"{what} has size {bitmap._size} but the counter has size {self._size}"
            )
        return bitmap._bits

    @property
    def size(self) -> int:
        """Number of pieces."""
        return self._size

    @property
    def bitmaps(self) -> int:
        """Number of bitmaps added and not yet removed."""
        return self._bitmaps

    def add(self, bitmap: Bitmap) -> None:
        """Count every piece of ``bitmap`` once more (a parent joined)."""
        counts = self._counts
        pieces = list(_ones(self._bitmap_bits(bitmap, "bitmap")))
        for i in pieces:  # check all first: a failed add changes nothing
            if counts[i] == MAX_COUNT:
                raise OverflowError(f"count of piece {i} would exceed MAX_COUNT ({MAX_COUNT})")
        for i in pieces:
            counts[i] += 1
        self._bitmaps += 1

    def remove(self, bitmap: Bitmap) -> None:
        """Undo one ``add(bitmap)`` (a parent left); ValueError if it was not added."""
        counts = self._counts
        pieces = list(_ones(self._bitmap_bits(bitmap, "bitmap")))
        if self._bitmaps == 0:
            raise ValueError("remove() without a matching add(): no bitmap is counted")
        for i in pieces:  # check all first: a failed remove changes nothing
            if counts[i] == 0:
                raise ValueError(
                    f"cannot remove: piece {i} has count 0, so this bitmap was not added "
                    f"(or was already removed)"
                )
        for i in pieces:
            counts[i] -= 1
        self._bitmaps -= 1

    def increment(self, index: int) -> None:
        """Count piece ``index`` once more (a parent announced a new piece)."""
        i = _check_index(index, self._size)
        if self._counts[i] == MAX_COUNT:
            raise OverflowError(f"count of piece {i} would exceed MAX_COUNT ({MAX_COUNT})")
        self._counts[i] += 1

    def decrement(self, index: int) -> None:
        """Undo one ``increment(index)``; ValueError if the count is already 0."""
        i = _check_index(index, self._size)
        if self._counts[i] == 0:
            raise ValueError(f"cannot decrement piece {i}: its count is already 0")
        self._counts[i] -= 1

    def count(self, index: int) -> int:
        """How many counted bitmaps have piece ``index``."""
        return self._counts[_check_index(index, self._size)]

    def to_list(self) -> list[int]:
        """All counts, index order."""
        return list(self._counts)

    def rarest(self, candidates: Bitmap, start: int = 0) -> int:
        """Set index of ``candidates`` with the smallest nonzero count, or -1.

        Ties go to the first such index at or after ``start`` (0 <= start <= size),
        wrapping around to 0.
        """
        bits = self._bitmap_bits(candidates, "candidates")
        s = _check_start(start, self._size)
        counts = self._counts
        best_i = -1
        best_c = MAX_COUNT + 1
        # [start, size) first, then [0, start): a strict < keeps the earliest in that order.
        for part, offset in ((bits >> s, s), (bits & ((1 << s) - 1), 0)):
            for j in _ones(part):
                c = counts[j + offset]
                if c and c < best_c:
                    best_c = c
                    best_i = j + offset
                    if c == 1:  # nothing can beat 1
                        return best_i
        return best_i

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_counter, (self._size, self._bitmaps, list(self._counts)))

    def __repr__(self) -> str:
        return f"<RarityCounter size={self._size} bitmaps={self._bitmaps}>"


def _restore_counter(size: int, bitmaps: int, counts: list[int]) -> RarityCounter:
    """Unpickle helper; validates so a tampered pickle cannot break the invariants."""
    counter = RarityCounter(size)
    n = _as_int(bitmaps, "bitmaps")
    if n < 0:
        raise ValueError(f"bitmaps must be >= 0, got {n}")
    values = [_as_int(c, "count") for c in counts]
    if len(values) != counter._size:
        raise ValueError(f"expected {counter._size} counts, got {len(values)}")
    for i, c in enumerate(values):
        if c < 0 or c > MAX_COUNT:
            raise ValueError(f"count of piece {i} is {c}, outside 0..{MAX_COUNT}")
    counter._counts = values
    counter._bitmaps = n
    return counter
