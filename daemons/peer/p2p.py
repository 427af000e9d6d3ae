"""The P2P download path of dfdaemon: register with the scheduler, fetch from parents.

For each download the daemon registers with the scheduler on a stream of its own. The
answer decides the path: content inline (empty/tiny), parents (normal/small), or back to
source. On the parent path the sans-IO :class:`~d7y.core.scheduling.PiecePicker`
chooses which piece to ask of which parent (rarest first, weighted by the parents'
spare upload); the :class:`~d7y.daemons.peer.piece_client.PieceClient` fetches it into
a reused buffer; the bytes must match the digest the scheduler recorded from the peer
that fetched the piece from the origin, never only the parent's own claim; then the
piece is written, recorded and reported, and this peer serves it to others at once.

Each parent is followed with a subscription (Subscribe: its snapshot, then HavePieces
pushed as it stores pieces); a parent that does not take subscriptions, or whose
subscription breaks, is polled instead (GetTaskInfo every ``POLL_INTERVAL``). Pieces a
parent holds whose digest is not known yet are held back until the scheduler has it
(GetTaskDigests). A parent that fails or serves corrupt bytes is reported and replaced
(Reschedule with it as a bad parent). When nothing moves for ``stall_timeout`` the
download falls back to the origin for the missing pieces, unless back-to-source is off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
import uuid

from d7y.core import ids
from d7y.core import messages as m
from d7y.core.pieces import compute_piece_length, piece_at, piece_count
from d7y.core.scheduling.picker import PiecePicker
from d7y.daemons.peer.piece_client import PieceClient, PieceFetchError
from d7y.daemons.peer.scheduler_client import (
    DownloadStream,
    SchedulerClient,
    SchedulerUnavailable,
)
from d7y.daemons.peer.storage import TASK_SUCCEEDED, TaskRecord, now
from d7y.ext.bitmap import Bitmap

log = logging.getLogger("d7y.dfdaemon.p2p")

POLL_INTERVAL = 0.1  # how often parents are asked what they hold while pieces are missing
DIGEST_REFRESH = 0.1  # at most this often the scheduler is asked for new digests
RESCHEDULE_EVERY = 1.0  # at most this often a stalled download asks for new parents
RESUBSCRIBE_AFTER = 0.5  # a parent that does not hold the task yet: subscribe again then


class P2PDownloader:
    def __init__(
        self,
        manager,
        scheduler: SchedulerClient,
        *,
        ip: str,
        hostname: str,
        host_id: str,
        seed: bool,
        register_timeout: float = 30.0,
        stall_timeout: float = 10.0,
        piece_timeout: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.manager = manager
        self.scheduler = scheduler
        self.ip = ip
        self.hostname = hostname
        self.host_id = host_id
        self.seed = seed
        self.register_timeout = register_timeout
        self.stall_timeout = stall_timeout
        self.piece_timeout = piece_timeout
        self.rng = rng or random.Random()
        self.client = PieceClient(timeout=piece_timeout)
        # task_id -> the peer ID under which the scheduler knows this daemon holds it
        # (after a finished download or a restore); LeavePeer goes out when it is evicted.
        self.held: dict[str, str] = {}

    def close(self) -> None:
        self.client.close()

    async def restore_held(self) -> None:
        """After (re)connecting and announcing the host: tell the scheduler every task
        this daemon holds whole, and move the downloads still running onto the new
        connection.

        A restarted scheduler has forgotten them (and one that saw the connection drop
        has dropped them); without this, stored tasks would serve nobody until
        downloaded again. One RestorePeer per whole task, on stream 0; one new stream
        per running download (:meth:`maybe_restore`).
        """
        storage = self.manager.storage
        self.held.clear()
        records = await storage.run(storage.meta.list_tasks)
        restored = 0
        for record in records:
            restored += await self._restore_record(record)
        if restored:
            log.info("restored held tasks with the scheduler count=%d", restored)
        for task in self.manager.running_tasks():
            self.maybe_restore(task)

    async def restore(self, task_id: str) -> None:
        """Announce one whole stored task (RestorePeer) on the current connection.

        For a download that finished after the connection it registered on was lost
        (its DownloadFinished had nowhere to go): without this, a scheduler that came
        back in the meantime would never send children here for it. Not connected:
        nothing to do, the next connection's :meth:`restore_held` announces it.
        """
        storage = self.manager.storage
        record = await storage.run(storage.meta.get_task, task_id)
        if record is None:
            return
        with contextlib.suppress(SchedulerUnavailable):
            if await self._restore_record(record):
                log.info("announced a task that finished without a scheduler stream task=%s",
                         task_id)  # fmt: skip

    def maybe_restore(self, task) -> None:
        """A running download whose scheduler connection was lost: move it to a new
        stream on the current one (in the background; at most one move at a time).
        Nothing to do for a download without a lost stream, or whose length is not
        known yet (it is announced whole when it finishes)."""
        if task.restoring is not None and not task.restoring.done():
            return
        if task.stream is None or not task.stream.broken or task.bitmap is None:
            return
        if not self.scheduler.connected.is_set() or not task.content_length:
            return
        task.restoring = asyncio.ensure_future(self._restore_running(task))

    async def _restore_running(self, task) -> None:
        """Open a new stream with RestorePeer (this download's own peer ID, the pieces
        held so far and their digests): the scheduler (restarted, or one that dropped
        this peer with the connection) can send children here, take the reports and
        answer reschedules again; the download then reports on the new stream. On
        failure the next connection tries again."""
        try:
            stream = self.scheduler.open_download()
        except SchedulerUnavailable:
            return
        held = task.bitmap
        moved = False
        try:
            await stream.send(
                m.RestorePeer(
                    peer_id=task.peer_id,
                    task_id=task.id,
                    host_id=self.host_id,
                    url=task.request.url,
                    content_length=task.content_length,
                    piece_length=task.piece_length,
                    bitmap=held.to_bytes(),
                    succeeded=False,
                    digests={n: task.digests[n] for n in held.iter_set() if n in task.digests},
                )
            )
            old, task.stream = task.stream, stream
            old.close()
            moved = True
        except SchedulerUnavailable:
            return
        finally:
            if not moved:  # failed or cancelled (the download ended): drop the new stream
                stream.close()
        log.info("restored a running download with the scheduler task=%s pieces=%d",
                 task.id, held.count())  # fmt: skip

    async def _restore_record(self, record) -> bool:
        if record.state != TASK_SUCCEEDED or not record.content_length:
            return False
        storage = self.manager.storage
        pieces = await storage.run(storage.meta.pieces, record.id)
        if len(pieces) != piece_count(record.content_length, record.piece_length):
            return False
        peer_id = ids.peer_id(self.ip, self.hostname, uuid.uuid4(), seed=self.seed)
        await self.scheduler.send_host_message(
            m.RestorePeer(
                peer_id=peer_id,
                task_id=record.id,
                host_id=self.host_id,
                url=record.url,
                content_length=record.content_length,
                piece_length=record.piece_length,
                succeeded=True,
                digests={n: d for n, (d, _source) in pieces.items()},
            )
        )
        self.held[record.id] = peer_id
        return True

    async def leave(self, task_id: str) -> None:
        """The task is gone from this daemon: the scheduler must stop sending children."""
        peer_id = self.held.pop(task_id, None)
        if peer_id is not None:
            with contextlib.suppress(SchedulerUnavailable):
                await self.scheduler.send_host_message(
                    m.LeavePeer(peer_id=peer_id, task_id=task_id)
                )

    # -- registration --------------------------------------------------------------------

    async def register(self, task) -> tuple[DownloadStream | None, m.Message | None]:
        """Register the download; (None, None) when no scheduler is reachable."""
        request = task.request
        task.peer_id = ids.peer_id(self.ip, self.hostname, uuid.uuid4(), seed=self.seed)
        try:
            stream = self.scheduler.open_download()
        except SchedulerUnavailable as exc:
            log.warning("no scheduler, going back to source task=%s reason=%s", task.id, exc)
            return None, None
        try:
            await stream.send(
                m.RegisterPeer(
                    peer_id=task.peer_id,
                    task_id=task.id,
                    host_id=self.host_id,
                    url=request.url,
                    tag=request.tag,
                    application=request.application,
                    filtered_query_params=request.filtered_query_params,
                    headers=dict(request.headers),
                    piece_length=request.piece_length or 0,
                    priority=min(max(request.priority, 0), 6),
                    need_back_to_source=task.seed_trigger,
                )
            )
            answer = await stream.next_answer(self.register_timeout)
        except SchedulerUnavailable as exc:
            log.warning(
                "scheduler lost while registering, going back to source task=%s reason=%s",
                task.id,
                exc,
            )
            stream.close()
            return None, None
        log.debug(
            "registered task=%s peer=%s answer=%s", task.id, task.peer_id, type(answer).__name__
        )
        return stream, answer

    async def announce_held(self, task) -> None:
        """Tell the scheduler this peer holds a whole task it stored earlier.

        A seed peer triggered for a task it already has (the scheduler restarted and
        forgot it) registers as a back-to-source peer and reports every stored piece
        with its recorded digest, so children can be scheduled to it at once.
        """
        task.seed_trigger = True
        stream, answer = await self.register(task)
        if stream is None:
            return
        try:
            if not isinstance(answer, m.NeedBackToSource):
                return  # the scheduler found another way; nothing to announce
            await stream.report(
                m.DownloadStarted(
                    peer_id=task.peer_id,
                    task_id=task.id,
                    back_to_source=True,
                    content_length=task.content_length,
                    piece_length=task.piece_length,
                )
            )
            count = piece_count(task.content_length, task.piece_length)
            for number in range(count):
                piece = piece_at(number, task.content_length, task.piece_length)
                await stream.report(
                    m.PieceFinished(
                        peer_id=task.peer_id,
                        task_id=task.id,
                        number=number,
                        parent_id="",
                        cost_ns=0,
                        length=piece.length,
                        digest=task.digests[number],
                    )
                )
            await stream.report(
                m.DownloadFinished(
                    peer_id=task.peer_id,
                    task_id=task.id,
                    content_length=task.content_length,
                    piece_count=count,
                )
            )
            self.held[task.id] = task.peer_id
            log.info("announced stored task to the scheduler task=%s", task.id)
        finally:
            stream.close()

    # -- the parent path -------------------------------------------------------------------

    async def download(
        self, task, stream: DownloadStream, answer: m.Message, record: TaskRecord | None
    ) -> bool:
        """Fetch the task from parents. True when complete; False to fall back to the
        origin for what is missing (the pieces stored so far stay)."""
        if isinstance(answer, m.SmallTaskResponse):
            parents = [answer.parent]
            content_length, digests = answer.content_length, {0: answer.piece_digest}
            piece_length = compute_piece_length(content_length, task.request.piece_length)
        else:
            parents = list(answer.candidate_parents)
            content_length = answer.content_length if answer.content_length >= 0 else None
            piece_length = answer.piece_length or None
            digests = dict(answer.digests)
        run = _Run(self, task, stream, digests)
        await stream.report(m.DownloadStarted(peer_id=task.peer_id, task_id=task.id))
        for parent in parents:
            run.add_parent(parent)
        if content_length is None or piece_length is None:
            geometry = await run.learn_geometry()
            if geometry is None:
                return False
            content_length, piece_length = geometry
        return await run.fetch_all(content_length, piece_length, record)


class _Run:
    """The state of one P2P download (parents, picker, in-flight fetches)."""

    def __init__(self, owner: P2PDownloader, task, stream: DownloadStream, digests) -> None:
        self.owner = owner
        self.manager = owner.manager
        self.task = task
        task.stream = stream
        self.digests: dict[int, str] = digests
        self.parents: dict[str, m.ParentInfo] = {}
        self.known: dict[str, Bitmap] = {}  # what each parent was last seen to hold
        self.bad: set[str] = set()
        self.picker: PiecePicker | None = None
        self.count = 0
        self.last_digest_ask = 0.0
        self.last_reschedule = 0.0
        self.fallback = False
        # Subscriptions: parent ID -> the task reading its pushes. Parents in ``polled``
        # are polled instead; ``held_back`` are pieces parents hold that wait for their
        # digest from the scheduler; ``news`` wakes the fetch loop when a push arrives.
        self.watches: dict[str, asyncio.Task] = {}
        self.polled: set[str] = set()
        self.held_back: dict[str, set[int]] = {}
        self.news = asyncio.Event()

    @property
    def stream(self) -> DownloadStream:
        """The download's scheduler stream: a new one after
        :meth:`P2PDownloader.maybe_restore`."""
        return self.task.stream

    def add_parent(self, parent: m.ParentInfo) -> None:
        if parent.peer_id in self.bad or parent.peer_id == self.task.peer_id:
            return
        self.parents[parent.peer_id] = parent
        if self.picker is not None and parent.peer_id not in self.picker.parent_ids:
            self.picker.parent_added(
                parent.peer_id,
                Bitmap(self.count),
                tx=parent.tx_bandwidth_bps,
                max_tx=parent.max_tx_bandwidth_bps,
            )
            self.known[parent.peer_id] = Bitmap(self.count)
            if parent.peer_id not in self.watches:
                self.watches[parent.peer_id] = asyncio.ensure_future(self._follow(parent))

    def drop_parent(self, parent_id: str) -> list[tuple[int, str]]:
        self.parents.pop(parent_id, None)
        self.known.pop(parent_id, None)
        self.polled.discard(parent_id)
        self.held_back.pop(parent_id, None)
        watch = self.watches.pop(parent_id, None)
        if watch is not None:
            watch.cancel()
        if self.picker is not None and parent_id in self.picker.parent_ids:
            return self.picker.parent_removed(parent_id)
        return []

    async def learn_geometry(self) -> tuple[int, int] | None:
        """The task's length when the scheduler did not know it yet: ask the parents
        (a seed peer learns it from the origin first) and the scheduler."""
        deadline = time.monotonic() + self.owner.stall_timeout
        while time.monotonic() < deadline:
            self.handle_answers()
            if self.fallback:
                return None
            for parent in list(self.parents.values()):
                with contextlib.suppress(PieceFetchError):
                    info = await self.owner.client.task_info(_address(parent), self.task.id)
                    if info.content_length >= 0 and info.piece_length:
                        return info.content_length, info.piece_length
            await self.ask_digests(force=True)
            await asyncio.sleep(POLL_INTERVAL)
        return None

    def handle_answers(self) -> None:
        for answer in self.stream.pending():
            if isinstance(answer, m.NormalTaskResponse):
                self.digests.update(answer.digests)
                for parent in answer.candidate_parents:
                    self.add_parent(parent)
            elif isinstance(answer, m.TaskDigests):
                self.digests.update(answer.digests)
            elif isinstance(answer, m.NeedBackToSource) or (
                isinstance(answer, m.Error) and answer.code == m.ErrorCode.UNAVAILABLE
            ):
                reason = getattr(answer, "reason", "") or getattr(answer, "message", "")
                log.info("scheduler sends task to source task=%s reason=%s", self.task.id, reason)
                self.fallback = True
            elif isinstance(answer, m.Error):
                # A refused report (e.g. after a scheduler restart forgot this peer) is
                # no reason to stop downloading from the parents we have.
                log.debug(
                    "scheduler refused a report task=%s code=%s message=%s",
                    self.task.id,
                    answer.code,
                    answer.message,
                )
        if self.stream.broken and not self.parents:
            self.fallback = True

    async def ask_digests(self, force: bool = False) -> None:
        stamp = time.monotonic()
        if force or stamp - self.last_digest_ask >= DIGEST_REFRESH:
            self.last_digest_ask = stamp
            await self.stream.report(
                m.GetTaskDigests(peer_id=self.task.peer_id, task_id=self.task.id)
            )

    async def reschedule(self, bad: list[str], reason: str) -> None:
        stamp = time.monotonic()
        if bad or stamp - self.last_reschedule >= RESCHEDULE_EVERY:
            self.last_reschedule = stamp
            await self.stream.report(
                m.Reschedule(
                    peer_id=self.task.peer_id, task_id=self.task.id, bad_parents=bad, reason=reason
                )
            )

    async def _follow(self, parent: m.ParentInfo) -> None:
        """Feed a parent's pushed pieces to the picker until cancelled (the parent was
        dropped, or the download ended). Without a subscription the parent is polled:
        while it does not hold the task yet (``not_found``: a seed peer triggered a
        moment ago) the subscription is tried again every ``RESUBSCRIBE_AFTER``; an
        older parent (``bad_request``) or a broken connection leaves it polled for
        good, and a parent that went away is found out (and reported) by the poll."""
        parent_id = parent.peer_id
        while parent_id in self.parents:
            try:
                async for numbers in self.owner.client.subscribe(
                    _address(parent), self.task.id, self.count
                ):
                    self.polled.discard(parent_id)
                    if self.holds(parent_id, numbers):
                        self.news.set()
                return
            except PieceFetchError as exc:
                log.debug(
                    "polling parent task=%s parent=%s (subscription: %s %s)",
                    self.task.id,
                    parent_id,
                    exc.kind,
                    exc,
                )
                self.polled.add(parent_id)
                self.news.set()
                if exc.kind != "not_found":
                    return
            await asyncio.sleep(RESUBSCRIBE_AFTER)

    def holds(self, parent_id: str, numbers) -> bool:
        """A parent holds ``numbers``: the picker learns those with a known digest, the
        rest wait in ``held_back``. True if the picker learned something."""
        seen = self.known.get(parent_id)
        if seen is None or self.picker is None or parent_id not in self.picker.parent_ids:
            return False
        learned = False
        for number in numbers:
            if seen.test(number):
                continue
            if number in self.digests:
                seen.set(number)
                self.picker.parent_has(parent_id, number)
                learned = True
            else:
                self.held_back.setdefault(parent_id, set()).add(number)
        return learned

    async def release_held_back(self) -> None:
        """Pieces whose digest arrived go to the picker; ask for the others."""
        waiting = False
        for parent_id, numbers in list(self.held_back.items()):
            ready = [n for n in numbers if n in self.digests]
            numbers.difference_update(ready)
            self.holds(parent_id, ready)
            waiting = waiting or bool(numbers)
        if waiting:
            await self.ask_digests()

    async def wait_for_news(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.news.wait(), timeout)
        self.news.clear()

    async def poll_parents(self) -> None:
        """Ask every parent without a working subscription what it holds; the new
        pieces go through :meth:`holds`, as pushed ones do."""

        async def one(parent_id: str, parent: m.ParentInfo) -> None:
            try:
                info = await self.owner.client.task_info(_address(parent), self.task.id)
            except PieceFetchError as exc:
                if exc.kind in ("connection", "protocol"):
                    await self.parent_failed(parent_id, f"unreachable: {exc}")
                return
            if info.piece_count != self.count or not info.bitmap:
                return
            seen = self.known.get(parent_id)
            if seen is not None:
                held = Bitmap.from_bytes(info.bitmap, self.count)
                self.holds(parent_id, seen.and_not(held).iter_set())  # the new ones only

        polled = [
            (pid, p)
            for pid, p in list(self.parents.items())
            if pid in self.polled or pid not in self.watches
        ]
        await asyncio.gather(*(one(pid, p) for pid, p in polled))

    async def parent_failed(self, parent_id: str, reason: str) -> None:
        if parent_id in self.bad:
            return
        self.bad.add(parent_id)
        log.info("dropping parent task=%s parent=%s reason=%s", self.task.id, parent_id, reason)
        self.drop_parent(parent_id)
        await self.reschedule([parent_id], reason[:200])

    async def fetch_all(
        self, content_length: int, piece_length: int, record: TaskRecord | None
    ) -> bool:
        task, manager = self.task, self.manager
        task.content_length = content_length
        task.piece_length = piece_length
        self.count = piece_count(content_length, piece_length)
        stamp = now()
        if record is None or record.content_length != content_length:
            await manager.storage.run(manager.storage.meta.delete_task, task.id)
            record = None
        await manager.storage.run(
            manager.storage.meta.put_task,
            TaskRecord(
                id=task.id,
                url=task.request.url,
                content_length=content_length,
                piece_length=piece_length,
                created_at=record.created_at if record else stamp,
                updated_at=stamp,
                last_access=stamp,
            ),
        )
        fd = await manager._open_making_room(task, content_length)
        try:
            await manager._resume_pieces(task, fd)
            if task.bitmap.all():
                return True
            return await self._loop(fd)
        finally:
            os.close(fd)

    async def _loop(self, fd: int) -> bool:
        task, manager = self.task, self.manager
        self.picker = PiecePicker(
            self.count,
            self.owner.rng,
            have=task.bitmap.copy(),
            piece_timeout=self.owner.piece_timeout,
            streaming=task.streaming,
        )
        for parent in list(self.parents.values()):
            self.parents.pop(parent.peer_id)
            self.add_parent(parent)
        buffers = [bytearray(task.piece_length) for _ in range(4)]
        inflight: dict[tuple[int, str], asyncio.Task] = {}
        last_progress = time.monotonic()
        last_poll = 0.0
        try:
            while not task.bitmap.all():
                self.handle_answers()
                if self.fallback:
                    return False
                clock = time.monotonic()
                if clock - last_poll >= POLL_INTERVAL:
                    last_poll = clock
                    await self.poll_parents()
                await self.release_held_back()
                for failure in self.picker.check_timeouts(clock):
                    inflight.pop((failure.piece, failure.parent), _Nothing).cancel()
                    if failure.report_parent:
                        await self.parent_failed(failure.parent, "piece timeouts")
                for number, parent_id in self.picker.next_requests(clock):
                    parent = self.parents.get(parent_id)
                    if parent is None:
                        continue
                    buffer = buffers.pop() if buffers else bytearray(task.piece_length)
                    fetch = asyncio.ensure_future(self._fetch(number, parent, buffer))
                    inflight[(number, parent_id)] = fetch
                if not inflight:
                    if clock - last_progress > self.owner.stall_timeout:
                        log.info("no parent can serve the rest, falling back task=%s", task.id)
                        return False
                    await self.reschedule([], "waiting for pieces")
                    await self.wait_for_news(POLL_INTERVAL / 2)
                    continue
                news = asyncio.ensure_future(self.news.wait())
                done, _ = await asyncio.wait(
                    [*inflight.values(), news],
                    timeout=POLL_INTERVAL,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                news.cancel()
                self.news.clear()
                for key in [k for k, f in inflight.items() if f in done]:
                    fut = inflight.pop(key, None)  # an earlier piece_done may have taken it
                    if fut is None or fut.cancelled():
                        continue
                    outcome = fut.result()
                    number, parent_id = key
                    if isinstance(outcome, PieceFetchError):
                        buffers.append(outcome.buffer)  # type: ignore[attr-defined]
                        await self._failed(number, parent_id, outcome)
                        continue
                    length, _digest, cost_ns, buffer = outcome
                    if task.bitmap.test(number):  # an endgame duplicate that lost
                        buffers.append(buffer)
                        continue
                    piece = piece_at(number, task.content_length, task.piece_length)
                    await manager._land_piece(
                        task, fd, piece, memoryview(buffer)[:length], parent_id, cost_ns
                    )
                    buffers.append(buffer)
                    last_progress = time.monotonic()
                    for other in self.picker.piece_done(
                        number, parent_id, cost_ns / 1e9, last_progress
                    ):
                        inflight.pop(other, _Nothing).cancel()
            return True
        finally:
            for fut in inflight.values():
                fut.cancel()
            await asyncio.gather(*inflight.values(), return_exceptions=True)
            watches = list(self.watches.values())
            self.watches.clear()
            for watch in watches:
                watch.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

    async def _fetch(self, number: int, parent: m.ParentInfo, buffer: bytearray):
        started = time.monotonic_ns()
        try:
            await self.manager.limiter.take(self.task.piece_length)
            length, digest = await self.owner.client.fetch(
                _address(parent), self.task.id, number, memoryview(buffer), self.digests
            )
        except PieceFetchError as exc:
            exc.buffer = buffer  # type: ignore[attr-defined]
            return exc
        return length, digest, time.monotonic_ns() - started, buffer

    async def _failed(self, number: int, parent_id: str, error: PieceFetchError) -> None:
        task = self.task
        self.manager.metrics.piece_failures.inc()
        log.info(
            "piece failed task=%s piece=%d parent=%s kind=%s error=%s",
            task.id,
            number,
            parent_id,
            error.kind,
            error,
        )
        await self.stream.report(
            m.PieceFailed(
                peer_id=task.peer_id,
                task_id=task.id,
                number=number,
                parent_id=parent_id,
                reason=str(error)[:4000],
                temporary=error.kind in ("busy", "connection"),
            )
        )
        if self.picker is None:
            return
        if error.kind == "corrupt":
            await self.parent_failed(parent_id, str(error))
            return
        failure = self.picker.piece_failed(number, parent_id, time.monotonic())
        if failure.report_parent or error.kind == "connection":
            await self.parent_failed(parent_id, str(error))


class _NothingType:
    def cancel(self) -> None:
        pass


_Nothing = _NothingType()


def _address(parent: m.ParentInfo) -> tuple[str, int]:
    return parent.ip, parent.download_port
