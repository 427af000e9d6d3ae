"""Piece geometry: piece length, piece ranges and the task's size scope.

Dragonfly cuts a task into pieces of one length (the last may be shorter). The length
is chosen so a task has about 500 pieces: the next power of two of
``content_length // 500``, clamped to [4 MiB, 64 MiB] (1 GiB -> 4 MiB, 10 GiB -> 32 MiB).
A user may fix the length instead (at least 4 MiB); the task ID then includes it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import NamedTuple

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

MIN_PIECE_LENGTH = 4 * MiB
MAX_PIECE_LENGTH = 64 * MiB
#: Upper bound on a user-chosen piece length: a piece is held in memory whole while it
#: is verified, so an absurd length would exhaust memory rather than fail clearly.
MAX_USER_PIECE_LENGTH = 1 * GiB
TARGET_PIECE_COUNT = 500
#: Tasks at or below this size are answered inline by the scheduler (Dragonfly's TINY).
TINY_TASK_MAX_LENGTH = 128


class SizeScope(enum.Enum):
    """How the scheduler treats a task, by its content length."""

    EMPTY = "EMPTY"  # 0 bytes: nothing to transfer
    TINY = "TINY"  # 1..128 bytes: the scheduler answers with the bytes themselves
    SMALL = "SMALL"  # exactly one piece: one parent, no piece picking
    NORMAL = "NORMAL"  # several pieces: the full P2P path


class Piece(NamedTuple):
    """One piece of a task: its number and the byte span [offset, offset + length)."""

    number: int
    offset: int
    length: int

    @property
    def end(self) -> int:
        """One past the last byte of the piece."""
        return self.offset + self.length


def _check_length(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def validate_piece_length(piece_length: int) -> int:
    """Check a user-chosen piece length: an int in [4 MiB, 1 GiB]; return it."""
    _check_length("piece_length", piece_length)
    if piece_length < MIN_PIECE_LENGTH:
        raise ValueError(
            f"piece_length {piece_length} is below the minimum of {MIN_PIECE_LENGTH} "
            f"(4 MiB): give at least 4 MiB or leave it unset to derive it from the length"
        )
    if piece_length > MAX_USER_PIECE_LENGTH:
        raise ValueError(
            f"piece_length {piece_length} is above the maximum of {MAX_USER_PIECE_LENGTH} "
            f"(1 GiB): pieces are verified in memory, choose a smaller length"
        )
    return piece_length


def compute_piece_length(content_length: int | None, user_piece_length: int | None = None) -> int:
    """The piece length for a task.

    ``user_piece_length`` wins when given. Otherwise the next power of two of
    ``content_length // 500`` clamped to [4 MiB, 64 MiB]; an unknown length (``None``,
    an origin that sends no Content-Length) gets the minimum, 4 MiB.
    """
    if user_piece_length is not None:
        return validate_piece_length(user_piece_length)
    if content_length is None:
        return MIN_PIECE_LENGTH
    _check_length("content_length", content_length)
    wanted = content_length // TARGET_PIECE_COUNT
    power = 1 << max(wanted - 1, 0).bit_length()  # next power of two >= wanted
    return min(max(power, MIN_PIECE_LENGTH), MAX_PIECE_LENGTH)


def piece_count(content_length: int, piece_length: int) -> int:
    """How many pieces cover ``content_length`` bytes (0 for an empty task)."""
    _check_length("content_length", content_length)
    _check_positive_piece_length(piece_length)
    return -(-content_length // piece_length)


def _check_positive_piece_length(piece_length: int) -> None:
    _check_length("piece_length", piece_length)
    if piece_length == 0:
        raise ValueError("piece_length must be > 0, got 0")


def piece_at(number: int, content_length: int, piece_length: int) -> Piece:
    """Piece ``number`` of a task; IndexError when the task has no such piece."""
    count = piece_count(content_length, piece_length)
    if isinstance(number, bool) or not isinstance(number, int):
        raise TypeError(f"piece number must be an int, got {number!r}")
    if not 0 <= number < count:
        raise IndexError(
            f"piece {number} out of range: a task of {content_length} bytes in pieces of "
            f"{piece_length} has {count} pieces (0..{count - 1})"
        )
    offset = number * piece_length
    return Piece(number, offset, min(piece_length, content_length - offset))


def iter_pieces(content_length: int, piece_length: int) -> Iterator[Piece]:
    """Every piece of a task in order; the last one may be shorter."""
    count = piece_count(content_length, piece_length)
    for number in range(count):
        offset = number * piece_length
        yield Piece(number, offset, min(piece_length, content_length - offset))


def pieces_covering(start: int, length: int, piece_length: int) -> range:
    """Piece numbers that hold the bytes [start, start + length); empty for length 0."""
    _check_length("start", start)
    _check_length("length", length)
    _check_positive_piece_length(piece_length)
    if length == 0:
        return range(0)
    return range(start // piece_length, (start + length - 1) // piece_length + 1)


def size_scope(content_length: int, piece_length: int) -> SizeScope:
    """EMPTY (0 B), TINY (<= 128 B), SMALL (one piece) or NORMAL."""
    count = piece_count(content_length, piece_length)
    if content_length == 0:
        return SizeScope.EMPTY
    if content_length <= TINY_TASK_MAX_LENGTH:
        return SizeScope.TINY
    if count == 1:
        return SizeScope.SMALL
    return SizeScope.NORMAL
