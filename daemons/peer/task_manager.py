"""The download engine of the peer daemon: one task, one fetch.

A :class:`TaskManager` turns download requests into tasks. Requests for the same task
ID share one :class:`Task`; each task runs once, fetching its missing pieces from a
piece source (the origin here; other peers join in the P2P path) with a bounded number
of pieces in flight, computing every piece's CRC-32, writing it with pwrite at its
offset, and recording it in the metadata only after the bytes are in the file.

A finished task is answered from local storage without contacting the origin, after
its pieces are read back and checked against their recorded digests (once after each
start of the daemon or change of the file; see verify.py): a damaged piece is dropped and
fetched again, from peers or the origin. A task that was interrupted (daemon killed,
origin failure) keeps its verified pieces; the next request re-checks them against their
recorded digests and fetches only what is missing.

Pieces fetched from the origin must all be of the version the probe saw: an answer with
another ETag, Last-Modified or length (or a 200 to If-Range) restarts the task once from
scratch with the new version, and fails it (an origin error) if it changes again. A
download that a remote party caused (a seed peer triggered by the scheduler) fetches
through sources that enforce the outbound fetch policy (d7y.daemons.sources.policy).
The origin is whatever source the URL's scheme names (http, https, s3, oci: see
d7y.daemons.sources).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import errno
import logging
import os
import time
from collections import Counter as Multiset
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from d7y.core import messages as m
from d7y.core.digest import Digest, DigestMismatch
from d7y.core.ids import task_id as make_task_id
from d7y.core.pieces import (
    TINY_TASK_MAX_LENGTH,
    Piece,
    compute_piece_length,
    iter_pieces,
    piece_count,
)
from d7y.daemons.peer.limits import TokenBucket
from d7y.daemons.peer.metrics import PeerMetrics
from d7y.daemons.peer.scheduler_client import SchedulerUnavailable
from d7y.daemons.peer.storage import (
    TASK_FAILED,
    TASK_RUNNING,
    TASK_SUCCEEDED,
    NoSpaceError,
    Storage,
    StorageError,
    TaskRecord,
    now,
)
from d7y.daemons.peer.verify import PieceVerifier
from d7y.daemons.sources import (
    ContentChanged,
    Source,
    SourceError,
    SourceInfo,
    SourcePolicy,
    Sources,
    check_url,
)
from d7y.ext.bitmap import Bitmap
from d7y.ext.crc32 import crc32

log = logging.getLogger("d7y.dfdaemon.task")

#: Piece buffers held at once by one task: concurrency is lowered for big pieces so a
#: task never holds more than this in memory (16 x 4 MiB fits exactly).
PIECE_BUFFER_BUDGET = 64 * 1024 * 1024
HASH_BLOCK = 1024 * 1024


class FailureKind(enum.Enum):
    """Why a task failed; dfget maps each to its own exit code and message."""

    ORIGIN = "origin"  # the origin answered an error status or broke the transfer
    DIGEST = "digest"  # the content does not match the requested digest
    NO_SPACE = "no_space"  # the data dir is full (or the quota is reached)
    BAD_REQUEST = "bad_request"  # unsupported scheme, bad digest string, ...
    TIMEOUT = "timeout"
    NO_SOURCE = "no_source"  # back-to-source disabled and nothing else can serve
    INTERNAL = "internal"


class DownloadError(Exception):
    def __init__(self, kind: FailureKind, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status

    @classmethod
    def from_origin(cls, exc: SourceError) -> DownloadError:
        if isinstance(exc, ContentChanged):
            return ContentChangedError(str(exc), status=exc.status, validator=exc.validator)
        kind = FailureKind.BAD_REQUEST if exc.bad_input else FailureKind.ORIGIN
        return cls(kind, str(exc), status=exc.status)


class ContentChangedError(DownloadError):
    """The object changed at the origin under the download (an origin failure)."""

    def __init__(self, message: str, *, status: int | None, validator: str) -> None:
        super().__init__(FailureKind.ORIGIN, message, status=status)
        self.validator = validator


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


@dataclasses.dataclass
class DownloadRequest:
    """What dfget (or the proxy) asks for; the task ID is derived from it."""

    url: str
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    tag: str = ""
    application: str = ""
    filtered_query_params: list[str] | None = None
    piece_length: int | None = None
    digest: str = ""
    disable_back_to_source: bool = False
    priority: int = 0

    def task_id(self) -> str:
        return make_task_id(
            self.url,
            tag=self.tag or None,
            application=self.application or None,
            piece_length=self.piece_length,
            filtered_query_params=self.filtered_query_params,
        )


class Task:
    """A task being downloaded (or served from storage) and the people waiting on it."""

    def __init__(self, task_id: str, request: DownloadRequest) -> None:
        self.id = task_id
        self.request = request
        self.content_length: int | None = None
        self.piece_length = 0
        self.bitmap: Bitmap | None = None
        self.digests: dict[int, str] = {}
        self.completed_bytes = 0
        self.bytes_from_origin = 0
        self.bytes_from_peers = 0
        self.from_cache = False
        self.peer_id = ""  # this download's peer ID at the scheduler
        self.stream = None  # its scheduler stream (a DownloadStream), when it has one
        self.restoring: asyncio.Future | None = None  # moving to a new stream (p2p.py)
        self.seed_trigger = False  # started by the scheduler's TriggerSeed
        self.streaming = False  # someone reads the bytes in order while they land
        self.started = time.monotonic()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changed = asyncio.Event()

    # -- progress notification -------------------------------------------------------

    def _notify(self) -> None:
        """Wake everyone waiting in :meth:`wait_change` (progress bars, stdout streams)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout: float | None = None) -> None:
        """Return after the next piece lands or the task ends (or ``timeout``)."""
        if self.done.done():
            return
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def has_piece(self, number: int) -> bool:
        return self.bitmap is not None and self.bitmap.test(number)

    def snapshot(self) -> dict[str, Any]:
        """Progress as plain data for the local API."""
        state = "running"
        error = None
        if self.done.done():
            exc = self.done.exception() if not self.done.cancelled() else None
            state = "failed" if exc or self.done.cancelled() else "succeeded"
            if isinstance(exc, DownloadError):
                error = {"kind": exc.kind.value, "message": str(exc), "status": exc.status}
            elif self.done.cancelled():
                error = {"kind": "internal", "message": "download cancelled", "status": None}
        return {
            "task_id": self.id,
            "state": state,
            "content_length": self.content_length,
            "piece_length": self.piece_length,
            "completed_bytes": self.completed_bytes,
            "bytes_from_origin": self.bytes_from_origin,
            "bytes_from_peers": self.bytes_from_peers,
            "from_cache": self.from_cache,
            "elapsed": time.monotonic() - self.started,
            "error": error,
        }


