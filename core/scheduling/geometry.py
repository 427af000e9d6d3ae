"""A task's geometry (length, piece length, piece count, size scope) as peers report it,
and the peers' piece bitmaps sized to match."""

from __future__ import annotations

from typing import Any

from d7y.core.pieces import compute_piece_length, piece_count, size_scope
from d7y.core.scheduling.errors import check_count
from d7y.core.scheduling.resource import Task
from d7y.core.scheduling.results import TaskMeta


def task_meta(task: Task) -> TaskMeta:
    """The task's metadata as results carry it (cached until the geometry changes)."""
    meta = task.meta
    if meta is None:
        meta = task.meta = TaskMeta(
            task.id, task.content_length, task.piece_length, task.piece_count
        )
    return meta


class Geometry:
    """Learns tasks' geometry and keeps their peers' piece bitmaps sized to it, with one
    bitmap backend class (``d7y.ext.bitmap``'s Cython kernel or its Python twin)."""

    __slots__ = ("cls",)

    def __init__(self, cls: Any) -> None:
        self.cls = cls

    def full_bitmap(self, size: int) -> Any:
        """A bitmap with all ``size`` pieces set."""
        data = bytearray(b"\xff" * ((size + 7) // 8))
        if size % 8:
            data[-1] = (0xFF << (8 - size % 8)) & 0xFF
        return self.cls.from_bytes(bytes(data), size)

    def grown_bitmap(self, bitmap: Any, needed: int) -> Any:
        """A copy of a growing bitmap (task length unknown) able to hold ``needed`` pieces."""
        size = max(needed, 2 * len(bitmap), 64)
        return self.resized_bitmap(bitmap, size)

    def resized_bitmap(self, bitmap: Any, size: int) -> Any:
        # Piece i lives in byte i // 8 whatever the size (BitTorrent order), so resizing
        # is appending or dropping whole bytes and zeroing the new pad bits.
        data = bitmap.to_bytes()
        want = (size + 7) // 8
        if len(data) < want:
            data += bytes(want - len(data))
        else:
            data = data[:want]
            if size % 8 and data:
                mask = (0xFF << (8 - size % 8)) & 0xFF
                data = data[:-1] + bytes([data[-1] & mask])
        return self.cls.from_bytes(data, size)

    def learn(self, task: Task, content_length: int | None, piece_length: int | None) -> None:
        """Learn a task's length and piece length; a value that contradicts what is
        known is a ValueError (two origins disagree, or a caller bug). The piece length
        defaults to the one DESIGN derives from the length. Once the piece count is
        known, every peer's bitmap is resized to it."""
        if content_length is None and piece_length is None:
            return
        if content_length is not None:
            check_count("content_length", content_length)
            if task.content_length is not None and task.content_length != content_length:
                raise ValueError(
                    f"task {task.id}: content_length {content_length} contradicts the known "
                    f"{task.content_length}"
                )
        if piece_length is not None:
            check_count("piece_length", piece_length, 1)
            if task.piece_length is not None and task.piece_length != piece_length:
                raise ValueError(
                    f"task {task.id}: piece_length {piece_length} contradicts the known "
                    f"{task.piece_length}"
                )
        new_length = content_length if content_length is not None else task.content_length
        new_piece_length = piece_length if piece_length is not None else task.piece_length
        if new_piece_length is None and new_length is not None:
            new_piece_length = compute_piece_length(new_length)
        new_count = task.piece_count
        if new_count is None and new_length is not None and new_piece_length is not None:
            new_count = piece_count(new_length, new_piece_length)
            for peer in task.peers.values():
                highest = len(peer.finished) - 1
                while highest >= 0 and not peer.finished.test(highest):
                    highest -= 1
                if highest >= new_count:
                    raise ValueError(
                        f"task {task.id}: a length of {new_length} bytes gives {new_count} "
                        f"pieces, but peer {peer.id} reported piece {highest}"
                    )
        changed = (
            new_length != task.content_length
            or new_piece_length != task.piece_length
            or new_count != task.piece_count
        )
        if not changed:
            return
        task.content_length = new_length
        task.piece_length = new_piece_length
        if new_count is not None and task.piece_count is None:
            task.piece_count = new_count
            task.scope = size_scope(new_length, new_piece_length)  # type: ignore[arg-type]
            for peer in task.peers.values():
                peer.finished = self.resized_bitmap(peer.finished, new_count)
        task.meta = None


__all__ = ["Geometry", "task_meta"]
