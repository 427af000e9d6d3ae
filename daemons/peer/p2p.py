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
import random
import time
import uuid

from d7y.core import ids
from d7y.core import messages as m
from d7y.core.pieces import Piece, compute_piece_length, piece_at, piece_count
from d7y.core.scheduling.download import (
    ERROR,
    KINDS,
    AskParents,
    Cancel,
    Download,
    DownloadConfig,
    Fetch,
    Follow,
    GoToOrigin,
    ReportFailed,
    Unfollow,
)
from d7y.daemons.peer.limits import TokenBucket
from d7y.daemons.peer.metrics import PeerMetrics
from d7y.daemons.peer.piece_client import Announcement, PieceClient, PieceFetchError
from d7y.daemons.peer.receiving import Receiving
from d7y.daemons.peer.scheduler_client import (
    DownloadStream,
    SchedulerClient,
    SchedulerUnavailable,
)
from d7y.daemons.peer.storage import TASK_SUCCEEDED, TaskRecord
from d7y.daemons.peer.task import Task
from d7y.daemons.peer.task_store import TaskFile, TaskStore
from d7y.ext.bitmap import Bitmap

log = logging.getLogger("d7y.dfdaemon.p2p")

POLL_INTERVAL = 0.1  # how often parents are asked what they hold while pieces are missing
DIGEST_REFRESH = 0.1  # at most this often the scheduler is asked for new digests
#: While nothing is in flight and some digests are unknown, they are asked for this often
#: ahead of need: a peer at the end of a relay chain then knows a piece's digest when its
#: parent announces the piece, instead of holding the piece back for a round trip to the
#: scheduler at every hop (netns, 16 hosts at 4 MiB/s: ~0.15 s per hop).
DIGEST_PREFETCH = 1.0
RESUBSCRIBE_AFTER = 0.5  # a parent that does not hold the task yet: subscribe again then
#: Relayed pieces a parent may break off (its own transfer failed: not its fault) in one
#: download before the next counts as a connection failure: a parent that announces
#: pieces it is "receiving" and cuts every one of them off is dropped.
LOST_LIMIT = 8


