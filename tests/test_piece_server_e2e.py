"""The piece protocol of a real dfdaemon: task info, pieces by sendfile, errors, abuse."""

from __future__ import annotations

import socket
import struct
import time
import zlib

import psutil
import pytest

from d7y.core.ids import task_id
from d7y.core.messages import (
    Error,
    GetPiece,
    GetTaskInfo,
    HavePieces,
    Hello,
    Piece,
    Ping,
    Pong,
    Subscribe,
    TaskInfo,
    Unsubscribe,
)
from d7y.core.pieces import MiB
from d7y.core.protocol import MAGIC, encode_frame
from d7y.core.states import TaskState
from d7y.ext.bitmap import Bitmap
from tests import frames
from tests.frames import recv_exact
from tests.origin_server import ThreadedOriginServer
from tests.peer_harness import PeerProcess, wait_for

PIECE = 4 * MiB
SIZE = 2 * PIECE + 1000


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A daemon that holds one 3-piece task fetched from a real origin."""
    work = tmp_path_factory.mktemp("pieces")
    with ThreadedOriginServer() as origin, PeerProcess(work) as peer:
        url = origin.add_file("p.bin", size=SIZE, seed=31)
        assert peer.dfget(url, work / "out", "--no-progress").returncode == 0
        yield peer, task_id(url), origin.content("p.bin")


read_frame = frames.read_frame


def connect(peer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", peer.piece_port), timeout=10)


def test_task_info_lists_every_piece_and_digest(served):
    peer, tid, data = served
    with connect(peer) as s:
        s.sendall(encode_frame(GetTaskInfo(task_id=tid), stream_id=1))
        header, info = read_frame(s)
    assert header.stream_id == 1 and isinstance(info, TaskInfo)
    assert (info.content_length, info.piece_length, info.piece_count) == (SIZE, PIECE, 3)
    assert Bitmap.from_bytes(info.bitmap, 3).all()
    for n in range(3):
        chunk = data[n * PIECE : (n + 1) * PIECE]
        assert info.digests[n] == f"crc32:{zlib.crc32(chunk)}"


def test_pieces_arrive_byte_exact_on_one_connection(served):
    peer, tid, data = served
    with connect(peer) as s:
        for n in (2, 0, 1):  # out of order, keep-alive
            s.sendall(encode_frame(GetPiece(task_id=tid, number=n), stream_id=7 + n))
            header, piece = read_frame(s)
            assert header.stream_id == 7 + n and isinstance(piece, Piece)
            payload = recv_exact(s, piece.length)
            assert payload == data[piece.offset : piece.offset + piece.length]
            assert piece.digest == f"crc32:{zlib.crc32(payload)}"


def test_unknown_task_and_missing_piece_get_not_found(served):
    peer, tid, _ = served
    with connect(peer) as s:
        s.sendall(encode_frame(GetPiece(task_id="f" * 64, number=0), stream_id=3))
        _, error = read_frame(s)
        assert isinstance(error, Error) and error.code == "not_found"
        s.sendall(encode_frame(GetPiece(task_id=tid, number=99), stream_id=5))
        _, error = read_frame(s)
        assert isinstance(error, Error) and error.code == "not_found"
        assert error.piece_number == 99
        s.sendall(encode_frame(Ping(nonce=42), stream_id=9))  # the connection still works
        assert read_frame(s)[1] == Pong(nonce=42)


def test_hello_is_answered(served):
    peer, _, _ = served
    with connect(peer) as s:
        s.sendall(encode_frame(Hello(minor_version=0, role="peer", peer_id="a" * 10)))
        _, hello = read_frame(s)
    assert isinstance(hello, Hello) and hello.role == "peer" and hello.host_id


def test_malformed_body_gets_error_and_connection_continues(served):
    peer, _, _ = served
    body = b"\x81\xa7task_id\x05"  # msgpack map with task_id = 5 (not a string)
    frame = struct.pack(">2sBBII", MAGIC, 1, GetPiece.type_code, 11, len(body)) + body
    with connect(peer) as s:
        s.sendall(frame)
        header, error = read_frame(s)
        assert isinstance(error, Error) and error.code == "bad_request"
        assert header.stream_id == 11
        s.sendall(encode_frame(Ping(nonce=1)))
        assert read_frame(s)[1] == Pong(nonce=1)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"XX" + bytes(10), "protocol_error"),  # bad magic
        (struct.pack(">2sBBII", MAGIC, 1, 0x12, 0, 0xFFFFFFF0), "frame_too_large"),
        (struct.pack(">2sBBII", MAGIC, 9, 0x12, 0, 4), "unsupported_version"),
    ],
    ids=["bad-magic", "oversized", "bad-version"],
)
def test_fatal_frames_close_the_connection_daemon_keeps_serving(served, frame, code):
    peer, tid, _ = served
    with connect(peer) as s:
        s.sendall(frame)
        _, error = read_frame(s)
        assert isinstance(error, Error) and error.code == code
        assert s.recv(1) == b""  # closed after the error
    with connect(peer) as s:  # others are still served
        s.sendall(encode_frame(GetTaskInfo(task_id=tid)))
        assert isinstance(read_frame(s)[1], TaskInfo)


def test_truncated_frame_then_close_does_not_hurt(served):
    peer, tid, _ = served
    with connect(peer) as s:
        s.sendall(encode_frame(GetTaskInfo(task_id=tid))[:7])
    assert peer.healthy()
    with connect(peer) as s:
        s.sendall(encode_frame(GetTaskInfo(task_id=tid)))
        assert isinstance(read_frame(s)[1], TaskInfo)


# -- the client side: d7y.daemons.peer.piece_client ------------------------------------


def run(coro):
    import asyncio

    return asyncio.run(coro)


def test_piece_client_fetches_and_verifies(served):
    from d7y.daemons.peer.piece_client import PieceClient

    peer, tid, data = served
    address = ("127.0.0.1", peer.piece_port)

    async def scenario():
        client = PieceClient()
        try:
            info = await client.task_info(address, tid)
            used = [local_ports_to(peer.piece_port)]
            buffer = bytearray(PIECE)
            got = []
            for n in range(info.piece_count):
                length, digest = await client.fetch(
                    address, tid, n, memoryview(buffer), info.digests
                )
                assert digest == info.digests[n]
                got.append(bytes(buffer[:length]))
                used.append(local_ports_to(peer.piece_port))
            # Every request went over the one pooled connection (same local port).
            assert len(used[0]) == 1 and all(ports == used[0] for ports in used), used
            return b"".join(got)
        finally:
            client.close()

    assert run(scenario()) == data


def local_ports_to(port: int) -> set[int]:
    """The local ports of this process's TCP connections to ``port``."""
    me = psutil.Process()
    connections = getattr(me, "net_connections", None) or me.connections  # psutil < 6
    return {c.laddr.port for c in connections("tcp") if c.raddr and c.raddr.port == port}


