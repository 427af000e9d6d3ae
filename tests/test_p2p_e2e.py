"""The P2P path end to end: a real scheduler, a seed peer and peers, as processes.

Every test runs on loopback with real daemons and a real HTTP origin, checks every
output byte for byte, and reads the origin's own count of body bytes sent.
"""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import struct
from pathlib import Path

import pytest

from d7y.core.ids import task_id
from d7y.core.messages import (
    AnnounceHost,
    Error,
    NeedBackToSource,
    Ping,
    Pong,
    Reschedule,
    RestorePeer,
)
from d7y.core.pieces import MiB
from d7y.core.protocol import HEADER_LENGTH, MAGIC, decode_body, decode_header, encode_frame
from d7y.daemons.peer.storage import MetadataStore
from tests.origin_server import ThreadedOriginServer
from tests.peer_harness import PeerProcess, SchedulerProcess, peer_config, wait_for

PIECE = 4 * MiB


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def scheduler_connections(daemon: PeerProcess) -> int:
    """How many times the daemon has connected to a scheduler. It announces its host
    first thing on each connection, before anything it registers there."""
    return daemon.log().count("connected to scheduler address=")


def peer_id_of(daemon: PeerProcess, tid: str) -> str:
    """The peer ID the daemon registered for task ``tid`` (from its debug log)."""
    found = re.findall(rf"registered task={tid} peer=(\S+)", daemon.log())
    assert found, f"{daemon.name} never registered task {tid}"
    return found[-1]


def bytes_by_source(peer: PeerProcess) -> tuple[float, float, float]:
    metrics = peer.metrics()
    return (
        metrics.get("d7y_peer_download_origin_bytes_total", 0.0),
        metrics.get("d7y_peer_download_peer_bytes_total", 0.0),
        metrics.get("d7y_peer_upload_bytes_total", 0.0),
    )


class Cluster:
    def __init__(
        self,
        work: Path,
        origin: ThreadedOriginServer,
        peers: int = 4,
        seed_extra: dict | None = None,
        scheduler_extra: dict | None = None,
    ):
        self.work = work
        self.origin = origin
        self.scheduler = SchedulerProcess(work, **(scheduler_extra or {})).start()
        self.seed = PeerProcess(
            work, "seed", **peer_config(self.scheduler, "seed", seed=True, **(seed_extra or {}))
        ).start()
        self.peers = [
            PeerProcess(work, f"peer{i}", **peer_config(self.scheduler, f"peer{i}")).start()
            for i in range(peers)
        ]
        self.wait_connected([self.seed, *self.peers], {})

    def add_peer(self, name: str, **extra) -> PeerProcess:
        peer = PeerProcess(self.work, name, **peer_config(self.scheduler, name, **extra)).start()
        self.peers.append(peer)
        if self.scheduler.proc is not None and self.scheduler.proc.poll() is None:
            self.wait_connected([peer], {})
        return peer

    def running_daemons(self) -> list[PeerProcess]:
        return [d for d in (self.seed, *self.peers) if d.proc is not None and d.proc.poll() is None]

    def restart_scheduler(self) -> None:
        """Stop the scheduler and start a new one on the same port; return once every
        running daemon has connected (and so announced its host) to the new one."""
        daemons = self.running_daemons()
        before = {d.name: scheduler_connections(d) for d in daemons}
        self.scheduler.stop()
        self.scheduler.start()
        self.wait_connected(daemons, before)

    @staticmethod
    def wait_connected(daemons: list[PeerProcess], before: dict[str, int]) -> None:
        for daemon in daemons:
            wait_for(
                lambda d=daemon: scheduler_connections(d) > before.get(d.name, 0),
                f"{daemon.name} to connect to the scheduler",
            )

    def fetch_all(self, url: str, peers=None, *args: str) -> list[Path]:
        peers = self.peers if peers is None else peers
        outputs = [self.work / f"{p.name}.out" for p in peers]
        procs = [
            p.dfget_popen(url, out, "--no-progress", *args)
            for p, out in zip(peers, outputs, strict=True)
        ]
        for proc, peer in zip(procs, peers, strict=True):
            assert proc.wait(180) == 0, (
                f"{peer.name}: {proc.stderr.read().decode()}\n{peer.log()[-3000:]}"
            )
        return outputs

    def stop(self) -> None:
        """Stop every daemon, even when one of them fails to stop (then raise its error
        after the others are down, so no daemon outlives the test)."""
        errors = []
        for daemon in [*self.peers, self.seed, self.scheduler]:
            if daemon.proc is not None and daemon.proc.poll() is None:
                try:
                    daemon.stop()
                except AssertionError as exc:
                    errors.append(exc)
        if errors:
            raise errors[0]


