"""The manager as a real process for tests, and a small JSON client for its REST API."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.peer_harness import (
    DaemonProcess,
    PeerProcess,
    SchedulerProcess,
    free_port,
    peer_config,
)

ROOT_PASSWORD = "root-password-for-tests"


class ManagerProcess(DaemonProcess):
    """``d7y manager`` on free ports with its own data dir; SQLite unless a database URL
    is given."""

    command = "manager"

    def __init__(
        self,
        workdir: Path,
        name: str = "manager",
        *,
        database_url: str = "",
        root_password: str | None = ROOT_PASSWORD,
        pat: str | None = None,
        **config_overrides: Any,
    ) -> None:
        super().__init__(workdir, name)
        self.port = free_port()
        self.data_dir = self.workdir / f"{name}-data"
        self.config = {
            "data_dir": str(self.data_dir),
            "server": {"listen": "127.0.0.1", "port": self.port},
            "metrics": {"listen": "127.0.0.1", "port": self.metrics_port},
            "database": {"url": database_url},
            "log": {"level": "debug"},
        }
        self._merge(config_overrides)
        if root_password is not None:
            self.env["D7Y_INITIAL_ROOT_PASSWORD"] = root_password
        if pat is not None:
            self.env["D7Y_PAT"] = pat

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, token: str | None = None) -> ApiClient:
        return ApiClient(self.url, token)

    def signin(self, name: str = "root", password: str = ROOT_PASSWORD) -> ApiClient:
        status, body, _ = self.client().call(
            "POST", "/api/v1/users/signin", {"name": name, "password": password}
        )
        assert status == 200, body
        return self.client(body["token"])


def start_managed_cluster(
    stack: contextlib.ExitStack,
    work: Path,
    *,
    pat: str,
    hostname: str,
    keepalive: str = "200ms",
    **manager_config: Any,
) -> tuple[ManagerProcess, SchedulerProcess, PeerProcess]:
    """A manager (seeded with the token ``pat``), a scheduler registered with it as
    ``hostname`` and a seed peer on that scheduler, each stopped by ``stack``."""
    manager = stack.enter_context(ManagerProcess(work, pat=pat, **manager_config))
    scheduler = stack.enter_context(
        SchedulerProcess(
            work,
            manager={
                "address": f"127.0.0.1:{manager.port}",
                "token": pat,
                "hostname": hostname,
                "keepalive_interval": keepalive,
            },
        )
    )
    seed = stack.enter_context(
        PeerProcess(work, "seed", **peer_config(scheduler, "seed", seed=True))
    )
    return manager, scheduler, seed


class ApiClient:
    """Blocking JSON calls: ``(status, decoded body or None, headers)``; never raises
    for an HTTP status."""

    def __init__(self, base: str, token: str | None = None) -> None:
        self.base = base
        self.token = token

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, Any, dict[str, str]]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        for key, value in (headers or {}).items():
            request.add_header(key, value)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, payload, got = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            status, payload, got = exc.code, exc.read(), dict(exc.headers)
        decoded = None
        if payload and got.get("Content-Type", "").startswith("application/json"):
            decoded = json.loads(payload)
        elif payload:
            decoded = payload.decode(errors="replace")
        return status, decoded, got

    def get(self, path: str) -> Any:
        """GET that must answer 200; the body."""
        status, body, _ = self.call("GET", path)
        assert status == 200, f"GET {path}: {status} {body}"
        return body

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, answer, _ = self.call(method, path, body)
        assert got == status, f"{method} {path}: {got} {answer}"
        return answer
