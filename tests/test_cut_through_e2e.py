"""Cut-through relaying between real daemons (``download.cut_through``): a peer serves a
piece while it is still receiving it, and a relay whose own transfer fails breaks off
without any child storing a wrong byte (docs/protocol.md, section 4.1)."""

from __future__ import annotations

import hashlib
import re

import pytest

from d7y.core.ids import task_id
from d7y.core.pieces import MiB
from tests.origin_server import ThreadedOriginServer
from tests.peer_harness import PeerProcess, wait_for
from tests.test_p2p_e2e import Cluster, bytes_by_source, peer_id_of, sha256

PIECE = 4 * MiB
#: The relays: cut-through on, and no fallback to the origin while a parent is slow.
RELAY = {"download": {"cut_through": True}, "scheduler": {"stall_timeout": "120s"}}


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


def metric(daemon: PeerProcess, name: str) -> float:
    return daemon.metrics().get(name, 0.0)


def slow_seed(rate: str) -> dict:
    # Paced a chunk at a time, like a link: a child receives each piece over a while.
    return {"upload": {"rate_limit": rate, "rate_chunk": "256KiB"}}


def test_a_child_is_served_a_piece_its_parent_is_still_receiving(cluster_factory, origin):
    """A seed with a slow upload holds the task; two peers fetch it together. While the
    seed serves one of them a piece slowly, the other is served that piece by the first,
    as it lands there. Every output verifies and the origin served the task once."""
    size = 8 * PIECE
    url = origin.add_file("relay.bin", size=size, seed=71)
    cluster = cluster_factory(peers=0, seed_extra=slow_seed("8MiB"))
    cluster.fetch_all(url, [cluster.seed])
    peers = [cluster.add_peer(f"relay{i}", **RELAY) for i in range(2)]
    outputs = cluster.fetch_all(url, peers)
    expected = hashlib.sha256(origin.content("relay.bin")).hexdigest()
    assert [sha256(out) for out in outputs] == [expected] * 2
    assert origin.stats("/relay.bin")["bytes_sent"] <= 1.05 * size
    relayed = {p.name: metric(p, "d7y_peer_relayed_pieces_total") for p in peers}
    assert sum(relayed.values()) > 0, relayed
    relay = next(p for p in peers if relayed[p.name] > 0)
    assert "relaying a piece being received" in relay.log()
    logs = "".join(p.log() for p in peers)
    assert "is corrupt" not in logs
    for peer in peers:
        assert bytes_by_source(peer)[0] == 0  # nothing from the origin


def test_a_relay_that_loses_its_own_parent_breaks_off_and_the_child_recovers(
    cluster_factory, origin
):
    """The seed is killed while a peer relays a piece it is receiving from it: the relay
    cuts its child off mid-piece, the child hears the piece is lost, and both finish with
    exact bytes (from the origin, once nobody holds the rest)."""
    size = 8 * PIECE
    url = origin.add_file("lost.bin", size=size, seed=72)
    cluster = cluster_factory(peers=0, seed_extra=slow_seed("2MiB"))
    cluster.fetch_all(url, [cluster.seed])
    # A short stall timeout: once the seed is gone, the missing pieces come from the origin.
    peers = [
        cluster.add_peer(
            f"relay{i}", download={"cut_through": True}, scheduler={"stall_timeout": "3s"}
        )
        for i in range(2)
    ]
    procs = [p.dfget_popen(url, cluster.work / f"{p.name}.out", "--no-progress") for p in peers]
    wait_for(
        lambda: any(metric(p, "d7y_peer_active_relays") >= 1 for p in peers),
        "a peer to relay a piece it is receiving",
        timeout=120,
    )
    cluster.seed.kill()
    expected = hashlib.sha256(origin.content("lost.bin")).hexdigest()
    for proc, peer in zip(procs, peers, strict=True):
        assert proc.wait(180) == 0, proc.stderr.read().decode() + peer.log()[-3000:]
        assert sha256(cluster.work / f"{peer.name}.out") == expected
    aborted = {p.name: metric(p, "d7y_peer_relays_aborted_total") for p in peers}
    assert sum(aborted.values()) >= 1, aborted
    relay = next(p for p in peers if aborted[p.name] > 0)
    child = next(p for p in peers if p is not relay)
    tid = task_id(url)
    relay_id = peer_id_of(relay, tid)
    # The child saw the piece lost (the broken-off payload or the relay's news), and did
    # not take it for a failure of the relay.
    news = r"(relayed piece broke off|parent no longer receives a piece)"
    lost = rf"{news} task={tid} .*parent={relay_id}"
    assert re.search(lost, child.log()), child.log()[-3000:]
    assert not re.search(rf"piece failed task={tid} .*parent={relay_id}", child.log())
    logs = "".join(p.log() for p in peers)
    assert "is corrupt" not in logs