def assert_a_late_peer_is_served_by_the_swarm(cluster, origin, url: str, name: str) -> None:
    """A new peer fetches ``url`` (the origin's ``/name``): the exact bytes, all from
    peers, nothing more from the origin: the holders are known to the scheduler."""
    content = origin.content(name)
    sent = origin.stats(f"/{name}")["bytes_sent"]
    late = cluster.add_peer("late")
    outputs = cluster.fetch_all(url, [late])
    assert sha256(outputs[0]) == hashlib.sha256(content).hexdigest()
    assert origin.stats(f"/{name}")["bytes_sent"] == sent
    from_origin, from_peers, _ = bytes_by_source(late)
    assert from_origin == 0 and from_peers == len(content)


@pytest.fixture
def origin():
    with ThreadedOriginServer() as server:
        yield server


@pytest.fixture
def cluster_factory(tmp_path, origin):
    made = []

    def make(**kwargs) -> Cluster:
        cluster = Cluster(tmp_path, origin, **kwargs)
        made.append(cluster)
        return cluster

    yield make
    for cluster in made:
        cluster.stop()


def test_swarm_serves_the_origin_once(cluster_factory, origin):
    size = 64 * MiB
    url = origin.add_file("swarm.bin", size=size, seed=61)
    cluster = cluster_factory(peers=4)
    outputs = cluster.fetch_all(url)
    expected = hashlib.sha256(origin.content("swarm.bin")).hexdigest()
    assert all(sha256(out) == expected for out in outputs)
    assert origin.stats("/swarm.bin")["bytes_sent"] <= 1.05 * size
    for peer in cluster.peers:
        from_origin, from_peers, _ = bytes_by_source(peer)
        assert from_peers > from_origin, f"{peer.name} got most bytes from the origin"
    seed_origin, _, seed_up = bytes_by_source(cluster.seed)
    assert seed_origin == size and seed_up > 0
    assert "trigger seed" in cluster.scheduler.log()
    # Children follow their parents by subscription (pushed HavePieces), not polling.
    requests = {"Subscribe": 0.0, "GetTaskInfo": 0.0, "GetPiece": 0.0, "pushes": 0.0}
    for daemon in [cluster.seed, *cluster.peers]:
        metrics = daemon.metrics()
        for kind in ("Subscribe", "GetTaskInfo", "GetPiece"):
            requests[kind] += metrics.get(f'd7y_peer_piece_requests_total{{message="{kind}"}}', 0)
        requests["pushes"] += metrics.get("d7y_peer_have_pieces_pushed_total", 0)
    assert requests["Subscribe"] >= len(cluster.peers), requests
    assert requests["pushes"] > 0, requests
    # Polling every 100 ms instead would ask hundreds of times over the download.
    assert requests["GetTaskInfo"] <= 5 * requests["Subscribe"], requests


