"""PieceVerifier: each stored piece is read back once per start and per change of its file.

File times are set explicitly (``age``): a change is a new modification time, and a file
modified in the last RACY_SECONDS is never trusted; the clock's granularity plays no
part in these tests.
"""

from __future__ import annotations

import os
import time
import zlib
from pathlib import Path

from d7y.core.pieces import iter_pieces
from d7y.daemons.peer.verify import RACY_SECONDS, PieceVerifier

PIECE = 4096
SIZE = 3 * PIECE + 100


def age(path: Path, seconds: float) -> None:
    """Make the file's last modification ``seconds`` ago."""
    stamp = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(stamp, stamp))


def stored(tmp_path: Path) -> tuple[Path, dict[int, str], list]:
    data = os.urandom(SIZE)
    path = tmp_path / "content"
    path.write_bytes(data)
    age(path, 3600)
    pieces = list(iter_pieces(SIZE, PIECE))
    digests = {
        p.number: f"crc32:{zlib.crc32(data[p.offset : p.offset + p.length])}" for p in pieces
    }
    return path, digests, pieces


def check(verifier: PieceVerifier, path: Path, pieces, digests, **kw) -> list[int]:
    fd = os.open(path, os.O_RDONLY)
    try:
        return verifier.check("t", fd, pieces, digests, **kw)
    finally:
        os.close(fd)


def damage(path: Path, offset: int, seconds_ago: float = 60) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"\xff\x00\xff\x00", offset)
    finally:
        os.close(fd)
    age(path, seconds_ago)


def test_good_pieces_pass_and_damaged_or_unrecorded_ones_do_not(tmp_path):
    path, digests, pieces = stored(tmp_path)
    verifier = PieceVerifier()
    assert check(verifier, path, pieces, digests) == []
    damage(path, PIECE + 1)
    assert check(verifier, path, pieces, digests) == [1]  # the file changed: read again
    del digests[3]
    assert check(verifier, path, pieces, digests) == [1, 3]


def test_a_checked_file_is_not_read_again_until_it_changes(tmp_path):
    path, digests, pieces = stored(tmp_path)
    verifier = PieceVerifier()
    assert check(verifier, path, pieces, digests) == []
    # Same stamp: the result is remembered; the file is not read again (proven by
    # emptying it behind the verifier's back and restoring its stamp).
    data, stat = path.read_bytes(), path.stat()
    path.write_bytes(b"\0" * SIZE)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert check(verifier, path, pieces, digests) == []
    # A piece counts as checked only against the digest it matched.
    other = {**digests, 2: "crc32:0"}
    assert check(verifier, path, pieces, other) == [2]
    assert check(verifier, path, pieces, digests, fresh=True) == [0, 1, 2, 3]
    path.write_bytes(data)


def test_while_a_download_writes_the_file_its_landed_pieces_are_trusted(tmp_path):
    path, digests, pieces = stored(tmp_path)
    verifier = PieceVerifier()
    for piece in pieces:
        verifier.landed("t", piece.number, digests[piece.number])
    damage(path, 10, 0)  # stands in for the download's own next write
    age(path, 120)
    assert check(verifier, path, pieces, digests, writing=True) == []
    # The download ends: the file is stamped; a later change means someone else.
    verifier.settle("t", path)
    assert check(verifier, path, pieces, digests) == []
    damage(path, 2 * PIECE + 5)
    assert check(verifier, path, pieces, digests) == [0, 2]


def test_a_file_modified_moments_ago_is_read_every_time(tmp_path):
    """Its modification time could hide a second write in the same clock tick."""
    path, digests, pieces = stored(tmp_path)
    verifier = PieceVerifier()
    age(path, RACY_SECONDS / 4)
    mtime = path.stat().st_mtime_ns
    assert check(verifier, path, pieces, digests) == []
    damage(path, 5, 0)
    os.utime(path, ns=(mtime, mtime))  # a second write in the same clock tick
    assert check(verifier, path, pieces, digests) == [0]  # read again: not trusted
