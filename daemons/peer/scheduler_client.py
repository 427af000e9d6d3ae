"""dfdaemon's connection to the scheduler.

One TCP connection carries the host's announcements (stream 0), one odd-numbered stream
per download, and the scheduler's ``TriggerSeed`` requests (even streams). The client
reconnects on its own with backoff; while no scheduler is reachable, :attr:`connected`
is clear, new downloads go back to source (unless the user disabled it) and the daemon
says so in its log. After a reconnect the host announces itself again, and running P2P
downloads keep their parents (new ones re-register).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable

from d7y.core import messages as m
from d7y.core.protocol import ProtocolError
from d7y.daemons.framing import FramedStream

log = logging.getLogger("d7y.dfdaemon.scheduler")

RECONNECT_MIN = 0.2
RECONNECT_MAX = 5.0
#: A connection that lasted this long was a working one: reconnect at once after it.
STABLE_CONNECTION = 10.0


class SchedulerUnavailable(Exception):
    """The scheduler cannot be reached (now); the caller goes back to source."""


class DownloadStream:
    """One download's stream: send reports, receive the scheduler's answers in order."""

    def __init__(self, client: SchedulerClient, stream_id: int) -> None:
        self.client = client
        self.stream_id = stream_id
        self.answers: asyncio.Queue[m.Message | None] = asyncio.Queue()
        self.broken = False
        #: Called when an answer arrives, so a loop that polls ``pending`` can wake at
        #: once instead of on its next tick (a P2P download sets its news event here).
        self.on_answer: Callable[[], None] | None = None

    async def send(self, message: m.Message) -> None:
        """Send a request or report; raises SchedulerUnavailable when disconnected."""
        if self.broken:
            raise SchedulerUnavailable("the scheduler connection of this download was lost")
        await self.client._send(message, self.stream_id)

    async def report(self, message: m.Message) -> None:
        """Best effort: a lost report must not fail a download."""
        with contextlib.suppress(SchedulerUnavailable):
            await self.send(message)

    async def next_answer(self, timeout: float) -> m.Message:
        """The next answer on this stream; SchedulerUnavailable on loss or timeout."""
        try:
            answer = await asyncio.wait_for(self.answers.get(), timeout)
        except TimeoutError:
            raise SchedulerUnavailable(f"no answer from the scheduler in {timeout:g}s") from None
        if answer is None:
            raise SchedulerUnavailable("the scheduler connection was lost")
        return answer

    def pending(self) -> list[m.Message]:
        """Answers that arrived and were not read yet (non-blocking)."""
        out = []
        while not self.answers.empty():
            answer = self.answers.get_nowait()
            if answer is None:
                self.broken = True
                break
            out.append(answer)
        return out

    def close(self) -> None:
        self.client._streams.pop(self.stream_id, None)

    def _deliver(self, message: m.Message | None) -> None:
        self.answers.put_nowait(message)
        if self.on_answer is not None:
            self.on_answer()

    def _lost(self) -> None:
        self.broken = True
        self._deliver(None)


class SchedulerClient:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        announce: Callable[[], m.AnnounceHost],
        on_trigger: Callable[[m.TriggerSeed], None],
        on_connected: Callable[[], Awaitable[None]] | None = None,
        announce_interval: float = 30.0,
        max_frame: int = 1024 * 1024,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.address = (host, port)
        self.tls = tls  # client context: the scheduler's port speaks TLS when set
        self._announce = announce
        self._on_trigger = on_trigger
        self._on_connected = on_connected
        self.announce_interval = announce_interval
        self.max_frame = max_frame
        self.connected = asyncio.Event()
        self._conn: FramedStream | None = None
        self._lock = asyncio.Lock()
        self._streams: dict[int, DownloadStream] = {}
        self._next_stream = 1
        self._runner: asyncio.Task | None = None
        self._closing = False

    def start(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._run())

    async def close(self, leave_host: str | None = None) -> None:
        self._closing = True
        if leave_host and self._conn is not None:
            # Best effort on the way out: a scheduler that is gone or slow notices the
            # closed connection instead.
            with contextlib.suppress(SchedulerUnavailable, TimeoutError):
                await asyncio.wait_for(self._send(m.LeaveHost(host_id=leave_host), 0), 2)
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner
        if self._conn is not None:
            self._conn.close()

    def open_download(self) -> DownloadStream:
        if not self.connected.is_set():
            raise SchedulerUnavailable(
                f"no scheduler reachable at {self.address[0]}:{self.address[1]}"
            )
        stream = DownloadStream(self, self._next_stream)
        self._next_stream += 2
        self._streams[stream.stream_id] = stream
        return stream

    async def _send(self, message: m.Message, stream_id: int) -> None:
        conn = self._conn
        if conn is None or not self.connected.is_set():
            raise SchedulerUnavailable("not connected to the scheduler")
        try:
            async with self._lock:
                await conn.send(message, stream_id)
        except (OSError, ConnectionError) as exc:
            raise SchedulerUnavailable(f"scheduler connection failed: {exc}") from None

    async def _run(self) -> None:
        delay = RECONNECT_MIN  # between failed connection attempts
        flap_delay = RECONNECT_MIN  # after connections that closed soon after opening
        warned = False
        while not self._closing:
            try:
                conn = await FramedStream.connect(
                    *self.address, timeout=5, tls=self.tls, max_body_length=self.max_frame
                )
            except (OSError, EOFError) as exc:  # TimeoutError, ssl.SSLError: OSErrors
                if not warned:
                    log.warning(
                        "scheduler unreachable address=%s:%d error=%s; downloads go back to "
                        "source until it is back",
                        *self.address,
                        exc,
                    )
                    warned = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            self._conn = conn
            self.connected.set()
            connected_at = asyncio.get_running_loop().time()
            delay = RECONNECT_MIN
            warned = False
            log.info("connected to scheduler address=%s:%d", *self.address)
            announcer = asyncio.get_running_loop().create_task(self._announce_loop())
            try:
                await self._read_loop(conn)
            finally:
                announcer.cancel()
                self.connected.clear()
                self._conn = None
                conn.close()
                for stream in list(self._streams.values()):
                    stream._lost()
                self._streams.clear()
                if not self._closing:
                    log.warning(
                        "scheduler connection lost address=%s:%d; new downloads go back to "
                        "source until it is back",
                        *self.address,
                    )
            if asyncio.get_running_loop().time() - connected_at >= STABLE_CONNECTION:
                flap_delay = RECONNECT_MIN
            elif not self._closing:
                # Closed soon after it opened (e.g. the scheduler refused our host while
                # it still held our previous connection): back off, do not spin.
                await asyncio.sleep(flap_delay)
                flap_delay = min(flap_delay * 2, RECONNECT_MAX)

    async def _announce_loop(self) -> None:
        first = True
        while True:
            with contextlib.suppress(SchedulerUnavailable):
                await self._send(self._announce(), 0)
                if first and self._on_connected is not None:
                    first = False
                    try:
                        await self._on_connected()
                    except SchedulerUnavailable:
                        pass
                    except Exception:
                        log.exception("re-announcing held tasks failed")
            await asyncio.sleep(self.announce_interval)

    async def send_host_message(self, message: m.Message) -> None:
        """A message on stream 0 (RestorePeer, LeavePeer for an evicted task)."""
        await self._send(message, 0)

    async def _read_loop(self, conn: FramedStream) -> None:
        while True:
            try:
                stream_id, message = await conn.read()
            except ProtocolError as exc:
                log.warning("bad frame from scheduler error=%s", exc)
                if exc.fatal:
                    return
                continue
            except (EOFError, OSError) as exc:
                log.debug("scheduler connection ended: %s", exc)
                return
            if isinstance(message, m.TriggerSeed):
                try:
                    self._on_trigger(message)
                except Exception:
                    log.exception("seed trigger failed task=%s", message.task_id)
                continue
            stream = self._streams.get(stream_id)
            if stream is not None:
                stream._deliver(message)
            elif isinstance(message, m.Error):
                # On stream 0 it is about the host itself (e.g. an announce refused):
                # the operator must see it.
                level = logging.WARNING if stream_id == 0 else logging.INFO
                log.log(level, "scheduler error stream=%d code=%s message=%s", stream_id,
                        message.code, message.message)  # fmt: skip
