"""Scheduler core benchmarks: decisions/s and piece reports/s for a task with 1,000 peers.

Run:  .venv/bin/python -m pytest bench/test_bench_scheduling.py --benchmark-only -s

Targets (issue 4, one core, no network): >= 5,000 register+schedule decisions/s and
>= 50,000 piece reports/s. The swarm: one 10 GiB task (320 pieces of 32 MiB), a seed peer
fetching it from the origin and 999 normal peers, each RUNNING with up to 3 parents and
1-20 pieces -- a flash crowd in full swing, every peer a possible parent, the DAG dense.

Workloads:
- register: a new peer on a new host registers; the answer is one full scheduling round
  (sample 15, filter, rank, reserve 3 edges). The batch's peers leave between rounds
  (untimed), so every round sees the same 1,000-peer task.
- reschedule (dense DAG): a running peer is rescheduled: its 3 in-edges go, 15 are
  sampled, and because it already has children the cycle filter walks its descendants
  (about 800 of the 1,000 peers in this swarm) -- the worst case of a round.
- piece reports: ``piece_finished`` from a parent, random peers and pieces.

Anchors, measured in the same run (the floor of any Python implementation):
- decision anchor: ``rng.sample`` of 15 from 1,000, 15 float products, a sort, the top 3;
- report anchor: a dict lookup, ``Bitmap.set`` and a ``deque.append``.
The module prints one line per workload: absolute rate, ratio to the target, ratio of
the time per operation to its anchor.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque

import pytest

from d7y.core.scheduling import NeedBackToSource, NormalTask, Scheduler, SchedulerConfig
from d7y.ext.bitmap import Bitmap

GIB = 1024**3
PEERS = 1000
PIECES = 320  # 10 GiB in 32 MiB pieces
BATCH = 1000  # decisions per round
REPORTS = 50_000  # piece reports per round
DECISION_TARGET = 5_000.0
REPORT_TARGET = 50_000.0

# workload -> seconds per operation (median round / operations per round)
RESULTS: dict[str, float] = {}


def build_swarm(seed: int = 1) -> tuple[Scheduler, list[str]]:
    s = Scheduler(SchedulerConfig(), rng=random.Random(seed))
    s.announce_host(
        "seed", 0, ip="10.255.0.1", hostname="seed", type="seed", upload_limit_bps=10**10
    )
    for i in range(PEERS + 20 * BATCH):
        s.announce_host(
            f"h{i}",
            0,
            ip=f"10.{i // 250}.{i % 250}.1",
            hostname=f"h{i}",
            idc=f"idc{i % 4}",
            location=f"cn|r{i % 8}|k{i % 3}",
            upload_limit_bps=10**9,
        )
    s.register_peer("seed-peer", "t", "seed", "http://origin/f", 0, content_length=10 * GIB)
    s.download_started("seed-peer", 0, back_to_source=True)
    for k in range(50):
        s.piece_finished("seed-peer", k, None, 0.05, f"crc32:{k}", 0)
    rng = random.Random(seed + 1)
    running = []
    for i in range(PEERS - 1):
        pid = f"p{i}"
        result = s.register_peer(pid, "t", f"h{i}", "http://origin/f", 0)
        if isinstance(result, NormalTask):
            s.download_started(pid, 0)
            parent = result.parents[0].peer_id
            for _ in range(rng.randrange(1, 20)):
                s.piece_finished(
                    pid, rng.randrange(PIECES), parent, 0.05 + rng.random() / 100, None, 0
                )
            running.append(pid)
        else:
            assert isinstance(result, NeedBackToSource), result
    assert len(s.task("t").peers) == PEERS
    return s, running


@pytest.fixture(scope="module")
def swarm() -> tuple[Scheduler, list[str]]:
    return build_swarm()


def record(benchmark, workload: str, per_round: int) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        RESULTS[workload] = stats.stats.median / per_round


def test_register_decisions(benchmark, swarm):
    s, _ = swarm
    benchmark.group = "scheduler decisions, task of 1,000 peers"
    counter = iter(range(10**9))
    batch: list[str] = []

    def setup():
        for pid in batch:
            s.leave_peer(pid, 1.0)
        batch.clear()
        n = next(counter)
        hosts = [f"h{PEERS + (n % 20) * BATCH + j}" for j in range(BATCH)]
        return (n, hosts), {}

    def run(n, hosts):
        register = s.register_peer
        for j, host in enumerate(hosts):
            pid = f"new-{n}-{j}"
            register(pid, "t", host, "http://origin/f", 1.0)
            batch.append(pid)

    benchmark.pedantic(run, setup=setup, rounds=8, iterations=1)
    record(benchmark, "register (decision)", BATCH)
    assert len(s.task("t").peers) == PEERS + BATCH
    for pid in batch:
        s.leave_peer(pid, 1.0)
    s.verify_invariants()


def test_reschedule_decisions_dense_dag(benchmark, swarm):
    s, running = swarm
    benchmark.group = "scheduler decisions, task of 1,000 peers"
    rng = random.Random(9)
    order = [running[rng.randrange(len(running))] for _ in range(BATCH)]

    def run():
        reschedule = s.reschedule
        for pid in order:
            reschedule(pid, (), 2.0)

    benchmark.pedantic(run, rounds=5, iterations=1)
    record(benchmark, "reschedule, dense DAG (decision)", BATCH)
    s.verify_invariants()


def test_piece_reports(benchmark, swarm):
    s, running = swarm
    benchmark.group = "piece reports"
    rng = random.Random(5)
    parents = [p.id for p in s.task("t").servable.items]
    reports = [
        (
            running[rng.randrange(len(running))],
            rng.randrange(PIECES),
            parents[rng.randrange(len(parents))],
        )
        for _ in range(REPORTS)
    ]

    def run():
        finished = s.piece_finished
        for pid, number, parent in reports:
            finished(pid, number, parent, 0.05, None, 3.0)

    benchmark.pedantic(run, rounds=5, iterations=1)
    record(benchmark, "piece_finished (report)", REPORTS)


def test_anchor_decision(benchmark):
    benchmark.group = "anchors"
    rng = random.Random(3)
    pool = list(range(PEERS))
    weights = [rng.random() for _ in range(PEERS)]

    def run():
        sample = rng.sample
        for _ in range(BATCH):
            picked = sample(pool, 15)
            scored = [(weights[p] * 0.6 + 0.1, p) for p in picked]
            scored.sort(reverse=True)
            scored[:3]

    benchmark.pedantic(run, rounds=8, iterations=1)
    record(benchmark, "anchor: sample 15 + score + top 3", BATCH)


def test_anchor_report(benchmark):
    benchmark.group = "anchors"
    rng = random.Random(4)
    peers = {f"p{i}": (Bitmap(PIECES), deque(maxlen=2000)) for i in range(PEERS)}
    reports = [(f"p{rng.randrange(PEERS)}", rng.randrange(PIECES)) for _ in range(REPORTS)]

    def run():
        for pid, number in reports:
            bitmap, costs = peers[pid]
            bitmap.set(number)
            costs.append(0.05)

    benchmark.pedantic(run, rounds=5, iterations=1)
    record(benchmark, "anchor: dict + Bitmap.set + deque.append", REPORTS)


@pytest.fixture(scope="module", autouse=True)
def _print_comparison(request):
    yield
    anchors = {
        "decision": RESULTS.get("anchor: sample 15 + score + top 3"),
        "report": RESULTS.get("anchor: dict + Bitmap.set + deque.append"),
    }
    lines = []
    for workload, per_op in RESULTS.items():
        if workload.startswith("anchor"):
            continue
        kind = "report" if "report" in workload else "decision"
        target = REPORT_TARGET if kind == "report" else DECISION_TARGET
        rate = 1.0 / per_op
        line = (
            f"scheduling {workload}: {rate:,.0f}/s ({per_op * 1e6:.1f} us), "
            f"{rate / target:.2f}x the {target:,.0f}/s target"
        )
        anchor = anchors[kind]
        if anchor:
            line += f", {per_op / anchor:.1f}x the {kind} anchor ({anchor * 1e6:.2f} us)"
        lines.append(line)
    if not lines:
        return
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    uncaptured = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
    with uncaptured:
        print()
        for line in lines:
            print(line)
