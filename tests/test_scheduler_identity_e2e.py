"""A host's identity is bound to the connection that announced it (issue 13, defect 3).

Without mTLS anyone who reaches the scheduler port can claim any host ID. Before the
fix a second connection announcing a live host's ID took that host over (and received
its TriggerSeed, with the URL and the request headers), and LeaveHost / LeavePeer for
anyone's host or peer were obeyed. Now the first live connection to announce a host
owns it and its peers until it closes; anything another connection says for them is
refused with a ``forbidden`` Error and changes nothing.
"""

from __future__ import annotations

import hashlib
import socket
import time

from d7y.core.ids import task_id
from d7y.core.messages import (
    AnnounceHost,
    DownloadFailed,
    DownloadFinished,
    DownloadStarted,
    Error,
    LeaveHost,
    LeavePeer,
    PieceFailed,
    PieceFinished,
    Ping,
    Pong,
    RegisterPeer,
    Reschedule,
    RestorePeer,
    TriggerSeed,
)
from d7y.core.pieces import MiB
from d7y.core.protocol import encode_frame
from tests import frames
from tests.origin_server import ThreadedOriginServer
from tests.peer_harness import SchedulerProcess
from tests.test_p2p_e2e import Cluster, bytes_by_source, sha256

URL = "http://origin.invalid/secret.bin"
TASK = task_id(URL)
PIECE = 4 * MiB


def read_frame(sock: socket.socket):
    header, message = frames.read_frame(sock)
    return header.stream_id, message


