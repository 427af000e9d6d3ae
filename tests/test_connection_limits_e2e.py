"""Idle and half-open connections are closed; connections per address are bounded.

Issue 13, defect 5: 3,000 half-open connections (slowloris) to dfdaemon were never
closed and kept their memory after they left. Every port now closes a connection that
stays idle (``upload.idle_timeout``, ``api.idle_timeout``, ``server.idle_timeout``) or
stalls in the middle of a request (``upload.request_timeout``,
``server.request_timeout``), and refuses a connection over ``max_connections_per_ip``
with a short answer while the connections already open keep working. The timeouts are
set short here; the tests wait for the daemon to close the socket (an event), and the
socket timeouts are only a guard against a daemon that never does.
"""

from __future__ import annotations

import socket
import time

import pytest

from d7y.core.ids import task_id
from d7y.core.messages import (
    AnnounceHost,
    Error,
    GetTaskInfo,
    HavePieces,
    Ping,
    Pong,
    Subscribe,
    TaskInfo,
)
from d7y.core.pieces import MiB
from d7y.core.protocol import encode_frame
from d7y.core.states import TaskState
from tests import frames
from tests.origin_server import ThreadedOriginServer
from tests.peer_harness import PeerProcess, SchedulerProcess

PIECE = 4 * MiB

#: Longest wait for the daemon to close a connection (its timeout here is 1 s).
GUARD = 20.0


def read_frame(sock: socket.socket):
    return frames.read_frame(sock)[1]


def closed_by_peer(sock: socket.socket) -> bool:
    """Block until the daemon closes ``sock``; True if it did (EOF or reset), False if
    it sent data instead. A socket.timeout (the guard) propagates as a failure."""
    sock.settimeout(GUARD)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def tcp(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=GUARD)


def ping(sock: socket.socket, nonce: int) -> None:
    sock.sendall(encode_frame(Ping(nonce=nonce)))
    assert read_frame(sock) == Pong(nonce=nonce)


def test_idle_and_stalled_connections_are_closed_on_every_dfdaemon_port(tmp_path):
    timeouts = {"idle_timeout": "1s", "request_timeout": "1s"}
    with PeerProcess(tmp_path, upload=timeouts, api={"idle_timeout": "1s"}) as peer:
        piece_idle = tcp(peer.piece_port)
        piece_stalled = tcp(peer.piece_port)
        piece_stalled.sendall(encode_frame(Ping(nonce=1))[:7])  # half a header
        http_idle = tcp(peer.upload_port)
        http_stalled = tcp(peer.upload_port)
        http_stalled.sendall(b"GET /download/x HTTP/1.1\r\nHost: d7y\r\n")  # no end
        http_body_stalled = tcp(peer.upload_port)
        http_body_stalled.sendall(
            b"POST /download/x HTTP/1.1\r\nHost: d7y\r\nContent-Length: 100\r\n\r\n0123"
        )
        api_stalled = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        api_stalled.connect(str(peer.socket_path))
        api_stalled.sendall(b"GET /v1/healthy HTTP/1.1\r\nHost: d7y\r\n")
        sockets = [
            piece_idle,
            piece_stalled,
            http_idle,
            http_stalled,
            http_body_stalled,
            api_stalled,
        ]
        try:
            for sock in sockets:
                assert closed_by_peer(sock)
        finally:
            for sock in sockets:
                sock.close()
        assert peer.healthy()


def test_a_subscriber_is_not_idle_while_its_task_runs(tmp_path):
    """A child subscribed to a running task sends nothing while it waits for the
    parent's pushes: the connection stays open through a download much longer than the
    idle timeout (12 pieces, each 0.25 s late from the origin, 1 s idle timeout), and
    is closed as idle only after the task has finished."""
    count = 12
    with (
        ThreadedOriginServer() as origin,
        PeerProcess(tmp_path, upload={"idle_timeout": "1s"}, download={"concurrency": 1}) as peer,
    ):
        url = origin.add_file("slow.bin", size=count * PIECE, seed=33)
        origin.set_faults("/slow.bin", delay={"seconds": 0.25, "count": -1})
        proc = peer.dfget_popen(url, tmp_path / "out", "--no-progress")
        tid = task_id(url)
        with tcp(peer.piece_port) as s:
            deadline = time.monotonic() + GUARD
            while True:  # until the daemon runs the task and holds a piece
                s.sendall(encode_frame(GetTaskInfo(task_id=tid), 1))
                info = read_frame(s)
                if isinstance(info, TaskInfo) and info.state is TaskState.RUNNING and info.digests:
                    break
                assert time.monotonic() < deadline, info
                time.sleep(0.02)
            s.sendall(encode_frame(Subscribe(task_id=tid), 3))
            snapshot = read_frame(s)
            assert isinstance(snapshot, TaskInfo) and snapshot.state is TaskState.RUNNING
            known = set(snapshot.digests)
            while len(known) < count:
                push = read_frame(s)
                assert isinstance(push, HavePieces), push
                known.update(push.numbers)
            assert proc.wait(60) == 0
            assert closed_by_peer(s)


