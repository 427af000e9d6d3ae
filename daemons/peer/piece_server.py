"""The upload server's piece protocol: verified pieces to other peers, zero copy.

Speaks the framed protocol of docs/protocol.md on ``upload.piece_port``:

    GetTaskInfo(task_id)       -> TaskInfo (which pieces this peer holds, their digests)
    Subscribe(task_id)         -> TaskInfo, then HavePieces as new pieces are stored,
                                  on the same stream, until Unsubscribe or disconnect
    GetPiece(task_id, number)  -> Piece header + ``length`` raw bytes (sendfile(2) on a
                                  plain stream, the copy path under TLS); a piece being
                                  received here (cut-through) is streamed as it lands
    Hello / Ping               -> Hello / Pong

Anything this peer cannot answer gets an explicit Error frame (``not_found`` for an
unknown task or a piece it does not hold, ``busy`` above ``upload.max_concurrent``, and
to a child just served while another was refused within ``upload.fair_window``: fair
slots, core/scheduling/upload_slots.py), never silence. A malformed frame gets an Error
too; when the framing itself is lost (bad magic, oversized or truncated frame) the
connection is closed after it. Requests on one connection are answered in order; peers
open several connections for parallelism.
A push (HavePieces) waits for the answer being written on its connection, so frames and
piece payloads never interleave; pieces stored meanwhile go out together in one frame.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time

from d7y.core.messages import (
    Error,
    ErrorCode,
    GetPiece,
    GetTaskInfo,
    HavePieces,
    Hello,
    Piece,
    Ping,
    Pong,
    Subscribe,
    TaskInfo,
    Unsubscribe,
)
from d7y.core.pieces import piece_at, piece_count
from d7y.core.protocol import PROTOCOL_MINOR_VERSION, ProtocolError, encode_frame
from d7y.core.scheduling.upload_slots import UploadSlots
from d7y.core.states import TaskState
from d7y.daemons.framing import FramedStream, IdleTimeout, ReadTimeout
from d7y.daemons.listener import Listener
from d7y.daemons.peer.limits import TokenBucket
from d7y.daemons.peer.metrics import PeerMetrics
from d7y.daemons.peer.receiving import Receiving, ReceivingFailed
from d7y.daemons.peer.storage import TASK_SUCCEEDED
from d7y.daemons.peer.task_manager import TaskManager
from d7y.daemons.stream import Stream
from d7y.ext.bitmap import Bitmap
from d7y.ext.transfer import ShortFileError

log = logging.getLogger("d7y.dfdaemon.pieces")


class _Connection:
    """A child's connection: its socket, the lock every write takes, its subscriptions."""

    __slots__ = ("framed", "subscriptions", "write_lock")

    def __init__(self, framed: FramedStream) -> None:
        self.framed = framed
        self.write_lock = asyncio.Lock()
        self.subscriptions: dict[int, _Subscription] = {}  # stream id -> subscription


class _Subscription:
    """One Subscribe stream and the pieces stored since its last frame."""

    __slots__ = ("conn", "flushing", "lost", "pending", "receiving", "stream_id", "task_id")

    def __init__(self, conn: _Connection, stream_id: int, task_id: str) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.task_id = task_id
        self.pending: dict[int, str] = {}  # piece number -> digest, not sent yet
        # Cut-through news not sent yet: pieces that started arriving here, and pieces
        # announced as arriving that are no longer received (their transfer failed).
        self.receiving: set[int] = set()
        self.lost: set[int] = set()
        self.flushing = False

    def has_news(self) -> bool:
        return bool(self.pending or self.receiving or self.lost)


