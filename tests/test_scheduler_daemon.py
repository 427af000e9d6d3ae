"""The scheduler daemon's configuration takes effect: ``scheduling.*`` keys from the
YAML file and from ``D7Y_SCHEDULER_*`` environment overrides change the parents it
hands out, seen from a protocol client on loopback (real ``d7y scheduler`` process)."""

from __future__ import annotations

import socket
from collections import Counter

import pytest

from d7y.core.ids import task_id
from d7y.core.messages import (
    AnnounceHost,
    DownloadFinished,
    DownloadStarted,
    Error,
    GetTaskDigests,
    NeedBackToSource,
    NormalTaskResponse,
    PieceFailed,
    PieceFinished,
    Ping,
    Pong,
    RegisterPeer,
    RestorePeer,
    TaskDigests,
)
from d7y.core.pieces import MiB
from d7y.core.protocol import encode_frame
from tests.peer_harness import SchedulerProcess
from tests.test_p2p_e2e import read_frame_on

PIECE = 4 * MiB
URL = "http://origin.invalid/algorithm.bin"
TASK = task_id(URL)
GBIT = 1_000_000_000

# Parents that every policy ranks differently. Children live in IDC "home", rack
# "home|r1", with no upload capacity.
#   fast : another IDC, 100 Gbit/s idle    load_aware: 0.6*1 + 0.1*0.5       = 0.65 (best)
#   near : same IDC and rack, no capacity  load_aware: 0.2 + 0.1*2/5 + 0.05  = 0.29
#                                          base: + 0.15 idc + 0.15 location  (best)
#   far1-4: another IDC, no capacity       load_aware: 0.05; base: below near
PARENTS = {
    "fast": dict(idc="far", location="far|r9", max_tx_bandwidth_bps=100 * GBIT),
    "near": dict(idc="home", location="home|r1"),
    **{f"far{i}": dict(idc="far", location=f"far|r{i}") for i in range(1, 5)},
}
CHILD_HOST = dict(idc="home", location="home|r1")
BEST = {"load_aware": "fast", "base": "near"}


class Client:
    """One host's connection to the scheduler."""

    def __init__(self, scheduler: SchedulerProcess, host_id: str, **host) -> None:
        self.host_id = host_id
        self.sock = socket.create_connection(("127.0.0.1", scheduler.port), timeout=15)
        self.send(
            AnnounceHost(
                host_id=host_id, ip="127.0.0.1", hostname=host_id, port=1, download_port=2, **host
            )
        )

    def send(self, message, stream: int = 0) -> None:
        self.sock.sendall(encode_frame(message, stream))

    def close(self) -> None:
        self.sock.close()


def offer_parents(scheduler: SchedulerProcess) -> list[Client]:
    """Every parent holds the whole 8-piece task (restored as succeeded)."""
    clients = []
    for name, host in PARENTS.items():
        client = Client(scheduler, f"host-{name}", **host)
        client.send(
            RestorePeer(
                peer_id=f"peer-{name}",
                task_id=TASK,
                host_id=client.host_id,
                url=URL,
                content_length=8 * PIECE,
                piece_length=PIECE,
                succeeded=True,
            )
        )
        clients.append(client)
    return clients


def parents_for_children(scheduler: SchedulerProcess, count: int) -> list[list[str]]:
    """Register ``count`` children one after the other; the parents each is given, as
    parent names (the PARENTS keys, or 'child<N>' for an earlier child)."""
    answers = []
    clients = offer_parents(scheduler)
    try:
        for i in range(count):
            child = Client(scheduler, f"host-child{i}", **CHILD_HOST)
            clients.append(child)
            register = RegisterPeer(
                peer_id=f"peer-child{i}", task_id=TASK, host_id=child.host_id, url=URL
            )
            child.send(register, stream=1)
            stream, answer = read_frame_on(child.sock)
            assert stream == 1 and isinstance(answer, NormalTaskResponse), answer
            answers.append([p.host_id.removeprefix("host-") for p in answer.candidate_parents])
    finally:
        for client in clients:
            client.close()
    return answers


def scheduling(**keys) -> dict:
    # Dragonfly's rules: the evaluator alone ranks (d7y also weighs capacity and nearness).
    return {"scheduling": {"policy": "dragonfly", "candidate_parent_limit": 1, "seed": 8, **keys}}


@pytest.mark.parametrize("algorithm", ["load_aware", "base"])
def test_algorithm_from_the_config_file_picks_its_parents(tmp_path, algorithm):
    with SchedulerProcess(tmp_path, **scheduling(algorithm=algorithm)) as scheduler:
        answers = parents_for_children(scheduler, 4)
    assert answers == [[BEST[algorithm]]] * 4, answers
    assert f"algorithm={algorithm}" in scheduler.log()


def test_random_algorithm_from_the_config_file_spreads_children(tmp_path):
    with SchedulerProcess(tmp_path, **scheduling(algorithm="random")) as scheduler:
        answers = parents_for_children(scheduler, 6)
    chosen = Counter(parents[0] for parents in answers)
    # Neither ranking: the children are spread, not all sent to one best parent.
    assert len(chosen) >= 3, answers


