"""What a download is: the request, the task that serves it, and how it fails.

Every part of the peer daemon speaks these types: the local API builds a
:class:`DownloadRequest`, the task manager runs a :class:`Task` for it, the task store
(task_store.py) lands its pieces and the P2P path (p2p.py) fills it from other peers; a
failure is a :class:`DownloadError` whose :class:`FailureKind` dfget maps to its exit
code. This module depends on none of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import time
from typing import Any

from d7y.core.http_range import RangeError, RangeSpec
from d7y.core.ids import content_task_id
from d7y.core.ids import task_id as make_task_id
from d7y.core.pieces import piece_count, pieces_covering
from d7y.daemons.peer.scheduler_client import DownloadStream
from d7y.ext.bitmap import Bitmap


class FailureKind(enum.Enum):
    """Why a task failed; dfget maps each to its own exit code and message."""

    ORIGIN = "origin"  # the origin answered an error status or broke the transfer
    DIGEST = "digest"  # the content does not match the requested digest
    NO_SPACE = "no_space"  # the data dir is full (or the quota is reached)
    BAD_REQUEST = "bad_request"  # unsupported scheme, bad digest string, ...
    TIMEOUT = "timeout"
    NO_SOURCE = "no_source"  # back-to-source disabled and nothing else can serve
    INTERNAL = "internal"


class DownloadError(Exception):
    """A task failed; ``status`` is the origin's HTTP status when it answered one."""

    def __init__(self, kind: FailureKind, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


class ContentChangedError(DownloadError):
    """The object changed at the origin under the download (an origin failure);
    ``validator`` names what changed (ETag, Last-Modified, length)."""

    def __init__(self, message: str, *, status: int | None, validator: str) -> None:
        super().__init__(FailureKind.ORIGIN, message, status=status)
        self.validator = validator


@dataclasses.dataclass
class DownloadRequest:
    """What dfget (or the proxy) asks for; the task ID is derived from it."""

    url: str
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    tag: str = ""
    application: str = ""
    filtered_query_params: list[str] | None = None
    piece_length: int | None = None
    digest: str = ""
    disable_back_to_source: bool = False
    priority: int = 0
    #: When set, the task ID is the SHA-256 of this text, not of the URL (the proxy's
    #: X-Dragonfly-Content-For-Calculating-Task-ID).
    content_for_task_id: str = ""

    def task_id(self) -> str:
        if self.content_for_task_id:
            return content_task_id(self.content_for_task_id)
        return make_task_id(
            self.url,
            tag=self.tag or None,
            application=self.application or None,
            piece_length=self.piece_length,
            filtered_query_params=self.filtered_query_params,
        )


class Task:
    """A task being downloaded (or served from storage) and the people waiting on it."""

    def __init__(self, task_id: str, request: DownloadRequest) -> None:
        self.id = task_id
        self.request = request
        self.content_length: int | None = None
        self.piece_length = 0
        self.bitmap: Bitmap | None = None
        self.digests: dict[int, str] = {}
        self.completed_bytes = 0
        self.bytes_from_origin = 0
        self.bytes_from_peers = 0
        self.from_cache = False
        self.peer_id = ""  # this download's peer ID at the scheduler
        self.stream: DownloadStream | None = None  # its scheduler stream, if any
        self.restoring: asyncio.Future | None = None  # moving to a new stream (p2p.py)
        self.seed_trigger = False  # started by the scheduler's TriggerSeed
        # Asked for by the scheduler (a seed trigger, or a preheat of scope all_peers on
        # an ordinary peer), not by a local user: origin fetches follow the source policy.
        self.remote = False
        self.streaming = False  # someone reads the bytes in order while they land
        # What the download fetches: None, every piece; else only the pieces holding
        # these byte ranges (a proxy Range request: a partial download of the same
        # task, whose pieces stay in its storage for later requests).
        self.wanted: list[RangeSpec] | None = None
        self.runner: asyncio.Task[None] | None = None  # the download (TaskManager._run)
        self.started = time.monotonic()
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._changed = asyncio.Event()

    # -- progress notification -------------------------------------------------------

    def notify_change(self) -> None:
        """Wake everyone waiting in :meth:`wait_change` (progress bars, stdout streams)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_change(self, timeout: float | None = None) -> None:
        """Return after the next piece lands or the task ends (or ``timeout``)."""
        if self.done.done():
            return
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    # -- what a (partial) download fetches ----------------------------------------------

    def want(self, spec: RangeSpec | None) -> None:
        """A reader needs the bytes of ``spec`` (None: the whole task)."""
        if spec is None:
            self.wanted = None
        elif self.wanted is not None and spec not in self.wanted:
            self.wanted.append(spec)

    def wanted_pieces(self) -> Bitmap | None:
        """The pieces the download must hold when it ends (None: all of them); needs
        the geometry. A range past the end selects nothing (its reader answers 416)."""
        if self.wanted is None or self.content_length is None or not self.piece_length:
            return None
        wanted = Bitmap(piece_count(self.content_length, self.piece_length))
        for spec in self.wanted:
            try:
                selected = spec.resolve(self.content_length)
            except RangeError:
                continue
            for number in pieces_covering(selected.start, selected.length, self.piece_length):
                wanted.set(number)
        return wanted

    def missing_wanted(self) -> list[int]:
        """Numbers of the wanted pieces not held yet (all missing ones for a whole
        download)."""
        if self.bitmap is None:
            return []
        wanted = self.wanted_pieces()
        if wanted is None:
            return list(self.bitmap.iter_clear())
        return list(self.bitmap.and_not(wanted).iter_set())

    def has_piece(self, number: int) -> bool:
        return self.bitmap is not None and self.bitmap.test(number)

    def snapshot(self) -> dict[str, Any]:
        """Progress as plain data for the local API."""
        state = "running"
        error = None
        if self.done.done():
            exc = self.done.exception() if not self.done.cancelled() else None
            state = "failed" if exc or self.done.cancelled() else "succeeded"
            if isinstance(exc, DownloadError):
                error = {"kind": exc.kind.value, "message": str(exc), "status": exc.status}
            elif self.done.cancelled():
                error = {"kind": "internal", "message": "download cancelled", "status": None}
        return {
            "task_id": self.id,
            "state": state,
            "content_length": self.content_length,
            "piece_length": self.piece_length,
            "completed_bytes": self.completed_bytes,
            "bytes_from_origin": self.bytes_from_origin,
            "bytes_from_peers": self.bytes_from_peers,
            "from_cache": self.from_cache,
            "elapsed": time.monotonic() - self.started,
            "error": error,
        }


__all__ = [
    "ContentChangedError",
    "DownloadError",
    "DownloadRequest",
    "FailureKind",
    "Task",
]
