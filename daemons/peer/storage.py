"""The peer's local store: task content files plus SQLite metadata.

Layout (DESIGN.md section 6)::

    <data_dir>/content/tasks/<id[0:3]>/<id>   the task's bytes, written piece by piece
    <data_dir>/metadata.db                     tasks, pieces (number, digest, source)

A piece row is written only after its bytes are in the content file, so the metadata
never claims bytes that are not there; a restarted daemon resumes from the rows. The
digests in the rows are re-checked against the file when a partial task resumes, so a
torn write from a crash is refetched rather than served.

All methods here block (file and SQLite I/O); the daemon calls them through
:meth:`Storage.run`, which runs them on a small thread pool so the event loop never
waits on the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import shutil
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id              TEXT PRIMARY KEY,
    url             TEXT NOT NULL,
    content_length  INTEGER,            -- NULL while unknown (origin sent no length)
    piece_length    INTEGER NOT NULL,
    state           TEXT NOT NULL,      -- running | succeeded | failed
    expected_digest TEXT NOT NULL DEFAULT '',
    etag            TEXT NOT NULL DEFAULT '',
    last_modified   TEXT NOT NULL DEFAULT '',
    error           TEXT NOT NULL DEFAULT '',
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    last_access     REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS pieces (
    task_id TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
    number  INTEGER NOT NULL,
    digest  TEXT NOT NULL,              -- crc32:<decimal>
    source  TEXT NOT NULL,              -- 'origin' or the parent's peer id
    PRIMARY KEY (task_id, number)
) WITHOUT ROWID;
"""

TASK_RUNNING = "running"
TASK_SUCCEEDED = "succeeded"
TASK_FAILED = "failed"


class StorageError(OSError):
    """A storage failure with a message fit for the user (disk full, unreadable dir)."""


class NoSpaceError(StorageError):
    """The data directory's filesystem (or the configured quota) has no room."""


