"""Both scheduling policies through the real daemons (issue 9): a scheduler and
dfdaemons started as processes with ``scheduling.policy`` / ``download.policy``, a real
HTTP origin, dfget on every peer at once.

The simulator runs the same core code; these tests show the daemons take the policy
from their config and that its rules hold on real sockets.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from d7y.core.pieces import MiB
from tests.origin_server import ThreadedOriginServer
from tests.peer_harness import PeerProcess, SchedulerProcess, peer_config


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def uploaded(peer: PeerProcess) -> float:
    return peer.metrics().get("d7y_peer_upload_bytes_total", 0.0)


def wait_connected(scheduler: SchedulerProcess, count: int, timeout: float = 30.0) -> None:
    """Until ``count`` daemons hold a connection to the scheduler (they announce on it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if scheduler.metrics().get("d7y_scheduler_connections", 0.0) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} daemons connected to the scheduler")


@pytest.fixture
def origin():
    with ThreadedOriginServer() as server:
        yield server


def swarm(tmp_path: Path, policy: str, peers: int, seed_extra: dict | None = None):
    scheduler = SchedulerProcess(tmp_path, scheduling={"policy": policy}).start()
    started = [scheduler]
    try:
        seed = PeerProcess(
            tmp_path,
            "seed",
            **peer_config(
                scheduler, "seed", seed=True, download={"policy": policy}, **(seed_extra or {})
            ),
        ).start()
        started.append(seed)
        children = []
        for i in range(peers):
            peer = PeerProcess(
                tmp_path,
                f"peer{i}",
                **peer_config(scheduler, f"peer{i}", download={"policy": policy}),
            ).start()
            started.append(peer)
            children.append(peer)
        wait_connected(scheduler, peers + 1)
        return scheduler, seed, children, started
    except BaseException:
        for process in reversed(started):
            process.stop()
        raise


def fetch_all(tmp_path: Path, peers: list[PeerProcess], url: str) -> list[Path]:
    outputs = [tmp_path / f"{p.name}.out" for p in peers]
    procs = [
        p.dfget_popen(url, out, "--no-progress") for p, out in zip(peers, outputs, strict=True)
    ]
    for proc, peer in zip(procs, peers, strict=True):
        assert proc.wait(180) == 0, (
            f"{peer.name}: {proc.stderr.read().decode()}\n{peer.log()[-3000:]}"
        )
    return outputs


@pytest.mark.parametrize("policy", ["d7y", "dragonfly"])
def test_each_policy_runs_in_the_daemons_and_serves_the_origin_once(tmp_path, origin, policy):
    size = 32 * MiB
    url = origin.add_file("f.bin", size=size, seed=91)
    scheduler, seed, peers, started = swarm(tmp_path, policy, peers=3)
    try:
        assert f"policy={policy}" in scheduler.log()
        assert all(f"download_policy={policy}" in p.log() for p in [seed, *peers])
        outputs = fetch_all(tmp_path, peers, url)
        expected = hashlib.sha256(origin.content("f.bin")).hexdigest()
        assert all(sha256(out) == expected for out in outputs)
        assert origin.stats("/f.bin")["bytes_sent"] <= 1.05 * size
    finally:
        for process in reversed(started):
            process.stop()


def test_d7y_gives_a_capped_seed_one_child_that_relays(tmp_path, origin):
    """A seed whose upload is capped (8 MiB/s) with fast children: d7y gives it about
    as many children as its upload feeds at their speed (one), which relay to the
    others, so the seed sends about one copy; without that, each child takes a share of
    the seed (Dragonfly's rules: 2.6 copies in the loopback bench, bench/RESULTS.md)."""
    size = 32 * MiB
    url = origin.add_file("capped.bin", size=size, seed=92)
    cap = {"upload": {"rate_limit": "8MiB"}}
    _scheduler, seed, peers, started = swarm(tmp_path, "d7y", peers=3, seed_extra=cap)
    try:
        outputs = fetch_all(tmp_path, peers, url)
        expected = hashlib.sha256(origin.content("capped.bin")).hexdigest()
        assert all(sha256(out) == expected for out in outputs)
        assert origin.stats("/capped.bin")["bytes_sent"] <= 1.05 * size
        assert uploaded(seed) <= 1.5 * size, uploaded(seed) / size
        assert sum(uploaded(p) for p in peers) >= 1.5 * size  # the children relayed
    finally:
        for process in reversed(started):
            process.stop()
