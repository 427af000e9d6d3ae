"""Protocol messages <-> scheduler calls and results (sans-IO).

The scheduler daemon reads a message, calls the :class:`Scheduler` through the functions
here (which map the wire's conventions, e.g. 0 or -1 for "unknown", onto the core's
None), and sends what :func:`answer` makes of the result. Nothing here does I/O, so
the mapping is tested without sockets.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from d7y.core import messages as m
from d7y.core.scheduling import results as r
from d7y.core.scheduling.scheduler import Scheduler

#: A reason or error text is cut to this many characters on the wire.
MAX_TEXT = 4000

_T = TypeVar("_T")


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value


# -- messages -> calls -------------------------------------------------------------------


def announce_host(core: Scheduler, msg: m.AnnounceHost, now: float) -> r.HostAnnounced:
    return core.announce_host(
        msg.host_id,
        now,
        ip=msg.ip,
        hostname=msg.hostname,
        port=msg.port,
        download_port=msg.download_port,
        idc=msg.idc,
        location=msg.location,
        type=msg.host_type,
        upload_limit_bps=msg.max_tx_bandwidth_bps or msg.upload_limit_bps,
        concurrent_upload_limit=msg.concurrent_upload_limit or None,
        tx_bandwidth=msg.tx_bandwidth_bps,
        download_limit_bps=msg.download_limit_bps,
    )


def register_peer(core: Scheduler, msg: m.RegisterPeer, now: float) -> r.RegisterResult:
    return core.register_peer(
        msg.peer_id,
        msg.task_id,
        msg.host_id,
        msg.url,
        now,
        piece_length=msg.piece_length or None,
        need_back_to_source=msg.need_back_to_source,
    )


def restore_peer(core: Scheduler, msg: m.RestorePeer, now: float) -> None:
    core.restore_peer(
        msg.peer_id,
        msg.task_id,
        msg.host_id,
        msg.url,
        now,
        content_length=msg.content_length,
        piece_length=msg.piece_length,
        finished=msg.bitmap,
        succeeded=msg.succeeded,
        digests=msg.digests,
    )


def restored_request(msg: m.RestorePeer) -> m.RegisterPeer:
    """The registration a restored download's later answers are routed as."""
    return m.RegisterPeer(
        peer_id=msg.peer_id, task_id=msg.task_id, host_id=msg.host_id, url=msg.url
    )


def download_started(core: Scheduler, msg: m.DownloadStarted, now: float) -> None:
    core.download_started(
        msg.peer_id,
        now,
        back_to_source=msg.back_to_source,
        content_length=msg.content_length if msg.content_length >= 0 else None,
        piece_length=msg.piece_length or None,
    )


def piece_finished(core: Scheduler, msg: m.PieceFinished, now: float) -> None:
    core.piece_finished(
        msg.peer_id, msg.number, msg.parent_id or None, msg.cost_ns / 1e9, msg.digest, now
    )


def piece_failed(core: Scheduler, msg: m.PieceFailed, now: float) -> r.PieceFailedResult:
    return core.piece_failed(msg.peer_id, msg.number, msg.parent_id or None, now)


def download_finished(core: Scheduler, msg: m.DownloadFinished, now: float) -> r.DownloadEnded:
    return core.download_finished(
        msg.peer_id, now, content_length=msg.content_length, content=msg.content
    )


# -- results -> messages -----------------------------------------------------------------


def task_digests(core: Scheduler, task_id: str) -> m.TaskDigests:
    """The answer to GetTaskDigests."""
    task = core.task(task_id)
    meta = core.task_meta(task_id)
    return m.TaskDigests(
        task_id=task_id,
        content_length=_or(meta.content_length, -1),
        piece_length=_or(meta.piece_length, 0),
        piece_count=_or(meta.piece_count, -1),
        digests=dict(core.piece_digests(task.id)),
    )


def trigger_seed(request: m.RegisterPeer) -> m.TriggerSeed:
    """What the seed peer is told to fetch for the registration that triggered it."""
    return m.TriggerSeed(
        task_id=request.task_id,
        url=request.url,
        tag=request.tag,
        application=request.application,
        filtered_query_params=request.filtered_query_params,
        headers=request.headers,
        piece_length=request.piece_length,
    )


def answer(core: Scheduler, result: object) -> m.Message:
    """The message a peer is sent for a final scheduling result."""
    task_id = result.task.task_id  # type: ignore[attr-defined]
    if isinstance(result, r.NormalTask):
        return normal_task(core, result.task, result.parents)
    if isinstance(result, r.NeedBackToSource):
        return m.NeedBackToSource(task_id=task_id, reason=result.reason[:MAX_TEXT])
    if isinstance(result, r.EmptyTask):
        return m.EmptyTaskResponse(task_id=task_id)
    if isinstance(result, r.TinyTask):
        return m.TinyTaskResponse(task_id=task_id, content=result.content)
    if isinstance(result, r.SmallTask):
        digest = core.piece_digests(task_id).get(0)
        meta = result.task
        if digest is None or not meta.content_length:
            # Without the piece's digest or size the peer cannot take the one-piece
            # shortcut: answer as for a normal task with that parent.
            return normal_task(core, meta, (result.parent,))
        return m.SmallTaskResponse(
            task_id=task_id,
            parent=parent(core, result.parent, meta),
            content_length=meta.content_length,
            piece_digest=digest,
        )
    if isinstance(result, r.MetadataOnly):
        return m.NeedBackToSource(
            task_id=task_id, reason="this host already holds the task; read it locally"
        )
    reason = getattr(result, "reason", "scheduling failed")
    return m.Error(code=m.ErrorCode.UNAVAILABLE, message=reason[:MAX_TEXT], task_id=task_id)


def normal_task(
    core: Scheduler, meta: r.TaskMeta, parents: Iterable[r.ParentInfo]
) -> m.NormalTaskResponse:
    return m.NormalTaskResponse(
        task_id=meta.task_id,
        candidate_parents=[parent(core, p, meta) for p in parents],
        content_length=_or(meta.content_length, -1),
        piece_length=_or(meta.piece_length, 0),
        piece_count=_or(meta.piece_count, -1),
        digests=dict(core.piece_digests(meta.task_id)),
    )


def parent(core: Scheduler, info: r.ParentInfo, meta: r.TaskMeta) -> m.ParentInfo:
    """A parent as the child is told of it, with the pieces it holds now (its bitmap,
    sent only when it has the task's exact size)."""
    peer = core.peers.get(info.peer_id)
    bitmap = b""
    state = m.PeerState.RUNNING
    if peer is not None:
        state = peer.fsm.state
        if meta.piece_count:
            # A bitmap sized for another piece count (the task's size was not known
            # when the peer joined) is left out rather than sent wrong.
            bitmap = peer.finished.to_bytes()
            if len(bitmap) != (meta.piece_count + 7) // 8:
                bitmap = b""
    return m.ParentInfo(
        peer_id=info.peer_id,
        host_id=info.host_id,
        ip=info.ip,
        port=info.port,
        download_port=info.download_port,
        bitmap=bitmap,
        state=state,
        tx_bandwidth_bps=info.tx_bandwidth,
        max_tx_bandwidth_bps=info.upload_limit_bps,
    )


__all__ = [
    "MAX_TEXT",
    "announce_host",
    "answer",
    "download_finished",
    "download_started",
    "normal_task",
    "parent",
    "piece_failed",
    "piece_finished",
    "register_peer",
    "restore_peer",
    "restored_request",
    "task_digests",
    "trigger_seed",
]