@pytest.mark.parametrize("port_name", ["piece_port", "upload_port"])
def test_connections_over_the_per_ip_limit_are_refused_others_keep_working(tmp_path, port_name):
    limit = 4
    with PeerProcess(tmp_path, upload={"max_connections_per_ip": limit}) as peer:
        port = getattr(peer, port_name)
        held = [tcp(port) for _ in range(limit)]
        try:
            if port_name == "piece_port":
                for i, sock in enumerate(held):
                    ping(sock, i)  # each one was accepted and is served
            else:
                for sock in held:
                    assert http_status(sock) == 404  # served: no such task
            with tcp(port) as extra:
                if port_name == "piece_port":
                    refusal = read_frame(extra)
                    assert isinstance(refusal, Error) and refusal.code == "busy", refusal
                    assert f"max_connections_per_ip {limit}" in refusal.message
                else:
                    answer = recv_all(extra)
                    assert answer.startswith(b"HTTP/1.1 503 "), answer
                    assert f"max_connections_per_ip {limit}".encode() in answer
                assert closed_by_peer(extra)
            # The connections already open are not affected.
            if port_name == "piece_port":
                for i, sock in enumerate(held):
                    ping(sock, 100 + i)
            else:
                for sock in held:
                    assert http_status(sock) == 404
            # When one leaves, a new connection is let in (once the daemon has seen the
            # close: until then it may still be refused).
            held.pop().close()
            deadline = time.monotonic() + GUARD
            while True:
                with tcp(port) as again:
                    if port_name == "piece_port":
                        again.sendall(encode_frame(Ping(nonce=9)))
                        if read_frame(again) == Pong(nonce=9):
                            break
                    elif http_status(again) == 404:
                        break
                assert time.monotonic() < deadline, "the closed connection was never released"
        finally:
            for sock in held:
                sock.close()
        assert "connection refused port=" in peer.log()


def http_status(sock: socket.socket) -> int:
    sock.sendall(b"GET /download/none HTTP/1.1\r\nHost: d7y\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            return 0  # closed: refused
        head += chunk
    if head.startswith(b"HTTP/1.1 503"):
        return 503
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = head.split(b"\r\n\r\n", 1)[1]
    while len(body) < length:
        body += sock.recv(4096)
    return int(head.split(b" ")[1])


def recv_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def wait_for_log(daemon, text: str) -> None:
    deadline = time.monotonic() + GUARD
    while text not in daemon.log():
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{daemon.log()[-3000:]}"
        time.sleep(0.02)


def test_scheduler_closes_idle_and_stalled_connections(tmp_path):
    config = {"idle_timeout": "1s", "request_timeout": "1s"}
    with SchedulerProcess(tmp_path, server=config) as scheduler:
        idle = tcp(scheduler.port)
        idle.sendall(
            encode_frame(
                AnnounceHost(host_id="h", ip="127.0.0.1", hostname="h", port=1, download_port=2)
            )
        )
        stalled = tcp(scheduler.port)
        stalled.sendall(encode_frame(Ping(nonce=1))[:5])
        try:
            assert closed_by_peer(idle)
            assert closed_by_peer(stalled)
        finally:
            idle.close()
            stalled.close()
        # The idle host left with its connection.
        wait_for_log(scheduler, "host left host=h (connection closed)")
        log = scheduler.log()
        assert "no frame in 1s: idle connection" in log
        assert "connection stalled for 1s in the middle of a frame" in log


def test_scheduler_refuses_connections_over_the_per_ip_limit(tmp_path):
    with SchedulerProcess(tmp_path, server={"max_connections_per_ip": 3}) as scheduler:
        held = [tcp(scheduler.port) for _ in range(3)]
        try:
            for i, sock in enumerate(held):
                ping(sock, i)
            with tcp(scheduler.port) as extra:
                refusal = read_frame(extra)
                assert isinstance(refusal, Error) and refusal.code == "busy", refusal
                assert "max_connections_per_ip 3" in refusal.message
                assert closed_by_peer(extra)
            for i, sock in enumerate(held):
                ping(sock, 10 + i)
        finally:
            for sock in held:
                sock.close()