def test_corrupt_parent_is_caught_and_blocklisted(cluster_factory, origin):
    size = 8 * PIECE
    url = origin.add_file("corrupt.bin", size=size, seed=62)
    cluster = cluster_factory(peers=0)
    liar = cluster.add_peer("liar", testing={"corrupt_uploads": True})
    cluster.fetch_all(url, [liar])  # the liar holds the task (its own copy is fine)
    cluster.seed.stop()  # now the liar is the only peer that can serve it
    honest = [cluster.add_peer(f"honest{i}") for i in range(3)]
    outputs = cluster.fetch_all(url, honest)
    expected = hashlib.sha256(origin.content("corrupt.bin")).hexdigest()
    assert all(sha256(out) == expected for out in outputs)
    logs = "".join(p.log() for p in honest)
    assert "is corrupt: expected crc32:" in logs
    assert "dropping parent" in logs
    assert liar.metrics().get("d7y_peer_upload_bytes_total", 0) > 0
    assert "type=PieceFailed" not in cluster.scheduler.log()  # handled, not refused
    # A child whose only parent was dropped waits for the scheduler: it goes to the origin
    # only when the scheduler sends it there (or its download loop gives up), and says so.
    for peer in honest:
        if bytes_by_source(peer)[0] > 0:
            reason = r"scheduler sends task to source|falling back to the origin"
            assert re.search(reason, peer.log()), peer.log()[-3000:]


def test_parent_killed_mid_transfer(cluster_factory, origin):
    """A peer that holds the task is serving two children when it is killed: the
    children notice the lost parent and finish from the rest of the swarm."""
    size = 8 * PIECE
    url = origin.add_file("killed.bin", size=size, seed=63)
    # Slow uploads keep the children busy long enough to kill the parent in the middle.
    cluster = cluster_factory(peers=0, seed_extra={"upload": {"rate_limit": "16MiB"}})
    victim = cluster.add_peer("victim", upload={"rate_limit": "8MiB"})
    cluster.fetch_all(url, [victim])
    children = [cluster.add_peer(f"child{i}") for i in range(2)]
    procs = [
        child.dfget_popen(url, cluster.work / f"{child.name}.out", "--no-progress")
        for child in children
    ]
    tid = task_id(url)

    def victim_serving_children_mid_download() -> bool:
        if victim.metrics().get("d7y_peer_upload_bytes_total", 0) <= 0:
            return False
        for child in children:
            status, info = child.api("GET", f"/v1/tasks/{tid}")
            if status != 200 or info.get("state") != "running":
                return False
            if info.get("completed_bytes", 0) > size - 2 * PIECE:
                return False
        return True

    wait_for(victim_serving_children_mid_download, "the victim to serve its children")
    victim_id = peer_id_of(victim, tid)
    victim.kill()
    expected = hashlib.sha256(origin.content("killed.bin")).hexdigest()
    for proc, child in zip(procs, children, strict=True):
        assert proc.wait(180) == 0, proc.stderr.read().decode() + child.log()[-2000:]
        assert sha256(cluster.work / f"{child.name}.out") == expected
    # A child lost the victim as a parent and noticed (a failed piece, a dropped parent).
    logs = "".join(child.log() for child in children)
    assert re.search(rf"(dropping parent|piece failed) task={tid} .*parent={victim_id}", logs), (
        logs[-3000:]
    )


def test_scheduler_stopped_then_restarted(cluster_factory, origin):
    size = 6 * PIECE
    first = origin.add_file("first.bin", size=size, seed=64)
    second = origin.add_file("second.bin", size=size, seed=65)
    cluster = cluster_factory(peers=2)
    cluster.scheduler.stop()
    # No scheduler: downloads still finish, from the origin, and the daemon says so.
    outputs = cluster.fetch_all(first)
    expected = hashlib.sha256(origin.content("first.bin")).hexdigest()
    assert all(sha256(out) == expected for out in outputs)
    assert all("back to source" in p.log() for p in cluster.peers)
    # The scheduler comes back on the same port: new downloads use P2P again.
    before_restart = {d.name: scheduler_connections(d) for d in cluster.running_daemons()}
    cluster.scheduler.start()
    cluster.wait_connected(
        cluster.running_daemons(), before_restart
    )  # peers reconnect with backoff and announce
    before = origin.stats("/second.bin")["bytes_sent"]
    outputs = cluster.fetch_all(second)
    expected = hashlib.sha256(origin.content("second.bin")).hexdigest()
    assert all(sha256(out) == expected for out in outputs)
    assert origin.stats("/second.bin")["bytes_sent"] - before <= 1.05 * size


