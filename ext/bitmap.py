"""Piece bitfields and rarity counts for the piece picker.

``backend`` is the implementation in use: the compiled ``d7y.ext._bitmap`` or, with
``D7Y_NO_EXTENSIONS=1`` or when it was not built, the pure-Python twin
``d7y.ext._bitmap_py``. Both behave identically, raise the same errors and are tested
against the same model; objects of the two cannot be mixed (convert with
``to_bytes()`` / ``from_bytes()``).

``Bitmap(size)`` — a fixed-size set of piece indexes 0..size-1, all clear at first.

- ``size`` / ``len(bm)``: the number of pieces (``bool(bm)`` is ``size > 0``, as for any
  sized container; ask ``bm.any()`` for "has some piece").
- ``set(i)``, ``clear(i)``, ``test(i) -> bool``; ``bm[i]`` and ``i in bm`` are ``test(i)``.
  Iterating a Bitmap directly is a TypeError: say ``iter_set()`` or ``iter_clear()``.
- ``count()``: set bits; ``all()`` (True for size 0), ``any()`` (False for size 0).
- ``first_set(start=0)`` / ``first_clear(start=0)``: the lowest set / clear index
  ``>= start``, or -1. ``start`` may be 0..size inclusive (``size`` gives -1), so
  ``i = bm.first_set(i + 1)`` loops need no special case.
- ``iter_set()`` / ``iter_clear()``: ascending indexes, over a snapshot taken by the
  call (changing the bitmap afterwards does not affect the iterator).
- ``a.and_not(b)`` (alias ``a.missing_from(b)``): a new Bitmap of the pieces **b has
  and a lacks**, ``b & ~a``. The receiver is "mine": ``mine.and_not(parent)`` is what
  the parent can give me. (Beware: this is the reverse of set difference ``a - b``.)
- ``a.union(b)``: a new Bitmap ``a | b``; ``a.update(b)``: ``a |= b`` in place.
- ``to_bytes()``: the BitTorrent bitfield, ``ceil(size / 8)`` bytes, MSB first (piece 0
  is the high bit of byte 0), pad bits zero. ``Bitmap.from_bytes(data, size)`` is the
  inverse; it takes any C-contiguous bytes-like object and raises ValueError if the
  length is not ``ceil(size / 8)`` or a pad bit is set.
- ``a == b``: same size and same bits (a Bitmap never equals another type, including the
  other backend's Bitmap). Bitmaps are mutable, so they are **unhashable**.
- ``copy()`` (also ``copy.copy``/``deepcopy``), pickling, a ``repr`` with the bits spelled
  out for sizes up to 64.

``RarityCounter(size)`` — for each piece, how many of the added bitmaps have it.

- ``add(bm)`` / ``remove(bm)``: a parent joins / leaves. ``remove`` of a bitmap that was
  not added raises ValueError when any piece count would go below zero (or nothing is
  counted); a failed add or remove changes nothing. Counts are never negative.
- ``increment(i)`` / ``decrement(i)``: one parent gained / lost piece ``i``; decrementing
  a zero count is a ValueError.
- ``count(i)``, ``to_list()``, ``bitmaps`` (adds minus removes), ``size``.
- ``rarest(candidates, start=0)``: among the set bits of ``candidates``, the index with
  the smallest **nonzero** count (count 0 means nobody can serve it: skipped); ties go
  to the first such index at or after ``start``, wrapping around, so passing a random
  start randomizes tie-breaks. -1 if no candidate has a nonzero count. ``start`` may be
  0..size inclusive.
- Counts are capped at ``MAX_COUNT`` (2**32 - 1); going past it is an OverflowError.

Errors, for both classes: an index outside ``0..size-1`` is an IndexError naming the
index and the size (negative indexes are errors, never counted from the end); a
``start`` outside ``0..size`` likewise. Indexes and sizes must be ints (or objects with
``__index__``; bool is refused): anything else is a TypeError, as is a Bitmap argument
of the wrong type or backend. Sizes of two operands that differ, a negative size, or a
size above ``MAX_SIZE`` (2**28) are ValueErrors. Neither class may be subclassed.

Thread safety: each call is atomic with respect to other Python threads, except that
read-only kernels on very large objects (over about two million pieces) release the
GIL and may then see a concurrent writer's changes partly applied.
"""

from d7y.ext import load_backend

backend = load_backend("bitmap")

Bitmap = backend.Bitmap
RarityCounter = backend.RarityCounter
MAX_SIZE: int = backend.MAX_SIZE
MAX_COUNT: int = backend.MAX_COUNT

__all__ = ["MAX_COUNT", "MAX_SIZE", "Bitmap", "RarityCounter", "backend"]
