"""A real PostgreSQL server for tests: initdb into a temporary directory, a private port
and socket directory, stopped and removed after.

Debian's ``postgresql`` package puts the binaries in /usr/lib/postgresql/<version>/bin.
PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` user
(made by the package) over a directory it owns.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from d7y.daemons.procman import ServiceProcess
from tests.peer_harness import free_port

USER = "d7y"


def bin_dir() -> Path | None:
    """Where initdb and postgres are, or None when PostgreSQL is not installed."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    return Path(versions[0]).parent if versions else None


class PostgresServer:
    """``with PostgresServer() as pg: pg.create_database("x"); pg.url("x")``."""

    def __init__(self) -> None:
        found = bin_dir()
        if found is None:
            raise RuntimeError(
                "PostgreSQL is not installed: apt-get install postgresql (scripts/test.sh "
                "does this)"
            )
        self.bin = found
        self.port = free_port()
        # Not under pytest's tmp dir: that is private to root, and the server may run as
        # the postgres user. A short path: the socket's path must fit in 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="d7y-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "run"
        self.sockets.mkdir()
        self.run_as: str | None = None
        if os.geteuid() == 0:
            self.run_as = "postgres"
            owner = pwd.getpwnam(self.run_as)
            os.chmod(self.root, 0o755)
            for path in (self.root, self.sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.process: ServiceProcess | None = None
        self.starts = 0

    def _argv(self, *argv: str) -> list[str]:
        if self.run_as is None:
            return list(argv)
        # setpriv execs (no parent left between us and the server), so a signal to the
        # process reaches postgres itself.
        return ["setpriv", f"--reuid={self.run_as}", f"--regid={self.run_as}", "--init-groups",
                *argv]  # fmt: skip

    def init(self) -> None:
        subprocess.run(
            self._argv(
                str(self.bin / "initdb"), "-D", str(self.data), "-U", USER,
                "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C",
            ),
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip

    def start(self) -> PostgresServer:
        if not self.data.exists():
            self.init()
        self.process = ServiceProcess(
            "postgres",
            self._argv(
                str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-k", str(self.sockets), "-c", "listen_addresses=127.0.0.1",
                "-c", "fsync=off", "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off", "-c", "max_connections=50",
            ),
            # A log per start: the readiness line of an earlier start must not count.
            log_path=self.root / f"postgres-{self.starts}.log",
            ready_log="database system is ready to accept connections",
        )  # fmt: skip
        self.starts += 1
        self.process.start(timeout=60)
        return self

    def stop(self) -> None:
        """Fast shutdown (SIGINT): open client connections are cut, as when a database
        server goes away; SIGTERM would wait for every client to leave."""
        if self.process is not None and self.process.running:
            self.process.stop(signal.SIGINT, grace=30)

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = subprocess.run(
            [str(self.bin / "psql"), "-h", str(self.sockets), "-p", str(self.port), "-U", USER,
             "-d", database, "-v", "ON_ERROR_STOP=1", "-Atc", sql],
            check=True, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return result.stdout

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