@dataclasses.dataclass
class TaskRecord:
    """One task's metadata row."""

    id: str
    url: str
    content_length: int | None
    piece_length: int
    state: str = TASK_RUNNING
    expected_digest: str = ""
    etag: str = ""
    last_modified: str = ""
    error: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0
    last_access: float = 0.0

    @property
    def piece_count(self) -> int | None:
        if self.content_length is None:
            return None
        return -(-self.content_length // self.piece_length)


_TASK_COLUMNS = [f.name for f in dataclasses.fields(TaskRecord)]


class MetadataStore:
    """metadata.db: WAL mode, one connection used from the storage thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open metadata database {str(path)!r}: {exc}") from None
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a crash of the process loses nothing; a power cut may lose
        # the last transactions, which only makes us refetch pieces (the rows are written
        # after the bytes, never before).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            raise StorageError(
                f"metadata database {str(path)!r} has schema version {version}, this d7y "
                f"understands {SCHEMA_VERSION}: upgrade d7y or move the data dir aside"
            )
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """Hold the lock for a write; a full disk becomes NoSpaceError with a sentence
        for the user instead of SQLite's 'database or disk is full'."""
        with self._lock:
            try:
                yield
            except sqlite3.OperationalError as exc:
                # SQLITE_FULL: the database or its write-ahead log could not grow.
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                    raise
                raise NoSpaceError(
                    errno.ENOSPC,
                    f"no space left on device: the metadata database {str(self.path)!r} "
                    f"cannot grow; free disk space in its filesystem or lower "
                    f"storage.disk_high_watermark",
                ) from None

    def _row_to_task(self, row: tuple) -> TaskRecord:
        return TaskRecord(**dict(zip(_TASK_COLUMNS, row, strict=True)))

    def get_task(self, task_id: str) -> TaskRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {', '.join(_TASK_COLUMNS)} FROM tasks WHERE id = ?", (task_id,)
            ).fetchone()
        return self._row_to_task(row) if row else None

    def list_tasks(self) -> list[TaskRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {', '.join(_TASK_COLUMNS)} FROM tasks ORDER BY last_access"
            ).fetchall()
        return [self._row_to_task(r) for r in rows]

    def put_task(self, task: TaskRecord) -> None:
        """Insert or replace the task row (its pieces stay)."""
        values = [getattr(task, c) for c in _TASK_COLUMNS]
        updates = ", ".join(f"{c} = excluded.{c}" for c in _TASK_COLUMNS[1:])
        with self._writing():
            self._db.execute(
                f"INSERT INTO tasks ({', '.join(_TASK_COLUMNS)}) VALUES "
                f"({', '.join('?' * len(_TASK_COLUMNS))}) ON CONFLICT(id) DO UPDATE SET {updates}",
                values,
            )

    def update_task(self, task_id: str, **fields: Any) -> None:
        unknown = set(fields) - set(_TASK_COLUMNS[1:])
        if unknown:
            raise ValueError(f"unknown task fields {sorted(unknown)}")
        assignments = ", ".join(f"{k} = ?" for k in fields)
        with self._writing():
            self._db.execute(
                f"UPDATE tasks SET {assignments} WHERE id = ?", [*fields.values(), task_id]
            )

    def record_piece(self, task_id: str, number: int, digest: str, source: str) -> None:
        with self._writing():
            self._db.execute(
                "INSERT OR REPLACE INTO pieces (task_id, number, digest, source) "
                "VALUES (?, ?, ?, ?)",
                (task_id, number, digest, source),
            )

    def forget_pieces(self, task_id: str, numbers: list[int] | None = None) -> None:
        with self._writing():
            if numbers is None:
                self._db.execute("DELETE FROM pieces WHERE task_id = ?", (task_id,))
            else:
                self._db.executemany(
                    "DELETE FROM pieces WHERE task_id = ? AND number = ?",
                    [(task_id, n) for n in numbers],
                )

    def pieces(self, task_id: str) -> dict[int, tuple[str, str]]:
        """number -> (digest, source) for the pieces stored for a task."""
        with self._lock:
            rows = self._db.execute(
                "SELECT number, digest, source FROM pieces WHERE task_id = ?", (task_id,)
            ).fetchall()
        return {n: (d, s) for n, d, s in rows}

    def delete_task(self, task_id: str) -> None:
        with self._writing():
            self._db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))