def test_seed_stopped_before_it_finished(cluster_factory, origin):
    size = 12 * PIECE
    url = origin.add_file("seedless.bin", size=size, seed=66)
    origin.set_faults("/seedless.bin", delay={"seconds": 0.3, "count": -1})
    # One piece at a time, each after 0.3 s: the seed needs >= 3.6 s for the task.
    cluster = cluster_factory(peers=2, seed_extra={"download": {"concurrency": 1}})
    procs = [
        p.dfget_popen(url, cluster.work / f"{p.name}.out", "--no-progress") for p in cluster.peers
    ]
    tid = task_id(url)

    def seed_has_some_pieces() -> bool:
        status, info = cluster.seed.api("GET", f"/v1/tasks/{tid}")
        return status == 200 and info.get("completed_bytes", 0) >= PIECE

    wait_for(seed_has_some_pieces, "the seed to store its first piece")
    cluster.seed.kill()
    # The seed had not finished: its stored task is incomplete (read from its metadata).
    meta = MetadataStore(cluster.seed.data_dir / "metadata.db")
    try:
        record = meta.get_task(tid)
        assert record is not None and record.state != "succeeded"
        assert 1 <= len(meta.pieces(tid)) < 12
    finally:
        meta.close()
    expected = hashlib.sha256(origin.content("seedless.bin")).hexdigest()
    for proc, peer in zip(procs, cluster.peers, strict=True):
        assert proc.wait(180) == 0, proc.stderr.read().decode() + peer.log()[-2000:]
        assert sha256(cluster.work / f"{peer.name}.out") == expected


def read_frame_on(sock: socket.socket):
    """(stream id, message) of the next frame."""

    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    header = decode_header(exact(HEADER_LENGTH))
    return header.stream_id, decode_body(header, exact(header.body_length))


def read_frame(sock: socket.socket):
    return read_frame_on(sock)[1]


@pytest.mark.parametrize(
    ("frame", "code", "stream"),
    [
        (b"NO" + bytes(10), "protocol_error", 0),
        (struct.pack(">2sBBII", MAGIC, 1, 0x31, 7, 0x7FFFFFFF), "frame_too_large", 7),
        (struct.pack(">2sBBII", MAGIC, 1, 0x31, 9, 3) + b"\x81\xa1a", "bad_request", 9),
    ],
    ids=["bad-magic", "oversized", "malformed-register"],
)
def test_scheduler_survives_bad_frames(tmp_path, frame, code, stream):
    with SchedulerProcess(tmp_path) as scheduler:
        with socket.create_connection(("127.0.0.1", scheduler.port), timeout=5) as s:
            s.sendall(frame)
            # The error answers on the frame's stream; on stream 0 (the connection) when
            # the header was too broken to name one.
            stream_id, error = read_frame_on(s)
            assert isinstance(error, Error) and error.code == code
            assert stream_id == stream
        with socket.create_connection(("127.0.0.1", scheduler.port), timeout=5) as s:
            s.sendall(encode_frame(Ping(nonce=3)))  # a truncated frame next
            assert read_frame(s) == Pong(nonce=3)
            s.sendall(encode_frame(Ping(nonce=4))[:5])
        with socket.create_connection(("127.0.0.1", scheduler.port), timeout=5) as s:
            s.sendall(encode_frame(Ping(nonce=5)))
            assert read_frame(s) == Pong(nonce=5)


