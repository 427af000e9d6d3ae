"""The scheduler daemon: peers connect, announce their host, register downloads, report.

One :class:`SchedulerService` owns the sans-IO :class:`~d7y.core.scheduling.Scheduler`
and turns protocol messages into its calls and its results into answers. Everything a
result asks for that takes time — waiting ``retry_after`` before another round,
triggering a seed peer and waiting for it — happens here, on the download's stream, so
a peer sees only final answers: parents, back-to-source, or the content itself.

A peer's connection carries its host (AnnounceHost on stream 0) and one stream per
download. When the connection goes, the host and its peers leave the scheduler and
their children are rescheduled: a peer that cannot be reached cannot serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from d7y.core import messages as m
from d7y.core.protocol import ProtocolError, encode_frame
from d7y.core.scheduling import answers, translate
from d7y.core.scheduling import results as r
from d7y.core.scheduling.config import SchedulerConfig
from d7y.core.scheduling.scheduler import Scheduler, SchedulerError
from d7y.daemons.framing import FramedStream, ReadTimeout
from d7y.daemons.listener import Listener
from d7y.daemons.scheduler.config import SchedulerDaemonConfig
from d7y.daemons.scheduler.preheat import SeedPreheater
from d7y.daemons.stream import PeerIdentity, Stream
from d7y.daemons.tls import server_context

log = logging.getLogger("d7y.scheduler")

#: Reports that may end a seed peer's preheat of a task.
_PREHEAT_REPORTS = (m.DownloadFinished, m.DownloadFailed, m.RestorePeer)
#: Requests for another connection's host or peers one connection may send before it is
#: closed: a daemon's own mistake is refused and answered, a stream of them is an attack.
MAX_REFUSED = 16


@dataclass(eq=False, slots=True)  # one per connected host: no __dict__ each
class Connection:
    framed: FramedStream
    name: str
    #: The verified certificate's identity under mutual TLS (None: plain TCP).
    identity: PeerIdentity | None = None
    host_id: str | None = None
    peers: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    next_stream: int = 2  # streams this side opens are even
    refused: int = 0  # requests refused for naming another connection's host or peers

    async def send(self, message: m.Message, stream_id: int = 0) -> bool:
        """Send a frame; False if the connection is gone (the caller moves on)."""
        try:
            async with self.lock:  # frames from concurrent answers must not interleave
                await self.framed.send(message, stream_id)
            return True
        except (OSError, ConnectionError):
            return False

    def open_stream(self) -> int:
        stream = self.next_stream
        self.next_stream += 2
        return stream


@dataclass(slots=True)  # one per registered peer: no __dict__ each
class Route:
    """Where a peer's answers go: its connection and download stream."""

    conn: Connection
    stream_id: int
    request: m.RegisterPeer


class SchedulerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.decisions = Counter(
            "d7y_scheduler_decisions", "Answers sent to peers, by kind", ["kind"], registry=reg
        )
        self.reports = Counter(
            "d7y_scheduler_piece_reports", "Piece reports handled", ["result"], registry=reg
        )
        self.connections = Gauge("d7y_scheduler_connections", "Open connections", registry=reg)
        self.peers = Gauge("d7y_scheduler_peers", "Peers known", registry=reg)
        self.errors = Counter(
            "d7y_scheduler_errors", "Requests answered with an error", ["code"], registry=reg
        )
        self.digest_requests = Counter(
            "d7y_scheduler_digest_requests",
            "GetTaskDigests answered (peers asking for the digests of pieces to verify)",
            registry=reg,
        )


