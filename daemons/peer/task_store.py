"""Local storage as a download sees it: one typed API for every path that stores a task.

The origin path (task_manager.py) and the P2P path (p2p.py) both store a task through a
:class:`TaskStore`, over the content files and metadata of storage.py:

- writing: :meth:`TaskStore.begin` (the task's row), :meth:`TaskStore.open` (its content
  file, making room by GC when the disk is full) giving a :class:`TaskFile`, whose
  :meth:`~TaskFile.resume` keeps the recorded pieces that still match their digest and
  whose :meth:`~TaskFile.land` writes, records and announces one piece (or, for bytes
  written as they arrive through a :class:`PieceSink`, :meth:`~TaskFile.land_written`
  records and announces it);
  :meth:`TaskStore.finish_writing` once the download is over;
- reading: :meth:`TaskStore.load_whole` (a finished task, checked), :meth:`read_in_order`
  (the bytes from the start while they land), :meth:`verify_whole` (a whole-content
  digest), :meth:`read_content` (a tiny task's bytes);
- serving: :meth:`TaskStore.check_before_serving` and :meth:`TaskStore.drop_damaged`;
- holding: :meth:`TaskStore.pin` (what GC must not touch), :meth:`TaskStore.delete`,
  :meth:`TaskStore.mark_succeeded` / :meth:`TaskStore.mark_failed`.

The rules hold whoever calls: a piece's bytes are in the file before its row is in the
metadata, and the row carries the CRC-32 of the very bytes written; recorded pieces are
read back and checked before a resumed download counts them and before they leave this
daemon (verify.py); a file this daemon is writing is trusted as its pieces land and is
stamped when the writing ends.

The store knows nothing of schedulers or origins. What others must learn from it goes
out through two listener lists: ``piece_listeners`` (a piece was stored; the piece server
pushes it to subscribed children) and ``withdrawn_listeners`` (a task is no longer held:
deleted, or damaged while held whole; the P2P path tells the scheduler).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import Counter as Multiset
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from d7y.core.digest import Digest, DigestMismatch
from d7y.core.pieces import Piece, iter_pieces, piece_count
from d7y.daemons.peer.metrics import PeerMetrics
from d7y.daemons.peer.receiving import ReceivingPieces
from d7y.daemons.peer.storage import (
    TASK_FAILED,
    TASK_SUCCEEDED,
    NoSpaceError,
    Storage,
    TaskRecord,
    now,
)
from d7y.daemons.peer.task import DownloadError, FailureKind, Task
from d7y.daemons.peer.verify import PieceVerifier
from d7y.ext.bitmap import Bitmap
from d7y.ext.crc32 import crc32

log = logging.getLogger("d7y.dfdaemon.task")

#: Whole-content digests and in-order reads go through the file in blocks of this size.
READ_BLOCK = 1024 * 1024

#: Where a piece came from when it was answered inline by the scheduler (a tiny task).
FROM_SCHEDULER = "scheduler"
#: Where a piece came from when it was fetched from the origin.
FROM_ORIGIN = "origin"

#: Held digests of a task as a caller may already have them:
#: (content_length, piece_length, {number: digest}).
HeldPieces = tuple[int, int, dict[int, str]]
PieceListener = Callable[[str, int, str], None]
WithdrawnListener = Callable[[str], Awaitable[None]]


class TaskStore:
    """The peer's tasks on disk, for the download paths and the servers."""

    def __init__(
        self,
        storage: Storage,
        *,
        metrics: PeerMetrics | None = None,
        make_room: Callable[[int], Awaitable[object]] | None = None,
    ) -> None:
        """``make_room(n)`` is called once when a new task of n bytes does not fit (GC
        may free enough space); the open is then tried again."""
        self.storage = storage
        self.metrics = metrics or PeerMetrics()
        self.make_room = make_room
        # Which stored pieces were read back and checked since start (verify.py).
        self.verifier = PieceVerifier()
        # Called as (task_id, piece number, digest) after each piece is stored and
        # recorded (the piece server pushes HavePieces to subscribed children).
        self.piece_listeners: list[PieceListener] = []
        # Pieces being received from parents (cut-through relaying): the P2P path fills
        # it, the piece server announces and serves from it.
        self.receiving = ReceivingPieces()
        # Awaited with the task ID when a task stops being held here (the P2P path
        # tells the scheduler to stop sending children for it).
        self.withdrawn_listeners: list[WithdrawnListener] = []
        self._pins: Multiset[str] = Multiset()
        self._writing: set[str] = set()  # tasks whose content file a download writes

    # -- pins: what GC must not touch --------------------------------------------------

    @contextlib.contextmanager
    def pin(self, task_id: str) -> Iterator[None]:
        """Mark a task busy (uploading, exporting, read in order) while the block runs."""
        self._pins[task_id] += 1
        try:
            yield
        finally:
            self._pins[task_id] -= 1
            if self._pins[task_id] <= 0:
                del self._pins[task_id]

    def pinned(self) -> set[str]:
        return set(self._pins)

    # -- task records ------------------------------------------------------------------

    async def record(self, task_id: str) -> TaskRecord | None:
        return await self.storage.run(self.storage.meta.get_task, task_id)

    async def records(self) -> list[TaskRecord]:
        """Every stored task's row, least recently used first."""
        return await self.storage.run(self.storage.meta.list_tasks)

    async def recorded_digests(self, task_id: str) -> dict[int, str]:
        """number -> digest of the pieces recorded for a task (not checked here)."""
        stored = await self.storage.run(self.storage.meta.pieces, task_id)
        return {number: digest for number, (digest, _source) in stored.items()}

    async def begin(
        self,
        task: Task,
        previous: TaskRecord | None,
        *,
        expected_digest: str = "",
        etag: str = "",
        last_modified: str = "",
    ) -> TaskRecord:
        """Write the row of a download starting with the task's current geometry (state
        running); its pieces stay. ``previous`` is the row it replaces, if any (its
        creation time is kept); the validators are the origin's, when it gave any."""
        stamp = now()
        record = TaskRecord(
            id=task.id,
            url=task.request.url,
            content_length=task.content_length,
            piece_length=task.piece_length,
            expected_digest=expected_digest,
            etag=etag,
            last_modified=last_modified,
            created_at=previous.created_at if previous else stamp,
            updated_at=stamp,
            last_access=stamp,
        )
        await self.storage.run(self.storage.meta.put_task, record)
        return record

    async def mark_succeeded(self, task: Task) -> None:
        stamp = now()
        await self.storage.run(
            lambda: self.storage.meta.update_task(
                task.id,
                state=TASK_SUCCEEDED,
                content_length=task.content_length,
                error="",
                updated_at=stamp,
                last_access=stamp,
            )
        )

    async def mark_failed(self, task_id: str, reason: str) -> None:
        """Record why a task failed, if it has a row (its verified pieces stay)."""
        if await self.record(task_id) is None:
            return
        await self.storage.run(
            lambda: self.storage.meta.update_task(
                task_id, state=TASK_FAILED, error=reason, updated_at=now()
            )
        )

    async def delete(self, task_id: str) -> None:
        """Remove a task: metadata, then bytes (never claim missing bytes); the
        withdrawn listeners learn that it is no longer held here."""
        try:
            await self.storage.run(self.storage.delete_task, task_id)
        finally:
            self.verifier.forget(task_id)
        for listener in self.withdrawn_listeners:
            await listener(task_id)

    async def remove_content(self, task_id: str) -> None:
        """Remove a task's bytes even when its metadata could not be deleted (a full
        disk): a row without bytes is dropped by the checks of the next download."""
        await self.storage.run(self.storage.remove_content, task_id)

    # -- writing -----------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def open(self, task: Task, content_length: int | None) -> AsyncIterator[TaskFile]:
        """Open the task's content file for a download (reserving ``content_length``
        bytes; GC makes room once when the disk is full). Until :meth:`finish_writing`
        its pieces are trusted as they land."""
        try:
            fd = await self.storage.run(self._open, task.id, content_length)
        except DownloadError as exc:
            if exc.kind is not FailureKind.NO_SPACE or self.make_room is None:
                raise
            await self.make_room(content_length or 0)
            fd = await self.storage.run(self._open, task.id, content_length)
        self._writing.add(task.id)
        try:
            yield TaskFile(self, task, fd)
        finally:
            os.close(fd)

    def _open(self, task_id: str, content_length: int | None) -> int:
        try:
            return self.storage.open_for_write(task_id, content_length)
        except NoSpaceError as exc:
            raise DownloadError(FailureKind.NO_SPACE, exc.strerror or str(exc)) from None
        except OSError as exc:
            raise DownloadError(
                FailureKind.INTERNAL, f"cannot open content file for task {task_id}: {exc}"
            ) from None

    async def finish_writing(self, task_id: str) -> None:
        """The download of a task ended: from now on a change of its file means someone
        else changed it (the file is stamped, verify.py)."""
        if task_id not in self._writing:
            return
        self._writing.discard(task_id)
        # settle() handles a missing or unreadable file itself (one stat).
        await self.storage.run(self.verifier.settle, task_id, self.storage.content_path(task_id))

    # -- reading -----------------------------------------------------------------------

    async def load_whole(self, task: Task, record: TaskRecord, expected: Digest | None) -> bool:
        """Fill ``task`` from a finished task's storage, every piece checked first;
        False (and the task dropped or its damaged pieces forgotten) when its bytes went
        missing or do not match. Raises DownloadError (DIGEST) when ``expected`` does
        not match the whole content."""
        path = self.storage.content_path(task.id)
        if record.content_length is None or not path.exists():
            await self.delete(task.id)
            return False
        digests = await self.recorded_digests(task.id)
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # Read back and check every piece not checked since start or since the file
            # changed (a piece with no row counts as damaged too): nothing unverified
            # is output. Damaged pieces are dropped and the download fetches them again.
            pieces = list(iter_pieces(record.content_length, record.piece_length))
            bad = await self.storage.run(lambda: self.verifier.check(task.id, fd, pieces, digests))
            if bad:
                await self.drop_damaged(task.id, bad, running=None)
                return False
            task.content_length = record.content_length
            task.piece_length = record.piece_length
            task.bitmap = Bitmap(len(pieces))
            for number in range(len(pieces)):
                task.bitmap.set(number)
            task.digests.update(digests)
            task.completed_bytes = record.content_length
            task.from_cache = True
            if expected is not None:
                await self._verify_whole(task.id, fd, expected)
        finally:
            os.close(fd)
        await self.storage.run(lambda: self.storage.meta.update_task(task.id, last_access=now()))
        return True

    async def verify_whole(self, task_id: str, expected: Digest) -> None:
        """Hash the stored content; DownloadError (DIGEST) on a mismatch."""
        fd = os.open(self.storage.content_path(task_id), os.O_RDONLY | os.O_CLOEXEC)
        try:
            await self._verify_whole(task_id, fd, expected)
        finally:
            os.close(fd)

    async def _verify_whole(self, task_id: str, fd: int, expected: Digest) -> None:
        def compute() -> Digest:
            hasher = expected.hasher()
            buffer = bytearray(READ_BLOCK)
            offset = 0
            while True:
                n = self.storage.read_into(fd, offset, memoryview(buffer))
                if n == 0:
                    break
                hasher.update(memoryview(buffer)[:n])
                offset += n
            return hasher.digest()

        actual = await self.storage.run(compute)
        try:
            expected.verify(actual, what=f"task {task_id}")
        except DigestMismatch as exc:
            raise DownloadError(FailureKind.DIGEST, str(exc)) from None

    async def read_content(self, task_id: str, length: int) -> bytes:
        """The first ``length`` bytes of a stored task (a tiny task, sent inline)."""
        return await self.storage.run(self.storage.read_content, task_id, length)

    async def read_in_order(
        self, task: Task, block: int = READ_BLOCK, *, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Yield a task's bytes [start, end) in order (to its end when ``end`` is None),
        each piece as soon as it has landed.

        Used for ``dfget -O -`` (stdout) and HTTP clients of a running task. Raises the
        task's DownloadError if it fails before the bytes are all out; stops short (the
        caller sees fewer bytes) when the download ends without a piece it needs (a
        partial download that was not asked for it). ``start`` > 0 needs the geometry.
        """
        path = self.storage.content_path(task.id)
        offset = start
        with self.pin(task.id):
            fd = None
            try:
                while True:
                    limit = task.content_length
                    if limit is not None and end is not None:
                        limit = min(limit, end)
                    if limit is not None and offset >= limit:
                        return
                    number = offset // task.piece_length if task.piece_length else 0
                    if task.has_piece(number):
                        if fd is None:
                            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                        stop = min((number + 1) * task.piece_length, limit or 0)
                        while offset < stop:
                            buffer = bytearray(min(block, stop - offset))
                            n = await self.storage.run(
                                self.storage.read_into, fd, offset, memoryview(buffer)
                            )
                            if n == 0:
                                raise DownloadError(
                                    FailureKind.INTERNAL, f"content of task {task.id} shrank"
                                )
                            offset += n
                            yield bytes(buffer[:n]) if n < len(buffer) else bytes(buffer)
                        continue
                    if task.done.done():
                        task.done.result()  # raises the failure
                        if task.content_length is None or not task.has_piece(number):
                            return
                        continue
                    await task.wait_change(timeout=1.0)
            finally:
                if fd is not None:
                    os.close(fd)

    # -- checking stored pieces before they leave ------------------------------------

    async def check_before_serving(
        self,
        task_id: str,
        offset: int,
        length: int,
        held: HeldPieces | None,
        *,
        running: Task | None,
    ) -> str | None:
        """Check the stored pieces that bytes [offset, offset + length) of a task touch,
        before they are served (HTTP /download, the piece port). None when they are
        good; otherwise a one-line reason, and the damaged pieces were dropped (the next
        download of the task fetches them again).

        ``held`` is (content_length, piece_length, {number: digest}) when the caller
        already read them; else they come from ``running`` (the task's download in this
        daemon, if one runs) or the metadata.
        """
        if held is None:
            if running is not None and running.bitmap is not None and running.content_length:
                held = (running.content_length, running.piece_length, dict(running.digests))
            else:
                record = await self.record(task_id)
                if record is None or record.content_length is None:
                    return f"task {task_id} is not held here"
                digests = await self.recorded_digests(task_id)
                held = (record.content_length, record.piece_length, digests)
        content_length, piece_length, digests = held
        if length <= 0 or content_length <= 0:
            return None
        first = offset // piece_length
        last = (offset + length - 1) // piece_length
        pieces = [p for p in iter_pieces(content_length, piece_length) if first <= p.number <= last]
        writing = task_id in self._writing
        try:
            fd = os.open(self.storage.content_path(task_id), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return f"the content of task {task_id} is gone"
        try:
            bad = await self.storage.run(
                lambda: self.verifier.check(task_id, fd, pieces, digests, writing=writing)
            )
        finally:
            os.close(fd)
        if not bad:
            return None
        await self.drop_damaged(task_id, bad, running=running)
        return (
            f"piece {', '.join(map(str, bad))} of task {task_id} failed its CRC-32 check on "
            f"disk and was dropped; it is fetched again by the next download of the task"
        )

    async def drop_damaged(self, task_id: str, numbers: list[int], *, running: Task | None) -> None:
        """Pieces whose stored bytes do not match their digest: count them, forget them
        (the next download fetches them again). ``running`` is the task's download in
        this daemon: its claims are kept true. Without one the task was held whole: it
        is no longer offered (state failed, and the withdrawn listeners are told)."""
        self.metrics.corrupt_pieces.inc(len(numbers))
        log.warning(
            "stored pieces failed their CRC-32 check, dropped to be fetched again "
            "task=%s pieces=%s",
            task_id,
            numbers,
        )
        await self.storage.run(self.storage.meta.forget_pieces, task_id, numbers)
        if running is not None:
            if running.bitmap is not None:
                for number in numbers:
                    if number < len(running.bitmap) and running.bitmap.test(number):
                        # A running download would report it held: keep its claims true.
                        running.digests.pop(number, None)
            return
        reason = f"stored pieces {numbers} were damaged on disk and were dropped"
        await self.storage.run(
            lambda: self.storage.meta.update_task(
                task_id, state=TASK_FAILED, error=reason, updated_at=now()
            )
        )
        for listener in self.withdrawn_listeners:
            await listener(task_id)


class TaskFile:
    """A task's content file opened by its download (:meth:`TaskStore.open`): the one
    way its pieces land. It keeps the task's piece map, digests and byte counts true."""

    def __init__(self, store: TaskStore, task: Task, fd: int) -> None:
        self.store = store
        self.task = task
        self.fd = fd
        # Sinks of one file write one at a time: the filesystem serialises writes to a
        # file anyway (its inode lock), and threads spinning on that lock burned more
        # CPU than the copies (bench/RESULTS.md); a waiter here sleeps instead.
        self._sink_lock = threading.Lock()

    async def resume(self) -> None:
        """Load recorded pieces, keeping only those whose bytes still match their CRC."""
        task, store = self.task, self.store
        assert task.content_length is not None
        count = piece_count(task.content_length, task.piece_length)
        task.bitmap = Bitmap(count)
        digests = await store.recorded_digests(task.id)
        if not digests:
            return
        pieces = {p.number: p for p in iter_pieces(task.content_length, task.piece_length)}
        recorded = [pieces[n] for n in sorted(digests) if n in pieces]
        # Recorded is not verified: the bytes may have been torn by a crash or damaged
        # on disk since. Every recorded piece is read back and checked (fresh: whatever
        # was checked before this download started counts for nothing).
        damaged = await store.storage.run(
            lambda: store.verifier.check(task.id, self.fd, recorded, digests, fresh=True)
        )
        for piece in recorded:
            if piece.number in damaged:
                continue
            task.bitmap.set(piece.number)
            task.digests[piece.number] = digests[piece.number]
            task.completed_bytes += piece.length
        if damaged:
            await store.drop_damaged(task.id, damaged, running=task)
        beyond = [n for n in digests if n not in pieces]
        if beyond:  # rows of another geometry: nothing to check, nothing to keep
            await store.storage.run(store.storage.meta.forget_pieces, task.id, beyond)
        log.info(
            "resuming task=%s pieces_present=%d pieces_total=%d",
            task.id,
            task.bitmap.count(),
            count,
        )

    async def land(self, piece: Piece, data: memoryview, source: str) -> str:
        """Write a piece, then record it (the order that keeps metadata truthful), then
        tell the task's waiters and the piece listeners; returns its digest.

        ``source`` is :data:`FROM_ORIGIN`, :data:`FROM_SCHEDULER` (inline content) or
        the parent's peer ID.
        """
        storage = self.store.storage
        digest = f"crc32:{crc32(data)}"
        await storage.run(_write, storage, self.fd, piece, 0, data)
        return await self._record(piece, digest, source)

    def sink(self, piece: Piece) -> PieceSink:
        """A writer for ``piece``'s bytes as they arrive, in order (from a thread);
        :meth:`land_written` records the piece once all are in."""
        return PieceSink(self.store.storage, self.fd, piece, self._sink_lock)

    async def land_written(self, sink: PieceSink, source: str) -> str:
        """Record a piece whose bytes ``sink`` wrote (all of them: else ValueError), with
        the CRC-32 computed from those bytes, and announce it; returns its digest."""
        if sink.written != sink.piece.length:
            raise ValueError(
                f"piece {sink.piece.number} has {sink.written} of its "
                f"{sink.piece.length} bytes written"
            )
        return await self._record(sink.piece, f"crc32:{sink.crc}", source)

    async def _record(self, piece: Piece, digest: str, source: str) -> str:
        task, store = self.task, self.store
        storage = store.storage
        store.verifier.landed(task.id, piece.number, digest)  # computed from the bytes written
        try:
            await storage.run(storage.meta.record_piece, task.id, piece.number, digest, source)
        except NoSpaceError as exc:
            raise DownloadError(FailureKind.NO_SPACE, exc.strerror or str(exc)) from None
        if task.bitmap is not None:
            task.bitmap.set(piece.number)
        task.digests[piece.number] = digest
        task.completed_bytes += piece.length
        metrics = store.metrics
        if source == FROM_ORIGIN:
            task.bytes_from_origin += piece.length
            metrics.bytes_from_origin.inc(piece.length)
        elif source != FROM_SCHEDULER:
            task.bytes_from_peers += piece.length
            metrics.bytes_from_peers.inc(piece.length)
        metrics.pieces.labels("origin" if source == FROM_ORIGIN else "peer").inc()
        task.notify_change()
        for listener in store.piece_listeners:
            try:
                listener(task.id, piece.number, digest)
            except Exception:  # a listener's bug must not fail the download
                log.exception("piece listener failed task=%s piece=%d", task.id, piece.number)
        return digest

    async def restart(self) -> None:
        """Forget every recorded piece: a stream from the start cannot skip any."""
        await self.store.storage.run(self.store.storage.meta.forget_pieces, self.task.id)
        self.task.digests.clear()
        self.task.completed_bytes = 0

    async def truncate(self, length: int) -> None:
        """Cut the file to ``length`` bytes (a stream ended shorter than reserved)."""
        await self.store.storage.run(os.ftruncate, self.fd, length)