def test_restarted_scheduler_learns_what_the_seed_already_holds(cluster_factory, origin):
    size = 4 * PIECE
    url = origin.add_file("held.bin", size=size, seed=67)
    cluster = cluster_factory(peers=1)
    cluster.fetch_all(url)  # the seed fetched it from the origin and still holds it
    sent = origin.stats("/held.bin")["bytes_sent"]
    cluster.restart_scheduler()  # a new scheduler knows no peers
    for daemon in (cluster.seed, cluster.peers[0]):  # until both told it what they hold
        wait_for(
            lambda d=daemon: "restored held tasks with the scheduler count=1" in d.log(),
            f"{daemon.name} to restore its held task",
        )
    late = cluster.add_peer("late")
    outputs = cluster.fetch_all(url, [late])
    assert sha256(outputs[0]) == hashlib.sha256(origin.content("held.bin")).hexdigest()
    assert origin.stats("/held.bin")["bytes_sent"] == sent  # served by the stored copies
    # Both holders re-announced the task when they reconnected to the new scheduler.
    assert "restored held tasks with the scheduler count=1" in cluster.seed.log()
    assert "restored held tasks with the scheduler count=1" in cluster.peers[0].log()
    for daemon in (cluster.seed, cluster.peers[0]):  # and the scheduler took it
        assert "scheduler error" not in daemon.log(), daemon.log()[-3000:]
    from_origin, from_peers, _ = bytes_by_source(late)
    assert from_origin == 0 and from_peers == size


def test_stdout_download_over_p2p_streams_in_order(cluster_factory, origin):
    url = origin.add_file("stream.bin", size=6 * PIECE + 5, seed=68)
    cluster = cluster_factory(peers=1)
    cluster.fetch_all(url, [cluster.seed])  # the seed holds it
    late = cluster.add_peer("reader")
    result = late.dfget(url, "-")
    assert result.returncode == 0, result.stderr.decode() + late.log()[-2000:]
    assert result.stdout == origin.content("stream.bin")
    from_origin, from_peers, _ = bytes_by_source(late)
    assert from_origin == 0 and from_peers == 6 * PIECE + 5


