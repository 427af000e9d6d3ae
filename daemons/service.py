"""One lifecycle for every long-running d7y service: start, ready, drain, stop.

A service (dfdaemon, the scheduler, the demo origin) implements :class:`Service`: it
binds and opens in ``start()``, finishes the work in hand in ``drain()`` and releases
everything in ``stop()``. :class:`Lifecycle` drives it the same way for all of them:

1. SIGTERM and SIGINT handlers go in first, so a signal during start is not lost;
2. ``start()``, then the metrics and health app (``/metrics``, ``/healthy``) when the
   service has a metrics port;
3. ready: the ``<name> ready key=value ...`` log line (tests and scripts wait for it),
   ``READY=1`` to ``$NOTIFY_SOCKET`` when set (systemd's sd_notify protocol, also what
   :mod:`d7y.daemons.procman` waits for), and the ready file when configured;
4. the first SIGTERM or SIGINT starts the drain: ``STOPPING=1``, the ready file goes,
   ``/healthy`` answers 503, and ``drain()`` runs for at most ``drain_timeout``; a
   second signal cuts the drain short;
5. ``stop()``, then the metrics app closes: ``<name> stopped``.

:func:`main` is the process entry shared by the services' commands: config (YAML, then
the environment, through :mod:`d7y.daemons.config`), logging, the lifecycle on uvloop,
and exit statuses (2 for a bad config, 1 when the service cannot start).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from d7y.daemons.config import ConfigError, Duration, field

if TYPE_CHECKING:
    from aiohttp import web

#: Idle keep-alive connections to /metrics and /healthy are closed after this long.
METRICS_KEEPALIVE = 60.0
#: A /metrics or /healthy request still running when the service stops gets this long.
METRICS_SHUTDOWN = 2.0
SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Service(Protocol):
    """What a long-running service gives the lifecycle."""

    #: Names the service in log lines (``dfdaemon ready ...``) and its logger (d7y.<name>).
    name: str

    async def start(self) -> None:
        """Bind every listener and open every resource; raise if the service cannot run."""

    async def drain(self) -> None:
        """Take no new work; return once the work in hand is done. The lifecycle bounds
        it with the drain timeout and cancels it then."""

    async def stop(self) -> None:
        """Cancel what is left and release everything. Must also work after a partial
        or failed ``start()``."""

    def ready_details(self) -> dict[str, object]:
        """key=value pairs for the ready line (ports, paths, IDs)."""

    def render_metrics(self) -> bytes:
        """The Prometheus text exposition for ``/metrics``."""


@dataclasses.dataclass
class LifecycleConfig:
    drain_timeout: Duration = field(
        Duration(30),
        "after SIGTERM/SIGINT, how long running work (a download a dfget waits for) may "
        "take to finish before it is cancelled; a second signal stops at once",
    )
    ready_file: Path | None = field(
        None,
        "written once the service is ready (JSON: pid, service, ports), removed when it "
        "drains; for supervisors without $NOTIFY_SOCKET (that gets READY=1 when set)",
    )


@dataclasses.dataclass
class SchedulerLifecycleConfig(LifecycleConfig):
    drain_timeout: Duration = field(
        Duration(10),
        "after SIGTERM/SIGINT, how long the answers being worked out may take to reach "
        "their peers (no new connections meanwhile); a second signal stops at once",
    )


class State(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    STOPPED = "stopped"


def notify(message: str, socket_path: str | None = None) -> bool:
    """Send one sd_notify datagram (``READY=1``, ``STOPPING=1``, ...) to
    ``$NOTIFY_SOCKET`` (a path, or ``@name`` for an abstract socket); False when there is
    no socket or it cannot be reached (a supervisor's problem, never the service's)."""
    address = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.send(message.encode())
        return True
    except OSError as exc:
        logging.getLogger("d7y.service").warning(
            "cannot notify the supervisor socket=%s error=%s", address, exc
        )
        return False


class Lifecycle:
    """Runs one :class:`Service` from start to stop; see the module docstring."""

    def __init__(
        self,
        service: Service,
        *,
        drain_timeout: float = 30.0,
        ready_file: Path | None = None,
        metrics_listen: str = "127.0.0.1",
        metrics_port: int = 0,
    ) -> None:
        """``metrics_port`` 0: no metrics and health app."""
        self.service = service
        self.drain_timeout = drain_timeout
        self.ready_file = ready_file
        self.metrics_listen = metrics_listen
        self.metrics_port = metrics_port
        self.state = State.STARTING
        self.log = logging.getLogger(f"d7y.{service.name}")
        self._signals: asyncio.Queue[int] | None = None
        self._metrics_runner: web.AppRunner | None = None
        self.ready = asyncio.Event()  # set once ready was announced (for in-process callers)

    # -- entry -------------------------------------------------------------------------

    async def run(self) -> None:
        """Start, announce readiness, wait for a signal, drain, stop."""
        loop = asyncio.get_running_loop()
        self._signals = asyncio.Queue()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._signals.put_nowait, sig)
        try:
            try:
                await self.service.start()
                await self._start_metrics()
            except BaseException:
                self.state = State.STOPPING
                await self._stop_after_failed_start()
                raise
            if self._signals.empty():
                self._announce_ready()
            first = await self._signals.get()
            await self._drain(first)
            await self._stop()
        finally:
            for sig in SIGNALS:
                loop.remove_signal_handler(sig)

    def request_stop(self, sig: int = signal.SIGTERM) -> None:
        """What a signal does, for in-process callers (the first drains, the next stops)."""
        if self._signals is not None:
            self._signals.put_nowait(sig)

    # -- phases ------------------------------------------------------------------------

    def _announce_ready(self) -> None:
        details = self.service.ready_details()
        if self.metrics_port:
            details.setdefault("metrics_port", self.metrics_port)
        self.state = State.READY
        self.log.info(
            "%s ready %s", self.service.name, " ".join(f"{k}={v}" for k, v in details.items())
        )
        if self.ready_file is not None:
            record = {"pid": os.getpid(), "service": self.service.name, **details}
            tmp = self.ready_file.with_name(f".{self.ready_file.name}.tmp")
            tmp.write_text(json.dumps(record, default=str) + "\n")
            os.replace(tmp, self.ready_file)  # a reader never sees half a file
        notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS={self.service.name} ready")
        self.ready.set()

    async def _drain(self, sig: int) -> None:
        assert self._signals is not None
        self.state = State.DRAINING
        self.log.info(
            "%s draining signal=%s timeout=%gs",
            self.service.name,
            signal.Signals(sig).name,
            self.drain_timeout,
        )
        notify(f"STOPPING=1\nSTATUS={self.service.name} draining")
        self._remove_ready_file()
        drain = asyncio.ensure_future(self.service.drain())
        second = asyncio.ensure_future(self._signals.get())
        done, _ = await asyncio.wait(
            {drain, second}, timeout=self.drain_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if second in done:
            self.log.info(
                "%s: second signal %s, stopping without waiting for the drain",
                self.service.name,
                signal.Signals(second.result()).name,
            )
        elif drain in done:
            if drain.exception() is not None:
                self.log.error(
                    "%s: drain failed; stopping", self.service.name, exc_info=drain.exception()
                )
        else:
            self.log.warning(
                "%s: drain not done after %gs; stopping with work in hand",
                self.service.name,
                self.drain_timeout,
            )
        for task in (drain, second):
            task.cancel()
        await asyncio.gather(drain, second, return_exceptions=True)

    async def _stop(self) -> None:
        self.state = State.STOPPING
        self.log.info("%s stopping", self.service.name)
        try:
            await self.service.stop()
        finally:
            await self._stop_metrics()
            self._remove_ready_file()
            self.state = State.STOPPED
        self.log.info("%s stopped", self.service.name)

    async def _stop_after_failed_start(self) -> None:
        """Release what a failed start opened; the start's own error is what matters."""
        try:
            await self.service.stop()
            await self._stop_metrics()
        except Exception:
            self.log.exception("%s: stop after a failed start failed too", self.service.name)
        self.state = State.STOPPED

    def _remove_ready_file(self) -> None:
        if self.ready_file is not None:
            with contextlib.suppress(FileNotFoundError):
                self.ready_file.unlink()

    # -- metrics and health -------------------------------------------------------------

    async def _start_metrics(self) -> None:
        if not self.metrics_port:
            return
        # Here, not at import: the config sections above are read by dfget, which must
        # start fast and never needs aiohttp.
        from aiohttp import web

        async def metrics(_request: web.Request) -> web.Response:
            return web.Response(
                body=self.service.render_metrics(), content_type="text/plain", charset="utf-8"
            )

        async def healthy(_request: web.Request) -> web.Response:
            # 200 only while ready: a draining service takes no new work, so a load
            # balancer or supervisor should send it none.
            if self.state is State.READY:
                return web.Response(text="ok")
            return web.Response(status=503, text=f"{self.state.value}\n")

        app = web.Application()
        app.add_routes([web.get("/metrics", metrics), web.get("/healthy", healthy)])
        self._metrics_runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=METRICS_KEEPALIVE,
            shutdown_timeout=METRICS_SHUTDOWN,
        )
        await self._metrics_runner.setup()
        await web.TCPSite(self._metrics_runner, self.metrics_listen, self.metrics_port).start()

    async def _stop_metrics(self) -> None:
        if self._metrics_runner is not None:
            runner, self._metrics_runner = self._metrics_runner, None
            await runner.cleanup()


