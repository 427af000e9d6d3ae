"""Run dfdaemon as a real process and dfget as a real command, for end-to-end tests.

The daemons are :class:`d7y.daemons.procman.ServiceProcess` es with a config file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from d7y.daemons.cluster import read_metrics
from d7y.daemons.procman import ServiceProcess, http_ok

PYTHON = sys.executable
#: source.allow for daemons whose origins are on this machine (every test's).
LOOPBACK = ["127.0.0.0/8", "::1/128"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaemonProcess(ServiceProcess):
    """A d7y daemon run as a real process from a YAML config, by the process manager;
    ready when it notifies READY=1 (the services' lifecycle does, once every listener is
    bound). Subclasses fill in ``config`` and name the command."""

    command = ""  # the d7y subcommand: "dfdaemon" or "scheduler"

    def __init__(self, workdir: Path, name: str) -> None:
        self.workdir = Path(workdir)
        super().__init__(name, log_path=self.workdir / f"{name}.log", notify=True)
        self.metrics_port = free_port()
        self.config: dict = {}
        self.env: dict[str, str] = {}  # extra environment (D7Y_* overrides) for the process
        self.config_path = self.workdir / f"{name}.yaml"

    def _merge(self, overrides: dict) -> None:
        for section, values in overrides.items():
            if isinstance(values, dict):
                self.config.setdefault(section, {}).update(values)
            else:
                self.config[section] = values

    def command_line(self) -> list[str]:
        """The argv that runs this daemon; a subclass may wrap it (e.g. in ``ip netns exec``)."""
        return [PYTHON, "-m", "d7y.daemons.cli", self.command, "--config", str(self.config_path)]

    def environment(self) -> dict[str, str]:
        return dict(self.env)

    def ready(self) -> bool:
        """/healthy answers 200 (through ``call_local``: a subclass in another network
        namespace probes from there)."""
        return self.call_local(http_ok, f"http://127.0.0.1:{self.metrics_port}/healthy")

    def start(self, timeout: float = 20.0):
        self.config_path.write_text(yaml.safe_dump(self.config))
        return super().start(timeout)

    def metrics(self) -> dict[str, float]:
        return self.call_local(read_metrics, f"http://127.0.0.1:{self.metrics_port}/metrics")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the daemon and wait for it; a daemon that outlives ``timeout`` is
        killed and the test fails: every daemon must honour SIGTERM."""
        code = super().stop(sig, grace=timeout)
        if self.killed:
            raise AssertionError(f"{self.name} ignored signal {sig}:\n{self.log()}")
        return code


class PeerProcess(DaemonProcess):
    """A dfdaemon subprocess with its own data dir, ports and config file."""

    command = "dfdaemon"

    def __init__(self, workdir: Path, name: str = "peer", **config_overrides) -> None:
        super().__init__(workdir, name)
        self.data_dir = self.workdir / f"{name}-data"
        self.upload_port = free_port()
        self.config: dict = {
            "storage": {"data_dir": str(self.data_dir), "gc_interval": "1h"},
            "upload": {"listen": "127.0.0.1", "port": self.upload_port, "piece_port": free_port()},
            "metrics": {"listen": "127.0.0.1", "port": self.metrics_port},
            # The default mirror (Docker Hub) is replaced by a closed loopback port: no
            # test request can leave the machine by accident.
            "proxy": {
                "listen": "127.0.0.1",
                "port": free_port(),
                "registry_mirror": {"addr": "http://127.0.0.1:9"},
            },
            "download": {"origin_backoff": "10ms", "origin_backoff_max": "50ms"},
            # Test origins listen on loopback, and seed peers fetch from them for others:
            # loopback must be allowed explicitly (source.allow refuses it by default).
            "source": {"allow": LOOPBACK},
            "log": {"level": "debug"},
            # A SIGTERM with a dfget attached drains for up to this long; it must end
            # well inside stop()'s grace, or a test would fail on a slow teardown.
            "lifecycle": {"drain_timeout": "10s"},
        }
        self._merge(config_overrides)

    @property
    def piece_port(self) -> int:
        return self.config["upload"]["piece_port"]

    @property
    def proxy_port(self) -> int:
        return self.config["proxy"]["port"]

    @property
    def socket_path(self) -> Path:
        return Path(self.config["storage"]["data_dir"]) / "dfdaemon.sock"

    def ready(self) -> bool:
        return super().ready() and self.socket_path.exists()

    def healthy(self) -> bool:
        return self.ready()

    def dfget(
        self, url: str, output: str | Path, *args: str, timeout: float = 120.0, **popen
    ) -> subprocess.CompletedProcess:
        return dfget(
            url, output, "--daemon-socket", str(self.socket_path), *args, timeout=timeout, **popen
        )

    def dfget_popen(self, url: str, output: str | Path, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            dfget_command(url, output, "--daemon-socket", str(self.socket_path), *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def api(self, method: str, path: str) -> tuple[int, dict]:
        """Call the local API over the unix socket (stdlib only, no event loop)."""
        import http.client

        class UnixConnection(http.client.HTTPConnection):
            def __init__(self, sock_path: str) -> None:
                super().__init__("localhost", timeout=10)
                self.sock_path = sock_path

            def connect(self) -> None:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(self.sock_path)

        conn = UnixConnection(str(self.socket_path))
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"{}")
        finally:
            conn.close()

    def http_get(self, task_id: str, range_header: str | None = None) -> tuple[int, bytes]:
        req = urllib.request.Request(f"http://127.0.0.1:{self.upload_port}/download/{task_id}")
        if range_header:
            req.add_header("Range", range_header)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()


def dfget_command(url: str, output: str | Path, *args: str) -> list[str]:
    return [PYTHON, "-m", "d7y.daemons.cli", "dfget", url, "-O", str(output), *args]


def dfget(
    url: str, output: str | Path, *args: str, timeout: float = 120.0, **popen
) -> subprocess.CompletedProcess:
    env = dict(os.environ, **popen.pop("env", {}))
    return subprocess.run(
        dfget_command(url, output, *args),
        capture_output=True,
        timeout=timeout,
        env=env,
        **popen,
    )


class SchedulerProcess(DaemonProcess):
    """A ``d7y scheduler`` subprocess on free ports."""

    command = "scheduler"

    def __init__(self, workdir: Path, name: str = "scheduler", **config_overrides) -> None:
        super().__init__(workdir, name)
        self.port = free_port()
        self.config = {
            "server": {"listen": "127.0.0.1", "port": self.port},
            "metrics": {"listen": "127.0.0.1", "port": self.metrics_port},
            "log": {"level": "debug"},
        }
        self._merge(config_overrides)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def peer_config(
    scheduler: SchedulerProcess | str | None, hostname: str, /, *, seed: bool = False, **extra
) -> dict:
    """Config overrides for a PeerProcess in a cluster: its own host name, the scheduler.
    ``extra`` sections merge into these, ``scheduler={"stall_timeout": "120s"}`` too."""
    address = scheduler if isinstance(scheduler, str) or scheduler is None else scheduler.address
    config: dict = {
        "host": {"hostname": hostname},
        "scheduler": {"address": address or "", "stall_timeout": "3s"},
        "seed_peer": seed,
    }
    for section, values in extra.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    return config


def wait_for(predicate, what: str, timeout: float = 30.0, interval: float = 0.02):
    """Poll ``predicate`` until it returns something truthy (returned); fail naming
    ``what`` after ``timeout`` seconds. For waiting on an event (a log line, a metric, a
    state on the local API), never as a fixed sleep."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
