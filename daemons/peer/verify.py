"""Stored pieces are checked against their recorded CRC-32 before their bytes leave.

A piece's digest is computed from the bytes in memory when it lands, but the content
file can change afterwards: a disk that rots, a process that writes to it, a user who
edits dfget's output in place (the output is a hard link to the content file). Nothing
of that may reach a user or another peer. So every piece is read back and checked
once before it is output or served, after each start of the daemon and after each
change of its file, and the result is remembered, so the check costs one read per piece
and not one per request.

"A change of the file" is a change of its stamp (inode, size, modification time) since
the pieces were checked. A file this daemon is writing (a download running here)
changes under its own hand; its pieces are trusted as they land, because their digest
was computed from the bytes written, and the file is stamped again when the download
ends. Modification times are coarse (a clock tick, up to seconds on some filesystems):
a stamp taken less than :data:`RACY_SECONDS` after the file's last modification could
miss a second write in the same tick, so such a "racy" stamp (git's term) is never
trusted, and its pieces are read again until the file has been quiet that long.

Blocking calls (:meth:`PieceVerifier.check`) read the file; the daemon runs them on its
storage threads.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable

from d7y.core.pieces import Piece
from d7y.ext.crc32 import crc32

__all__ = ["PieceVerifier"]

#: Pieces are read back in blocks of this size (a piece may be 64 MiB).
READ_BLOCK = 1024 * 1024
#: A stamp taken this soon after the file's modification time is not trusted.
RACY_SECONDS = 2.0

_Stamp = tuple[int, int, int]


class _Checked:
    """Pieces checked under one stamp (None: not trusted beyond this very check), each
    with the digest it matched: a piece counts as checked only against that digest."""

    __slots__ = ("digests", "stamp")

    def __init__(self, stamp: _Stamp | None) -> None:
        self.stamp = stamp
        self.digests: dict[int, str] = {}


class PieceVerifier:
    """Which pieces of which content files were checked, and under which stamp."""

    def __init__(self) -> None:
        self._checked: dict[str, _Checked] = {}
        self._lock = threading.Lock()  # check() runs on several storage threads

    def landed(self, task_id: str, number: int, digest: str) -> None:
        """A piece was written from bytes whose digest (``digest``) was just computed."""
        with self._lock:
            self._checked.setdefault(task_id, _Checked(None)).digests[number] = digest

    def settle(self, task_id: str, path: os.PathLike | str) -> None:
        """This daemon stopped writing the file: remember its stamp, so a later change
        by anyone else is noticed. Blocking (one stat)."""
        try:
            stamp = _stamp(os.stat(path))
        except OSError:
            stamp = None
        with self._lock:
            entry = self._checked.get(task_id)
            if entry is not None:
                entry.stamp = stamp

    def forget(self, task_id: str) -> None:
        """The task's file is gone or starts over."""
        with self._lock:
            self._checked.pop(task_id, None)

    def check(
        self,
        task_id: str,
        fd: int,
        pieces: Iterable[Piece],
        digests: dict[int, str],
        *,
        writing: bool = False,
        fresh: bool = False,
    ) -> list[int]:
        """Check ``pieces`` of the file open as ``fd`` against ``digests``; return the
        numbers of those that do not match (or have no digest, or are short on disk).

        Pieces already checked under the file's current stamp are not read again. With
        ``writing`` (a download of this task runs here) the stamp is not compared: this
        daemon's own writes change it. ``fresh`` forgets what was checked before (a
        download resuming from pieces recorded earlier checks them all). Blocking.
        """
        stamp = _stamp(os.fstat(fd))
        with self._lock:
            entry = self._checked.get(task_id)
            stale = stamp is None or entry is None or entry.stamp != stamp
            if fresh or entry is None or (not writing and stale):
                entry = _Checked(stamp)
                self._checked[task_id] = entry
            done = dict(entry.digests)
        bad: list[int] = []
        good: dict[int, str] = {}
        buffer: bytearray | None = None
        for piece in pieces:
            digest = digests.get(piece.number)
            if digest is None:
                bad.append(piece.number)  # no recorded digest: nothing vouches for it
                continue
            if done.get(piece.number) == digest:
                continue
            if buffer is None:
                buffer = bytearray(min(READ_BLOCK, max(piece.length, 1)))
            if _crc_on_disk(fd, piece, buffer) == digest:
                good[piece.number] = digest
            else:
                bad.append(piece.number)
        with self._lock:
            if self._checked.get(task_id) is entry:
                entry.digests.update(good)
        return bad


def _stamp(st: os.stat_result) -> _Stamp | None:
    """The file's stamp, or None when it is racy (see the module docstring)."""
    if time.time_ns() - st.st_mtime_ns < RACY_SECONDS * 1e9:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _crc_on_disk(fd: int, piece: Piece, buffer: bytearray) -> str | None:
    """``crc32:<n>`` of the piece's bytes in the file, or None when the file is short."""
    value = 0
    offset = piece.offset
    left = piece.length
    view = memoryview(buffer)
    while left:
        want = min(left, len(view))
        n = os.preadv(fd, [view[:want]], offset)
        if n == 0:
            return None
        value = crc32(view[:n], value)
        offset += n
        left -= n
    return f"crc32:{value}"
