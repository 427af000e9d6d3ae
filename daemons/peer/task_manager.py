"""The download engine of the peer daemon: one task, one fetch.

A :class:`TaskManager` turns download requests into tasks. Requests for the same task
ID share one :class:`Task`; each task runs once, fetching its missing pieces from a
piece source (the origin here; other peers through the P2P path it owns, p2p.py) with a
bounded number of pieces in flight. Every piece lands through the task store
(task_store.py), the one storage API of both paths: CRC-32, pwrite at its offset, then
the metadata row, never the other way round.

Who holds whom: the manager holds the store and its P2P path; the P2P path holds the
store; the store holds neither (it tells listeners what others must learn).

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
import errno
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable

from d7y.core import messages as m
from d7y.core.digest import Digest
from d7y.core.http_range import RangeSpec
from d7y.core.pieces import (
    TINY_TASK_MAX_LENGTH,
    Piece,
    compute_piece_length,
    piece_at,
    piece_count,
)
from d7y.core.scheduling.origin_window import OriginWindow
from d7y.daemons.peer.limits import TokenBucket
from d7y.daemons.peer.metrics import PeerMetrics
from d7y.daemons.peer.origin_gate import OriginGate
from d7y.daemons.peer.p2p import P2PDownloader
from d7y.daemons.peer.scheduler_client import SchedulerUnavailable
from d7y.daemons.peer.storage import TASK_SUCCEEDED, StorageError, TaskRecord
from d7y.daemons.peer.task import (
    ContentChangedError,
    DownloadError,
    DownloadRequest,
    FailureKind,
    Task,
)
from d7y.daemons.peer.task_store import (
    FROM_ORIGIN,
    FROM_SCHEDULER,
    HeldPieces,
    PieceSink,
    TaskFile,
    TaskStore,
)
from d7y.daemons.sources import (
    ContentChanged,
    RangeToSink,
    Source,
    SourceError,
    SourceInfo,
    SourcePolicy,
    Sources,
    check_url,
)
from d7y.ext.bitmap import Bitmap

log = logging.getLogger("d7y.dfdaemon.task")

#: Piece buffers held at once by one task: concurrency is lowered for big pieces so a
#: task never holds more than this in memory (16 x 4 MiB fits exactly).
PIECE_BUFFER_BUDGET = 64 * 1024 * 1024


_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


class TaskManager:
    """Runs tasks: at most one download per task ID, many readers."""

    def __init__(
        self,
        store: TaskStore,
        sources: Sources,
        *,
        concurrency: int = 16,
        max_concurrent_tasks: int = 16,
        download_limiter: TokenBucket | None = None,
        metrics: PeerMetrics | None = None,
        p2p: P2PDownloader | None = None,
        remote_sources: Sources | None = None,
    ) -> None:
        """``store`` holds the tasks (every download path lands its pieces there);
        ``sources`` fetch for the local user (dfget); ``remote_sources`` for
        downloads a remote party caused (a seed peer triggered by the scheduler): they
        must carry the outbound fetch policy (by default one that refuses every
        internal address). ``p2p``: the P2P path, when a scheduler is configured (it
        may also be set later, before the first download)."""
        self.store = store
        self.storage = store.storage  # for the servers' read-only lookups
        self.sources = sources
        if remote_sources is None:
            remote_sources = Sources(sources.settings, policy=SourcePolicy())
        if remote_sources.policy is None:
            raise ValueError("remote_sources must enforce a SourcePolicy")
        self.remote_sources = remote_sources
        self.concurrency = concurrency
        self.limiter = download_limiter or TokenBucket(0)
        self.metrics = metrics or PeerMetrics()
        self.p2p = p2p
        self._task_slots = asyncio.Semaphore(max_concurrent_tasks)
        self._running: dict[str, Task] = {}
        self._runners: set[asyncio.Task[None]] = set()
        self._closing = False

    # -- what the servers and GC ask -----------------------------------------------------

    @property
    def piece_listeners(self) -> list[Callable[[str, int, str], None]]:
        """Called as (task_id, piece number, digest) after each piece is stored."""
        return self.store.piece_listeners

    def pin(self, task_id: str) -> contextlib.AbstractContextManager[None]:
        """Mark a task busy (uploading, exporting) while the block runs."""
        return self.store.pin(task_id)

    async def delete_task(self, task_id: str) -> None:
        """Remove a stored task (GC, the API): bytes, metadata, and its scheduler peer."""
        await self.store.delete(task_id)

    def busy_task_ids(self) -> set[str]:
        return set(self._running) | self.store.pinned()

    async def scheduler_connected(self) -> None:
        """The scheduler connection is (re)established: announce the tasks held whole,
        then move the running downloads whose stream was lost onto the new connection."""
        if self.p2p is None:
            return
        await self.p2p.restore_held()
        for task in self.running_tasks():
            self.p2p.maybe_restore(task)

    def running(self, task_id: str) -> Task | None:
        return self._running.get(task_id)

    def running_tasks(self) -> list[Task]:
        return list(self._running.values())

    # -- starting and joining ----------------------------------------------------------

    def start(
        self,
        request: DownloadRequest,
        *,
        seed_trigger: bool = False,
        remote: bool = False,
        streaming: bool = False,
        byte_range: RangeSpec | None = None,
    ) -> Task:
        """Start the task for ``request`` or join the one already running.

        ``seed_trigger``: the scheduler asked this seed peer to fetch the task from the
        origin (it registers with need_back_to_source). ``remote``: the scheduler asked
        for it (an ordinary peer's preheat): an ordinary P2P download whose origin
        fetches, if any, follow the source policy like a seed's. ``streaming``: a consumer reads
        the bytes in order as they land (stdout, proxy), so the piece picker favours the
        next pieces in order. ``byte_range``: the caller needs only these bytes: a new
        download fetches only the pieces that hold them (a partial download of the same
        task; its pieces stay for later requests), a running one is asked for them too
        (a partial one may end without them: see :meth:`wait_ended`)."""
        if self._closing:
            raise DownloadError(FailureKind.INTERNAL, "dfdaemon is shutting down")
        try:
            tid = request.task_id()
        except ValueError as exc:  # a URL or piece length the task ID cannot be made of
            raise DownloadError(FailureKind.BAD_REQUEST, str(exc)) from None
        try:
            check_url(request.url)
        except SourceError as exc:
            raise DownloadError(FailureKind.BAD_REQUEST, str(exc)) from None
        task = self._running.get(tid)
        if task is not None:
            task.streaming = task.streaming or streaming
            task.want(byte_range)
            return task
        task = Task(tid, request)
        task.seed_trigger = seed_trigger
        task.remote = seed_trigger or remote
        task.streaming = streaming
        task.wanted = None if byte_range is None else [byte_range]
        self._running[tid] = task
        runner = asyncio.get_running_loop().create_task(self._run(task), name=f"task-{tid[:12]}")
        task.runner = runner
        self._runners.add(runner)
        runner.add_done_callback(self._runners.discard)
        return task

    async def wait_ended(self, task: Task) -> None:
        """Return once ``task``'s download has ended and left the running set, so that
        :meth:`start` makes a new one (a partial download that ended without the pieces
        a late reader asked for)."""
        runner = task.runner
        if runner is not None and not runner.done():
            await asyncio.wait({runner})

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
            await self.store.finish_writing(task.id)
            if self._running.get(task.id) is task:
                self._running.pop(task.id)
            task.notify_change()
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
        try:
            if exc.kind in (FailureKind.DIGEST, FailureKind.NO_SPACE):
                # Wrong bytes must never be served, and a task that cannot fit frees
                # what it took; both start from scratch next time. On a full disk the
                # metadata delete itself may fail: the bytes go anyway (a row without
                # bytes is dropped by the checks of the next download).
                try:
                    await self.delete_task(task.id)
                finally:
                    await self.store.remove_content(task.id)
            else:
                await self.store.mark_failed(task.id, str(exc))
        except (OSError, sqlite3.Error) as record_exc:
            # The disk that failed the download may fail its bookkeeping too: the task
            # has failed either way, and the next download's checks see what is left.
            log.warning("could not record the failure task=%s error=%s", task.id, record_exc)
        except Exception:
            # A bug: say where; the download's own failure is still what the user gets.
            log.exception("recording the failure of task %s crashed", task.id)

    # -- the download ----------------------------------------------------------------

    async def _download(self, task: Task) -> None:
        request = task.request
        expected = self._parse_digest(request.digest)
        record = await self.store.record(task.id)
        finished = record is not None and record.state == TASK_SUCCEEDED
        if finished and await self.store.load_whole(task, record, expected):
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
            partial = task.bitmap is not None and not task.bitmap.all()
            if not partial:
                if expected is not None:
                    await self.store.verify_whole(task.id, expected)
                await self.store.mark_succeeded(task)
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
        if partial:
            log.info(
                "partial download done task=%s pieces=%d of %d",
                task.id,
                task.bitmap.count(),
                len(task.bitmap),
            )
            if stream is not None:
                # Not whole: the scheduler must not send children here for the task
                # (a later whole download registers again and fetches the rest).
                with contextlib.suppress(SchedulerUnavailable):
                    await stream.report(m.LeavePeer(peer_id=task.peer_id, task_id=task.id))
                stream.close()
            return
        if stream is not None:
            self.p2p.held[task.id] = task.peer_id
            length = task.content_length or 0
            content = None
            if 0 < length <= TINY_TASK_MAX_LENGTH:
                # Later peers get a tiny task inline from the scheduler (no fetch at all).
                try:
                    content = await self.store.read_content(task.id, length)
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
            try:
                await asyncio.wait_for(asyncio.shield(restoring), 5.0)
            except TimeoutError:
                pass  # report anyway, on whichever stream there is
            except Exception:
                log.exception("moving task %s to a new scheduler stream crashed", task.id)
            restoring.cancel()

    def _source(self, task: Task) -> Source:
        """The source for this task's origin requests, by its URL's scheme: a download
        the scheduler asked for on behalf of another host goes through the fetch policy."""
        sources = self.remote_sources if task.seed_trigger or task.remote else self.sources
        try:
            return sources.for_url(task.request.url)
        except SourceError as exc:
            raise _source_failure(exc) from None

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
        await self.store.delete(task.id)
        task.bitmap = None
        task.digests.clear()
        task.completed_bytes = 0
        task.bytes_from_origin = 0
        task.notify_change()

    async def _fetch_from_origin(
        self, task: Task, expected: Digest | None, stream, *, fallback: bool = False
    ) -> None:
        request = task.request
        source = self._source(task)
        try:
            info = await source.probe(request.url, request.headers)
        except SourceError as exc:
            raise _source_failure(exc) from None

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
        record = await self.store.record(task.id)
        await self._prepare_record(task, record, info, piece_length, expected)
        async with self.store.open(task, info.content_length) as file:
            if info.content_length is not None and info.supports_range:
                await file.resume()
                task.notify_change()  # the geometry is known: range readers resolve
                # Readers that join a partial download add the pieces they need while
                # it runs: fetch until none is missing.
                while await self._fetch_ranges(task, file, info):
                    pass
            else:
                await self._fetch_stream(task, file, info)
            if task.bitmap is not None and not task.bitmap.all():
                return  # a partial download: nothing whole to check
            digest = self._parse_digest(info.digest)
            if digest is not None and (expected is None or str(expected) != info.digest):
                # The source names the content by its digest (an OCI blob): check it.
                await self.store.verify_whole(task.id, digest)

    async def _store_whole(self, task: Task, record: TaskRecord | None, content: bytes) -> None:
        """An empty or tiny task, answered inline by the scheduler: one piece, no fetch."""
        task.content_length = len(content)
        task.piece_length = compute_piece_length(len(content), task.request.piece_length)
        await self.store.begin(task, record)
        async with self.store.open(task, len(content)) as file:
            task.bitmap = Bitmap(piece_count(len(content), task.piece_length))
            if content:
                await file.land(Piece(0, 0, len(content)), memoryview(content), FROM_SCHEDULER)

    @staticmethod
    def _parse_digest(text: str) -> Digest | None:
        if not text:
            return None
        try:
            return Digest.parse(text)
        except ValueError as exc:
            raise DownloadError(FailureKind.BAD_REQUEST, str(exc)) from None

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
            await self.store.delete(task.id)
            record = None
        return await self.store.begin(
            task,
            record,
            expected_digest=str(expected) if expected else "",
            etag=info.etag or "",
            last_modified=info.last_modified or "",
        )

    async def _land_piece(
        self,
        task: Task,
        file: TaskFile,
        piece: Piece,
        data: memoryview | PieceSink,
        source: str,
        cost_ns: int = 0,
    ) -> None:
        """Store a piece this path fetched (its bytes, or the sink that wrote them),
        then report it to the scheduler (so other peers can fetch it here).
        ``cost_ns``: the time the fetch took."""
        if isinstance(data, PieceSink):
            digest = await file.land_written(data, source)
        else:
            digest = await file.land(piece, data, source)
        if self.p2p is not None and source != FROM_SCHEDULER:
            parent_id = "" if source == FROM_ORIGIN else source
            await self.p2p.report_stored(task, piece, digest, parent_id, cost_ns)

    async def _fetch_ranges(self, task: Task, file: TaskFile, info: SourceInfo) -> bool:
        """Fetch every missing piece the download wants (all of them, unless it is
        partial) with Range requests, ``concurrency`` at a time; False when there was
        nothing to fetch."""
        assert task.content_length is not None and task.bitmap is not None
        numbers = task.missing_wanted()
        if not numbers:
            return False
        missing = [piece_at(n, task.content_length, task.piece_length) for n in numbers]
        limit = self.concurrency
        window: OriginWindow | None = None
        if self.p2p is not None and (task.seed_trigger or task.stream is not None):
            # Other peers wait for these pieces: few ranges at a time, so each lands
            # soon and is relayed (parallel ranges on a slow origin land together,
            # late), as the download loop's origin_in_flight / origin_window say.
            rules = self.p2p.download_config
            limit = min(limit, rules.origin_in_flight)
            if rules.origin_window:
                window = OriginWindow(limit)
        workers = max(1, min(limit, PIECE_BUFFER_BUDGET // task.piece_length))
        queue: asyncio.Queue[Piece] = asyncio.Queue()
        for piece in missing:
            queue.put_nowait(piece)
        gate = OriginGate(window)

        source = self._source(task)

        async def worker() -> None:
            buffer: bytearray | None = None  # for sources without a sink path, reused
            while True:
                token = await gate.enter()
                fetching = True
                try:
                    try:
                        piece = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        return
                    await self.limiter.take(piece.length)
                    started = time.monotonic_ns()
                    landing: PieceSink | memoryview
                    try:
                        if isinstance(source, RangeToSink):
                            # The body goes into the file as it arrives, chunk by chunk,
                            # while it is in the cache (see daemons/sources/fast_range.py).
                            landing = sink = file.sink(piece)
                            await source.fetch_range_to(
                                info.final_url,
                                task.request.headers,
                                piece.offset,
                                piece.length,
                                sink,
                                info=info,
                            )
                        else:
                            if buffer is None:
                                buffer = bytearray(task.piece_length)
                            landing = view = memoryview(buffer)[: piece.length]
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
                        raise _source_failure(exc) from None
                    cost = time.monotonic_ns() - started
                    gate.landed(token, piece.length, cost / 1e9)
                    fetching = False
                    gate.leave()  # the next range may start while this one lands
                    await self._land_piece(task, file, piece, landing, FROM_ORIGIN, cost)
                finally:
                    if fetching:
                        gate.leave()

        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(workers, len(missing))):
                    group.create_task(worker())
        except BaseExceptionGroup as failures:
            # One worker's failure cancels the others; the task fails with its cause,
            # not with the group (which would reach the user as "internal error").
            raise _first_cause(failures) from None
        return True

    async def _fetch_stream(self, task: Task, file: TaskFile, info: SourceInfo) -> None:
        """One GET for origins without Range (or length): cut the stream into pieces."""
        if task.bitmap is None and task.content_length is not None:
            task.bitmap = Bitmap(piece_count(task.content_length, task.piece_length))
        # A stream cannot skip what we already have: start the task over.
        await file.restart()
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
                            await self._land_streamed(task, file, number, buffer, filled)
                            number += 1
                            filled = 0
        except SourceError as exc:
            raise _source_failure(exc) from None
        if filled:
            await self._land_streamed(task, file, number, buffer, filled)
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
        await file.truncate(total)

    async def _land_streamed(
        self, task: Task, file: TaskFile, number: int, buffer: bytearray, length: int
    ) -> None:
        if task.bitmap is not None and number >= len(task.bitmap):
            raise DownloadError(
                FailureKind.ORIGIN,
                f"origin sent more than the {task.content_length} bytes it announced",
            )
        await self.limiter.take(length)
        piece = Piece(number, number * task.piece_length, length)
        await self._land_piece(task, file, piece, memoryview(buffer)[:length], FROM_ORIGIN)

    # -- serving what is stored ---------------------------------------------------------

    async def check_before_serving(
        self, task_id: str, offset: int, length: int, held: HeldPieces | None = None
    ) -> str | None:
        """Check the stored pieces that bytes [offset, offset + length) of a task touch
        before they are served; None when good, else why not (the damaged pieces are
        dropped). See :meth:`TaskStore.check_before_serving`."""
        running = self._running.get(task_id)
        return await self.store.check_before_serving(task_id, offset, length, held, running=running)

    def read_in_order(
        self, task: Task, *, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """A task's bytes [start, end) in order, each piece as soon as it has landed
        (fewer when a partial download ends without the pieces: see :meth:`wait_ended`)."""
        return self.store.read_in_order(task, start=start, end=end)


def _source_failure(exc: SourceError) -> DownloadError:
    """The task failure a source error stands for (bad input in the URL or its
    settings is the user's to fix; anything else is the origin's failure)."""
    if isinstance(exc, ContentChanged):
        return ContentChangedError(str(exc), status=exc.status, validator=exc.validator)
    kind = FailureKind.BAD_REQUEST if exc.bad_input else FailureKind.ORIGIN
    return DownloadError(kind, str(exc), status=exc.status)


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