def test_piece_client_catches_a_wrong_digest(served):
    from d7y.daemons.peer.piece_client import PieceClient, PieceFetchError

    peer, tid, _ = served

    async def scenario():
        client = PieceClient()
        try:
            await client.fetch(
                ("127.0.0.1", peer.piece_port),
                tid,
                0,
                memoryview(bytearray(PIECE)),
                {0: "crc32:12345"},
            )
        finally:
            client.close()

    with pytest.raises(PieceFetchError) as info:
        run(scenario())
    assert info.value.kind == "corrupt" and "expected crc32:12345" in str(info.value)


def test_piece_client_reports_missing_and_unreachable(served, tmp_path):
    from d7y.daemons.peer.piece_client import PieceClient, PieceFetchError
    from tests.peer_harness import free_port

    peer, tid, _ = served

    async def fetch(address, number):
        client = PieceClient(timeout=5)
        try:
            await client.fetch(address, tid, number, memoryview(bytearray(PIECE)))
        finally:
            client.close()

    with pytest.raises(PieceFetchError) as missing:
        run(fetch(("127.0.0.1", peer.piece_port), 50))
    assert missing.value.kind == "not_found"
    with pytest.raises(PieceFetchError) as unreachable:
        run(fetch(("127.0.0.1", free_port()), 0))
    assert unreachable.value.kind == "connection"


def test_subscribe_to_a_held_or_unknown_task(served):
    peer, tid, _ = served
    with connect(peer) as s:
        s.sendall(encode_frame(Subscribe(task_id=tid), stream_id=3))
        header, info = read_frame(s)
        assert header.stream_id == 3 and isinstance(info, TaskInfo)
        assert info.state is TaskState.SUCCEEDED and Bitmap.from_bytes(info.bitmap, 3).all()
        s.sendall(encode_frame(Subscribe(task_id="f" * 64), stream_id=5))
        header, error = read_frame(s)
        assert header.stream_id == 5 and isinstance(error, Error) and error.code == "not_found"
        s.sendall(encode_frame(Ping(nonce=8), stream_id=7))
        assert read_frame(s)[1] == Pong(nonce=8)  # a whole task gets no pushes