class PieceServer:
    def __init__(
        self,
        manager: TaskManager,
        *,
        limiter: TokenBucket | None = None,
        metrics: PeerMetrics | None = None,
        max_concurrent: int = 64,
        fair_window: float = 0.0,
        max_frame: int = 1024 * 1024,
        rate_chunk: int = 0,
        peer_id: str = "",
        host_id: str = "",
        corrupt: bool = False,
        idle_timeout: float = 60.0,
        request_timeout: float = 10.0,
        max_connections: int = 0,
        max_connections_per_ip: int = 0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.manager = manager
        self.storage = manager.storage
        self.limiter = limiter or TokenBucket(0)
        self.metrics = metrics or PeerMetrics()
        self.max_concurrent = max_concurrent
        self.max_frame = max_frame
        # With a rate limit: bytes of a piece sent per take of the bucket (0: the whole
        # piece at once, after its turn); cut-through relays are paced per landed chunk.
        self.rate_chunk = rate_chunk
        self.peer_id = peer_id
        self.host_id = host_id
        # Test-only fault switch (testing.corrupt_uploads): serve every piece with one
        # byte flipped, under its honest digest, so children must catch it.
        self.corrupt = corrupt
        # A connection that asks nothing (and follows no subscription) for idle_timeout,
        # or stalls in the middle of a frame for request_timeout, is closed: a child
        # that keeps a connection pooled just opens a new one.
        self.idle_timeout = idle_timeout or None
        self.request_timeout = request_timeout or None
        # Upload slots, handed out fairly (core/scheduling/upload_slots.py); a child is
        # known by its connection (on loopback every child has the same address).
        self._slots = UploadSlots(max_concurrent, fair_window)
        self._subscriptions: dict[str, dict[_Subscription, None]] = {}  # task id -> subs
        self._flushes: set[asyncio.Task] = set()
        manager.piece_listeners.append(self._piece_stored)
        # Pieces this daemon is receiving (download.cut_through): announced to
        # subscribers and served as their bytes land.
        self.receiving = manager.store.receiving
        self.receiving.listeners.append(self._piece_receiving)
        self._listener = Listener(
            self._accept,
            name="piece port",
            max_connections=max_connections,
            max_connections_per_ip=max_connections_per_ip,
            refusal=lambda reason: encode_frame(Error(code=ErrorCode.BUSY, message=reason)),
            tls=tls,
            handshake_timeout=self.request_timeout,
        )

    @property
    def port(self) -> int:
        return self._listener.port

    async def start(self, host: str, port: int) -> None:
        await self._listener.start(host, port)

    async def stop(self) -> None:
        if self._piece_stored in self.manager.piece_listeners:
            self.manager.piece_listeners.remove(self._piece_stored)
        if self._piece_receiving in self.receiving.listeners:
            self.receiving.listeners.remove(self._piece_receiving)
        await self._listener.stop()
        for flush in list(self._flushes):
            flush.cancel()

    async def _accept(self, stream: Stream, _address: tuple) -> None:
        await self._serve(FramedStream(stream, max_body_length=self.max_frame))

    async def _serve(self, framed: FramedStream) -> None:
        conn = _Connection(framed)
        try:
            while True:
                try:
                    stream_id, message = await framed.read(
                        idle_timeout=self.idle_timeout, frame_timeout=self.request_timeout
                    )
                except IdleTimeout:
                    if self._follows_running_task(conn):
                        continue  # a subscriber waits for our pushes: not idle
                    raise
                except ProtocolError as exc:
                    log.info("bad frame from peer error=%s fatal=%s", exc, exc.fatal)
                    async with conn.write_lock:
                        await framed.send_error(exc)
                    if exc.fatal:
                        return
                    continue
                async with conn.write_lock:
                    await self._dispatch(conn, stream_id, message)
        except ReadTimeout as exc:
            log.debug("closing piece connection: %s", exc)
        except ShortFileError as exc:
            # Bytes already left for a piece that turned out short: framing is lost.
            log.error("content file shorter than its metadata error=%s", exc)
        except ssl.SSLError as exc:
            log.info("piece connection closed on a TLS error: %s", exc)
        except (EOFError, OSError) as exc:
            log.debug("piece connection ended: %s", exc)  # the peer went away
        except Exception:
            # A bug, not the peer's doing: say where, drop this connection, keep serving.
            log.exception("piece connection crashed")
        finally:
            for sub in list(conn.subscriptions.values()):
                self._unsubscribe(sub)
            framed.close()

    async def _dispatch(self, conn: _Connection, stream_id: int, message) -> None:
        """Answer one request; the caller holds the connection's write lock."""
        framed = conn.framed
        self.metrics.piece_requests.labels(type(message).__name__).inc()
        if isinstance(message, GetPiece):
            await self._send_piece(framed, stream_id, message)
        elif isinstance(message, GetTaskInfo):
            await framed.send(await self._task_info(message.task_id), stream_id)
        elif isinstance(message, Subscribe):
            await self._subscribe(conn, stream_id, message.task_id)
        elif isinstance(message, Unsubscribe):
            sub = conn.subscriptions.get(stream_id)
            if sub is not None and sub.task_id == message.task_id:
                self._unsubscribe(sub)
        elif isinstance(message, Ping):
            await framed.send(Pong(nonce=message.nonce), stream_id)
        elif isinstance(message, Hello):
            reply = Hello(
                minor_version=PROTOCOL_MINOR_VERSION,
                peer_id=self.peer_id,
                host_id=self.host_id,
                role="peer",
                agent="d7y-dfdaemon",
            )
            await framed.send(reply, stream_id)
        else:
            name = type(message).__name__
            await framed.send(
                Error(code=ErrorCode.BAD_REQUEST, message=f"{name} is not served on this port"),
                stream_id,
            )

    # -- subscriptions -----------------------------------------------------------------

    def _follows_running_task(self, conn: _Connection) -> bool:
        """Whether a subscription on ``conn`` may still get pushes (its task runs)."""
        return any(self.manager.running(sub.task_id) for sub in conn.subscriptions.values())

    async def _subscribe(self, conn: _Connection, stream_id: int, task_id: str) -> None:
        if stream_id in conn.subscriptions:
            await conn.framed.send(
                Error(
                    code=ErrorCode.BAD_REQUEST,
                    message=f"stream {stream_id} already has a subscription: open a new stream",
                    task_id=task_id,
                ),
                stream_id,
            )
            return
        sub = None
        if self.manager.running(task_id) is not None:
            # Registered before the snapshot is taken: a piece stored from here on is in
            # the snapshot or pushed after it (the push waits for this write lock), or
            # both (a child takes a piece twice without harm), never in neither.
            sub = _Subscription(conn, stream_id, task_id)
            conn.subscriptions[stream_id] = sub
            self._subscriptions.setdefault(task_id, {})[sub] = None
            self.metrics.subscriptions.inc()
        info = await self._task_info(task_id)
        if sub is not None and not (isinstance(info, TaskInfo) and info.state is TaskState.RUNNING):
            self._unsubscribe(sub)  # it finished meanwhile: the snapshot says it all
        # A task held whole (or failed, or unknown) gets its answer and no pushes.
        await conn.framed.send(info, stream_id)

    def _unsubscribe(self, sub: _Subscription) -> None:
        if sub.conn.subscriptions.pop(sub.stream_id, None) is not None:
            self.metrics.subscriptions.dec()
        subs = self._subscriptions.get(sub.task_id)
        if subs is not None:
            subs.pop(sub, None)
            if not subs:
                del self._subscriptions[sub.task_id]

    def _piece_stored(self, task_id: str, number: int, digest: str) -> None:
        for sub in self._subscriptions.get(task_id, ()):
            sub.pending[number] = digest
            sub.receiving.discard(number)  # held whole says more
            sub.lost.discard(number)
            self._schedule_flush(sub)

    def _piece_receiving(self, task_id: str, number: int, started: bool) -> None:
        for sub in self._subscriptions.get(task_id, ()):
            if started:
                sub.lost.discard(number)  # received again: the child's news is "receiving"
                sub.receiving.add(number)
            elif number in sub.receiving:
                sub.receiving.discard(number)  # the child never heard of it
                continue
            else:
                sub.lost.add(number)
            self._schedule_flush(sub)

    def _schedule_flush(self, sub: _Subscription) -> None:
        if not sub.flushing:
            sub.flushing = True
            flush = asyncio.get_running_loop().create_task(self._flush(sub))
            self._flushes.add(flush)
            flush.add_done_callback(self._flushes.discard)

    async def _flush(self, sub: _Subscription) -> None:
        conn = sub.conn
        try:
            async with conn.write_lock:
                sub.flushing = False  # pieces stored from now on start another flush
                if not sub.has_news() or conn.subscriptions.get(sub.stream_id) is not sub:
                    return
                pending, sub.pending = sub.pending, {}
                receiving, sub.receiving = sorted(sub.receiving), set()
                lost, sub.lost = sorted(sub.lost), set()
                numbers = sorted(pending)
                await conn.framed.send(
                    HavePieces(
                        task_id=sub.task_id,
                        numbers=numbers,
                        digests=pending,
                        receiving=receiving,
                        not_receiving=lost,
                    ),
                    sub.stream_id,
                )
                self.metrics.pushes.inc()
        except (ConnectionError, OSError) as exc:  # the serve loop sees it and cleans up
            log.debug("push to a subscriber failed task=%s error=%s", sub.task_id, exc)
            self._unsubscribe(sub)

    async def _held_pieces(self, task_id: str):
        """(content_length, piece_length, state, {number: digest}) or None."""
        running = self.manager.running(task_id)
        if running is not None and running.bitmap is not None:
            return (
                running.content_length,
                running.piece_length,
                TaskState.RUNNING,
                dict(running.digests),
            )
        record = await self.storage.run(self.storage.meta.get_task, task_id)
        if record is None or record.content_length is None:
            return None
        pieces = await self.storage.run(self.storage.meta.pieces, task_id)
        state = TaskState.SUCCEEDED if record.state == TASK_SUCCEEDED else TaskState.FAILED
        digests = {n: d for n, (d, _source) in pieces.items()}
        return record.content_length, record.piece_length, state, digests

    async def _task_info(self, task_id: str):
        held = await self._held_pieces(task_id)
        if held is None:
            return Error(code=ErrorCode.NOT_FOUND, message=f"no task {task_id}", task_id=task_id)
        content_length, piece_length, state, digests = held
        count = piece_count(content_length, piece_length)
        bitmap = Bitmap(count)
        for number in digests:
            if number < count:
                bitmap.set(number)
        receiving = []
        if state is TaskState.RUNNING:
            receiving = [
                n for n in self.receiving.numbers(task_id) if n < count and n not in digests
            ]
        return TaskInfo(
            task_id=task_id,
            content_length=content_length,
            piece_length=piece_length,
            piece_count=count,
            bitmap=bitmap.to_bytes(),
            digests={n: d for n, d in digests.items() if n < count},
            state=state,
            receiving=receiving,
        )

    async def _send_corrupted(self, conn: FramedStream, fd: int, piece) -> None:
        data = bytearray(piece.length)
        self.storage.read_into(fd, piece.offset, memoryview(data))
        data[piece.length // 2] ^= 0xFF
        await conn.stream.send_all(data)

    async def _send_piece(self, conn: FramedStream, stream_id: int, request: GetPiece) -> None:
        held = await self._held_pieces(request.task_id)
        digest = held[3].get(request.number) if held else None
        relayed = None
        if digest is None:
            relayed = self.receiving.get(request.task_id, request.number)
        if relayed is not None:
            await self._send_relayed(conn, stream_id, request, relayed)
            return
        if held is None or digest is None:
            what = "task" if held is None else f"piece {request.number} of task"
            message = f"{what} {request.task_id} is not held here"
            await self._refuse(conn, stream_id, request, ErrorCode.NOT_FOUND, message)
            return
        child = id(conn)
        if not self._slots.acquire(child, time.monotonic()):
            await self._refuse(conn, stream_id, request, ErrorCode.BUSY, self._busy_message())
            return
        self.metrics.active_uploads.inc()
        try:
            await self._serve_piece(conn, stream_id, request, held, digest)
        finally:
            self._slots.release(child, time.monotonic())
            self.metrics.active_uploads.dec()

    @staticmethod
    async def _refuse(
        conn: FramedStream, stream_id: int, request: GetPiece, code: str, message: str
    ) -> None:
        """Answer a GetPiece with an Error that names the piece."""
        await conn.send(
            Error(code=code, message=message, task_id=request.task_id, piece_number=request.number),
            stream_id,
        )

    def _busy_message(self) -> str:
        active = self._slots.active
        if self._slots.full:
            return f"serving {active} pieces already; retry elsewhere"
        return f"serving {active} pieces; a child refused a moment ago goes first"

    async def _send_relayed(
        self, conn: FramedStream, stream_id: int, request: GetPiece, record: Receiving
    ) -> None:
        """Cut-through: serve a piece this daemon is still receiving, its bytes as they
        land (the last one once it is verified), in an upload slot like any piece. If the
        transfer it relays fails, the connection is closed mid-payload: the child's fetch
        breaks off and it asks elsewhere."""
        record.attach()  # before any wait: the buffer is not reused from here on
        try:
            child = id(conn)
            if not self._slots.acquire(child, time.monotonic()):
                await self._refuse(conn, stream_id, request, ErrorCode.BUSY, self._busy_message())
                return
            self.metrics.active_uploads.inc()
            self.metrics.active_relays.inc()
            self.metrics.relayed_pieces.inc()
            log.debug("relaying a piece being received task=%s piece=%d landed=%d/%d",
                      request.task_id, request.number, record.landed, record.length)  # fmt: skip
            try:
                await conn.send(
                    Piece(
                        task_id=request.task_id,
                        number=request.number,
                        offset=record.offset,
                        length=record.length,
                        digest=record.digest,
                        receiving=True,
                    ),
                    stream_id,
                )
                sent = 0
                while sent < record.length:
                    try:
                        upto = await record.wait_beyond(sent)
                    except ReceivingFailed as exc:
                        self.metrics.relays_aborted.inc()
                        log.info("closing a relay: %s", exc)
                        raise ConnectionAbortedError(str(exc)) from None
                    if self.rate_chunk and not self.limiter.unlimited:
                        upto = min(upto, sent + self.rate_chunk)
                    await self.limiter.take(upto - sent)
                    data = record.view[sent:upto]
                    middle = record.length // 2
                    if self.corrupt and sent <= middle < upto:
                        data = bytearray(data)  # testing.corrupt_uploads: relays lie too
                        data[middle - sent] ^= 0xFF
                    await conn.stream.send_all(data)
                    self.metrics.bytes_uploaded.inc(upto - sent)
                    sent = upto
            finally:
                self._slots.release(child, time.monotonic())
                self.metrics.active_uploads.dec()
                self.metrics.active_relays.dec()
        finally:
            record.detach()

    async def _serve_piece(
        self, conn: FramedStream, stream_id: int, request: GetPiece, held, digest: str
    ) -> None:
        """Send a piece this host holds, in an upload slot already taken."""
        content_length, piece_length = held[0], held[1]
        piece = piece_at(request.number, content_length, piece_length)
        # The stored bytes must still match the digest sent with them (verify.py).
        problem = await self.manager.check_before_serving(
            request.task_id, piece.offset, piece.length, (content_length, piece_length, held[3])
        )
        if problem is not None:
            await self._refuse(conn, stream_id, request, ErrorCode.NOT_FOUND, problem)
            return
        with self.manager.pin(request.task_id):
            try:
                fd = os.open(self.storage.content_path(request.task_id), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:  # deleted between the lookup and the open
                message = f"task {request.task_id} was just removed"
                await self._refuse(conn, stream_id, request, ErrorCode.NOT_FOUND, message)
                return
            try:
                header = Piece(
                    task_id=request.task_id,
                    number=piece.number,
                    offset=piece.offset,
                    length=piece.length,
                    digest=digest,
                )
                chunk = self.rate_chunk
                if chunk and not self.limiter.unlimited and not self.corrupt:
                    # Paced like a link: a chunk at a time, each behind the bucket.
                    await conn.send(header, stream_id)
                    for start in range(0, piece.length, chunk):
                        size = min(chunk, piece.length - start)
                        await self.limiter.take(size)
                        await conn.stream.send_file(fd, piece.offset + start, size)
                        self.metrics.bytes_uploaded.inc(size)
                    return
                await self.limiter.take(piece.length)
                await conn.send(header, stream_id)
                if self.corrupt:
                    await self._send_corrupted(conn, fd, piece)
                else:
                    await conn.stream.send_file(fd, piece.offset, piece.length)
                self.metrics.bytes_uploaded.inc(piece.length)
            finally:
                os.close(fd)
