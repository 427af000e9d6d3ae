"""Stored bytes are checked before they leave the daemon (issue 13 defect 7, issue 15).

A finished or half-finished task whose content file was damaged on disk (while the
daemon was stopped, or under it through the hard-linked output) must never be output by
dfget, served by ``/download`` or sent on the piece port: the bad piece is found by its
CRC-32, counted in ``d7y_peer_corrupt_pieces_total``, and fetched again.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from d7y.core.ids import task_id
from d7y.core.messages import Error, GetPiece, Piece
from d7y.core.pieces import MiB
from d7y.core.protocol import HEADER_LENGTH, decode_body, decode_header, encode_frame
from tests.frames import recv_exact
from tests.origin_server import ThreadedOriginServer
from tests.peer_harness import PeerProcess

PIECE = 4 * MiB
SIZE = 3 * PIECE + 4321


@pytest.fixture
def origin():
    with ThreadedOriginServer() as server:
        yield server


def content_file(peer: PeerProcess, tid: str) -> Path:
    return peer.data_dir / "content" / "tasks" / tid[:3] / tid


def overwrite(path: Path, offset: int, data: bytes = b"\xde\xad\xbe\xef") -> None:
    """Change bytes in place (same inode: a hard-linked output changes too)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def piece_ranges(origin, name: str) -> list[str]:
    return [r for r in origin.stats(f"/{name}")["ranges"] if r not in (None, "bytes=0-0")]


def corrupt_pieces(peer: PeerProcess) -> float:
    return peer.metrics().get("d7y_peer_corrupt_pieces_total", 0.0)


def get_piece(peer: PeerProcess, tid: str, number: int) -> tuple[object, bytes]:
    """GetPiece on the piece port: (answer, payload bytes)."""
    with socket.create_connection(("127.0.0.1", peer.piece_port), timeout=10) as s:
        s.sendall(encode_frame(GetPiece(task_id=tid, number=number), stream_id=1))
        header = decode_header(recv_exact(s, HEADER_LENGTH))
        answer = decode_body(header, recv_exact(s, header.body_length))
        payload = recv_exact(s, answer.length) if isinstance(answer, Piece) else b""
    return answer, payload


@pytest.mark.parametrize("first_use", ["dfget", "http", "piece-port"])
def test_piece_damaged_while_stopped_is_never_served_and_is_refetched(origin, tmp_path, first_use):
    url = origin.add_file("stored.bin", size=SIZE, seed=51)
    good = origin.content("stored.bin")
    tid = task_id(url)
    peer = PeerProcess(tmp_path)
    with peer:
        assert peer.dfget(url, tmp_path / "first", "--no-progress").returncode == 0
    (tmp_path / "first").unlink()  # the output is a hard link: keep it out of the way
    overwrite(content_file(peer, tid), PIECE + 100)  # piece 1, while the daemon is down
    origin.reset()

    with peer:
        if first_use == "http":
            status, body = peer.http_get(tid)
            assert b"\xde\xad\xbe\xef" not in body
            assert status != 200 or body == good
            status, body = peer.http_get(tid, f"bytes={PIECE}-{PIECE + 199}")
            assert b"\xde\xad\xbe\xef" not in body
        elif first_use == "piece-port":
            answer, payload = get_piece(peer, tid, 1)
            assert isinstance(answer, Error), answer
            assert payload == b""
            # The good pieces are still served.
            answer, payload = get_piece(peer, tid, 0)
            assert isinstance(answer, Piece) and payload == good[:PIECE]
        result = peer.dfget(url, tmp_path / "out", "--no-progress")
        assert result.returncode == 0, result.stderr.decode() + peer.log()[-3000:]
        assert (tmp_path / "out").read_bytes() == good
        # Only the damaged piece came from the origin again.
        assert piece_ranges(origin, "stored.bin") == [f"bytes={PIECE}-{2 * PIECE - 1}"]
        assert corrupt_pieces(peer) == 1
        assert peer.http_get(tid) == (200, good)
        answer, payload = get_piece(peer, tid, 1)
        assert isinstance(answer, Piece) and payload == good[PIECE : 2 * PIECE]


def test_output_changed_under_a_running_daemon_is_not_served(origin, tmp_path):
    """dfget's output is a hard link to the content file: a user who edits it in place
    changes the daemon's copy. The change is noticed; the bytes are not served."""
    url = origin.add_file("linked.bin", size=SIZE, seed=52)
    good = origin.content("linked.bin")
    tid = task_id(url)
    with PeerProcess(tmp_path) as peer:
        out = tmp_path / "out"
        assert peer.dfget(url, out, "--no-progress").returncode == 0
        assert os.stat(out).st_ino == content_file(peer, tid).stat().st_ino
        assert peer.http_get(tid) == (200, good)  # verified and served once
        overwrite(out, 2 * PIECE + 7)
        _status, body = peer.http_get(tid)
        assert b"\xde\xad\xbe\xef" not in body
        assert corrupt_pieces(peer) == 1
        out.unlink()
        result = peer.dfget(url, tmp_path / "again", "--no-progress")
        assert result.returncode == 0, result.stderr.decode()
        assert (tmp_path / "again").read_bytes() == good


def test_resumed_task_rechecks_its_stored_pieces(origin, tmp_path):
    """Issue 15: a half-finished task resumes from its recorded pieces; one of them was
    damaged while the daemon was down. It must be checked, dropped and fetched again."""
    url = origin.add_file("partial.bin", size=SIZE, seed=53)
    good = origin.content("partial.bin")
    # One piece at a time, in order: the probe and pieces 0 and 1 pass (each piece
    # costs a fast-path request), then the origin fails for good.
    origin.set_faults("/partial.bin", fail={"status": 404, "count": -1, "skip": 3})
    peer = PeerProcess(tmp_path, download={"concurrency": 1})
    with peer:
        result = peer.dfget(url, tmp_path / "out", "--no-progress")
        assert result.returncode == 4, result.stderr.decode()
        status, info = peer.api("GET", f"/v1/tasks/{task_id(url)}")
        assert status == 200 and info["state"] == "failed", info
    overwrite(content_file(peer, task_id(url)), 10)  # piece 0, recorded as good
    origin.reset()
    with peer:
        result = peer.dfget(url, tmp_path / "out", "--no-progress")
        assert result.returncode == 0, result.stderr.decode()
        assert (tmp_path / "out").read_bytes() == good
        fetched = piece_ranges(origin, "partial.bin")
        assert f"bytes=0-{PIECE - 1}" in fetched  # the damaged piece, again
        assert f"bytes={PIECE}-{2 * PIECE - 1}" not in fetched  # the good one, kept
        assert corrupt_pieces(peer) == 1
