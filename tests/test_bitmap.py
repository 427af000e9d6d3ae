"""Bitmap and RarityCounter (d7y.ext.bitmap), run against the compiled module and the twin.

Unit tests pin every method and error; hypothesis property tests drive both backends
through random operation sequences and compare each step with a plain set/list model;
cross-backend tests check that bitfields written by one parse identically in the other.
"""

from __future__ import annotations

import array
import copy
import importlib
import pickle
import threading
from types import ModuleType

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import REQUIRE_EXTENSIONS

# Hypothesis reuses the (module-valued, stateless) backend fixture across examples.
PROPERTY = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Index:
    """An int-like object with __index__ only (as numpy integers are)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


def make(impl: ModuleType, size: int, pieces=()):
    bm = impl.Bitmap(size)
    for i in pieces:
        bm.set(i)
    return bm


def reference_bitfield(size: int, pieces) -> bytes:
    """BitTorrent encoding written out longhand: piece i is bit 7 - i % 8 of byte i // 8."""
    out = bytearray((size + 7) // 8)
    for i in pieces:
        out[i // 8] |= 0x80 >> (i % 8)
    return bytes(out)


# ------------------------------------------------------------------ Bitmap: basics


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 63, 64, 65, 200])
def test_new_bitmap_is_empty(bitmap_impl, size):
    bm = bitmap_impl.Bitmap(size)
    assert len(bm) == bm.size == size
    assert bm.count() == 0
    assert not bm.any()
    assert bm.all() is (size == 0)
    assert list(bm.iter_set()) == []
    assert list(bm.iter_clear()) == list(range(size))
    assert bm.first_set() == -1
    assert bm.first_clear() == (0 if size else -1)
    assert bm.to_bytes() == bytes((size + 7) // 8)


def test_set_clear_test(bitmap_impl):
    bm = bitmap_impl.Bitmap(130)
    for i in (0, 63, 64, 129):
        bm.set(i)
        bm.set(i)  # idempotent
    assert [i for i in range(130) if bm.test(i)] == [0, 63, 64, 129]
    assert bm[63] is True and bm[62] is False
    assert 64 in bm and 65 not in bm
    bm.clear(63)
    bm.clear(63)  # idempotent
    bm.clear(1)  # clearing a clear bit is fine
    assert list(bm.iter_set()) == [0, 64, 129]
    assert bm.count() == 3


def test_test_returns_bool(bitmap_impl):
    bm = make(bitmap_impl, 3, [1])
    assert bm.test(1) is True
    assert bm.test(0) is False


def test_index_accepts_dunder_index(bitmap_impl):
    bm = bitmap_impl.Bitmap(10)
    bm.set(Index(4))
    assert bm.test(Index(4))
    assert bitmap_impl.Bitmap(Index(3)).size == 3


@pytest.mark.parametrize("bad", [-1, -10, 10, 11, 2**63, 2**70, -(2**70)])
@pytest.mark.parametrize("method", ["set", "clear", "test", "__getitem__", "__contains__"])
def test_index_out_of_range(bitmap_impl, method, bad):
    bm = bitmap_impl.Bitmap(10)
    with pytest.raises(IndexError) as exc:
        getattr(bm, method)(bad)
    assert str(bad) in str(exc.value) and "size 10" in str(exc.value)
    assert bm.count() == 0


def test_negative_index_is_never_from_the_end(bitmap_impl):
    bm = make(bitmap_impl, 5, [4])
    with pytest.raises(IndexError, match="negative"):
        bm[-1]
    with pytest.raises(IndexError):
        -1 in bm  # noqa: B015


def test_index_error_on_empty_bitmap(bitmap_impl):
    with pytest.raises(IndexError, match="size is 0"):
        bitmap_impl.Bitmap(0).set(0)


@pytest.mark.parametrize("bad", [1.0, "1", None, True, False, slice(0, 2), [1]])
@pytest.mark.parametrize("method", ["set", "clear", "test", "__getitem__", "__contains__"])
def test_index_wrong_type(bitmap_impl, method, bad):
    bm = bitmap_impl.Bitmap(10)
    with pytest.raises(TypeError, match="piece index must be an int"):
        getattr(bm, method)(bad)


@pytest.mark.parametrize("bad", [-1, -(2**70)])
def test_negative_size(bitmap_impl, bad):
    for cls in (bitmap_impl.Bitmap, bitmap_impl.RarityCounter):
        with pytest.raises(ValueError, match=">= 0"):
            cls(bad)


def test_size_above_max(bitmap_impl):
    for cls in (bitmap_impl.Bitmap, bitmap_impl.RarityCounter):
        with pytest.raises(ValueError, match="MAX_SIZE"):
            cls(bitmap_impl.MAX_SIZE + 1)
        with pytest.raises(ValueError, match="MAX_SIZE"):
            cls(2**100)


def test_size_at_max(bitmap_impl):
    bm = bitmap_impl.Bitmap(bitmap_impl.MAX_SIZE)
    last = bitmap_impl.MAX_SIZE - 1
    bm.set(last)
    assert bm.first_set() == last
    assert bm.count() == 1


@pytest.mark.parametrize("bad", [1.5, "8", None, True, b"\x01"])
def test_size_wrong_type(bitmap_impl, bad):
    for cls in (bitmap_impl.Bitmap, bitmap_impl.RarityCounter):
        with pytest.raises(TypeError, match="size must be an int"):
            cls(bad)


def test_cannot_subclass(bitmap_impl):
    for base in (bitmap_impl.Bitmap, bitmap_impl.RarityCounter):
        with pytest.raises(TypeError):
            type("Sub", (base,), {})


def test_not_iterable(bitmap_impl):
    bm = make(bitmap_impl, 4, [1])
    with pytest.raises(TypeError, match="iter_set"):
        iter(bm)
    with pytest.raises(TypeError):
        list(bm)


def test_size_is_read_only(bitmap_impl):
    for obj in (bitmap_impl.Bitmap(3), bitmap_impl.RarityCounter(3)):
        with pytest.raises(AttributeError):
            obj.size = 5
        assert obj.size == 3


def test_calling_init_again_changes_nothing(bitmap_impl):
    bm = make(bitmap_impl, 5, [1])
    bm.__init__(9)
    assert len(bm) == 5 and list(bm.iter_set()) == [1]
    rc = bitmap_impl.RarityCounter(3)
    rc.increment(0)
    rc.__init__(7)
    assert rc.to_list() == [1, 0, 0]


def test_len_and_truthiness_follow_size(bitmap_impl):
    assert len(bitmap_impl.Bitmap(7)) == 7
    assert bool(bitmap_impl.Bitmap(7))  # a sized container: truthy when size > 0
    assert not bitmap_impl.Bitmap(0)


# ------------------------------------------------------------------ count / all / any


@pytest.mark.parametrize("size", [1, 63, 64, 65, 128, 129])
def test_count_all_any(bitmap_impl, size):
    bm = bitmap_impl.Bitmap(size)
    for i in range(size):
        assert not bm.all()
        bm.set(i)
        assert bm.any()
        assert bm.count() == i + 1
    assert bm.all()
    bm.clear(size - 1)
    assert not bm.all()
    assert bm.any() is (size > 1)


def test_size_zero_all_any(bitmap_impl):
    bm = bitmap_impl.Bitmap(0)
    assert bm.all() is True
    assert bm.any() is False


# ------------------------------------------------------------------ first_set / first_clear


def test_first_set_and_first_clear(bitmap_impl):
    bm = make(bitmap_impl, 200, [3, 64, 65, 199])
    assert bm.first_set() == 3
    assert bm.first_set(3) == 3
    assert bm.first_set(4) == 64
    assert bm.first_set(66) == 199
    assert bm.first_set(200) == -1
    assert bm.first_clear() == 0
    assert bm.first_clear(3) == 4
    assert bm.first_clear(64) == 66
    assert bm.first_clear(199) == -1
    assert bm.first_clear(200) == -1


@pytest.mark.parametrize("size", [1, 63, 64, 65, 127, 128, 129])
def test_first_clear_never_reports_pad_bits(bitmap_impl, size):
    bm = bitmap_impl.Bitmap(size)
    for i in range(size):
        bm.set(i)
    assert bm.first_clear() == -1
    assert bm.first_clear(size - 1) == -1
    assert list(bm.iter_clear()) == []
    bm.clear(size - 1)
    assert bm.first_clear() == size - 1
    assert bm.first_set(size - 1) == -1


def test_first_scans_start_keyword(bitmap_impl):
    bm = make(bitmap_impl, 10, [5])
    assert bm.first_set(start=1) == 5
    assert bm.first_clear(start=5) == 6
    assert bm.first_set(Index(6)) == -1


@pytest.mark.parametrize("bad", [-1, 11, 2**70])
def test_first_start_out_of_range(bitmap_impl, bad):
    bm = bitmap_impl.Bitmap(10)
    for method in (bm.first_set, bm.first_clear):
        with pytest.raises(IndexError, match=f"start {bad} is out of range for size 10"):
            method(bad)


@pytest.mark.parametrize("bad", [0.0, "0", None, True])
def test_first_start_wrong_type(bitmap_impl, bad):
    bm = bitmap_impl.Bitmap(10)
    for method in (bm.first_set, bm.first_clear):
        with pytest.raises(TypeError, match="start must be an int"):
            method(bad)


def test_first_on_size_zero(bitmap_impl):
    bm = bitmap_impl.Bitmap(0)
    assert bm.first_set(0) == -1 and bm.first_clear(0) == -1
    with pytest.raises(IndexError):
        bm.first_set(1)


# ------------------------------------------------------------------ iterators


def test_iterators_ascending(bitmap_impl):
    pieces = [0, 1, 63, 64, 100, 127, 128, 149]
    bm = make(bitmap_impl, 150, reversed(pieces))
    assert list(bm.iter_set()) == pieces
    assert list(bm.iter_clear()) == [i for i in range(150) if i not in pieces]


def test_iterators_are_snapshots(bitmap_impl):
    bm = make(bitmap_impl, 70, [1, 2, 69])
    it_set, it_clear = bm.iter_set(), bm.iter_clear()
    assert iter(it_set) is it_set
    bm.set(50)
    bm.clear(2)
    assert list(it_set) == [1, 2, 69]
    assert list(it_clear) == [i for i in range(70) if i not in (1, 2, 69)]
    assert list(it_set) == []  # exhausted iterators stay exhausted
    assert next(it_set, "done") == "done"


# ------------------------------------------------------------------ and_not / union / update


def test_and_not_is_what_other_has_and_self_lacks(bitmap_impl):
    mine = make(bitmap_impl, 100, [0, 1, 70])
    parent = make(bitmap_impl, 100, [1, 2, 70, 99])
    wanted = mine.and_not(parent)
    assert list(wanted.iter_set()) == [2, 99]
    assert list(parent.and_not(mine).iter_set()) == [0]
    assert mine.missing_from(parent) == wanted
    # Inputs untouched, result independent.
    assert list(mine.iter_set()) == [0, 1, 70]
    assert list(parent.iter_set()) == [1, 2, 70, 99]
    wanted.set(5)
    assert not mine.test(5) and not parent.test(5)


def test_union_and_update(bitmap_impl):
    a = make(bitmap_impl, 65, [0, 64])
    b = make(bitmap_impl, 65, [1, 64])
    u = a.union(b)
    assert list(u.iter_set()) == [0, 1, 64]
    assert list(a.iter_set()) == [0, 64]
    assert a.update(b) is None
    assert a == u
    assert list(b.iter_set()) == [1, 64]


def test_set_ops_on_size_zero(bitmap_impl):
    a, b = bitmap_impl.Bitmap(0), bitmap_impl.Bitmap(0)
    assert a.and_not(b) == a.union(b) == bitmap_impl.Bitmap(0)
    a.update(b)


@pytest.mark.parametrize("method", ["and_not", "missing_from", "union", "update"])
def test_set_ops_size_mismatch(bitmap_impl, method):
    a, b = bitmap_impl.Bitmap(10), bitmap_impl.Bitmap(11)
    with pytest.raises(ValueError, match="sizes differ: 10 != 11"):
        getattr(a, method)(b)


@pytest.mark.parametrize("method", ["and_not", "missing_from", "union", "update"])
def test_set_ops_wrong_type(bitmap_impl, method):
    a = bitmap_impl.Bitmap(10)
    for bad in (None, 5, {1, 2}, b"\x00\x00", bitmap_impl.RarityCounter(10)):
        with pytest.raises(TypeError, match=r"expected a .*Bitmap"):
            getattr(a, method)(bad)


# ------------------------------------------------------------------ to_bytes / from_bytes


@pytest.mark.parametrize(
    ("size", "pieces", "encoded"),
    [
        (0, [], b""),
        (1, [0], b"\x80"),
        (8, range(8), b"\xff"),
        (9, [8], b"\x00\x80"),
        (10, [0, 9], b"\x80\x40"),
        (10, [0, 3, 9], b"\x90\x40"),
        (16, [7, 15], b"\x01\x01"),
        (70, [0, 63, 64, 69], b"\x80" + b"\x00" * 6 + b"\x01\x84"),
    ],
)
def test_to_bytes_is_msb_first(bitmap_impl, size, pieces, encoded):
    bm = make(bitmap_impl, size, pieces)
    assert bm.to_bytes() == encoded
    assert isinstance(bm.to_bytes(), bytes)
    assert bitmap_impl.Bitmap.from_bytes(encoded, size) == bm


def test_from_bytes_accepts_bytes_like(bitmap_impl):
    want = make(bitmap_impl, 16, [0, 15])
    for data in (b"\x80\x01", bytearray(b"\x80\x01"), memoryview(b"\x80\x01")):
        assert bitmap_impl.Bitmap.from_bytes(data, 16) == want
    # Any C-contiguous buffer is read as raw bytes.
    assert bitmap_impl.Bitmap.from_bytes(array.array("B", [0x80, 0x01]), 16) == want
    assert bitmap_impl.Bitmap.from_bytes(memoryview(b"\x80\x01").cast("H"), 16) == want
    assert bitmap_impl.Bitmap.from_bytes(b"\x00\x00", Index(16)) == bitmap_impl.Bitmap(16)


def test_from_bytes_result_is_independent_of_input(bitmap_impl):
    data = bytearray(b"\xff")
    bm = bitmap_impl.Bitmap.from_bytes(data, 8)
    data[0] = 0
    assert bm.all()


@pytest.mark.parametrize(("size", "length"), [(0, 1), (1, 0), (8, 2), (9, 1), (9, 3), (64, 7)])
def test_from_bytes_wrong_length(bitmap_impl, size, length):
    with pytest.raises(ValueError, match=f"{(size + 7) // 8} bytes, got {length}"):
        bitmap_impl.Bitmap.from_bytes(bytes(length), size)


@pytest.mark.parametrize(
    ("size", "last"), [(1, 0x40), (7, 0x01), (9, 0x7F), (10, 0x20), (65, 0x01)]
)
def test_from_bytes_rejects_pad_bits(bitmap_impl, size, last):
    data = bytes((size + 7) // 8 - 1) + bytes([last])
    with pytest.raises(ValueError, match="pad bits"):
        bitmap_impl.Bitmap.from_bytes(data, size)


def test_from_bytes_wrong_types(bitmap_impl):
    from_bytes = bitmap_impl.Bitmap.from_bytes
    for bad in ("\x80", 128, None, [128]):
        with pytest.raises(TypeError, match="bytes-like"):
            from_bytes(bad, 8)
    with pytest.raises(TypeError, match="contiguous"):
        from_bytes(memoryview(b"\x80\x00\x80\x00")[::2], 16)
    with pytest.raises(TypeError, match="size must be an int"):
        from_bytes(b"\x00", 8.0)
    with pytest.raises(ValueError, match=">= 0"):
        from_bytes(b"", -1)


# ------------------------------------------------------------------ equality, copy, pickle


def test_equality(bitmap_impl):
    a = make(bitmap_impl, 70, [3, 68])
    assert a == make(bitmap_impl, 70, [3, 68])
    assert not (a != make(bitmap_impl, 70, [3, 68]))  # noqa: SIM202 (tests __ne__)
    assert a != make(bitmap_impl, 70, [3])
    assert a != make(bitmap_impl, 71, [3, 68])
    assert bitmap_impl.Bitmap(0) == bitmap_impl.Bitmap(0)
    assert bitmap_impl.Bitmap(0) != bitmap_impl.Bitmap(1)
    for other in (None, 0, a.to_bytes(), {3, 68}, [3, 68]):
        assert a != other
        assert not (a == other)  # noqa: SIM201 (tests __eq__)


def test_unhashable(bitmap_impl):
    with pytest.raises(TypeError):
        hash(bitmap_impl.Bitmap(3))
    with pytest.raises(TypeError):
        {bitmap_impl.Bitmap(3)}


def test_copy_is_independent(bitmap_impl):
    a = make(bitmap_impl, 66, [65])
    for b in (a.copy(), copy.copy(a), copy.deepcopy(a)):
        assert b == a and b is not a
        b.set(0)
        assert not a.test(0)


def test_pickle_round_trip(bitmap_impl):
    for bm in (bitmap_impl.Bitmap(0), make(bitmap_impl, 131, [0, 64, 130])):
        back = pickle.loads(pickle.dumps(bm))
        assert back == bm and type(back) is type(bm)


def test_repr(bitmap_impl):
    assert repr(make(bitmap_impl, 5, [0, 3])) == "<Bitmap size=5 count=2 bits=10010>"
    assert repr(bitmap_impl.Bitmap(0)) == "<Bitmap size=0 count=0 bits=>"
    assert repr(make(bitmap_impl, 1000, [1, 999])) == "<Bitmap size=1000 count=2>"


# ------------------------------------------------------------------ RarityCounter


def test_counter_add_remove(bitmap_impl):
    rc = bitmap_impl.RarityCounter(130)
    a = make(bitmap_impl, 130, [0, 64, 129])
    b = make(bitmap_impl, 130, [64, 100])
    assert rc.size == 130 and rc.bitmaps == 0
    rc.add(a)
    rc.add(b)
    rc.add(b)
    assert rc.bitmaps == 3
    assert [rc.count(i) for i in (0, 1, 64, 100, 129)] == [1, 0, 3, 2, 1]
    rc.remove(b)
    assert [rc.count(i) for i in (0, 1, 64, 100, 129)] == [1, 0, 2, 1, 1]
    assert rc.bitmaps == 2
    want = [0] * 130
    for i in (0, 64, 129):
        want[i] += 1
    for i in (64, 100):
        want[i] += 1
    assert rc.to_list() == want


def test_counter_remove_unadded_changes_nothing(bitmap_impl):
    rc = bitmap_impl.RarityCounter(70)
    a = make(bitmap_impl, 70, [1, 2, 66])
    with pytest.raises(ValueError, match="no bitmap is counted"):
        rc.remove(a)
    rc.add(make(bitmap_impl, 70, [1, 2]))
    before = rc.to_list()
    with pytest.raises(ValueError, match="piece 66 has count 0"):
        rc.remove(a)  # 1 and 2 could be decremented, 66 cannot: all or nothing
    assert rc.to_list() == before and rc.bitmaps == 1
    assert min(rc.to_list()) == 0


def test_counter_never_negative_after_double_remove(bitmap_impl):
    rc = bitmap_impl.RarityCounter(8)
    a = make(bitmap_impl, 8, [3])
    rc.add(a)
    rc.remove(a)
    with pytest.raises(ValueError):
        rc.remove(a)
    assert rc.to_list() == [0] * 8 and rc.bitmaps == 0


def test_counter_empty_bitmap(bitmap_impl):
    rc = bitmap_impl.RarityCounter(5)
    rc.add(bitmap_impl.Bitmap(5))
    assert rc.bitmaps == 1 and rc.to_list() == [0] * 5
    rc.remove(bitmap_impl.Bitmap(5))
    assert rc.bitmaps == 0


def test_counter_increment_decrement(bitmap_impl):
    rc = bitmap_impl.RarityCounter(3)
    rc.increment(2)
    rc.increment(Index(2))
    assert rc.count(2) == 2
    rc.decrement(2)
    assert rc.to_list() == [0, 0, 1]
    with pytest.raises(ValueError, match="piece 0: its count is already 0"):
        rc.decrement(0)
    assert rc.count(0) == 0


@pytest.mark.parametrize("method", ["increment", "decrement", "count"])
def test_counter_index_errors(bitmap_impl, method):
    rc = bitmap_impl.RarityCounter(4)
    for bad in (-1, 4, 2**70):
        with pytest.raises(IndexError, match=f"piece index {bad} is out of range for size 4"):
            getattr(rc, method)(bad)
    for bad in (1.0, None, True, "1"):
        with pytest.raises(TypeError, match="piece index must be an int"):
            getattr(rc, method)(bad)


@pytest.mark.parametrize("method", ["add", "remove"])
def test_counter_bitmap_errors(bitmap_impl, method):
    rc = bitmap_impl.RarityCounter(4)
    with pytest.raises(ValueError, match="size 5 but the counter has size 4"):
        getattr(rc, method)(bitmap_impl.Bitmap(5))
    for bad in (None, b"\x00", {1}, rc):
        with pytest.raises(TypeError, match=r"bitmap must be a .*Bitmap"):
            getattr(rc, method)(bad)
    assert rc.bitmaps == 0


def test_counter_overflow_is_refused_and_atomic(bitmap_impl):
    top = bitmap_impl.MAX_COUNT
    assert top == 2**32 - 1
    # The unpickling path is the only way to reach the cap without 2**32 adds.
    rc = bitmap_impl._restore_counter(70, 0, [0] * 69 + [top])
    full = make(bitmap_impl, 70, range(70))
    with pytest.raises(OverflowError, match="piece 69"):
        rc.add(full)
    assert rc.to_list() == [0] * 69 + [top] and rc.bitmaps == 0
    with pytest.raises(OverflowError, match="MAX_COUNT"):
        rc.increment(69)
    rc.decrement(69)
    rc.increment(69)
    assert rc.count(69) == top


def test_counter_restore_validates(bitmap_impl):
    restore = bitmap_impl._restore_counter
    with pytest.raises(ValueError, match="expected 3 counts"):
        restore(3, 0, [0, 0])
    with pytest.raises(ValueError, match="outside"):
        restore(2, 0, [0, -1])
    with pytest.raises(ValueError, match="outside"):
        restore(2, 0, [2**32, 0])
    with pytest.raises(ValueError, match="bitmaps must be >= 0"):
        restore(2, -1, [0, 0])
    with pytest.raises(TypeError):
        restore(2, 0, [0, "1"])


def test_counter_pickle_and_repr(bitmap_impl):
    rc = bitmap_impl.RarityCounter(9)
    rc.add(make(bitmap_impl, 9, [0, 8]))
    rc.increment(4)
    back = pickle.loads(pickle.dumps(rc))
    assert back.to_list() == rc.to_list() and back.bitmaps == 1 and back.size == 9
    back.remove(make(bitmap_impl, 9, [0, 8]))
    assert rc.count(0) == 1
    assert repr(rc) == "<RarityCounter size=9 bitmaps=1>"


def test_rarest_basics(bitmap_impl):
    rc = bitmap_impl.RarityCounter(10)
    for pieces in ([0, 1, 2, 5], [0, 1, 5], [0, 5, 7]):
        rc.add(make(bitmap_impl, 10, pieces))
    # counts: 0:3 1:2 2:1 5:3 7:1, others 0
    every = make(bitmap_impl, 10, range(10))
    assert rc.rarest(every) == 2
    assert rc.rarest(every, 3) == 7  # tie between 2 and 7: first at or after start
    assert rc.rarest(every, 8) == 2  # ... wrapping around
    assert rc.rarest(every, 10) == 2  # start == size wraps to 0
    assert rc.rarest(make(bitmap_impl, 10, [0, 1, 5])) == 1
    assert rc.rarest(make(bitmap_impl, 10, [0, 5])) == 0
    assert rc.rarest(make(bitmap_impl, 10, [0, 5]), 1) == 5
    # Nobody has 3, 4, 6, 8, 9: never picked.
    assert rc.rarest(make(bitmap_impl, 10, [3, 4, 6, 8, 9])) == -1
    assert rc.rarest(bitmap_impl.Bitmap(10)) == -1


def test_rarest_on_empty_counter(bitmap_impl):
    rc = bitmap_impl.RarityCounter(0)
    assert rc.rarest(bitmap_impl.Bitmap(0)) == -1
    assert rc.rarest(bitmap_impl.Bitmap(0), 0) == -1


def test_rarest_across_words(bitmap_impl):
    rc = bitmap_impl.RarityCounter(300)
    rc.add(make(bitmap_impl, 300, range(300)))
    rc.add(make(bitmap_impl, 300, range(0, 300, 2)))
    cand = make(bitmap_impl, 300, [10, 64, 65, 127, 128, 299])
    assert rc.rarest(cand) == 65
    assert rc.rarest(cand, 66) == 127
    assert rc.rarest(cand, 128) == 299
    assert rc.rarest(make(bitmap_impl, 300, [64, 128])) == 64


def test_rarest_errors(bitmap_impl):
    rc = bitmap_impl.RarityCounter(10)
    cand = bitmap_impl.Bitmap(10)
    with pytest.raises(ValueError, match="candidates has size 9"):
        rc.rarest(bitmap_impl.Bitmap(9))
    with pytest.raises(TypeError, match=r"candidates must be a .*Bitmap"):
        rc.rarest([1, 2])
    for bad in (-1, 11, 2**70):
        with pytest.raises(IndexError, match=f"start {bad} is out of range for size 10"):
            rc.rarest(cand, bad)
    with pytest.raises(TypeError, match="start must be an int"):
        rc.rarest(cand, 1.0)


# ------------------------------------------------------------------ large sizes, threads

LARGE = (1 << 21) + 3  # past the compiled module's GIL-release thresholds


def test_large_bitmaps(bitmap_impl):
    a = make(bitmap_impl, LARGE, [0, 1 << 20, LARGE - 1])
    b = make(bitmap_impl, LARGE, [1, LARGE - 1])
    assert list(a.and_not(b).iter_set()) == [1]
    assert list(a.union(b).iter_set()) == [0, 1, 1 << 20, LARGE - 1]
    assert a.count() == 3
    data = a.to_bytes()
    assert len(data) == (LARGE + 7) // 8 and data[0] == 0x80 and data[-1] == 0x20
    assert bitmap_impl.Bitmap.from_bytes(data, LARGE) == a
    rc = bitmap_impl.RarityCounter(LARGE)
    rc.add(a)
    rc.add(b)
    both = a.union(b)
    assert rc.rarest(both) == 0
    assert rc.rarest(both, 2) == 1 << 20
    assert rc.rarest(both, (1 << 20) + 1) == 0
    assert rc.rarest(make(bitmap_impl, LARGE, [LARGE - 1])) == LARGE - 1


def test_concurrent_readers_and_a_writer(bitmap_impl):
    """Readers that may run without the GIL see whole values while another thread writes."""
    size = LARGE
    shared = make(bitmap_impl, size, range(0, size, 1 << 16))
    other = make(bitmap_impl, size, [5])
    rc = bitmap_impl.RarityCounter(size)
    rc.add(shared)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(5):
                assert other.and_not(shared).count() >= 0
                assert shared.union(other).test(5)
                assert len(shared.to_bytes()) == (size + 7) // 8
                assert rc.rarest(shared) in (-1, *range(0, size, 1 << 16))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(1, 2000, 7):
        shared.set(i)
        shared.clear(i)
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert list(shared.iter_set()) == list(range(0, size, 1 << 16))


# ------------------------------------------------------------------ properties vs a model


@st.composite
def bitmap_programs(draw):
    """A size and a list of operations, some with out-of-range indexes on purpose."""
    size = draw(st.one_of(st.integers(0, 140), st.integers(0, 700)))
    index = st.integers(-2, size + 2)
    start = st.integers(-1, size + 1)
    pieces = st.sets(st.integers(0, size - 1), max_size=size) if size else st.just(set())
    op = st.one_of(
        st.tuples(st.sampled_from(["set", "clear", "test"]), index),
        st.tuples(st.sampled_from(["first_set", "first_clear"]), start),
        st.tuples(st.sampled_from(["and_not", "rev_and_not", "union", "update"]), pieces),
        st.tuples(st.sampled_from(["fill", "iter", "bytes", "summary", "copy"]), st.none()),
    )
    return size, draw(st.lists(op, max_size=40))


def _model_first(model: set[int], size: int, start: int, want_set: bool) -> int:
    return next((i for i in range(start, size) if (i in model) is want_set), -1)


def _check_same(bm, model: set[int], size: int) -> None:
    assert list(bm.iter_set()) == sorted(model)
    assert bm.count() == len(model)
    assert len(bm) == size


@PROPERTY
@given(program=bitmap_programs())
def test_bitmap_matches_set_model(bitmap_impl, program):
    size, ops = program
    Bitmap = bitmap_impl.Bitmap
    bm, model = Bitmap(size), set()
    for name, arg in ops:
        if name in ("set", "clear", "test"):
            if not 0 <= arg < size:
                with pytest.raises(IndexError):
                    getattr(bm, name)(arg)
            elif name == "set":
                bm.set(arg)
                model.add(arg)
            elif name == "clear":
                bm.clear(arg)
                model.discard(arg)
            else:
                assert bm.test(arg) is (arg in model)
        elif name in ("first_set", "first_clear"):
            if not 0 <= arg <= size:
                with pytest.raises(IndexError):
                    getattr(bm, name)(arg)
            else:
                want = _model_first(model, size, arg, name == "first_set")
                assert getattr(bm, name)(arg) == want
        elif name in ("and_not", "rev_and_not", "union", "update"):
            other = Bitmap.from_bytes(reference_bitfield(size, arg), size)
            if name == "and_not":
                assert list(bm.and_not(other).iter_set()) == sorted(arg - model)
            elif name == "rev_and_not":
                assert list(other.and_not(bm).iter_set()) == sorted(model - arg)
            elif name == "union":
                assert list(bm.union(other).iter_set()) == sorted(model | arg)
            else:
                bm.update(other)
                model |= arg
        elif name == "fill":
            for i in range(size):
                bm.set(i)
            model = set(range(size))
        elif name == "iter":
            assert list(bm.iter_clear()) == [i for i in range(size) if i not in model]
        elif name == "bytes":
            data = bm.to_bytes()
            assert data == reference_bitfield(size, model)
            assert Bitmap.from_bytes(data, size) == bm
        elif name == "summary":
            assert bm.all() is (len(model) == size)
            assert bm.any() is bool(model)
        elif name == "copy":
            twin = bm.copy()
            assert twin == bm
            bm = twin  # keep working on the copy: it must be a complete one
        _check_same(bm, model, size)


@st.composite
def rarity_programs(draw):
    size = draw(st.integers(0, 150))
    pieces = st.sets(st.integers(0, size - 1), max_size=size) if size else st.just(set())
    pool = draw(st.lists(pieces, min_size=1, max_size=5))
    which = st.integers(0, len(pool) - 1)
    index = st.integers(-1, size)
    op = st.one_of(
        st.tuples(st.sampled_from(["add", "remove"]), which),
        st.tuples(st.sampled_from(["increment", "decrement", "count"]), index),
        st.tuples(st.just("rarest"), st.tuples(pieces, st.integers(0, size))),
    )
    return size, pool, draw(st.lists(op, max_size=50))


def _model_rarest(counts: list[int], candidates: set[int], start: int) -> int:
    size = len(counts)
    order = [*range(start, size), *range(0, start)]
    live = [i for i in order if i in candidates and counts[i] > 0]
    if not live:
        return -1
    low = min(counts[i] for i in live)
    return next(i for i in live if counts[i] == low)


@PROPERTY
@given(program=rarity_programs())
def test_rarity_matches_list_model(bitmap_impl, program):
    size, pool, ops = program
    Bitmap = bitmap_impl.Bitmap
    bitmaps = [Bitmap.from_bytes(reference_bitfield(size, p), size) for p in pool]
    rc = bitmap_impl.RarityCounter(size)
    counts, added = [0] * size, 0
    for name, arg in ops:
        if name == "add":
            rc.add(bitmaps[arg])
            for i in pool[arg]:
                counts[i] += 1
            added += 1
        elif name == "remove":
            if added == 0 or any(counts[i] == 0 for i in pool[arg]):
                with pytest.raises(ValueError):
                    rc.remove(bitmaps[arg])
            else:
                rc.remove(bitmaps[arg])
                for i in pool[arg]:
                    counts[i] -= 1
                added -= 1
        elif name in ("increment", "decrement", "count"):
            if not 0 <= arg < size:
                with pytest.raises(IndexError):
                    getattr(rc, name)(arg)
            elif name == "increment":
                rc.increment(arg)
                counts[arg] += 1
            elif name == "decrement":
                if counts[arg] == 0:
                    with pytest.raises(ValueError):
                        rc.decrement(arg)
                else:
                    rc.decrement(arg)
                    counts[arg] -= 1
            else:
                assert rc.count(arg) == counts[arg]
        else:
            cand, start = arg
            cand_bm = Bitmap.from_bytes(reference_bitfield(size, cand), size)
            assert rc.rarest(cand_bm, start) == _model_rarest(counts, cand, start)
        assert rc.to_list() == counts
        assert rc.bitmaps == added


# ------------------------------------------------------------------ cross-backend


def _both_backends() -> tuple[ModuleType, ModuleType]:
    twin = importlib.import_module("d7y.ext._bitmap_py")
    try:
        compiled = importlib.import_module("d7y.ext._bitmap")
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            raise AssertionError(f"d7y.ext._bitmap is not built: {exc}") from exc
        pytest.skip(f"d7y.ext._bitmap not built: {exc}")
    return compiled, twin


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_bitfields_cross_backends(data):
    compiled, twin = _both_backends()
    size = data.draw(st.one_of(st.integers(0, 130), st.integers(0, 2000)), label="size")
    pieces = data.draw(
        st.sets(st.integers(0, size - 1)) if size else st.just(set()), label="pieces"
    )
    a, b = make(compiled, size, pieces), make(twin, size, pieces)
    assert a.to_bytes() == b.to_bytes()
    from_twin = compiled.Bitmap.from_bytes(b.to_bytes(), size)
    from_compiled = twin.Bitmap.from_bytes(a.to_bytes(), size)
    assert list(from_twin.iter_set()) == list(from_compiled.iter_set()) == sorted(pieces)
    assert from_twin == a and from_compiled == b
    assert a != b  # the two backends' objects never compare equal: no silent mixing
    with pytest.raises(TypeError, match="to_bytes"):
        a.union(b)


def test_backends_agree_on_constants_and_messages():
    compiled, twin = _both_backends()
    assert compiled.MAX_SIZE == twin.MAX_SIZE and compiled.MAX_COUNT == twin.MAX_COUNT
    calls = [
        lambda m: m.Bitmap(5).set(7),
        lambda m: m.Bitmap(0).test(0),
        lambda m: m.Bitmap(5).first_set(6),
        lambda m: m.Bitmap(-1),
        lambda m: m.Bitmap(2**40),
        lambda m: m.Bitmap(1.5),
        lambda m: m.Bitmap(3).set(True),
        lambda m: m.Bitmap(3).union(m.Bitmap(4)),
        lambda m: m.Bitmap.from_bytes(b"\x00", 9),
        lambda m: m.Bitmap.from_bytes(b"\x01", 7),
        lambda m: m.Bitmap.from_bytes("x", 8),
        lambda m: iter(m.Bitmap(3)),
        lambda m: m.RarityCounter(3).remove(m.Bitmap(3)),
        lambda m: m.RarityCounter(3).decrement(1),
        lambda m: m.RarityCounter(3).add(m.Bitmap(2)),
    ]
    for call in calls:
        errors = []
        for module in (compiled, twin):
            with pytest.raises(Exception) as exc:
                call(module)
            errors.append((type(exc.value), str(exc.value)))
        assert errors[0] == errors[1]


def test_facade_exports_backend():
    from d7y.ext import bitmap

    assert bitmap.Bitmap is bitmap.backend.Bitmap
    assert bitmap.RarityCounter is bitmap.backend.RarityCounter
    assert bitmap.MAX_SIZE == 1 << 28
    assert bitmap.backend.__name__ in ("d7y.ext._bitmap", "d7y.ext._bitmap_py")