class PieceSink:
    """One piece's bytes written to the content file as they arrive (a fetcher's worker
    thread calls :meth:`write` with consecutive chunks), the CRC-32 computed from each
    chunk on the way while it is in the cache. Nothing is recorded until
    :meth:`TaskFile.land_written`: a piece cut short is only bytes without a row, which
    no reader trusts (the next attempt writes over them)."""

    def __init__(self, storage: Storage, fd: int, piece: Piece, lock: threading.Lock) -> None:
        self.piece = piece
        self.written = 0
        self.crc = 0
        self._storage = storage
        self._fd = fd
        self._lock = lock

    def write(self, data: memoryview) -> None:
        """Blocking: write the next ``len(data)`` bytes of the piece."""
        if self.written + len(data) > self.piece.length:
            raise ValueError(
                f"{self.written + len(data)} bytes for piece {self.piece.number} of "
                f"{self.piece.length} bytes"
            )
        self.crc = crc32(data, self.crc)
        with self._lock:
            _write(self._storage, self._fd, self.piece, self.written, data)
        self.written += len(data)

    def restart(self) -> None:
        """The piece's body starts over (an attempt broke off): the next write is its
        first byte again."""
        self.written = 0
        self.crc = 0


def _write(storage: Storage, fd: int, piece: Piece, at: int, data: memoryview) -> None:
    """Blocking: ``data`` at ``at`` bytes into ``piece``; a write failure becomes the
    download's failure (a full disk: NO_SPACE, with the sentence for the user)."""
    try:
        storage.write_piece(fd, piece.offset + at, data)
    except NoSpaceError as exc:
        raise DownloadError(FailureKind.NO_SPACE, exc.strerror or str(exc)) from None
    except OSError as exc:
        raise DownloadError(
            FailureKind.INTERNAL, f"cannot write piece {piece.number}: {exc}"
        ) from None


__all__ = ["FROM_ORIGIN", "FROM_SCHEDULER", "HeldPieces", "PieceSink", "TaskFile", "TaskStore"]
