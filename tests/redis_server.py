"""A real Redis for tests: Debian's ``redis-server`` on a free loopback port, nothing
persisted (``--save ''``, no append-only file), run by the project's process manager."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from d7y.daemons.procman import ServiceProcess
from tests.peer_harness import free_port

REDIS_BINARY = shutil.which("redis-server") or "/usr/bin/redis-server"


def installed() -> bool:
    return Path(REDIS_BINARY).exists()


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.service: ServiceProcess | None = None

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> RedisServer:
        argv = [
            REDIS_BINARY, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
            "--appendonly", "no", "--dir", str(self.workdir), "--protected-mode", "yes",
        ]  # fmt: skip
        self.service = ServiceProcess(
            "redis-server", argv, log_path=self.workdir / "redis.log", ready=self._answers
        ).start()
        return self

    def stop(self) -> None:
        if self.service is not None:
            self.service.stop(grace=10)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