class P2PDownloader:
    """The P2P strategy of a task manager: registers its downloads with the scheduler,
    fetches from parents into the task store, reports what it stored.

    It holds the store (where pieces land) and the scheduler client, never the task
    manager: the manager owns it and calls it. It listens to the store for tasks that
    are no longer held, to tell the scheduler (:meth:`leave`).
    """

    def __init__(
        self,
        store: TaskStore,
        scheduler: SchedulerClient,
        *,
        limiter: TokenBucket | None = None,
        metrics: PeerMetrics | None = None,
        ip: str,
        hostname: str,
        host_id: str,
        seed: bool,
        register_timeout: float = 30.0,
        download_config: DownloadConfig | None = None,
        geometry_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.limiter = limiter or TokenBucket(0)
        self.metrics = metrics or store.metrics
        self.ip = ip
        self.hostname = hostname
        self.host_id = host_id
        self.seed = seed
        self.register_timeout = register_timeout
        # The download loop's rules (core.scheduling.download): the policy, timeouts,
        # in-flight limits, the stall fallback.
        self.download_config = download_config or DownloadConfig()
        self.geometry_timeout = geometry_timeout
        self.rng = rng or random.Random()
        # The socket timeout is a backstop; the download loop times requests out itself.
        self.client = PieceClient(timeout=max(self.download_config.piece_timeout, 30.0) * 4)
        # task_id -> the peer ID under which the scheduler knows this daemon holds it
        # (after a finished download or a restore); LeavePeer goes out when it is evicted.
        self.held: dict[str, str] = {}
        store.withdrawn_listeners.append(self.leave)

    def close(self) -> None:
        self.client.close()

    async def restore_held(self) -> None:
        """After (re)connecting and announcing the host: tell the scheduler every task
        this daemon holds whole (the task manager then moves its running downloads onto
        the new connection, :meth:`maybe_restore`).

        A restarted scheduler has forgotten them (and one that saw the connection drop
        has dropped them); without this, stored tasks would serve nobody until
        downloaded again. One RestorePeer per whole task, on stream 0; one new stream
        per running download (:meth:`maybe_restore`).
        """
        self.held.clear()
        restored = 0
        for record in await self.store.records():
            restored += await self._restore_record(record)
        if restored:
            log.info("restored held tasks with the scheduler count=%d", restored)

    async def restore(self, task_id: str) -> None:
        """Announce one whole stored task (RestorePeer) on the current connection.

        For a download that finished after the connection it registered on was lost
        (its DownloadFinished had nowhere to go): without this, a scheduler that came
        back in the meantime would never send children here for it. Not connected:
        nothing to do, the next connection's :meth:`restore_held` announces it.
        """
        record = await self.store.record(task_id)
        if record is None:
            return
        with contextlib.suppress(SchedulerUnavailable):
            if await self._restore_record(record):
                log.info("announced a task that finished without a scheduler stream task=%s",
                         task_id)  # fmt: skip

    def maybe_restore(self, task: Task) -> None:
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

    async def _restore_running(self, task: Task) -> None:
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

    async def _restore_record(self, record: TaskRecord) -> bool:
        if record.state != TASK_SUCCEEDED or not record.content_length:
            return False
        digests = await self.store.recorded_digests(record.id)
        if len(digests) != piece_count(record.content_length, record.piece_length):
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
                digests=digests,
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

    async def register(self, task: Task) -> tuple[DownloadStream | None, m.Message | None]:
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

    async def announce_held(self, task: Task) -> None:
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

    async def report_stored(
        self, task: Task, piece: Piece, digest: str, parent_id: str, cost_ns: int
    ) -> None:
        """Tell the scheduler that this download stored ``piece`` (from ``parent_id``;
        "" for the origin), so it can send children here for it. Nothing to do for a
        download without a scheduler stream."""
        if task.stream is None:
            return
        await task.stream.report(
            m.PieceFinished(
                peer_id=task.peer_id,
                task_id=task.id,
                number=piece.number,
                parent_id=parent_id,
                cost_ns=cost_ns,
                length=piece.length,
                digest=digest,
            )
        )

    # -- the parent path -------------------------------------------------------------------

    async def download(
        self, task: Task, stream: DownloadStream, answer: m.Message, record: TaskRecord | None
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
            run.add_parent(parent)  # kept until the loop starts
        if content_length is None or piece_length is None:
            geometry = await run.learn_geometry()
            if geometry is None:
                return False
            content_length, piece_length = geometry
        return await run.fetch_all(content_length, piece_length, record)


class _Run:
    """One P2P download: the core download loop (:class:`Download`) decides; this
    carries out its actions -- fetches, subscriptions, reports -- on real sockets."""

    def __init__(
        self, owner: P2PDownloader, task: Task, stream: DownloadStream, digests: dict[int, str]
    ) -> None:
        self.owner = owner
        self.store = owner.store
        self.task = task
        task.stream = stream
        self.digests: dict[int, str] = digests
        self.parents: dict[str, m.ParentInfo] = {}
        self.known: dict[str, Bitmap] = {}  # what each parent was last seen to hold
        self.offered: list[m.ParentInfo] = []  # parents given before the loop started
        self.dl: Download | None = None
        self.count = 0
        self.last_digest_ask = 0.0
        self.fallback = False
        self.fallback_reason = ""
        # Subscriptions: parent ID -> the task reading its pushes. Parents in ``polled``
        # are polled instead; ``held_back`` are pieces parents hold that wait for their
        # digest from the scheduler; ``news`` wakes the fetch loop when a push arrives.
        self.watches: dict[str, asyncio.Task] = {}
        self.polled: set[str] = set()
        self.held_back: dict[str, set[int]] = {}
        # Cut-through: pieces parents announced as being received whose digest is not
        # known yet, and how many relayed pieces each parent broke off.
        self.held_back_receiving: dict[str, set[int]] = {}
        self.lost_count: dict[str, int] = {}
        self.news = asyncio.Event()
        stream.on_answer = self.news.set  # an answer (parents, digests) wakes the loop too
        # The loop's in-flight fetches and the actions waiting to be sent to the scheduler.
        self.inflight: dict[tuple[int, str], asyncio.Future] = {}
        self.buffers: list[bytearray] = []
        self.outbox: list[m.Message] = []

    @property
    def stream(self) -> DownloadStream:
        """The download's scheduler stream: a new one after
        :meth:`P2PDownloader.maybe_restore`."""
        return self.task.stream

    # -- parents -------------------------------------------------------------------------

    def add_parent(self, parent: m.ParentInfo) -> None:
        """A parent from the scheduler; the download loop decides whether to use it."""
        if parent.peer_id == self.task.peer_id:
            return
        if self.dl is None:
            self.offered.append(parent)
            return
        if parent.peer_id in self.dl.bad:
            return
        if parent.peer_id not in self.dl.parents:
            self.parents[parent.peer_id] = parent
        self.run(
            self.dl.add_parents(
                [(parent.peer_id, None, parent.tx_bandwidth_bps, parent.max_tx_bandwidth_bps)],
                time.monotonic(),
            )
        )

    def follow(self, parent_id: str) -> None:
        parent = self.parents.get(parent_id)
        if parent is None:
            return
        self.known[parent_id] = Bitmap(self.count)
        if parent_id not in self.watches:
            self.watches[parent_id] = asyncio.ensure_future(self._follow(parent))

    def unfollow(self, parent_id: str) -> None:
        log.info("dropping parent task=%s parent=%s", self.task.id, parent_id)
        self.parents.pop(parent_id, None)
        self.known.pop(parent_id, None)
        self.polled.discard(parent_id)
        self.held_back.pop(parent_id, None)
        self.held_back_receiving.pop(parent_id, None)
        watch = self.watches.pop(parent_id, None)
        if watch is not None:
            watch.cancel()

    # -- the core loop's actions -------------------------------------------------------------

    def run(self, actions: list) -> None:
        """Carry out the download loop's actions: fetches start at once; reports and
        reschedules queue in ``outbox`` for :meth:`flush` (sending may wait)."""
        task = self.task
        for action in actions:
            kind = type(action)
            if kind is Fetch:
                parent = self.parents.get(action.parent)
                if parent is None:
                    continue
                buffer = self.buffers.pop() if self.buffers else bytearray(task.piece_length)
                self.inflight[(action.piece, action.parent)] = asyncio.ensure_future(
                    self._fetch(action.piece, parent, buffer)
                )
            elif kind is Cancel:
                self.inflight.pop((action.piece, action.parent), _Nothing).cancel()
            elif kind is ReportFailed:
                self.owner.metrics.piece_failures.inc()
                self.outbox.append(
                    m.PieceFailed(
                        peer_id=task.peer_id,
                        task_id=task.id,
                        number=action.piece,
                        parent_id=action.parent,
                        reason=action.reason[:4000],
                        temporary=action.temporary,
                    )
                )
            elif kind is Follow:
                self.follow(action.parent)
            elif kind is Unfollow:
                self.unfollow(action.parent)
            elif kind is AskParents:
                self.outbox.append(
                    m.Reschedule(
                        peer_id=task.peer_id,
                        task_id=task.id,
                        bad_parents=list(action.bad),
                        reason=action.reason[:200],
                    )
                )
            elif kind is GoToOrigin:
                log.info("falling back to the origin task=%s reason=%s", task.id, action.reason)
                self.fallback = True
                self.fallback_reason = action.reason

    async def flush(self) -> None:
        outbox, self.outbox = self.outbox, []
        for message in outbox:
            await self.stream.report(message)

    # -- scheduler answers and digests ---------------------------------------------------

    async def learn_geometry(self) -> tuple[int, int] | None:
        """The task's length when the scheduler did not know it yet: ask the parents
        (a seed peer learns it from the origin first) and the scheduler."""
        deadline = time.monotonic() + self.owner.geometry_timeout
        while time.monotonic() < deadline:
            self.handle_answers()
            if self.fallback:
                return None
            for parent in list(self.offered):
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
                if self.dl is not None:
                    self.run(self.dl.back_to_source(reason, time.monotonic()))
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
        if self.stream.broken and not self.parents and not self.offered:
            self.fallback = True

    async def ask_digests(self, force: bool = False, every: float = DIGEST_REFRESH) -> None:
        stamp = time.monotonic()
        if force or stamp - self.last_digest_ask >= every:
            self.last_digest_ask = stamp
            await self.stream.report(
                m.GetTaskDigests(peer_id=self.task.peer_id, task_id=self.task.id)
            )

    # -- following parents ------------------------------------------------------------------

    async def _follow(self, parent: m.ParentInfo) -> None:
        """Feed a parent's pushed pieces to the download loop until cancelled (the
        parent was dropped, or the download ended). Without a subscription the parent is
        polled: while it does not hold the task yet (``not_found``: a seed peer
        triggered a moment ago) the subscription is tried again every
        ``RESUBSCRIBE_AFTER``; an older parent (``bad_request``) or a broken connection
        leaves it polled for good, and a parent that went away is found out (and
        reported) by the poll."""
        parent_id = parent.peer_id
        while parent_id in self.parents:
            try:
                async for news in self.owner.client.subscribe(
                    _address(parent), self.task.id, self.count
                ):
                    self.polled.discard(parent_id)
                    if self.announced(parent_id, news):
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

    def announced(self, parent_id: str, news: Announcement) -> bool:
        """A subscription's news: pieces received (cut-through), pieces no longer
        received, pieces held, in that order (one push may carry a piece in several
        lists: its last state is the one held). True if the loop learned something."""
        learned = False
        if news.receiving:
            learned = self.receiving(parent_id, news.receiving)
        if news.not_receiving:
            learned = self.not_receiving(parent_id, news.not_receiving) or learned
        if news.have:
            held_back = self.held_back_receiving.get(parent_id)
            if held_back:
                held_back.difference_update(news.have)
            learned = self.holds(parent_id, news.have) or learned
        return learned

    def receiving(self, parent_id: str, numbers) -> bool:
        """Cut-through: a parent started receiving ``numbers``; the download loop
        learns those with a known digest (the loop ignores them unless
        ``cut_through`` is on), the rest wait in ``held_back_receiving``."""
        seen = self.known.get(parent_id)
        dl = self.dl
        if seen is None or dl is None or not dl.config.cut_through:
            return False
        learned = False
        stamp = time.monotonic()
        for number in numbers:
            if seen.test(number):
                continue  # held whole there already
            if number in self.digests:
                learned = dl.parent_receiving(parent_id, number, stamp) or learned
            else:
                self.held_back_receiving.setdefault(parent_id, set()).add(number)
        return learned

    def not_receiving(self, parent_id: str, numbers) -> bool:
        """Cut-through: a parent no longer receives ``numbers`` (without holding them):
        a request there is cancelled and the piece asked again."""
        held_back = self.held_back_receiving.get(parent_id)
        if held_back:
            held_back.difference_update(numbers)
        seen = self.known.get(parent_id)
        if seen is None or self.dl is None:
            return False
        stamp = time.monotonic()
        for number in numbers:
            if not seen.test(number):
                log.info("parent no longer receives a piece task=%s piece=%d parent=%s",
                         self.task.id, number, parent_id)  # fmt: skip
                self.run(self.dl.parent_lost_piece(parent_id, number, stamp))
        return True

    def holds(self, parent_id: str, numbers) -> bool:
        """A parent holds ``numbers``: the download loop learns those with a known
        digest, the rest wait in ``held_back``. True if it learned something."""
        seen = self.known.get(parent_id)
        if seen is None or self.dl is None:
            return False
        learned = False
        stamp = time.monotonic()
        for number in numbers:
            if seen.test(number):
                continue
            if number in self.digests:
                seen.set(number)
                self.dl.parent_has(parent_id, number, stamp)
                learned = True
            else:
                self.held_back.setdefault(parent_id, set()).add(number)
        return learned

    async def release_held_back(self) -> None:
        """Pieces whose digest arrived go to the download loop; ask for the others."""
        waiting = False
        # (the loop's tick right after this pumps for what the download loop learns)
        for held_back, learn in (
            (self.held_back, self.holds),
            (self.held_back_receiving, self.receiving),
        ):
            for parent_id, numbers in list(held_back.items()):
                ready = [n for n in numbers if n in self.digests]
                numbers.difference_update(ready)
                if ready:
                    learn(parent_id, ready)
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
                if exc.kind in ("connection", "protocol") and self.dl is not None:
                    reason = f"unreachable: {exc}"
                    self.run(self.dl.parent_gone(parent_id, time.monotonic(), reason))
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

    # -- the download -------------------------------------------------------------------------

    async def fetch_all(
        self, content_length: int, piece_length: int, record: TaskRecord | None
    ) -> bool:
        task, store = self.task, self.store
        task.content_length = content_length
        task.piece_length = piece_length
        self.count = piece_count(content_length, piece_length)
        if record is None or record.content_length != content_length:
            await store.delete(task.id)  # pieces of another length: start afresh
            record = None
        await store.begin(task, record)
        async with store.open(task, content_length) as file:
            await file.resume()
            task.notify_change()  # the geometry is known: range readers resolve
            if not task.missing_wanted():
                return True
            return await self._loop(file)

    async def _loop(self, file: TaskFile) -> bool:
        task = self.task
        # A partial download (a Range request) wants some pieces only: to the loop the
        # others count as held. The wants are taken once; readers that join later and
        # need more start a new download when this one ends (TaskManager.wait_ended).
        wanted = task.wanted_pieces()
        have = task.bitmap.copy()
        if wanted is not None:
            for number in wanted.iter_clear():
                have.set(number)

        def incomplete() -> bool:
            if wanted is None:
                return not task.bitmap.all()
            return task.bitmap.and_not(wanted).any()

        self.dl = Download(
            self.count,
            self.owner.rng,
            self.owner.download_config,
            now=time.monotonic(),
            have=have,
            streaming=task.streaming,
        )
        offered, self.offered = self.offered, []
        for parent in offered:
            self.add_parent(parent)
        self.buffers = [bytearray(task.piece_length) for _ in range(4)]
        inflight = self.inflight
        last_poll = 0.0
        try:
            while incomplete():
                self.handle_answers()
                clock = time.monotonic()
                if clock - last_poll >= POLL_INTERVAL:
                    last_poll = clock
                    await self.poll_parents()
                await self.release_held_back()
                self.run(self.dl.tick(time.monotonic()))
                await self.flush()
                if self.fallback:
                    return False
                wait = min(max(self.dl.next_timer(time.monotonic()) - time.monotonic(), 0.0),
                           POLL_INTERVAL)  # fmt: skip
                if not inflight:
                    if len(self.digests) < self.count:
                        await self.ask_digests(every=DIGEST_PREFETCH)
                    await self.wait_for_news(wait)
                    continue
                news = asyncio.ensure_future(self.news.wait())
                done, _ = await asyncio.wait(
                    [*inflight.values(), news], timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                news.cancel()
                self.news.clear()
                for key in [k for k, f in inflight.items() if f in done]:
                    fut = inflight.pop(key, None)  # an earlier action may have taken it
                    if fut is None or fut.cancelled():
                        continue
                    outcome = fut.result()
                    number, parent_id = key
                    if isinstance(outcome, PieceFetchError):
                        self._recycle(outcome.buffer, outcome.relay)  # type: ignore[attr-defined]
                        if outcome.kind == "lost":
                            self.relay_lost(number, parent_id, outcome)
                            continue
                        log.info(
                            "piece failed task=%s piece=%d parent=%s kind=%s error=%s",
                            task.id,
                            number,
                            parent_id,
                            outcome.kind,
                            outcome,
                        )
                        kind = outcome.kind if outcome.kind in KINDS else ERROR
                        self.run(
                            self.dl.piece_failed(
                                number, parent_id, kind, time.monotonic(), str(outcome)
                            )
                        )
                        continue
                    length, _digest, cost_ns, buffer, relay = outcome
                    if task.bitmap.test(number):  # an endgame duplicate that lost
                        self._end_relay(relay, stored=True)
                        self._recycle(buffer, relay)
                        continue
                    piece = piece_at(number, task.content_length, task.piece_length)
                    try:
                        digest = await file.land(piece, memoryview(buffer)[:length], parent_id)
                    finally:
                        # Stored: the store announces it; else the children are told.
                        self._end_relay(relay, stored=task.bitmap.test(number))
                    self._recycle(buffer, relay)
                    await self.owner.report_stored(task, piece, digest, parent_id, cost_ns)
                    self.run(self.dl.piece_done(number, parent_id, cost_ns / 1e9, time.monotonic()))
                await self.flush()
            return True
        finally:
            for fut in inflight.values():
                fut.cancel()
            await asyncio.gather(*inflight.values(), return_exceptions=True)
            inflight.clear()
            watches = list(self.watches.values())
            self.watches.clear()
            for watch in watches:
                watch.cancel()
            await asyncio.gather(*watches, return_exceptions=True)

    def relay_lost(self, number: int, parent_id: str, error: PieceFetchError) -> None:
        """A parent broke off a piece it relayed while receiving it (its own transfer
        failed): the piece is asked again, elsewhere if possible; not a failure of the
        parent, unless it does that more than ``LOST_LIMIT`` times."""
        count = self.lost_count[parent_id] = self.lost_count.get(parent_id, 0) + 1
        log.info("relayed piece broke off task=%s piece=%d parent=%s count=%d error=%s",
                 self.task.id, number, parent_id, count, error)  # fmt: skip
        now = time.monotonic()
        if count > LOST_LIMIT:
            self.run(self.dl.piece_failed(number, parent_id, "connection", now, str(error)))
            return
        self.run(self.dl.parent_lost_piece(parent_id, number, now))
        # A request the loop did not count as relayed (the parent's news of the piece
        # had not arrived) is a failure to find it there; a no-op if dropped above.
        self.run(self.dl.piece_failed(number, parent_id, "not_found", now, str(error)))

    def _recycle(self, buffer: bytearray, relay: Receiving | None) -> None:
        """Reuse a fetch's buffer, unless a child read from it: a relay still sending
        its tail must not see it overwritten."""
        if relay is None or not relay.shared:
            self.buffers.append(buffer)

    def _end_relay(self, relay: Receiving | None, *, stored: bool, reason: str = "") -> None:
        if relay is not None and not relay.ended:
            # A piece another fetch stored meanwhile is announced held: no "lost" news.
            held = self.task.bitmap is not None and self.task.bitmap.test(relay.number)
            self.store.receiving.end(relay, stored=stored, reason=reason, announce=not held)

    async def _fetch(self, number: int, parent: m.ParentInfo, buffer: bytearray):
        started = time.monotonic_ns()
        relay: Receiving | None = None
        task_id = self.task.id
        receiving = self.store.receiving

        def start_relay(header: m.Piece):
            # The header is in: children may be served the piece as it lands here.
            nonlocal relay
            relay = receiving.start(
                task_id, number, header.offset, header.length, header.digest, memoryview(buffer)
            )
            return relay.progress if relay is not None else None

        cut_through = self.owner.download_config.cut_through
        try:
            await self.owner.limiter.take(self.task.piece_length)
            length, digest = await self.owner.client.fetch(
                _address(parent),
                task_id,
                number,
                memoryview(buffer),
                self.digests,
                relay=start_relay if cut_through else None,
            )
        except PieceFetchError as exc:
            self._end_relay(relay, stored=False, reason=str(exc))
            exc.buffer = buffer  # type: ignore[attr-defined]
            exc.relay = relay  # type: ignore[attr-defined]
            return exc
        except BaseException:  # cancelled (the loop no longer wants it), or a bug
            self._end_relay(relay, stored=False, reason="the request was cancelled")
            raise
        if relay is not None:
            relay.verify()  # the digest matched: children may take the last bytes
        return length, digest, time.monotonic_ns() - started, buffer, relay


class _NothingType:
    def cancel(self) -> None:
        pass


_Nothing = _NothingType()


def _address(parent: m.ParentInfo) -> tuple[str, int]:
    return parent.ip, parent.download_port