class Storage:
    """Content files and metadata under one data directory."""

    def __init__(self, data_dir: Path, *, quota: int = 0, io_threads: int = 4) -> None:
        self.data_dir = Path(data_dir)
        self.content_dir = self.data_dir / "content" / "tasks"
        try:
            # Task bytes are private to the daemon's user: others may not even list them
            # (the HTTP endpoint and the piece port are how they are shared).
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.content_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageError(
                f"cannot create data dir {str(self.data_dir)!r}: {exc.strerror}; set "
                f"storage.data_dir to a writable directory"
            ) from None
        self.quota = quota
        self.meta = MetadataStore(self.data_dir / "metadata.db")
        self._executor = ThreadPoolExecutor(io_threads, thread_name_prefix="d7y-storage")

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.meta.close()

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run a blocking storage call on the storage threads."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, func, *args)

    # -- content files -------------------------------------------------------------

    def content_path(self, task_id: str) -> Path:
        if len(task_id) < 3 or "/" in task_id or task_id.startswith("."):
            raise ValueError(f"task id {task_id!r} is not a valid task id")
        return self.content_dir / task_id[:3] / task_id

    def stored_bytes(self) -> int:
        """Bytes allocated by all content files (what the quota counts)."""
        total = 0
        for path in self._content_files():
            with contextlib.suppress(FileNotFoundError):
                total += path.stat().st_blocks * 512
        return total

    def _content_files(self) -> Iterator[Path]:
        for bucket in self.content_dir.iterdir():
            if bucket.is_dir():
                yield from bucket.iterdir()

    def disk_usage(self) -> tuple[int, int]:
        """(used, total) bytes of the data dir's filesystem."""
        usage = shutil.disk_usage(self.data_dir)
        return usage.used, usage.total

    def open_for_write(self, task_id: str, content_length: int | None) -> int:
        """Open (creating) a task's content file and reserve its space; returns an fd.

        The space is reserved up front with posix_fallocate so a full disk fails the task
        at once with a clear error instead of after gigabytes of transfer.
        """
        path = self.content_path(task_id)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if content_length:
                self._check_quota(task_id, content_length)
                try:
                    os.posix_fallocate(fd, 0, content_length)
                except OSError as exc:
                    if exc.errno == errno.ENOSPC:
                        raise self._no_space(content_length) from None
                    if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                        raise
                    os.ftruncate(fd, content_length)  # filesystem without fallocate
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _check_quota(self, task_id: str, content_length: int) -> None:
        if not self.quota:
            return
        path = self.content_path(task_id)
        already = path.stat().st_blocks * 512 if path.exists() else 0
        if self.stored_bytes() - already + content_length > self.quota:
            raise NoSpaceError(
                errno.ENOSPC,
                f"no space for {content_length} bytes: storage.quota of {self.quota} bytes "
                f"would be exceeded; raise the quota or delete tasks (dfget --delete / GC)",
            )

    def _no_space(self, wanted: int) -> NoSpaceError:
        free = shutil.disk_usage(self.data_dir).free
        return NoSpaceError(
            errno.ENOSPC,
            f"no space left on device: {wanted} bytes needed in {str(self.data_dir)!r}, "
            f"{free} free; free disk space or lower storage.disk_high_watermark",
        )

    def write_piece(self, fd: int, offset: int, data: memoryview) -> None:
        """pwrite all of ``data`` at ``offset`` (loops over short writes)."""
        view = memoryview(data)
        while view:
            try:
                written = os.pwrite(fd, view, offset)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise self._no_space(len(view)) from None
                raise
            view = view[written:]
            offset += written

    def read_into(self, fd: int, offset: int, into: memoryview) -> int:
        """pread into ``into`` until full or EOF; returns the bytes read."""
        view = memoryview(into)
        total = 0
        while view:
            n = os.preadv(fd, [view], offset + total)
            if n == 0:
                break
            total += n
            view = view[n:]
        return total

    def read_content(self, task_id: str, length: int) -> bytes:
        """The first ``length`` bytes of a stored task (for tiny tasks: the scheduler
        answers later peers with them inline). Short content is an error, not a
        shorter answer: the caller asked for bytes the metadata says are there."""
        with open(self.content_path(task_id), "rb") as f:
            data = f.read(length)
        if len(data) != length:
            raise OSError(
                f"task {task_id}: content file holds {len(data)} bytes, expected {length}"
            )
        return data

    def remove_content(self, task_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.content_path(task_id).unlink()

    def delete_task(self, task_id: str) -> None:
        """Remove a task's metadata and bytes (metadata first: never claim missing bytes)."""
        self.meta.delete_task(task_id)
        self.remove_content(task_id)

    def export(self, task_id: str, output: Path, *, prefer_link: bool = True) -> str:
        """Place a finished task at ``output`` atomically; returns 'link' or 'copy'.

        A hard link costs nothing when the output is on the data dir's filesystem;
        otherwise the bytes are copied. Either way the result appears under a temporary
        name in the output's directory and is renamed into place, so a reader never sees
        a partial file at ``output``.
        """
        source = self.content_path(task_id)
        output = Path(output)
        tmp = output.with_name(f".{output.name}.d7y-{os.getpid()}-{time.monotonic_ns()}")
        try:
            method = "copy"
            if prefer_link:
                try:
                    os.link(source, tmp)
                    method = "link"
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                        raise
            if method == "copy":
                shutil.copyfile(source, tmp)
            os.replace(tmp, output)
            return method
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(
                    exc.errno, f"no space left to write {str(output)!r}: free disk space"
                ) from None
            raise StorageError(exc.errno, f"cannot write {str(output)!r}: {exc.strerror}") from None


def now() -> float:
    """Wall-clock seconds for created/updated/last-access stamps."""
    return time.time()