class TaskManager:
    """Runs tasks: at most one download per task ID, many readers."""

    def __init__(
        self,
        storage: Storage,
        sources: Sources,
        *,
        concurrency: int = 16,
        max_concurrent_tasks: int = 16,
        download_limiter: TokenBucket | None = None,
        metrics: PeerMetrics | None = None,
        make_room: Callable[[int], Awaitable[object]] | None = None,
        p2p=None,
        remote_sources: Sources | None = None,
    ) -> None:
        """``sources`` fetch for the local user (dfget); ``remote_sources`` for
        downloads a remote party caused (a seed peer triggered by the scheduler): they
        must carry the outbound fetch policy (by default one that refuses every
        internal address)."""
        self.storage = storage
        self.sources = sources
        if remote_sources is None:
            remote_sources = Sources(sources.settings, policy=SourcePolicy())
        if remote_sources.policy is None:
            raise ValueError("remote_sources must enforce a SourcePolicy")
        self.remote_sources = remote_sources
        # Which stored pieces were read back and checked since start (verify.py).
        self.verifier = PieceVerifier()
        self.concurrency = concurrency
        self.limiter = download_limiter or TokenBucket(0)
        self.metrics = metrics or PeerMetrics()
        # Called once when a new task of n bytes does not fit: GC may free enough space.
        self.make_room = make_room
        # The P2P path (a d7y.daemons.peer.p2p.P2PDownloader) when a scheduler is set.
        self.p2p = p2p
        # Called as (task_id, piece number, digest) after each piece is stored and
        # recorded (the piece server pushes HavePieces to subscribed children).
        self.piece_listeners: list[Callable[[str, int, str], None]] = []
        self._task_slots = asyncio.Semaphore(max_concurrent_tasks)
        self._running: dict[str, Task] = {}
        self._runners: set[asyncio.Task[None]] = set()
        self._pins: Multiset[str] = Multiset()
        self._writing: set[str] = set()  # tasks whose content file a download writes
        self._closing = False

    # -- pins: what GC must not touch --------------------------------------------------

    @contextlib.contextmanager
    def pin(self, task_id: str):
        """Mark a task busy (uploading, exporting) while the block runs."""
        self._pins[task_id] += 1
        try:
            yield
        finally:
            self._pins[task_id] -= 1
            if self._pins[task_id] <= 0:
                del self._pins[task_id]

    async def delete_task(self, task_id: str) -> None:
        """Remove a stored task (GC, the API): bytes, metadata, and its scheduler peer."""
        await self.storage.run(self.storage.delete_task, task_id)
        self.verifier.forget(task_id)
        if self.p2p is not None:
            await self.p2p.leave(task_id)

    def busy_task_ids(self) -> set[str]:
        return set(self._running) | set(self._pins)

    def running(self, task_id: str) -> Task | None:
        return self._running.get(task_id)

    def running_tasks(self) -> list[Task]:
        return list(self._running.values())

    # -- starting and joining ----------------------------------------------------------

    def start(
        self, request: DownloadRequest, *, seed_trigger: bool = False, streaming: bool = False
    ) -> Task:
        """Start the task for ``request`` or join the one already running.

        ``seed_trigger``: the scheduler asked this seed peer to fetch the task from the
        origin (it registers with need_back_to_source). ``streaming``: a consumer reads
        the bytes in order as they land (stdout, proxy), so the piece picker favours the
        next pieces in order."""
        if self._closing:
            raise DownloadError(FailureKind.INTERNAL, "dfdaemon is shutting down")
        try:
            tid = request.task_id()
        except (TypeError, ValueError) as exc:
            raise DownloadError(FailureKind.BAD_REQUEST, str(exc)) from None
        try:
            check_url(request.url)
        except SourceError as exc:
            raise DownloadError(FailureKind.BAD_REQUEST, str(exc)) from None
        task = self._running.get(tid)
        if task is not None:
            task.streaming = task.streaming or streaming
            return task
        task = Task(tid, request)
        task.seed_trigger = seed_trigger
        task.streaming = streaming
        self._running[tid] = task
        runner = asyncio.get_running_loop().create_task(self._run(task), name=f"task-{tid[:12]}")
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)
        return task

    async def close(self) -> None:
        """Stop all downloads: in-flight pieces are dropped, recorded ones stay valid."""
        self._closing = True
        for runner in list(self._runners):
            runner.cancel()
        await asyncio.gather(*self._runners, return_exceptions=True)
        await self.remote_sources.close()
        if self.p2p is not None:
            self.p2p.close()

    async def _run(self, task: Task) -> None:
        self.metrics.active_tasks.inc()
        try:
            async with self._task_slots:
                await self._download(task)
        except asyncio.CancelledError:
            if not task.done.done():
                task.done.set_exception(
                    DownloadError(FailureKind.INTERNAL, "download interrupted: dfdaemon stopping")
                )
            self._mark_consumed(task)
            raise
        except DownloadError as exc:
            log.warning("task failed task=%s kind=%s error=%s", task.id, exc.kind.value, exc)
            await self._record_failure(task, exc)
            task.done.set_exception(exc)
        except OSError as exc:
            # A disk or storage fault outside a piece write (metadata.db, ftruncate...):
            # a full disk is the user's to fix and says so; anything else is a failure
            # of this daemon, named as such.
            if exc.errno in _DISK_FULL:
                err = DownloadError(FailureKind.NO_SPACE, self._no_space_message(exc))
            else:
                log.exception("task storage failure task=%s", task.id)
                err = DownloadError(FailureKind.INTERNAL, f"storage error: {exc}")
            log.warning("task failed task=%s kind=%s error=%s", task.id, err.kind.value, err)
            await self._record_failure(task, err)
            task.done.set_exception(err)
        except Exception as exc:  # a bug: fail this task, keep the daemon serving others
            log.exception("task crashed task=%s", task.id)
            err = DownloadError(FailureKind.INTERNAL, f"internal error: {exc!r}")
            await self._record_failure(task, err)
            task.done.set_exception(err)
        else:
            task.done.set_result(None)
            self.metrics.tasks.labels("succeeded").inc()
            self.metrics.task_duration.observe(time.monotonic() - task.started)
        finally:
            self.metrics.active_tasks.dec()
            if task.id in self._writing:
                # Done writing: from now on a change of the file means someone else.
                self._writing.discard(task.id)
                with contextlib.suppress(Exception):
                    await self.storage.run(
                        self.verifier.settle, task.id, self.storage.content_path(task.id)
                    )
            self._running.pop(task.id, None)
            task._notify()
        self._mark_consumed(task)

    def _no_space_message(self, exc: OSError) -> str:
        if isinstance(exc, StorageError) and exc.strerror:
            return exc.strerror
        return (
            f"no space left on device in the data dir {str(self.storage.data_dir)!r} "
            f"({os.strerror(exc.errno or errno.ENOSPC)}); free disk space or lower "
            f"storage.disk_high_watermark"
        )

    @staticmethod
    def _mark_consumed(task: Task) -> None:
        # Nobody may be awaiting the future (dfget gone): read the exception so asyncio
        # does not log "exception was never retrieved" for an expected failure.
        if task.done.done() and not task.done.cancelled():
            task.done.exception()

    async def _record_failure(self, task: Task, exc: DownloadError) -> None:
        self.metrics.tasks.labels("failed").inc()
        with contextlib.suppress(Exception):
            if exc.kind in (FailureKind.DIGEST, FailureKind.NO_SPACE):
                # Wrong bytes must never be served, and a task that cannot fit frees
                # what it took; both start from scratch next time. On a full disk the
                # metadata delete itself may fail: the bytes go anyway (a row without
                # bytes is dropped by the checks of the next download).
                try:
                    await self.delete_task(task.id)
                finally:
                    await self.storage.run(self.storage.remove_content, task.id)
            elif await self.storage.run(self.storage.meta.get_task, task.id):
                await self.storage.run(
                    lambda: self.storage.meta.update_task(
                        task.id, state=TASK_FAILED, error=str(exc), updated_at=now()
                    )
                )

    # -- the download ----------------------------------------------------------------

    async def _download(self, task: Task) -> None:
        request = task.request
        expected = self._parse_digest(request.digest)
        record = await self.storage.run(self.storage.meta.get_task, task.id)
        finished = record is not None and record.state == TASK_SUCCEEDED
        if finished and await self._serve_from_storage(task, record, expected):
            if task.seed_trigger and self.p2p is not None:
                # The scheduler lost track of this copy (it restarted): tell it we hold it.
                await self.p2p.announce_held(task)
            return

        stream, answer = None, None
        if self.p2p is not None:
            stream, answer = await self.p2p.register(task)
        task.stream = stream
        try:
            if isinstance(answer, m.EmptyTaskResponse | m.TinyTaskResponse):
                content = answer.content if isinstance(answer, m.TinyTaskResponse) else b""
                await self._store_whole(task, record, content)
            elif isinstance(answer, m.NormalTaskResponse | m.SmallTaskResponse):
                assert self.p2p is not None and stream is not None
                if not await self.p2p.download(task, stream, answer, record):
                    await self._back_to_source(task, expected, stream, fallback=True)
            else:
                if self.p2p is not None and answer is not None:
                    reason = getattr(answer, "reason", "") or getattr(answer, "message", "")
                    log.info("back to source task=%s reason=%s", task.id, reason)
                await self._back_to_source(task, expected, stream)
            if expected is not None:
                fd = os.open(self.storage.content_path(task.id), os.O_RDONLY | os.O_CLOEXEC)
                try:
                    await self._verify_whole(task, fd, expected)
                finally:
                    os.close(fd)
            await self.storage.run(
                lambda: self.storage.meta.update_task(
                    task.id,
                    state=TASK_SUCCEEDED,
                    content_length=task.content_length,
                    error="",
                    updated_at=now(),
                    last_access=now(),
                )
            )
        except BaseException as exc:
            if task.restoring is not None:
                task.restoring.cancel()
            stream = task.stream  # it may have moved to a new connection's stream
            if stream is not None and not isinstance(exc, asyncio.CancelledError):
                await stream.report(
                    m.DownloadFailed(peer_id=task.peer_id, task_id=task.id, reason=str(exc)[:4000])
                )
            if stream is not None:
                stream.close()
            raise
        await self._settle_restore(task)
        stream = task.stream  # it may have moved to a new connection's stream
        if stream is not None:
            self.p2p.held[task.id] = task.peer_id
            length = task.content_length or 0
            content = None
            if 0 < length <= TINY_TASK_MAX_LENGTH:
                # Later peers get a tiny task inline from the scheduler (no fetch at all).
                try:
                    content = await self.storage.run(self.storage.read_content, task.id, length)
                except OSError as exc:  # the download itself succeeded: report it anyway
                    log.warning("tiny task content unreadable task=%s: %s", task.id, exc)
            finished = m.DownloadFinished(
                peer_id=task.peer_id,
                task_id=task.id,
                content_length=length,
                piece_count=piece_count(length, task.piece_length),
                content=content,
            )
            try:
                await stream.send(finished)
            except SchedulerUnavailable:
                # The connection this download registered on is gone (the scheduler
                # restarted, or the link dropped): announce it on the current one.
                await self.p2p.restore(task.id)
            finally:
                stream.close()
        elif self.p2p is not None:
            # Registered with no scheduler (it was unreachable): if one is connected by
            # now, its restore pass ran before this task was whole; announce it.
            await self.p2p.restore(task.id)

    @staticmethod
    async def _settle_restore(task: Task) -> None:
        """Let a move to a new scheduler stream (RestorePeer) finish before the final
        report, so the report goes where the scheduler now expects it."""
        restoring = task.restoring
        if restoring is not None and not restoring.done():
            with contextlib.suppress(Exception):  # TimeoutError included: report anyway
                await asyncio.wait_for(asyncio.shield(restoring), 5.0)
            restoring.cancel()

    def _source(self, task: Task) -> Source:
        """The source for this task's origin requests, by its URL's scheme: a download
        the scheduler asked for on behalf of another host goes through the fetch policy."""
        sources = self.remote_sources if task.seed_trigger else self.sources
        try:
            return sources.for_url(task.request.url)
        except SourceError as exc:
            raise DownloadError.from_origin(exc) from None

    async def _back_to_source(
        self, task: Task, expected: Digest | None, stream, *, fallback: bool = False
    ) -> None:
        """Fetch the task (or, after a P2P attempt, its missing pieces) from the origin.

        If the object changes at the origin under the download, start over once from
        scratch with the new version, when nobody has seen a byte of the old one yet (no
        scheduler stream that reported pieces to other peers, nobody reading in order);
        otherwise, or if it changes again, fail the task: never mix two versions."""
        if task.request.disable_back_to_source:
            raise DownloadError(
                FailureKind.NO_SOURCE,
                f"task {task.id} is not stored here, no peer could serve it, and "
                f"back-to-source is disabled",
            )
        try:
            await self._fetch_from_origin(task, expected, stream, fallback=fallback)
            return
        except ContentChangedError as changed:
            if stream is not None or task.streaming:
                who = "other peers" if stream is not None else "the reader of the stream"
                raise DownloadError(
                    FailureKind.ORIGIN,
                    f"{changed}; {who} already got pieces of the old version, so the "
                    f"download stops here: run it again to fetch the new version",
                    status=changed.status,
                ) from None
            log.warning(
                "object changed at the origin, starting over once with the new version "
                "task=%s changed=%s error=%s",
                task.id,
                changed.validator,
                changed,
            )
        await self._start_over(task)
        try:
            await self._fetch_from_origin(task, expected, stream)
        except ContentChangedError as again:
            raise DownloadError(
                FailureKind.ORIGIN,
                f"{again}; it changed again after the download started over, so it is not "
                f"stable enough to download in one piece: try again later",
                status=again.status,
            ) from None

    async def _start_over(self, task: Task) -> None:
        """Forget every piece of the task (bytes and metadata): a fresh download."""
        await self.storage.run(self.storage.delete_task, task.id)
        self.verifier.forget(task.id)
        task.bitmap = None
        task.digests.clear()
        task.completed_bytes = 0
        task.bytes_from_origin = 0
        task._notify()

    async def _fetch_from_origin(
        self, task: Task, expected: Digest | None, stream, *, fallback: bool = False
    ) -> None:
        request = task.request
        source = self._source(task)
        try:
            info = await source.probe(request.url, request.headers)
        except SourceError as exc:
            raise DownloadError.from_origin(exc) from None

        piece_length = compute_piece_length(info.content_length, request.piece_length)
        if fallback and task.piece_length and task.content_length == info.content_length:
            piece_length = task.piece_length  # keep the pieces the P2P attempt stored
        if stream is not None:
            known = info.content_length is not None
            await stream.report(
                m.DownloadStarted(
                    peer_id=task.peer_id,
                    task_id=task.id,
                    back_to_source=True,
                    content_length=info.content_length if known else -1,
                    piece_length=piece_length if known else 0,
                )
            )
        task.content_length = info.content_length
        task.piece_length = piece_length
        record = await self.storage.run(self.storage.meta.get_task, task.id)
        await self._prepare_record(task, record, info, piece_length, expected)
        fd = await self._open_making_room(task, info.content_length)
        try:
            if info.content_length is not None and info.supports_range:
                await self._resume_pieces(task, fd)
                await self._fetch_ranges(task, fd, info)
            else:
                await self._fetch_stream(task, fd, info)
            if info.digest and (expected is None or str(expected) != info.digest):
                # The source names the content by its digest (an OCI blob): check it.
                await self._verify_whole(task, fd, self._parse_digest(info.digest))
        finally:
            os.close(fd)

    async def _open_making_room(self, task: Task, content_length: int | None) -> int:
        """Open the task's content file for writing (every download path does, the P2P
        one included); until the task ends, its pieces are trusted as they land."""
        try:
            fd = await self.storage.run(self._open, task, content_length)
        except DownloadError as exc:
            if exc.kind is not FailureKind.NO_SPACE or self.make_room is None:
                raise
            await self.make_room(content_length or 0)
            fd = await self.storage.run(self._open, task, content_length)
        self._writing.add(task.id)
        return fd

    async def _store_whole(self, task: Task, record: TaskRecord | None, content: bytes) -> None:
        """An empty or tiny task, answered inline by the scheduler: one piece, no fetch."""
        task.content_length = len(content)
        task.piece_length = compute_piece_length(len(content), task.request.piece_length)
        stamp = now()
        await self.storage.run(
            self.storage.meta.put_task,
            TaskRecord(
                id=task.id,
                url=task.request.url,
                content_length=len(content),
                piece_length=task.piece_length,
                created_at=record.created_at if record else stamp,
                updated_at=stamp,
                last_access=stamp,
            ),
        )
        fd = await self._open_making_room(task, len(content))
        try:
            task.bitmap = Bitmap(piece_count(len(content), task.piece_length))
            if content:
                piece = Piece(0, 0, len(content))
                await self._land_piece(task, fd, piece, memoryview(content), "scheduler")
        finally:
            os.close(fd)

    @staticmethod
    def _parse_digest(text: str) -> Digest | None:
        if not text:
            return None
        try:
            return Digest.parse(text)
        except ValueError as exc:
            raise DownloadError(FailureKind.BAD_REQUEST, str(exc)) from None

    def _open(self, task: Task, content_length: int | None) -> int:
        try:
            return self.storage.open_for_write(task.id, content_length)
        except NoSpaceError as exc:
            raise DownloadError(FailureKind.NO_SPACE, exc.strerror or str(exc)) from None
        except OSError as exc:
            raise DownloadError(
                FailureKind.INTERNAL, f"cannot open content file for task {task.id}: {exc}"
            ) from None

    async def _serve_from_storage(
        self, task: Task, record: TaskRecord, expected: Digest | None
    ) -> bool:
        """Answer a finished task locally; False if its bytes went missing."""
        path = self.storage.content_path(task.id)
        if record.content_length is None or not path.exists():
            await self.storage.run(self.storage.delete_task, task.id)
            return False
        stored = await self.storage.run(self.storage.meta.pieces, task.id)
        digests = {number: digest for number, (digest, _source) in stored.items()}
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            # Read back and check every piece not checked since start or since the file
            # changed (a piece with no row counts as damaged too): nothing unverified
            # is output. Damaged pieces are dropped and the download fetches them again.
            pieces = list(iter_pieces(record.content_length, record.piece_length))
            bad = await self.storage.run(lambda: self.verifier.check(task.id, fd, pieces, digests))
            if bad:
                await self.drop_damaged(task.id, bad, finished=True)
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
                await self._verify_whole(task, fd, expected)
        finally:
            os.close(fd)
        await self.storage.run(lambda: self.storage.meta.update_task(task.id, last_access=now()))
        return True

    async def _prepare_record(
        self,
        task: Task,
        record: TaskRecord | None,
        info: SourceInfo,
        piece_length: int,
        expected: Digest | None,
    ) -> TaskRecord:
        """Create the task row, or reuse the old one if the origin's content is the same."""
        # A row made by a P2P download has no validators (peers do not know them); its
        # pieces are verified against recorded digests, so only the geometry must agree.
        from_peers = record is not None and not record.etag and not record.last_modified
        same_content = (
            record is not None
            and record.content_length == info.content_length
            and record.piece_length == piece_length
            and (
                from_peers
                or (
                    record.etag == (info.etag or "")
                    and record.last_modified == (info.last_modified or "")
                )
            )
            and info.content_length is not None
        )
        if record is not None and not same_content:
            log.info("task content changed at origin, starting over task=%s", task.id)
            await self.storage.run(self.storage.delete_task, task.id)
            self.verifier.forget(task.id)
            record = None
        stamp = now()
        fresh = TaskRecord(
            id=task.id,
            url=task.request.url,
            content_length=info.content_length,
            piece_length=piece_length,
            state=TASK_RUNNING,
            expected_digest=str(expected) if expected else "",
            etag=info.etag or "",
            last_modified=info.last_modified or "",
            created_at=record.created_at if record else stamp,
            updated_at=stamp,
            last_access=stamp,
        )
        await self.storage.run(self.storage.meta.put_task, fresh)
        return fresh

    async def _resume_pieces(self, task: Task, fd: int) -> None:
        """Load recorded pieces, keeping only those whose bytes still match their CRC."""
        assert task.content_length is not None
        count = piece_count(task.content_length, task.piece_length)
        task.bitmap = Bitmap(count)
        stored = await self.storage.run(self.storage.meta.pieces, task.id)
        if not stored:
            return
        pieces = {p.number: p for p in iter_pieces(task.content_length, task.piece_length)}
        digests = {number: digest for number, (digest, _source) in stored.items()}
        recorded = [pieces[n] for n in sorted(digests) if n in pieces]
        # Recorded is not verified: the bytes may have been torn by a crash or damaged
        # on disk since. Every recorded piece is read back and checked (fresh: whatever
        # was checked before this download started counts for nothing).
        damaged = await self.storage.run(
            lambda: self.verifier.check(task.id, fd, recorded, digests, fresh=True)
        )
        for piece in recorded:
            if piece.number in damaged:
                continue
            task.bitmap.set(piece.number)
            task.digests[piece.number] = digests[piece.number]
            task.completed_bytes += piece.length
        if damaged:
            await self.drop_damaged(task.id, damaged, finished=False)
        beyond = [n for n in digests if n not in pieces]
        if beyond:  # rows of another geometry: nothing to check, nothing to keep
            await self.storage.run(self.storage.meta.forget_pieces, task.id, beyond)
        log.info(
            "resuming task=%s pieces_present=%d pieces_total=%d",
            task.id,
            task.bitmap.count(),
            count,
        )

    async def _land_piece(
        self,
        task: Task,
        fd: int,
        piece: Piece,
        data: memoryview,
        source: str,
        cost_ns: int = 0,
    ) -> None:
        """Write a piece, then record it: the order that keeps metadata truthful.

        ``source`` is ``origin``, ``scheduler`` (inline content) or the parent's peer ID;
        ``cost_ns`` the time the fetch took, reported to the scheduler with the piece.
        """
        digest = f"crc32:{crc32(data)}"
        try:
            await self.storage.run(self.storage.write_piece, fd, piece.offset, data)
        except NoSpaceError as exc:
            raise DownloadError(FailureKind.NO_SPACE, exc.strerror or str(exc)) from None
        except OSError as exc:
            raise DownloadError(
                FailureKind.INTERNAL, f"cannot write piece {piece.number}: {exc}"
            ) from None
        self.verifier.landed(task.id, piece.number, digest)  # computed from the bytes written
        try:
            await self.storage.run(
                self.storage.meta.record_piece, task.id, piece.number, digest, source
            )
        except NoSpaceError as exc:
            raise DownloadError(FailureKind.NO_SPACE, exc.strerror or str(exc)) from None
        if task.bitmap is not None:
            task.bitmap.set(piece.number)
        task.digests[piece.number] = digest
        task.completed_bytes += piece.length
        if source == "origin":
            task.bytes_from_origin += piece.length
            self.metrics.bytes_from_origin.inc(piece.length)
        elif source != "scheduler":
            task.bytes_from_peers += piece.length
            self.metrics.bytes_from_peers.inc(piece.length)
        self.metrics.pieces.labels("origin" if source == "origin" else "peer").inc()
        task._notify()
        for listener in self.piece_listeners:
            try:
                listener(task.id, piece.number, digest)
            except Exception:  # a listener's bug must not fail the download
                log.exception("piece listener failed task=%s piece=%d", task.id, piece.number)
        if task.stream is not None and source != "scheduler":
            await task.stream.report(
                m.PieceFinished(
                    peer_id=task.peer_id,
                    task_id=task.id,
                    number=piece.number,
                    parent_id="" if source == "origin" else source,
                    cost_ns=cost_ns,
                    length=piece.length,
                    digest=digest,
                )
            )

    async def _fetch_ranges(self, task: Task, fd: int, info: SourceInfo) -> None:
        """Fetch every missing piece with Range requests, ``concurrency`` at a time."""
        assert task.content_length is not None and task.bitmap is not None
        missing = [
            p
            for p in iter_pieces(task.content_length, task.piece_length)
            if not task.bitmap.test(p.number)
        ]
        if not missing:
            return
        limit = self.concurrency
        if self.p2p is not None and (task.seed_trigger or task.stream is not None):
            # Other peers wait for these pieces: a few ranges at a time, so each lands
            # soon and is relayed (16 parallel ranges on a slow origin finish together,
            # late), as the download loop's origin_in_flight says.
            limit = min(limit, self.p2p.download_config.origin_in_flight)
        workers = max(1, min(limit, PIECE_BUFFER_BUDGET // task.piece_length))
        queue: asyncio.Queue[Piece] = asyncio.Queue()
        for piece in missing:
            queue.put_nowait(piece)

        source = self._source(task)

        async def worker() -> None:
            buffer = bytearray(task.piece_length)  # reused for every piece of this worker
            while True:
                try:
                    piece = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                view = memoryview(buffer)[: piece.length]
                await self.limiter.take(piece.length)
                started = time.monotonic_ns()
                try:
                    await source.fetch_range(
                        info.final_url,
                        task.request.headers,
                        piece.offset,
                        piece.length,
                        view,
                        info=info,
                    )
                except SourceError as exc:
                    self.metrics.piece_failures.inc()
                    raise DownloadError.from_origin(exc) from None
                cost = time.monotonic_ns() - started
                await self._land_piece(task, fd, piece, view, "origin", cost)

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(workers, len(missing))):
                    group.create_task(worker())
        except BaseExceptionGroup as failures:
            # One worker's failure cancels the others; the task fails with its cause,
            # not with the group (which would reach the user as "internal error").
            raise _first_cause(failures) from None

    async def _fetch_stream(self, task: Task, fd: int, info: SourceInfo) -> None:
        """One GET for origins without Range (or length): cut the stream into pieces."""
        if task.bitmap is None and task.content_length is not None:
            task.bitmap = Bitmap(piece_count(task.content_length, task.piece_length))
        # A stream cannot skip what we already have: start the task over.
        await self.storage.run(self.storage.meta.forget_pieces, task.id)
        task.digests.clear()
        task.completed_bytes = 0
        buffer = bytearray(task.piece_length)
        filled = 0
        number = 0
        source = self._source(task)
        try:
            async with source.stream(info.final_url, task.request.headers) as body:
                async for chunk in body:
                    view = memoryview(chunk)
                    while view:
                        take = min(len(view), task.piece_length - filled)
                        buffer[filled : filled + take] = view[:take]
                        filled += take
                        view = view[take:]
                        if filled == task.piece_length:
                            await self._land_streamed(task, fd, number, buffer, filled)
                            number += 1
                            filled = 0
        except SourceError as exc:
            raise DownloadError.from_origin(exc) from None
        if filled:
            await self._land_streamed(task, fd, number, buffer, filled)
            number += 1
        total = task.completed_bytes
        if task.content_length is not None and total != task.content_length:
            raise DownloadError(
                FailureKind.ORIGIN,
                f"origin sent {total} bytes but announced {task.content_length}",
            )
        task.content_length = total
        if task.bitmap is None or len(task.bitmap) != number:
            bitmap = Bitmap(number)
            for n in range(number):
                bitmap.set(n)
            task.bitmap = bitmap
        await self.storage.run(lambda: os.ftruncate(fd, total))

    async def _land_streamed(
        self, task: Task, fd: int, number: int, buffer: bytearray, length: int
    ) -> None:
        if task.bitmap is not None and number >= len(task.bitmap):
            raise DownloadError(
                FailureKind.ORIGIN,
                f"origin sent more than the {task.content_length} bytes it announced",
            )
        await self.limiter.take(length)
        piece = Piece(number, number * task.piece_length, length)
        await self._land_piece(task, fd, piece, memoryview(buffer)[:length], "origin")

    async def _verify_whole(self, task: Task, fd: int, expected: Digest) -> None:
        """Hash the stored content and fail the task on a mismatch."""

        def compute() -> Digest:
            hasher = expected.hasher()
            buffer = bytearray(HASH_BLOCK)
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
            expected.verify(actual, what=f"task {task.id}")
        except DigestMismatch as exc:
            raise DownloadError(FailureKind.DIGEST, str(exc)) from None

    # -- checking stored pieces before they leave ------------------------------------

    async def check_before_serving(
        self,
        task_id: str,
        offset: int,
        length: int,
        held: tuple[int, int, dict[int, str]] | None = None,
    ) -> str | None:
        """Check the stored pieces that bytes [offset, offset + length) of a task touch,
        before they are served (HTTP /download, the piece port). None when they are
        good; otherwise a one-line reason, and the damaged pieces were dropped (the next
        download of the task fetches them again).

        ``held`` is (content_length, piece_length, {number: digest}) when the caller
        already read them; else they come from the running task or the metadata.
        """
        if held is None:
            running = self._running.get(task_id)
            if running is not None and running.bitmap is not None and running.content_length:
                held = (running.content_length, running.piece_length, dict(running.digests))
            else:
                record = await self.storage.run(self.storage.meta.get_task, task_id)
                if record is None or record.content_length is None:
                    return f"task {task_id} is not held here"
                stored = await self.storage.run(self.storage.meta.pieces, task_id)
                held = (
                    record.content_length,
                    record.piece_length,
                    {n: d for n, (d, _source) in stored.items()},
                )
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
        await self.drop_damaged(task_id, bad, finished=task_id not in self._running)
        return (
            f"piece {', '.join(map(str, bad))} of task {task_id} failed its CRC-32 check on "
            f"disk and was dropped; it is fetched again by the next download of the task"
        )

    async def drop_damaged(self, task_id: str, numbers: list[int], *, finished: bool) -> None:
        """Pieces whose stored bytes do not match their digest: count them, forget them
        (the next download fetches them again), and, for a task that was held whole,
        stop offering it (state failed, and the scheduler is told this peer left)."""
        self.metrics.corrupt_pieces.inc(len(numbers))
        log.warning(
            "stored pieces failed their CRC-32 check, dropped to be fetched again "
            "task=%s pieces=%s",
            task_id,
            numbers,
        )
        await self.storage.run(self.storage.meta.forget_pieces, task_id, numbers)
        running = self._running.get(task_id)
        if running is not None and running.bitmap is not None:
            for number in numbers:
                if number < len(running.bitmap) and running.bitmap.test(number):
                    # A running download would report it held: keep its claims true.
                    running.digests.pop(number, None)
        if finished:
            reason = f"stored pieces {numbers} were damaged on disk and were dropped"
            await self.storage.run(
                lambda: self.storage.meta.update_task(
                    task_id, state=TASK_FAILED, error=reason, updated_at=now()
                )
            )
            if self.p2p is not None:
                await self.p2p.leave(task_id)

    # -- reading stored tasks ----------------------------------------------------------

    async def read_in_order(self, task: Task, block: int = 1024 * 1024) -> AsyncIterator[bytes]:
        """Yield a task's bytes from the start, each piece as soon as it has landed.

        Used for ``dfget -O -`` (stdout) and HTTP clients of a running task. Raises the
        task's DownloadError if it fails before the bytes are all out.
        """
        path = self.storage.content_path(task.id)
        number = 0
        offset = 0
        with self.pin(task.id):
            fd = None
            try:
                while True:
                    if task.content_length is not None and offset >= task.content_length:
                        return
                    if task.has_piece(number):
                        if fd is None:
                            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                        end = min((number + 1) * task.piece_length, task.content_length or 0)
                        while offset < end:
                            buffer = bytearray(min(block, end - offset))
                            n = await self.storage.run(
                                self.storage.read_into, fd, offset, memoryview(buffer)
                            )
                            if n == 0:
                                raise DownloadError(
                                    FailureKind.INTERNAL, f"content of task {task.id} shrank"
                                )
                            offset += n
                            yield bytes(buffer[:n]) if n < len(buffer) else bytes(buffer)
                        number += 1
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


def _first_cause(failures: BaseExceptionGroup) -> BaseException:
    """The exception a failed worker group stands for: a bug (any exception that is not
    a DownloadError) first, so it is logged as one; else a changed object (the cause of
    the other workers' errors, if any); else the first DownloadError."""
    leaves: list[BaseException] = []

    def walk(group: BaseExceptionGroup) -> None:
        for exc in group.exceptions:
            if isinstance(exc, BaseExceptionGroup):
                walk(exc)
            else:
                leaves.append(exc)

    walk(failures)
    for exc in leaves:
        if not isinstance(exc, DownloadError | asyncio.CancelledError):
            return exc
    for exc in leaves:
        if isinstance(exc, ContentChangedError):
            return exc
    return leaves[0]


__all__ = [
    "ContentChangedError",
    "DownloadError",
    "DownloadRequest",
    "FailureKind",
    "StorageError",
    "Task",
    "TaskManager",
]