class SchedulerService:
    """A :class:`d7y.daemons.service.Service`: the shared lifecycle runs it."""

    name = "scheduler"

    def __init__(self, config: SchedulerDaemonConfig) -> None:
        self.config = config
        s = config.scheduling
        core_config = SchedulerConfig(
            policy=s.policy,
            algorithm=s.algorithm,
            filter_parent_limit=s.filter_parent_limit or None,
            candidate_parent_limit=s.candidate_parent_limit or None,
            max_parents=s.max_parents or None,
            retry_limit=s.retry_limit,
            retry_back_to_source_limit=s.retry_back_to_source_limit,
            retry_interval=float(s.retry_interval) or None,
            back_to_source_limit=s.back_to_source_limit,
            sample_servable_only=(
                None if s.sample_servable_only == "policy" else s.sample_servable_only == "on"
            ),
            peer_ttl=float(config.gc.peer_ttl),
            host_ttl=float(config.gc.host_ttl),
            task_ttl=float(config.gc.task_ttl),
        )
        self.rng = random.Random(s.seed or None)
        # The evaluator is the one core_config.algorithm names (one source of truth).
        self.core = Scheduler(core_config, rng=self.rng)
        self.metrics = SchedulerMetrics()
        self.routes: dict[str, Route] = {}
        self.host_conns: dict[str, Connection] = {}
        self._answers: dict[str, asyncio.Task] = {}
        server = config.server
        self._listener = Listener(
            self._accept,
            name="scheduler",
            max_connections=server.max_connections,
            max_connections_per_ip=server.max_connections_per_ip,
            refusal=lambda reason: encode_frame(m.Error(code=m.ErrorCode.BUSY, message=reason)),
            tls=server_context(config.security.tls),
            handshake_timeout=float(server.request_timeout) or None,
        )
        self._tasks: set[asyncio.Task] = set()
        self.port = 0
        self._manager = None  # a ManagerClient when manager.address is set
        self._preheat_worker = None  # a PreheatWorker, with the ManagerClient
        self.preheater = SeedPreheater(self)

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        await self._listener.start(cfg.server.listen, cfg.server.port, backlog=4096)
        self.port = self._listener.port
        self._spawn(self._gc_loop())
        if cfg.manager.address:
            from d7y.daemons.scheduler.manager_client import ManagerClient

            self._manager = ManagerClient(
                cfg.manager,
                port=self.port,
                get_config=lambda: self.core.config,
                set_config=lambda new: setattr(self.core, "config", new),
            )
            self._manager.start()
            from d7y.daemons.scheduler.preheat import PreheatWorker

            self._preheat_worker = PreheatWorker(
                self._manager, self.preheater, cfg.manager.preheat_concurrency
            )
            self._preheat_worker.start()

    def ready_details(self) -> dict[str, object]:
        return {
            "port": self.port,
            "policy": self.core.config.policy,
            "algorithm": self.config.scheduling.algorithm,
        }

    async def drain(self) -> None:
        """Take no new connections; let the answers being worked out reach their peers
        (the connections open go on meanwhile)."""
        await self._listener.stop_accepting()
        pending = list(self._answers.values())
        if pending:
            await asyncio.wait(pending)

    async def stop(self) -> None:
        if self._preheat_worker is not None:
            await self._preheat_worker.stop()
        if self._manager is not None:
            await self._manager.stop()
        await self._listener.stop()
        for task in list(self._tasks) + list(self._answers.values()):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._answers.values(), return_exceptions=True)

    def _spawn(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def render_metrics(self) -> bytes:
        self.metrics.peers.set(len(self.core.peers))
        return generate_latest(self.metrics.registry)

    async def _accept(self, stream: Stream, address: tuple) -> None:
        framed = FramedStream(stream, max_body_length=self.config.server.max_frame)
        name = f"{address[0]}:{address[1]}"
        await self._serve(Connection(framed, name, identity=stream.peer_identity))

    async def _gc_loop(self) -> None:
        while True:
            await asyncio.sleep(float(self.config.gc.interval))
            try:
                result = self.core.gc(self.now())
            except Exception:
                log.exception("gc failed")
                continue
            for peer_id in result.peers:
                self._forget(peer_id)
            self._reschedule_orphans(result.orphaned_children)
            if result.peers or result.tasks or result.hosts:
                log.info(
                    "gc peers=%d tasks=%d hosts=%d",
                    len(result.peers),
                    len(result.tasks),
                    len(result.hosts),
                )

    # -- one connection ---------------------------------------------------------------

    async def _serve(self, conn: Connection) -> None:
        self.metrics.connections.inc()
        server = self.config.server
        idle_timeout = float(server.idle_timeout) or None
        frame_timeout = float(server.request_timeout) or None
        try:
            while True:
                try:
                    stream_id, message = await conn.framed.read(
                        idle_timeout=idle_timeout, frame_timeout=frame_timeout
                    )
                except ProtocolError as exc:
                    log.info("bad frame conn=%s error=%s fatal=%s", conn.name, exc, exc.fatal)
                    self.metrics.errors.labels(exc.error_code).inc()
                    await conn.send(exc.to_message(), exc.stream_id or 0)
                    if exc.fatal:
                        return
                    continue
                refusal = self._foreign(conn, message)
                if refusal is not None:
                    # It names a host or peer another connection owns: refuse it and
                    # change nothing. An impostor's AnnounceHost also ends its connection.
                    log.warning(
                        "refused %s conn=%s: %s", type(message).__name__, conn.name, refusal
                    )
                    self.metrics.errors.labels(m.ErrorCode.FORBIDDEN).inc()
                    await conn.send(
                        m.Error(code=m.ErrorCode.FORBIDDEN, message=refusal[:4000]),
                        stream_id,
                    )
                    conn.refused += 1
                    if (
                        isinstance(message, m.AnnounceHost) and conn.host_id is None
                    ) or conn.refused > MAX_REFUSED:
                        return
                    continue
                try:
                    await self._dispatch(conn, stream_id, message)
                    if isinstance(message, _PREHEAT_REPORTS):
                        self.preheater.observe(conn.host_id, message)
                except (SchedulerError, ValueError) as exc:
                    # A request that does not fit the scheduler's state (unknown peer,
                    # illegal transition, a size that contradicts the task's): answer
                    # it, keep the connection. Anything else is a bug: logged below with
                    # its traceback, and this connection closed.
                    log.debug(
                        "request refused conn=%s type=%s error=%s",
                        conn.name,
                        type(message).__name__,
                        exc,
                    )
                    self.metrics.errors.labels("bad_request").inc()
                    await conn.send(
                        m.Error(code=m.ErrorCode.BAD_REQUEST, message=str(exc)[:4000]),
                        stream_id,
                    )
        except ReadTimeout as exc:
            log.info("closing connection conn=%s: %s", conn.name, exc)
        except ssl.SSLError as exc:
            log.info("closing connection conn=%s on a TLS error: %s", conn.name, exc)
        except (EOFError, OSError) as exc:
            log.debug("connection ended conn=%s: %s", conn.name, exc)
        except Exception:
            # A bug, not the peer's doing: say where, drop this connection, keep serving.
            log.exception("connection crashed conn=%s", conn.name)
        finally:
            self.metrics.connections.dec()
            conn.framed.close()
            self._connection_lost(conn)

    def _foreign(self, conn: Connection, msg: m.Message) -> str | None:
        """Why ``conn`` may not send ``msg``, or None when it may.

        Without mutual TLS a host proves nothing about its identity, so the scheduler
        binds it to a connection instead: the first live connection to announce a host
        ID owns that host and every peer on it until the connection closes. Another
        connection may not announce it, leave it, register or restore peers on it, or
        report for, reschedule or remove its peers. One connection carries one host.
        """
        if isinstance(msg, m.AnnounceHost) and conn.identity is not None:
            refusal = _certificate_refuses(conn.identity, msg)
            if refusal is not None:
                return refusal
        if isinstance(msg, m.AnnounceHost | m.LeaveHost):
            owner = self.host_conns.get(msg.host_id)
            if owner is not None and owner is not conn:
                return (
                    f"host {msg.host_id!r} is announced by another live connection; a host "
                    f"is bound to the connection that announced it until that connection "
                    f"closes"
                )
            if isinstance(msg, m.LeaveHost):
                return None if owner is conn else self._not_yours(conn, msg.host_id)
            if conn.host_id is not None and conn.host_id != msg.host_id:
                return (
                    f"this connection already announced host {conn.host_id!r}; it cannot "
                    f"announce {msg.host_id!r} too: open one connection per host"
                )
            return None
        if (
            isinstance(msg, m.RegisterPeer | m.RestorePeer)
            and self.host_conns.get(msg.host_id) is not conn
        ):
            return self._not_yours(conn, msg.host_id)
        peer_id = getattr(msg, "peer_id", None)
        if peer_id and not isinstance(msg, m.GetTaskDigests | m.Hello):
            peer = self.core.peers.get(peer_id)
            if peer is not None and self.host_conns.get(peer.host.id) is not conn:
                return (
                    f"peer {peer_id!r} belongs to host {peer.host.id!r}, which was not "
                    f"announced on this connection; only the host's own connection may act "
                    f"for it"
                )
        return None

    @staticmethod
    def _not_yours(conn: Connection, host_id: str) -> str:
        if conn.host_id is None:
            return (
                f"host {host_id!r} was not announced on this connection: send AnnounceHost "
                f"for it first"
            )
        return f"this connection announced host {conn.host_id!r}, not {host_id!r}"

    def _connection_lost(self, conn: Connection) -> None:
        now = self.now()
        orphans: list[str] = []
        for peer_id in list(conn.peers):
            with contextlib.suppress(SchedulerError):
                orphans += self.core.leave_peer(peer_id, now).orphaned_children
            self._forget(peer_id)
        if conn.host_id and self.host_conns.get(conn.host_id) is conn:
            del self.host_conns[conn.host_id]
            self.preheater.host_gone(conn.host_id)
            with contextlib.suppress(SchedulerError):
                left = self.core.leave_host(conn.host_id, now)
                for peer_id in left.peer_ids:
                    self._forget(peer_id)
                orphans += left.orphaned_children
            log.info("host left host=%s (connection closed)", conn.host_id)
        self._reschedule_orphans(orphans)

    def _forget(self, peer_id: str) -> None:
        route = self.routes.pop(peer_id, None)
        if route is not None:
            route.conn.peers.discard(peer_id)
        answer = self._answers.pop(peer_id, None)
        if answer is not None and answer is not asyncio.current_task():
            answer.cancel()

    async def _dispatch(self, conn: Connection, stream: int, msg: m.Message) -> None:
        now = self.now()
        core = self.core
        if isinstance(msg, m.PieceFinished):
            translate.piece_finished(core, msg, now)
            self.metrics.reports.labels("finished").inc()
        elif isinstance(msg, m.PieceFailed):
            self.metrics.reports.labels("failed").inc()
            result = translate.piece_failed(core, msg, now)
            if result.reschedule:
                self._start_answer(
                    msg.peer_id, lambda: core.reschedule(msg.peer_id, [], self.now())
                )
        elif isinstance(msg, m.RegisterPeer):
            self._register(conn, stream, msg, now)
        elif isinstance(msg, m.AnnounceHost):
            self._announce(conn, msg, now)
        elif isinstance(msg, m.RestorePeer):
            translate.restore_peer(core, msg, now)
            conn.peers.add(msg.peer_id)  # it leaves with its connection
            if stream:
                # A download that outlived its scheduler connection goes on on this new
                # stream: its reports and reschedule answers use it as a registration's.
                self.routes[msg.peer_id] = Route(conn, stream, translate.restored_request(msg))
        elif isinstance(msg, m.DownloadStarted):
            translate.download_started(core, msg, now)
        elif isinstance(msg, m.GetTaskDigests):
            self.metrics.digest_requests.inc()
            await conn.send(translate.task_digests(core, msg.task_id), stream)
        elif isinstance(msg, m.Reschedule):
            bad = list(msg.bad_parents)
            self._start_answer(msg.peer_id, lambda: core.reschedule(msg.peer_id, bad, self.now()))
        elif isinstance(msg, m.DownloadFinished):
            translate.download_finished(core, msg, now)
            log.debug("download finished peer=%s task=%s", msg.peer_id, msg.task_id)
        elif isinstance(msg, m.DownloadFailed):
            ended = core.download_failed(msg.peer_id, now)
            self._reschedule_orphans(ended.orphaned_children)
        elif isinstance(msg, m.LeavePeer):
            left = core.leave_peer(msg.peer_id, now)
            self._forget(msg.peer_id)
            self._reschedule_orphans(left.orphaned_children)
        elif isinstance(msg, m.LeaveHost):
            left = core.leave_host(msg.host_id, now)
            for peer_id in left.peer_ids:
                self._forget(peer_id)
            self._reschedule_orphans(left.orphaned_children)
        elif isinstance(msg, m.Hello):
            await conn.send(
                m.Hello(minor_version=0, role="scheduler", agent="d7y-scheduler"), stream
            )
        elif isinstance(msg, m.Ping):
            await conn.send(m.Pong(nonce=msg.nonce), stream)
        else:
            await conn.send(
                m.Error(
                    code=m.ErrorCode.BAD_REQUEST,
                    message=f"{type(msg).__name__} is not a scheduler request",
                ),
                stream,
            )

    def _announce(self, conn: Connection, msg: m.AnnounceHost, now: float) -> None:
        translate.announce_host(self.core, msg, now)
        if conn.host_id is None:
            log.info(
                "host announced host=%s type=%s conn=%s", msg.host_id, msg.host_type, conn.name
            )
        conn.host_id = msg.host_id
        self.host_conns[msg.host_id] = conn

    def _register(self, conn: Connection, stream: int, msg: m.RegisterPeer, now: float) -> None:
        result = translate.register_peer(self.core, msg, now)
        if not isinstance(result, r.MetadataOnly):
            self.routes[msg.peer_id] = Route(conn, stream, msg)
            conn.peers.add(msg.peer_id)
        self._start_answer(msg.peer_id, lambda: result, route=Route(conn, stream, msg))

    # -- answers -----------------------------------------------------------------------

    def _start_answer(self, peer_id: str, decide, route: Route | None = None) -> None:
        """Run ``decide()`` and follow its result to a final answer, on the peer's
        stream. A newer request for the same peer replaces an answer still waiting."""
        old = self._answers.pop(peer_id, None)
        if old is not None:
            old.cancel()
        task = asyncio.get_running_loop().create_task(self._answer(peer_id, decide, route))
        self._answers[peer_id] = task
        task.add_done_callback(
            lambda t: self._answers.pop(peer_id, None) if self._answers.get(peer_id) is t else None
        )

    async def _answer(self, peer_id: str, decide, route: Route | None) -> None:
        """Follow ``decide()``'s result to a final answer with the core's answer loop
        (trigger the seed, wait, run another round), then send it."""
        route = route or self.routes.get(peer_id)
        if route is None:
            return
        try:
            step = answers.first_step(decide())
            while step is not None:
                if step.trigger is not None:
                    await self._trigger_seed(step.trigger, route.request)
                if step.final is not None:
                    break
                log.debug("retry peer=%s after=%.3f", peer_id, step.wait)
                await asyncio.sleep(step.wait)
                step = answers.resume(self.core, peer_id, self.now())
            if step is None:
                return  # the peer left or finished meanwhile
            result = step.final
        except SchedulerError as exc:
            await route.conn.send(
                m.Error(
                    code=m.ErrorCode.BAD_REQUEST,
                    message=str(exc)[:4000],
                    task_id=route.request.task_id,
                ),
                route.stream_id,
            )
            return
        if isinstance(result, r.NormalTask) and not result.parents:
            # d7y: the peer keeps the parents it has and no new one passed the filters;
            # it asks again later (the protocol's NormalTaskResponse names >= 1 parent).
            self.metrics.decisions.labels("KeepParents").inc()
            return
        answer = translate.answer(self.core, result)
        kind = type(result).__name__
        self.metrics.decisions.labels(kind).inc()
        log.debug("decision peer=%s task=%s kind=%s", peer_id, route.request.task_id, kind)
        await route.conn.send(answer, route.stream_id)

    async def _trigger_seed(self, result: r.TriggerSeedPeer, request: m.RegisterPeer) -> None:
        conn = self.host_conns.get(result.seed_host_id)
        if conn is None:
            return
        log.info("trigger seed host=%s task=%s", result.seed_host_id, request.task_id)
        await conn.send(translate.trigger_seed(request), conn.open_stream())

    def _reschedule_orphans(self, peer_ids) -> None:
        for peer_id in peer_ids:
            if peer_id in self.routes and peer_id in self.core.peers:
                self._start_answer(
                    peer_id, lambda p=peer_id: self.core.reschedule(p, [], self.now())
                )


def _certificate_refuses(identity: PeerIdentity, msg: m.AnnounceHost) -> str | None:
    """Under mutual TLS a host is who its certificate says (d7y.daemons.tls): why
    ``msg`` does not match the connection's certificate, or None when it does."""
    if identity.name != msg.host_id:
        return (
            f"this connection's TLS certificate is for {identity.name!r}, not host "
            f"{msg.host_id!r}: a host announces only its own ID (issue it a certificate "
            f"with 'd7y certs issue DIR --peer {msg.host_id}')"
        )
    if msg.host_type == "seed" and identity.role != "seed":
        return (
            f"host {msg.host_id!r} announces itself as a seed peer but its certificate's "
            f"role is {identity.role or 'none'!r}: seed peers need a seed certificate"
        )
    return None
