"""One process manager for the cluster command, the tests and the benchmarks.

A :class:`ServiceProcess` is one long-running process (a d7y service, nginx, a
libtorrent session): it starts with its output in a log file, is ready when what it was
told to wait for happened, and stops with a grace period (SIGTERM, then SIGKILL)::

    proc = ServiceProcess("scheduler", argv, log_path=work / "scheduler.log", notify=True)
    proc.start(timeout=30)          # launch + wait_ready; ProcessError names the cause
    ...
    proc.stop(grace=20)             # the exit status; proc.killed says if it needed SIGKILL

Readiness, any combination (all must hold):

- ``notify=True``: the process sends ``READY=1`` to ``$NOTIFY_SOCKET`` (every d7y service
  does, through :mod:`d7y.daemons.service`); the manager gives it a fresh socket per
  start. A path socket, so it also works for a process in another network namespace;
- ``ready_url``: an HTTP GET answers 200, probed through ``call_local`` (a subclass whose
  process runs in another network namespace probes from there);
- ``ready_log``: a text appears in the log.

Subclasses may override :meth:`command_line` and :meth:`environment` (computed at each
start) and :meth:`call_local`.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

#: How often readiness is checked while nothing wakes the wait (a notify datagram does).
POLL_INTERVAL = 0.05
#: How much of the log a ProcessError quotes.
LOG_TAIL = 6000


class ProcessError(RuntimeError):
    """A managed process exited early or did not become ready; the message quotes its log."""


def http_ok(url: str) -> bool:
    """True when GET ``url`` answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


class ServiceProcess:
    def __init__(
        self,
        name: str,
        argv: Sequence[str] = (),
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        notify: bool = False,
        ready_url: str | None = None,
        ready_log: str | None = None,
        ready: Callable[[], bool] | None = None,
    ) -> None:
        """``env``: variables added to this process's environment. ``ready``: any other
        predicate that must hold."""
        self.name = name
        self.argv = list(argv)
        self.log_path = Path(log_path)
        self.extra_env = dict(env or {})
        self.notify = notify
        self.ready_url = ready_url
        self.ready_log = ready_log
        self.ready_check = ready
        self.proc: subprocess.Popen | None = None
        self.killed = False  # the last stop needed SIGKILL after the grace period
        self._notify_dir: str | None = None
        self._notify_sock: socket.socket | None = None
        self._notified = False

    # -- what to run (overridable) ---------------------------------------------------

    def command_line(self) -> list[str]:
        return list(self.argv)

    def environment(self) -> dict[str, str]:
        """Variables added to this process's environment at start."""
        return dict(self.extra_env)

    def call_local(self, fn: Callable, *args):
        """Run ``fn(*args)`` where the process's loopback is reachable (here)."""
        return fn(*args)

    # -- state -----------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def log(self) -> str:
        """Everything the process wrote (stdout and stderr), over all its starts."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, limit: int = LOG_TAIL) -> str:
        text = self.log()
        return text if len(text) <= limit else "...\n" + text[-limit:]

    # -- start -----------------------------------------------------------------------

    def launch(self) -> ServiceProcess:
        """Start the process (its output appended to the log); do not wait."""
        if self.running:
            raise ProcessError(f"{self.name} is already running (pid {self.pid})")
        env = dict(os.environ, **self.environment())
        if self.notify:
            env["NOTIFY_SOCKET"] = self._open_notify_socket()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.killed = False
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command_line(), stdout=log, stderr=subprocess.STDOUT, env=env
            )
        return self

    def is_ready(self) -> bool:
        """Every readiness condition holds now."""
        if self.notify and not self._read_notifications():
            return False
        if self.ready_log is not None and self.ready_log not in self.log():
            return False
        if self.ready_url is not None and not self.call_local(http_ok, self.ready_url):
            return False
        return self.ready_check is None or bool(self.ready_check())

    def wait_ready(self, timeout: float = 30.0) -> ServiceProcess:
        """Return once ready; ProcessError (with the log) if the process exits first or
        is not ready within ``timeout`` seconds (it is killed then: never half-started)."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self._close_notify_socket()
                raise ProcessError(
                    f"{self.name} exited early with status {self.proc.returncode}; its log "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            if self.is_ready():
                return self
            if time.monotonic() >= deadline:
                self.stop(signal.SIGKILL)
                raise ProcessError(
                    f"{self.name} did not become ready within {timeout:g}s; its log "
                    f"{self.log_path}:\n{self.log_tail()}"
                )
            self._pause()

    def start(self, timeout: float = 30.0) -> ServiceProcess:
        """launch() then wait_ready(timeout)."""
        return self.launch().wait_ready(timeout)

    def wait_log(self, text: str, timeout: float = 30.0) -> None:
        """Until ``text`` appears in the log; ProcessError if the process exits first."""
        deadline = time.monotonic() + timeout
        while text not in self.log():
            if not self.running:
                raise ProcessError(f"{self.name} exited before logging {text!r}")
            if time.monotonic() >= deadline:
                raise ProcessError(f"{self.name} did not log {text!r} within {timeout:g}s")
            time.sleep(POLL_INTERVAL)

    # -- stop ------------------------------------------------------------------------

    def stop(self, sig: int = signal.SIGTERM, grace: float = 20.0) -> int:
        """Send ``sig`` and wait up to ``grace`` seconds; then SIGKILL (``killed`` is
        set). Returns the exit status (negative: the signal that ended it)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait()
        self._close_notify_socket()
        return self.proc.returncode

    def kill(self) -> int:
        return self.stop(signal.SIGKILL)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.running:
            self.stop()

    # -- the notify socket -----------------------------------------------------------

    def _open_notify_socket(self) -> str:
        self._close_notify_socket()
        # A short path of its own: AF_UNIX paths are limited to 107 bytes, test dirs are long.
        self._notify_dir = tempfile.mkdtemp(prefix="d7y-notify-")
        path = os.path.join(self._notify_dir, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        self._notify_sock = sock
        self._notified = False
        return path

    def _read_notifications(self) -> bool:
        """Drain the datagrams received; True once one said READY=1."""
        while self._notify_sock is not None and not self._notified:
            try:
                message = self._notify_sock.recv(4096)
            except BlockingIOError:
                break
            self._notified = b"READY=1" in message.split(b"\n")
        return self._notified

    def _pause(self) -> None:
        """Sleep for a poll interval, or less when a notification arrives."""
        if self._notify_sock is not None and not self._notified:
            select.select([self._notify_sock], [], [], POLL_INTERVAL)
        else:
            time.sleep(POLL_INTERVAL)

    def _close_notify_socket(self) -> None:
        if self._notify_sock is not None:
            self._notify_sock.close()
            self._notify_sock = None
        if self._notify_dir is not None:
            shutil.rmtree(self._notify_dir, ignore_errors=True)
            self._notify_dir = None