def connect(scheduler: SchedulerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", scheduler.port), timeout=15)


def announce(host_id: str, host_type: str = "normal") -> bytes:
    return encode_frame(
        AnnounceHost(
            host_id=host_id,
            ip="127.0.0.1",
            hostname=host_id,
            port=1,
            download_port=2,
            host_type=host_type,
        )
    )


def sync(sock: socket.socket, nonce: int) -> list:
    """Everything the scheduler sent on this connection before the Pong to a Ping sent
    now: the connection is served in order, so this is a barrier, not a sleep."""
    sock.sendall(encode_frame(Ping(nonce=nonce)))
    frames = []
    while (frame := read_frame(sock)) != (0, Pong(nonce=nonce)):
        frames.append(frame)
    return frames


def wait_for_log(daemon, text: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in daemon.log():
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{daemon.log()[-3000:]}"
        time.sleep(0.02)


def peers_known(scheduler: SchedulerProcess) -> float:
    return scheduler.metrics()["d7y_scheduler_peers"]


def test_a_second_connection_cannot_take_over_a_live_seed_host(tmp_path):
    with SchedulerProcess(tmp_path) as scheduler, connect(scheduler) as seed:
        seed.sendall(announce("seed-host", "seed"))
        assert sync(seed, 1) == []
        with connect(scheduler) as attacker:
            attacker.sendall(announce("seed-host", "seed"))
            stream, refusal = read_frame(attacker)
            assert stream == 0 and isinstance(refusal, Error), refusal
            assert refusal.code == "forbidden"
            assert "seed-host" in refusal.message
            # The impostor's connection is closed after the refusal.
            try:
                leftover = read_frame(attacker)
            except (EOFError, ConnectionResetError):
                leftover = None
            assert leftover is None, leftover
            # A peer asks for a task nobody holds: the real seed gets the trigger,
            # headers and all.
            with connect(scheduler) as peer:
                peer.sendall(announce("peer-host"))
                request = RegisterPeer(
                    peer_id="peer-host-p1",
                    task_id=TASK,
                    host_id="peer-host",
                    url=URL,
                    headers={"Authorization": "Bearer secret"},
                )
                peer.sendall(encode_frame(request, 1))
                stream, trigger = read_frame(seed)
                assert isinstance(trigger, TriggerSeed), trigger
                # A stream the scheduler opens has an even id (the peer's are odd).
                assert stream > 0 and stream % 2 == 0, stream
                assert trigger.task_id == TASK and trigger.headers == request.headers
        assert "refused AnnounceHost" in scheduler.log()


def test_another_connection_cannot_evict_or_act_for_a_hosts_peers(tmp_path):
    with SchedulerProcess(tmp_path) as scheduler, connect(scheduler) as victim:
        victim.sendall(announce("victim-host"))
        for i in range(3):
            restore = RestorePeer(
                peer_id=f"victim-host-p{i}",
                task_id=TASK,
                host_id="victim-host",
                url=URL,
                content_length=2 * PIECE,
                piece_length=PIECE,
                succeeded=True,
            )
            victim.sendall(encode_frame(restore))
        assert sync(victim, 1) == []
        assert peers_known(scheduler) == 3

        hostile = [
            LeaveHost(host_id="victim-host"),
            LeavePeer(peer_id="victim-host-p0", task_id=TASK),
            DownloadFailed(peer_id="victim-host-p1", task_id=TASK),
            DownloadStarted(peer_id="victim-host-p1", task_id=TASK),
            PieceFinished(
                peer_id="victim-host-p1",
                task_id=TASK,
                number=0,
                length=PIECE,
                cost_ns=1,
                digest="crc32:1",
            ),
            PieceFailed(peer_id="victim-host-p1", task_id=TASK, number=0, parent_id="x"),
            DownloadFinished(
                peer_id="victim-host-p2", task_id=TASK, content_length=2 * PIECE, piece_count=2
            ),
            Reschedule(peer_id="victim-host-p2", task_id=TASK),
            RegisterPeer(peer_id="evil-p", task_id=TASK, host_id="victim-host", url=URL),
            RestorePeer(
                peer_id="evil-r",
                task_id=TASK,
                host_id="victim-host",
                url=URL,
                content_length=2 * PIECE,
                piece_length=PIECE,
                succeeded=True,
            ),
        ]
        with connect(scheduler) as attacker:
            attacker.sendall(announce("attacker-host"))
            for stream, message in enumerate(hostile, start=1):
                attacker.sendall(encode_frame(message, 2 * stream + 1))
            answers = sync(attacker, 2)
            assert len(answers) == len(hostile), answers
            for (stream, answer), message in zip(answers, hostile, strict=True):
                assert isinstance(answer, Error) and answer.code == "forbidden", (message, answer)
                assert stream % 2 == 1
            # Nothing changed: the victim's three peers are all still there.
            assert peers_known(scheduler) == 3
            # Not even the attacker's own host is affected by the refusals.
            attacker.sendall(encode_frame(LeaveHost(host_id="attacker-host")))
            assert sync(attacker, 3) == []
        # The owner itself may do all of it.
        victim.sendall(encode_frame(LeavePeer(peer_id="victim-host-p0", task_id=TASK), 3))
        assert sync(victim, 4) == []
        assert peers_known(scheduler) == 2
        victim.sendall(encode_frame(LeaveHost(host_id="victim-host")))
        assert sync(victim, 5) == []
        assert peers_known(scheduler) == 0


def test_a_host_whose_connection_closed_may_announce_again(tmp_path):
    """A restarted daemon announces its host from a new connection: allowed once the
    scheduler has seen the old connection close."""
    with SchedulerProcess(tmp_path) as scheduler:
        with connect(scheduler) as first:
            first.sendall(announce("h"))
            assert sync(first, 1) == []
        wait_for_log(scheduler, "host left host=h (connection closed)")
        with connect(scheduler) as second:
            second.sendall(announce("h"))
            assert sync(second, 2) == []
            second.sendall(
                encode_frame(
                    RestorePeer(
                        peer_id="h-p",
                        task_id=TASK,
                        host_id="h",
                        url=URL,
                        content_length=PIECE,
                        piece_length=PIECE,
                        succeeded=True,
                    )
                )
            )
            assert sync(second, 1000) == []
            assert peers_known(scheduler) == 1


def test_a_daemon_killed_and_restarted_takes_its_host_back(tmp_path):
    """dfdaemon killed with SIGKILL and started again announces the same host ID from a
    new connection; whether or not the scheduler has seen the old connection close by
    then, the new daemon ends up owning its host (it retries with backoff) and
    downloads over P2P again."""
    with ThreadedOriginServer() as origin:
        cluster = Cluster(tmp_path, origin, peers=1)
        try:
            url = origin.add_file("again.bin", size=2 * PIECE, seed=71)
            cluster.fetch_all(url, [cluster.seed])  # the seed holds it
            peer = cluster.peers[0]
            host = f"host={peer_host_id(peer)}"
            wait_for_log(cluster.scheduler, f"host announced {host}")
            peer.kill()
            peer.start()
            deadline = time.monotonic() + 30
            while cluster.scheduler.log().count(f"host announced {host}") < 2:
                assert time.monotonic() < deadline, cluster.scheduler.log()[-3000:]
                time.sleep(0.02)
            outputs = cluster.fetch_all(url, [peer])
            expected = hashlib.sha256(origin.content("again.bin")).hexdigest()
            assert sha256(outputs[0]) == expected
            from_origin, from_peers, _ = bytes_by_source(peer)
            assert from_origin == 0 and from_peers == 2 * PIECE
        finally:
            cluster.stop()


def peer_host_id(peer) -> str:
    for line in peer.log().splitlines():
        if "dfdaemon ready" in line:
            return line.split("host_id=")[1].split()[0]
    raise AssertionError(f"{peer.name} never logged its host ID:\n{peer.log()[-2000:]}")


def test_a_connection_that_keeps_acting_for_others_is_closed(tmp_path):
    with SchedulerProcess(tmp_path) as scheduler, connect(scheduler) as victim:
        victim.sendall(announce("victim-host"))
        assert sync(victim, 1) == []
        with connect(scheduler) as attacker:
            attacker.sendall(encode_frame(LeaveHost(host_id="victim-host")) * 100)
            refusals = 0
            try:
                while True:
                    _, answer = read_frame(attacker)
                    assert isinstance(answer, Error) and answer.code == "forbidden", answer
                    refusals += 1
            except (EOFError, ConnectionResetError):
                pass
            assert 1 <= refusals <= 17, refusals
        assert sync(victim, 2) == []  # the owner's connection is untouched