def test_environment_overrides_the_config_file(tmp_path):
    scheduler = SchedulerProcess(tmp_path, **scheduling(algorithm="load_aware"))
    scheduler.env = {
        "D7Y_SCHEDULER_SCHEDULING__ALGORITHM": "base",
        "D7Y_SCHEDULER_SCHEDULING__CANDIDATE_PARENT_LIMIT": "2",
    }
    with scheduler:
        answers = parents_for_children(scheduler, 5)
    assert all(len(parents) == 2 for parents in answers), answers
    assert all(parents[0] == BEST["base"] for parents in answers), answers
    assert "algorithm=base" in scheduler.log()


def test_a_bad_scheduling_key_in_the_environment_is_named(tmp_path):
    scheduler = SchedulerProcess(tmp_path)
    scheduler.env = {"D7Y_SCHEDULER_SCHEDULING__ALGORITHM": "fastest"}
    with pytest.raises(RuntimeError, match="exited early") as excinfo:
        scheduler.start(timeout=20)
    assert "scheduling.algorithm" in str(excinfo.value)
    assert "fastest" in str(excinfo.value)


@pytest.mark.parametrize("bad_report", ["finished-twice", "piece-out-of-range"])
def test_a_report_that_does_not_fit_is_refused_and_the_connection_stays(tmp_path, bad_report):
    """A duplicate DownloadFinished or a piece number past the task's end is answered
    with an Error on its stream; the host's connection (and its other downloads) stays."""
    url = "http://origin.invalid/bad-report.bin"
    tid = task_id(url)
    with SchedulerProcess(tmp_path) as scheduler:
        client = Client(scheduler, "host-a")
        try:
            client.send(RegisterPeer(peer_id="peer-a", task_id=tid, host_id="host-a", url=url), 1)
            assert isinstance(read_frame_on(client.sock)[1], NeedBackToSource)
            started = DownloadStarted(
                peer_id="peer-a", task_id=tid, back_to_source=True,
                content_length=PIECE, piece_length=PIECE,
            )  # fmt: skip
            client.send(started, 1)
            finished = DownloadFinished(
                peer_id="peer-a", task_id=tid, content_length=PIECE, piece_count=1
            )
            if bad_report == "finished-twice":
                client.send(finished, 1)
                client.send(finished, 1)
            else:
                client.send(
                    PieceFinished(
                        peer_id="peer-a", task_id=tid, number=5, cost_ns=1, length=1,
                        digest="crc32:1",
                    ),
                    1,
                )  # fmt: skip
            stream, error = read_frame_on(client.sock)
            assert stream == 1 and isinstance(error, Error), error
            assert error.code == "bad_request"
            client.send(Ping(nonce=9))
            assert read_frame_on(client.sock) == (0, Pong(nonce=9))
        finally:
            client.close()
    assert "connection crashed" not in scheduler.log()


def test_a_failed_piece_from_the_only_parent_gets_the_child_a_new_answer(tmp_path):
    """The child blocklists its only parent after a failed piece: the scheduler
    reschedules it on its own and answers on the child's stream (back to source here:
    no other parent), and stops cleanly afterwards."""
    keys = scheduling(algorithm="load_aware")
    keys["scheduling"].update(retry_interval="10ms", retry_back_to_source_limit=1)
    scheduler = SchedulerProcess(tmp_path, **keys).start()
    parent = Client(scheduler, "host-parent")
    child = Client(scheduler, "host-child", **CHILD_HOST)
    try:
        parent.send(
            RestorePeer(
                peer_id="peer-parent", task_id=TASK, host_id="host-parent", url=URL,
                content_length=8 * PIECE, piece_length=PIECE, succeeded=True,
            )
        )  # fmt: skip
        child.send(
            RegisterPeer(peer_id="peer-child", task_id=TASK, host_id="host-child", url=URL), 1
        )
        _stream, answer = read_frame_on(child.sock)
        assert isinstance(answer, NormalTaskResponse), answer
        assert [p.peer_id for p in answer.candidate_parents] == ["peer-parent"]
        child.send(DownloadStarted(peer_id="peer-child", task_id=TASK), 1)
        child.send(
            PieceFailed(peer_id="peer-child", task_id=TASK, number=0, parent_id="peer-parent"), 1
        )
        stream, again = read_frame_on(child.sock)
        assert stream == 1 and isinstance(again, NeedBackToSource), again
        # What the scheduler knows of a task whose length nobody reported yet: unknown.
        child.send(RegisterPeer(peer_id="peer-new", task_id="b" * 64, host_id="host-child",
                                url=URL + "?other"), 3)  # fmt: skip
        read_frame_on(child.sock)
        child.send(GetTaskDigests(peer_id="peer-new", task_id="b" * 64), 5)
        stream, digests = read_frame_on(child.sock)
        assert stream == 5 and isinstance(digests, TaskDigests), digests
        assert (digests.content_length, digests.piece_count) == (-1, -1)
    finally:
        parent.close()
        child.close()
    assert scheduler.stop() == 0
    assert "scheduler stopped" in scheduler.log()