def test_subscriber_gets_every_piece_as_it_lands_between_other_answers(tmp_path):
    """A child subscribed to a running task gets the snapshot, then HavePieces with
    the right digests until it knows every piece; piece payloads requested on the same
    connection meanwhile arrive intact (pushes never cut into them)."""
    count = 12
    with (
        ThreadedOriginServer() as origin,
        PeerProcess(tmp_path, download={"concurrency": 1}) as peer,
    ):
        url = origin.add_file("slow.bin", size=count * PIECE, seed=32)
        origin.set_faults("/slow.bin", delay={"seconds": 0.25, "count": -1})
        data = origin.content("slow.bin")
        proc = peer.dfget_popen(url, tmp_path / "out", "--no-progress")
        tid = task_id(url)
        with connect(peer) as s:
            known: dict[int, str] = {}
            for _ in range(400):  # until the daemon runs the task and holds a piece
                s.sendall(encode_frame(GetTaskInfo(task_id=tid), stream_id=1))
                info = read_frame(s)[1]
                if isinstance(info, TaskInfo) and info.state is TaskState.RUNNING and info.digests:
                    break
                time.sleep(0.02)
            else:
                pytest.fail("the task never ran")
            s.sendall(encode_frame(Subscribe(task_id=tid), stream_id=9))
            header, snapshot = read_frame(s)
            assert header.stream_id == 9 and isinstance(snapshot, TaskInfo)
            known.update(snapshot.digests)
            pushes = 0
            asked = False
            while len(known) < count:
                if not asked:  # a payload on the same connection, amid the pushes
                    s.sendall(encode_frame(GetPiece(task_id=tid, number=0), stream_id=11))
                    asked = True
                header, message = read_frame(s)
                if isinstance(message, Piece):
                    assert header.stream_id == 11
                    payload = recv_exact(s, message.length)
                    assert payload == data[:PIECE]
                    continue
                assert header.stream_id == 9 and isinstance(message, HavePieces), message
                assert sorted(message.numbers) == message.numbers
                assert set(message.digests) == set(message.numbers)
                known.update(message.digests)
                pushes += 1
            assert pushes >= 1
            for n, digest in known.items():
                assert digest == f"crc32:{zlib.crc32(data[n * PIECE : (n + 1) * PIECE])}"
            s.sendall(encode_frame(Unsubscribe(task_id=tid), stream_id=9))
        assert proc.wait(60) == 0


def test_a_child_just_served_yields_its_slot_to_one_refused(tmp_path):
    """upload.fair_window: 'second' was refused while 'first' held the only slot; when
    first's piece ends and first asks again at once, it is answered busy (it yields),
    and second's retry gets the slot. Without the window, first would keep it."""
    window = {"max_concurrent": 1, "rate_limit": "1MiB", "fair_window": "60s"}
    with ThreadedOriginServer() as origin, PeerProcess(tmp_path, upload=window) as peer:
        url = origin.add_file("fair.bin", size=SIZE, seed=33)
        assert peer.dfget(url, tmp_path / "out", "--no-progress").returncode == 0
        tid = task_id(url)
        with connect(peer) as first, connect(peer) as second:
            # Piece 0 uses up the bucket's burst; piece 1 then holds the slot for seconds.
            for number, stream_id in ((0, 1), (1, 3)):
                first.sendall(encode_frame(GetPiece(task_id=tid, number=number), stream_id))
                if number == 1:
                    wait_for(
                        lambda: peer.metrics().get("d7y_peer_active_uploads") == 1,
                        "piece 1 to be an active upload",
                    )
                    second.sendall(encode_frame(GetPiece(task_id=tid, number=2), stream_id=5))
                    _, refusal = read_frame(second)
                    assert isinstance(refusal, Error) and refusal.code == "busy", refusal
                    assert "serving 1 pieces already" in refusal.message
                _, piece = read_frame(first)
                assert isinstance(piece, Piece) and piece.number == number
                recv_exact(first, piece.length)
            # The slot is free; first asks at once and yields it.
            first.sendall(encode_frame(GetPiece(task_id=tid, number=0), stream_id=7))
            _, yielded = read_frame(first)
            assert isinstance(yielded, Error) and yielded.code == "busy", yielded
            assert "a child refused a moment ago goes first" in yielded.message
            second.sendall(encode_frame(GetPiece(task_id=tid, number=2), stream_id=9))
            _, piece = read_frame(second)
            assert isinstance(piece, Piece) and piece.number == 2
            recv_exact(second, piece.length)


def test_pieces_beyond_max_concurrent_are_refused_busy(tmp_path):
    """upload.max_concurrent = 1: while one piece is being served (held back by the
    upload rate limit), a request for another gets ``busy`` at once, not a queue."""
    with (
        ThreadedOriginServer() as origin,
        PeerProcess(tmp_path, upload={"max_concurrent": 1, "rate_limit": "1MiB"}) as peer,
    ):
        url = origin.add_file("busy.bin", size=SIZE, seed=32)
        assert peer.dfget(url, tmp_path / "out", "--no-progress").returncode == 0
        tid = task_id(url)
        with connect(peer) as first, connect(peer) as second:
            # Piece 0 uses up the bucket's one-piece burst; piece 1 then waits 4 s for
            # tokens, counted as an active upload all the while.
            first.sendall(encode_frame(GetPiece(task_id=tid, number=0), stream_id=1))
            _, piece = read_frame(first)
            assert isinstance(piece, Piece)
            recv_exact(first, piece.length)
            first.sendall(encode_frame(GetPiece(task_id=tid, number=1), stream_id=3))
            wait_for(
                lambda: peer.metrics().get("d7y_peer_active_uploads") == 1,
                "piece 1 to be an active upload",
            )
            second.sendall(encode_frame(GetPiece(task_id=tid, number=2), stream_id=5))
            header, refusal = read_frame(second)
            assert header.stream_id == 5
            assert isinstance(refusal, Error) and refusal.code == "busy", refusal
            assert "serving 1 pieces already" in refusal.message
