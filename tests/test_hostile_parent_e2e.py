"""A parent that lies (fault matrix, issue 13): it tells the scheduler it holds a whole
task (with the true piece digests), tells children its bitmap is full, then either
answers every piece request with ``not_found`` or starts a piece and stalls in the
middle of its payload; or it claims the task without digests.

A real dfdaemon downloading the task through a real scheduler must notice, stop asking
that parent, and finish with the exact bytes (from the origin here: the liar is the only
other holder). The liar is a small threaded server speaking the real framed protocol;
its host and its "finished" peer reach the scheduler the way any daemon's do
(AnnounceHost, then RestorePeer with succeeded=True).
"""

from __future__ import annotations

import hashlib
import socket
import socketserver
import threading
import zlib

import pytest

from d7y.core.ids import task_id
from d7y.core.messages import (
    AnnounceHost,
    Error,
    GetPiece,
    GetTaskInfo,
    Piece,
    Ping,
    Pong,
    RestorePeer,
    Subscribe,
    TaskInfo,
)
from d7y.core.pieces import MiB
from d7y.core.protocol import encode_frame
from d7y.ext.bitmap import Bitmap
from tests import frames
from tests.origin_server import ThreadedOriginServer
from tests.peer_harness import PeerProcess, SchedulerProcess, free_port, peer_config

PIECE = 4 * MiB
PIECES = 3


class LyingParent(socketserver.ThreadingTCPServer):
    """Claims every piece of one task; ``mode`` says what it does when asked for one."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, tid: str, content: bytes, mode: str) -> None:
        self.tid, self.size, self.mode = tid, len(content), mode
        # The true digests (the liar learned them somewhere: a scheduler tells them to
        # anyone who asks); without them no child would ask it for a piece at all.
        self.digests = (
            {}
            if mode == "no_digests"
            else {
                n: f"crc32:{zlib.crc32(content[n * PIECE : (n + 1) * PIECE])}"
                for n in range(PIECES)
            }
        )
        self.piece_requests = 0
        self.stalled = threading.Event()
        self.release = threading.Event()  # set on shutdown: stalled handlers return
        super().__init__(("127.0.0.1", free_port()), _LiarHandler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def task_info(self) -> TaskInfo:
        bitmap = Bitmap(PIECES)
        for n in range(PIECES):
            bitmap.set(n)
        return TaskInfo(
            task_id=self.tid,
            content_length=self.size,
            piece_length=PIECE,
            piece_count=PIECES,
            bitmap=bitmap.to_bytes(),
            digests=self.digests,
            state="Succeeded",
        )

    def close(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


class _LiarHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        liar: LyingParent = self.server  # type: ignore[assignment]
        sock: socket.socket = self.request
        sock.settimeout(60)
        try:
            while True:
                header, message = frames.read_frame(sock)
                stream = header.stream_id
                if isinstance(message, GetTaskInfo | Subscribe):
                    sock.sendall(encode_frame(liar.task_info(), stream))
                elif isinstance(message, GetPiece):
                    liar.piece_requests += 1
                    if liar.mode != "stall":
                        error = Error(code="not_found", message="no such piece after all")
                        sock.sendall(encode_frame(error, stream))
                        continue
                    # Start the piece, send half its payload, then go silent.
                    length = min(PIECE, liar.size - message.number * PIECE)
                    piece = Piece(
                        task_id=liar.tid,
                        number=message.number,
                        offset=message.number * PIECE,
                        length=length,
                        digest="crc32:1",
                    )
                    sock.sendall(encode_frame(piece, stream) + b"\0" * (length // 2))
                    liar.stalled.set()
                    liar.release.wait(120)
                    return
                elif isinstance(message, Ping):
                    sock.sendall(encode_frame(Pong(nonce=message.nonce), stream))
        except (EOFError, OSError, ValueError):
            return


def claim_the_task(scheduler: SchedulerProcess, liar: LyingParent, url: str) -> socket.socket:
    """Announce the liar's host and a finished peer of the task; keep the connection
    (closing it would make the scheduler forget the host)."""
    sock = socket.create_connection(("127.0.0.1", scheduler.port), timeout=15)
    port = liar.server_address[1]
    sock.sendall(
        encode_frame(
            AnnounceHost(
                host_id="liar-host",
                ip="127.0.0.1",
                hostname="liar",
                port=port,
                download_port=port,
                host_type="normal",
            )
        )
        + encode_frame(
            RestorePeer(
                peer_id="liar-host-peer",
                task_id=task_id(url),
                host_id="liar-host",
                url=url,
                content_length=liar.size,
                piece_length=PIECE,
                succeeded=True,
                digests=liar.digests,
            )
        )
        + encode_frame(Ping(nonce=1))
    )
    # The scheduler answers in order: the Pong means both were taken (an Error would
    # come first otherwise).
    assert frames.read_frame(sock)[1] == Pong(nonce=1)
    return sock


@pytest.mark.parametrize("mode", ["not_found", "stall", "no_digests"])
def test_a_parent_that_lies_about_its_pieces_is_dropped_and_the_download_finishes(tmp_path, mode):
    size = PIECES * PIECE - 123
    with ThreadedOriginServer() as origin, SchedulerProcess(tmp_path) as scheduler:
        url = origin.add_file("lied-about.bin", size=size, seed=77)
        liar = LyingParent(task_id(url), origin.content("lied-about.bin"), mode)
        claim = claim_the_task(scheduler, liar, url)
        config = peer_config(scheduler, "honest", download={"parent_piece_timeout": "2s"})
        try:
            with PeerProcess(tmp_path, "honest", **config) as peer:
                out = tmp_path / "out.bin"
                result = peer.dfget(url, out, "--no-progress")
                assert result.returncode == 0, result.stderr + peer.log()[-3000:]
                expected = hashlib.sha256(origin.content("lied-about.bin")).hexdigest()
                assert hashlib.sha256(out.read_bytes()).hexdigest() == expected
                if mode == "no_digests":
                    # Pieces whose digest the scheduler does not know are never asked
                    # for: the peer waited, then went to the origin.
                    assert liar.piece_requests == 0
                else:
                    # The liar was really asked (the scenario happened), and the peer
                    # gave up on it rather than asking forever.
                    assert liar.piece_requests >= 1
                assert liar.stalled.is_set() == (mode == "stall")
                assert peer.healthy()
        finally:
            claim.close()
            liar.close()
