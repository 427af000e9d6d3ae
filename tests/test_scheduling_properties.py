"""Property tests: random sequences of scheduler calls never break its invariants, and
the same seed with the same calls gives the same decisions.

Invariants checked after every call (``Scheduler.verify_invariants`` plus the answers):
every task's DAG is acyclic; no peer is its own parent or has a parent on its own host;
no edge comes from a parent in the child's blocklist; no peer has more than
``candidate_parent_limit`` parents; every host's load counters equal the sum of the
reservations on its edges (so they are never negative) and return to zero once every
peer has left.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d7y.core.scheduling import (
    NormalTask,
    Scheduler,
    SchedulerConfig,
    SchedulerError,
    SmallTask,
)

MiB = 1024 * 1024
HOSTS = [f"h{i}" for i in range(6)] + ["s0", "s1"]
TASKS = {"t0": 100 * MiB, "t1": 30 * MiB, "small": MiB}
OPS = (
    "register",
    "register",
    "register",
    "start",
    "start",
    "start",
    "piece",
    "piece",
    "piece",
    "piece",
    "piece",
    "fail",
    "resched",
    "resched",
    "finish",
    "dfail",
    "leave",
    "gc",
    "leave_host",
)

op_lists = st.lists(
    st.tuples(
        st.sampled_from(OPS),
        st.integers(0, 10_000),
        st.integers(0, 10_000),
        st.integers(0, 10_000),
    ),
    max_size=120,
)


def announce(s: Scheduler, host: str, now: float) -> None:
    i = HOSTS.index(host)
    s.announce_host(
        host,
        now,
        ip=f"10.0.0.{i}",
        hostname=host,
        idc=f"idc{i % 2}",
        location=f"cn|r{i % 3}",
        type="seed" if host.startswith("s") else "normal",
        upload_limit_bps=(i + 1) * 200_000_000,
        concurrent_upload_limit=3 + i,
    )


def run(
    ops, seed: int, bitmaps, *, sample_servable_only: bool = False, policy: str = "dragonfly"
) -> list[str]:
    """Apply ``ops``; check invariants after each; return the decisions as strings."""
    config = SchedulerConfig(
        policy=policy,
        register_backoff_max=0.0,
        register_backoff_min=0.0,
        sample_servable_only=sample_servable_only,
        back_to_source_limit=3,
        seed_peer_trigger_timeout=5.0,
    )
    s = Scheduler(config, rng=random.Random(seed), bitmaps=bitmaps)
    now = 0.0
    for host in HOSTS:
        announce(s, host, now)
    peers: list[str] = []
    log: list[str] = []

    def pick(x: int) -> str:
        # Mostly live peers (so calls do something); sometimes any, including gone ones.
        alive = [p for p in peers if p in s.peers]
        if alive and x % 5:
            return alive[x % len(alive)]
        return peers[x % len(peers)]

    for n, (op, a, b, c) in enumerate(ops):
        now += 0.01 + (a % 7) / 100
        result = None
        try:
            if op == "register":
                pid = f"p{n}"
                task = list(TASKS)[b % len(TASKS)]
                result = s.register_peer(
                    pid,
                    task,
                    HOSTS[a % len(HOSTS)],
                    "http://origin/" + task,
                    now,
                    content_length=TASKS[task],
                    need_back_to_source=c % 11 == 0,
                )
                peers.append(pid)
            elif not peers:
                continue
            elif op == "start":
                s.download_started(pick(a), now, back_to_source=b % 4 == 0)
            elif op == "piece":
                pid = pick(a)
                parent = None if c % 3 == 0 else pick(c)
                s.piece_finished(pid, b % 25, parent, (c % 50) / 10, f"crc32:{b}", now)
            elif op == "fail":
                result = s.piece_failed(pick(a), b % 25, pick(c), now)
            elif op == "resched":
                bad = [pick(b)] if c % 2 else []
                result = s.reschedule(pick(a), bad, now)
            elif op == "finish":
                result = s.download_finished(pick(a), now)
            elif op == "dfail":
                result = s.download_failed(pick(a), now)
            elif op == "leave":
                result = s.leave_peer(pick(a), now)
            elif op == "gc":
                now += (a % 4) * 1000.0
                for host in HOSTS[: b % len(HOSTS)]:
                    announce(s, host, now)  # some hosts keep announcing
                result = s.gc(now)
                for host in HOSTS:
                    if host not in s.hosts:
                        announce(s, host, now)
            elif op == "leave_host" and a % 3 == 0:
                host = HOSTS[b % len(HOSTS)]
                result = s.leave_host(host, now)
                announce(s, host, now)
        except SchedulerError as exc:  # the documented errors of a call that does not fit
            result = f"error:{type(exc).__name__}"
        if isinstance(result, NormalTask | SmallTask):
            peer = s.peer(result.peer_id)
            parents = result.parents if isinstance(result, NormalTask) else (result.parent,)
            assert len(parents) <= config.candidate_parent_limit
            for info in parents:
                assert info.peer_id != peer.id
                assert info.host_id != peer.host.id
                assert info.peer_id not in peer.blocklist
        s.verify_invariants()
        log.append(f"{op}:{result!r}")
    # Everybody leaves: every reservation must have been given back.
    for pid in list(s.peers):
        s.leave_peer(pid, now)
    s.verify_invariants()
    for host in s.hosts.values():
        assert (
            host.tx_bandwidth,
            host.concurrent_upload_piece_count,
            host.upload_content_length,
            host.concurrent_upload_count,
        ) == (0, 0, 0, 0)
    for task in s.tasks.values():
        assert len(task.dag) == 0 and not task.servable and not task.peer_list
    return log


_SETTINGS = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_SETTINGS
@given(ops=op_lists, seed=st.integers(0, 2**32 - 1))
def test_random_call_sequences_keep_invariants(ops, seed, bitmap_impl):
    run(ops, seed, bitmap_impl)


@_SETTINGS
@given(ops=op_lists, seed=st.integers(0, 2**32 - 1))
def test_random_call_sequences_keep_invariants_servable_sampling(ops, seed, bitmap_impl):
    run(ops, seed, bitmap_impl, sample_servable_only=True)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=op_lists, seed=st.integers(0, 2**32 - 1))
def test_same_seed_same_calls_same_decisions(ops, seed, bitmap_impl):
    assert run(ops, seed, bitmap_impl) == run(ops, seed, bitmap_impl)


def test_a_long_busy_sequence(bitmap_impl):
    """One long deterministic run with many peers on one task (beyond hypothesis sizes)."""
    rng = random.Random(99)
    ops = [
        (rng.choice(OPS[:15]), rng.randrange(10_000), rng.randrange(10_000), rng.randrange(10_000))
        for _ in range(3000)
    ]
    log = run(ops, 7, bitmap_impl)
    assert any("NormalTask" in line for line in log)
    assert any("NeedBackToSource" in line for line in log)