@pytest.mark.parametrize("size", [100, MiB + 7])
def test_tiny_and_one_piece_tasks_come_from_the_swarm(cluster_factory, origin, size):
    """A task of at most 128 B is answered inline by the scheduler (TinyTask); a
    one-piece task is served by one parent (SmallTask). Either way the later peers do
    not touch the origin and get the exact bytes."""
    url = origin.add_file("small.bin", size=size, seed=63)
    cluster = cluster_factory(peers=3)
    first, *rest = cluster.peers
    cluster.fetch_all(url, [first])
    outputs = cluster.fetch_all(url, rest)
    expected = hashlib.sha256(origin.content("small.bin")).hexdigest()
    assert all(sha256(out) == expected for out in outputs)
    # once, by the seed (after its 1-byte Range probe)
    assert origin.stats("/small.bin")["bytes_sent"] == size + 1
    kind = "TinyTask" if size <= 128 else "SmallTask"
    decisions = cluster.scheduler.metrics()
    assert decisions.get(f'd7y_scheduler_decisions_total{{kind="{kind}"}}', 0) >= len(rest), (
        decisions
    )
    for peer in rest:
        from_origin, from_peers, _ = bytes_by_source(peer)
        assert from_origin == 0
        assert from_peers == (0 if size <= 128 else size)


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_download_that_outlives_its_scheduler_is_announced_to_the_new_one(
    cluster_factory, origin, how
):
    """The scheduler restarts (stopped, or killed with SIGKILL: no goodbye on any
    connection) while downloads run: the peer's from its parent (the
    seed), the seed's from the origin. Both go on and, once the new scheduler is up,
    continue on a new stream opened with RestorePeer (the pieces held so far), so their
    reports and DownloadFinished reach the new scheduler, which then sends later peers
    to them instead of to the origin."""
    size = 10 * PIECE
    url = origin.add_file("outlive.bin", size=size, seed=68)
    # The seed fetches one piece at a time, each after 0.3 s: the download takes >= 3 s.
    origin.set_faults("/outlive.bin", delay={"seconds": 0.3, "count": -1})
    cluster = cluster_factory(peers=1, seed_extra={"download": {"concurrency": 1}})
    peer = cluster.peers[0]
    proc = peer.dfget_popen(url, cluster.work / "first.out", "--no-progress")
    tid = task_id(url)

    def holds_a_piece(daemon: PeerProcess) -> bool:
        status, info = daemon.api("GET", f"/v1/tasks/{tid}")
        return status == 200 and info.get("completed_bytes", 0) >= PIECE

    # Both downloads are under way (and know the length, which a restore needs).
    wait_for(lambda: holds_a_piece(peer), "the peer to store a piece from the seed")
    # From here the origin holds every answer, so the downloads cannot finish before the
    # new scheduler has taken them (on a loaded machine its start may outlast them).
    origin.set_faults("/outlive.bin", hold={"count": -1})
    cluster.scheduler.stop(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
    cluster.scheduler.start()  # knows nothing of the running download
    for daemon in (peer, cluster.seed):
        wait_for(
            lambda d=daemon: "restored a running download with the scheduler" in d.log(),
            f"{daemon.name} to restore its running download with the new scheduler",
        )
    origin.set_faults("/outlive.bin", hold=None)
    assert proc.wait(180) == 0, proc.stderr.read().decode() + peer.log()[-3000:]
    expected = hashlib.sha256(origin.content("outlive.bin")).hexdigest()
    assert sha256(cluster.work / "first.out") == expected
    for daemon in (peer, cluster.seed):  # the new scheduler took both
        assert "restored a running download with the scheduler" in daemon.log(), daemon.log()[
            -3000:
        ]
        assert "scheduler error" not in daemon.log(), daemon.log()[-3000:]
        assert "scheduler refused a report" not in daemon.log(), daemon.log()[-3000:]
    origin.set_faults("/outlive.bin", clear=True)  # no more delay
    # The seed may still be fetching its last pieces (its held requests timed out and
    # are retried): the late peer's check counts origin bytes from here on.
    wait_for(
        lambda: cluster.seed.api("GET", f"/v1/tasks/{tid}")[1].get("state") == "succeeded",
        "the seed to finish the task",
    )
    assert_a_late_peer_is_served_by_the_swarm(cluster, origin, url, "outlive.bin")


def test_an_idle_download_asks_for_digests_ahead_of_need(cluster_factory, origin):
    """A peer that holds every piece its parent (the seed) has, and waits for more, asks
    the scheduler for the digests it lacks about once a second: when the parent
    announces its next piece the digest is known already, instead of the piece being
    held back for a round trip to the scheduler at every hop of a relay chain. Without
    the prefetch nobody asks while nothing is held back, and the count stands still."""
    size = 10 * PIECE
    url = origin.add_file("prefetch.bin", size=size, seed=69)
    origin.set_faults("/prefetch.bin", delay={"seconds": 0.3, "count": -1})
    cluster = cluster_factory(peers=0, seed_extra={"download": {"concurrency": 1}})
    # A peer that waits for its parent rather than stalling to the origin after 3 s.
    peer = cluster.add_peer("peer0", scheduler={"stall_timeout": "120s"})
    proc = peer.dfget_popen(url, cluster.work / "prefetch.out", "--no-progress")
    tid = task_id(url)

    def completed(daemon: PeerProcess) -> int:
        status, info = daemon.api("GET", f"/v1/tasks/{tid}")
        return info.get("completed_bytes", 0) if status == 200 else 0

    wait_for(lambda: completed(peer) >= PIECE, "the peer to store a piece from the seed")
    # The origin now holds every answer: the seed gets nothing more, and the peer, once
    # it holds what the seed holds, waits with nothing to ask for.
    origin.set_faults("/prefetch.bin", hold={"count": -1})
    wait_for(
        lambda: completed(peer) >= completed(cluster.seed) >= PIECE,
        "the peer to hold every piece the seed holds",
    )

    def asked() -> float:
        return cluster.scheduler.metrics().get("d7y_scheduler_digest_requests_total", 0.0)

    before = asked()
    wait_for(lambda: asked() >= before + 3, "the waiting peer to ask for digests again")
    origin.set_faults("/prefetch.bin", clear=True)
    assert proc.wait(180) == 0, proc.stderr.read().decode() + peer.log()[-3000:]
    expected = hashlib.sha256(origin.content("prefetch.bin")).hexdigest()
    assert sha256(cluster.work / "prefetch.out") == expected


def test_download_started_without_a_scheduler_is_announced_when_one_appears(
    cluster_factory, origin
):
    """No scheduler when the download starts (so it goes to the origin without a
    stream); the scheduler comes up meanwhile. The finished task is announced to it
    with RestorePeer, so later peers are sent here, not to the origin."""
    size = 10 * PIECE
    url = origin.add_file("early.bin", size=size, seed=69)
    origin.set_faults("/early.bin", delay={"seconds": 0.3, "count": -1})
    cluster = cluster_factory(peers=0)
    cluster.scheduler.stop()
    peer = cluster.add_peer("early", download={"concurrency": 1})
    proc = peer.dfget_popen(url, cluster.work / "early.out", "--no-progress")
    wait_for(lambda: origin.stats("/early.bin")["requests"] >= 3, "the download to start")
    cluster.scheduler.start()
    assert proc.wait(180) == 0, proc.stderr.read().decode() + peer.log()[-3000:]
    expected = hashlib.sha256(origin.content("early.bin")).hexdigest()
    assert sha256(cluster.work / "early.out") == expected
    log = peer.log()
    assert "announced a task that finished without a scheduler stream" in log, log[-3000:]
    assert "scheduler error" not in log, log[-3000:]
    origin.set_faults("/early.bin", clear=True)
    assert_a_late_peer_is_served_by_the_swarm(cluster, origin, url, "early.bin")


def test_scheduler_answers_a_restored_running_peer_on_its_new_stream(tmp_path):
    """RestorePeer on a download stream makes that stream the peer's route: a
    Reschedule sent there is answered there (here: back to source, no other peer)."""
    with (
        SchedulerProcess(tmp_path) as scheduler,
        socket.create_connection(("127.0.0.1", scheduler.port), timeout=15) as s,
    ):
        s.sendall(
            encode_frame(
                AnnounceHost(host_id="h1", ip="127.0.0.1", hostname="h1", port=1, download_port=2)
            )
        )
        restore = RestorePeer(
            peer_id="p1",
            task_id=task_id("http://origin.invalid/a"),
            host_id="h1",
            url="http://origin.invalid/a",
            content_length=2 * PIECE,
            piece_length=PIECE,
            bitmap=b"\x80",  # piece 0 held
        )
        s.sendall(encode_frame(restore, 5))
        s.sendall(encode_frame(Reschedule(peer_id="p1", task_id=restore.task_id), 5))
        stream, answer = read_frame_on(s)
        assert stream == 5
        assert isinstance(answer, NeedBackToSource), answer
        assert answer.task_id == restore.task_id


def test_scheduler_address_from_the_environment(cluster_factory, origin):
    """A peer whose YAML names no scheduler joins the one in
    D7Y_DFDAEMON_SCHEDULER__ADDRESS: with --disable-back-to-source (and a priority) it
    gets the task from the seed, which it could not do alone (exit 8, no source)."""
    size = 3 * PIECE + 11
    url = origin.add_file("env.bin", size=size, seed=70)
    cluster = cluster_factory(peers=0)
    cluster.fetch_all(url, [cluster.seed])  # the seed holds it
    sent = origin.stats("/env.bin")["bytes_sent"]
    peer = PeerProcess(cluster.work, "envpeer", host={"hostname": "envpeer"})
    assert "scheduler" not in peer.config
    peer.env = {"D7Y_DFDAEMON_SCHEDULER__ADDRESS": cluster.scheduler.address}
    cluster.peers.append(peer.start())
    cluster.wait_connected([peer], {})
    out = cluster.work / "env.out"
    result = peer.dfget(url, out, "--disable-back-to-source", "--priority", "6", "--no-progress")
    assert result.returncode == 0, result.stderr.decode() + peer.log()[-3000:]
    assert sha256(out) == hashlib.sha256(origin.content("env.bin")).hexdigest()
    assert origin.stats("/env.bin")["bytes_sent"] == sent
    from_origin, from_peers, _ = bytes_by_source(peer)
    assert from_origin == 0 and from_peers == size
