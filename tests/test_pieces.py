from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from d7y.core.pieces import (
    GiB,
    MiB,
    Piece,
    SizeScope,
    compute_piece_length,
    iter_pieces,
    piece_at,
    piece_count,
    pieces_covering,
    size_scope,
    validate_piece_length,
)


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (0, 4 * MiB),
        (1, 4 * MiB),
        (1 * GiB, 4 * MiB),  # 1 GiB / 500 = 2.1 MB -> next power of two 4 MiB
        (2 * GiB, 8 * MiB),  # 4.29 MB -> 8 MiB
        (10 * GiB, 32 * MiB),  # 21.5 MB -> 32 MiB
        (500 * 16 * MiB, 16 * MiB),  # exactly a power of two per piece stays
        (500 * 16 * MiB + 499, 16 * MiB),  # floor(len/500) is still 16 MiB
        (500 * 16 * MiB + 500, 32 * MiB),  # one byte per piece more -> next power
        (100 * GiB, 64 * MiB),  # clamped to the maximum
    ],
)
def test_piece_length_rule(length, expected):
    assert compute_piece_length(length) == expected


def test_piece_length_unknown_length_and_user_override():
    assert compute_piece_length(None) == 4 * MiB
    assert compute_piece_length(10 * GiB, 4 * MiB) == 4 * MiB
    assert compute_piece_length(1, 5 * MiB) == 5 * MiB


@pytest.mark.parametrize("bad", [4 * MiB - 1, 0, 2 * GiB])
def test_user_piece_length_bounds(bad):
    with pytest.raises(ValueError, match=f"piece_length {bad}"):
        validate_piece_length(bad)


@pytest.mark.parametrize("bad", [4.0 * MiB, "4194304", True, None])
def test_user_piece_length_type(bad):
    with pytest.raises(TypeError, match="piece_length must be an int"):
        validate_piece_length(bad)


def test_pieces_with_short_last_piece():
    pieces = list(iter_pieces(10 * MiB, 4 * MiB))
    assert pieces == [
        Piece(0, 0, 4 * MiB),
        Piece(1, 4 * MiB, 4 * MiB),
        Piece(2, 8 * MiB, 2 * MiB),
    ]
    assert pieces[-1].end == 10 * MiB
    assert piece_at(2, 10 * MiB, 4 * MiB) == pieces[2]
    with pytest.raises(IndexError, match="piece 3 out of range"):
        piece_at(3, 10 * MiB, 4 * MiB)
    with pytest.raises(IndexError):
        piece_at(-1, 10 * MiB, 4 * MiB)


def test_piece_count_edges():
    assert piece_count(0, 4 * MiB) == 0
    assert piece_count(1, 4 * MiB) == 1
    assert piece_count(4 * MiB, 4 * MiB) == 1
    assert piece_count(4 * MiB + 1, 4 * MiB) == 2
    with pytest.raises(ValueError, match="content_length must be >= 0"):
        piece_count(-1, 4 * MiB)
    with pytest.raises(ValueError, match="piece_length must be > 0"):
        piece_count(1, 0)


@given(st.integers(0, 10**12), st.integers(1, 10**9))
def test_pieces_tile_the_content(length, piece_length):
    count = piece_count(length, piece_length)
    if count > 2000:
        return
    pieces = list(iter_pieces(length, piece_length))
    assert len(pieces) == count
    assert sum(p.length for p in pieces) == length
    for a, b in pairwise(pieces):
        assert a.end == b.offset
        assert a.length == piece_length


def test_pieces_covering():
    assert pieces_covering(0, 0, 4) == range(0)
    assert pieces_covering(0, 1, 4) == range(0, 1)
    assert pieces_covering(3, 2, 4) == range(0, 2)
    assert pieces_covering(4, 4, 4) == range(1, 2)
    assert pieces_covering(5, 10, 4) == range(1, 4)


def test_size_scope():
    assert size_scope(0, 4 * MiB) is SizeScope.EMPTY
    assert size_scope(1, 4 * MiB) is SizeScope.TINY
    assert size_scope(128, 4 * MiB) is SizeScope.TINY
    assert size_scope(129, 4 * MiB) is SizeScope.SMALL
    assert size_scope(4 * MiB, 4 * MiB) is SizeScope.SMALL
    assert size_scope(4 * MiB + 1, 4 * MiB) is SizeScope.NORMAL


def test_units_are_the_binary_ones():
    from d7y.core.pieces import MAX_USER_PIECE_LENGTH

    assert (MiB, GiB, MAX_USER_PIECE_LENGTH) == (1_048_576, 1_073_741_824, 1_073_741_824)


def test_piece_at_bounds_and_types():
    assert piece_at(0, 10 * MiB, 4 * MiB).offset == 0
    with pytest.raises(IndexError, match=r"has 3 pieces \(0\.\.2\)"):
        piece_at(4, 10 * MiB, 4 * MiB)
    for bad in (True, 1.0, "1"):
        with pytest.raises(TypeError, match="piece number must be an int"):
            piece_at(bad, 10 * MiB, 4 * MiB)


def test_pieces_covering_nothing_anywhere():
    assert pieces_covering(5, 0, 4) == range(0)