# -- process entry ---------------------------------------------------------------------


def run_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run ``coro`` on a fresh event loop: uvloop when installed, else asyncio's."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(
    prog: str,
    load_config: Callable[[], Any],
    build: Callable[[Any], Service],
    *,
    startup_errors: tuple[type[BaseException], ...] = (),
) -> int:
    """A configured service's process: ``load_config()`` (ConfigError: exit 2), logging
    from its ``log`` section, ``build(config)`` run by a :class:`Lifecycle` with its
    ``lifecycle`` and ``metrics`` sections. Exit 1 when it cannot start: an error of
    ``startup_errors`` (its message is for the user) or any OSError (a port in use)."""
    from d7y.daemons.logs import setup_logging

    try:
        config = load_config()
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log.level, config.log.format)
    lifecycle = Lifecycle(
        build(config),
        drain_timeout=float(config.lifecycle.drain_timeout),
        ready_file=config.lifecycle.ready_file,
        metrics_listen=config.metrics.listen,
        metrics_port=config.metrics.port,
    )
    try:
        run_loop(lifecycle.run())
    except ConfigError as exc:  # found only at start, e.g. a TLS certificate for another host
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except startup_errors as exc:
        print(f"{prog}: {getattr(exc, 'strerror', None) or exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"{prog}: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
