"""The Scheduler: registration answers, candidate filters and limits, load reservation,
back-to-source and retry rules, seed peers through the ring, reports and GC.

Every test runs against both bitmap backends (``bitmap_impl``)."""

from __future__ import annotations

import random

import pytest

from d7y.core.scheduling import (
    DuplicatePeer,
    EmptyTask,
    HashRing,
    LoadAwareEvaluator,
    MetadataOnly,
    NeedBackToSource,
    NormalTask,
    PeerStateError,
    PieceNumberError,
    Retry,
    ScheduleFailed,
    Scheduler,
    SchedulerConfig,
    SmallTask,
    TinyTask,
    TriggerSeedPeer,
    UnknownHost,
    UnknownPeer,
)
from d7y.core.states import PeerState, TaskState

MiB = 1024 * 1024
GiB = 1024 * MiB
GBIT = 1_000_000_000
LENGTH = 100 * MiB  # 25 pieces of 4 MiB
PIECE = 4 * MiB


class SpyEvaluator(LoadAwareEvaluator):
    """Records every (parent, score) it was asked for: which candidates passed the filters."""

    def __init__(self) -> None:
        self.scored: list[tuple[str, float]] = []

    def score(self, parent, child, total_piece_count):
        value = super().score(parent, child, total_piece_count)
        self.scored.append((parent.id, value))
        return value


class SpyRandom(random.Random):
    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.sample_sizes: list[tuple[int, int]] = []

    def sample(self, population, k, **kw):
        self.sample_sizes.append((len(population), k))
        return super().sample(population, k, **kw)


def make(bitmap_impl, seed: int = 1, evaluator=None, rng=None, **config) -> Scheduler:
    """A scheduler with Dragonfly's rules (these tests pin them), without the per-host
    registration backoff unless a test asks for it (so a register answers at once)."""
    config.setdefault("policy", "dragonfly")
    config.setdefault("register_backoff_min", 0.0)
    config.setdefault("register_backoff_max", 0.0)
    return Scheduler(
        SchedulerConfig(**config),
        rng=rng or random.Random(seed),
        evaluator=evaluator,
        bitmaps=bitmap_impl,
    )


def add_host(s: Scheduler, name: str, *, seed: bool = False, now: float = 0.0, **kw) -> str:
    kw.setdefault("upload_limit_bps", GBIT)
    s.announce_host(
        name, now, ip=f"ip-{name}", hostname=name, type="seed" if seed else "normal", **kw
    )
    return name


def source_peer(s: Scheduler, pid: str, host: str, task: str = "t", pieces: int = 1, now=0.0):
    """A peer fetching ``task`` from the origin, holding its first ``pieces`` pieces."""
    result = s.register_peer(pid, task, host, "http://o/f", now, content_length=LENGTH)
    if not isinstance(result, NeedBackToSource):
        s.download_started(pid, now, back_to_source=True)
    for i in range(pieces):
        s.piece_finished(pid, i, None, 0.1, f"crc32:{i}", now)
    return result


def running_peer(s: Scheduler, pid: str, host: str, parent: str, pieces: int = 1, now=0.0):
    """A peer downloading from ``parent`` (must be granted), holding ``pieces`` pieces."""
    result = s.register_peer(pid, "t", host, "http://o/f", now, content_length=LENGTH)
    s.download_started(pid, now)
    for i in range(pieces):
        s.piece_finished(pid, i, parent, 0.1, None, now)
    return result


# --- registration ---------------------------------------------------------------------


def test_register_validates(bitmap_impl):
    s = make(bitmap_impl)
    with pytest.raises(UnknownHost, match="announce it first"):
        s.register_peer("p", "t", "nohost", "u", 0)
    add_host(s, "h")
    s.register_peer("p", "t", "h", "u", 0, content_length=LENGTH)
    with pytest.raises(DuplicatePeer):
        s.register_peer("p", "t", "h", "u", 0)
    with pytest.raises(TypeError):
        s.register_peer("", "t", "h", "u", 0)
    with pytest.raises(ValueError, match="contradicts"):
        s.register_peer("q", "t", "h", "u", 0, content_length=LENGTH + 1)
    with pytest.raises(UnknownPeer):
        s.reschedule("ghost", (), 0)
    with pytest.raises(ValueError, match="unknown"):
        s.announce_host("x", 0, ip="1", hostname="x", type="super")


def test_first_peer_without_seed_goes_back_to_source(bitmap_impl):
    s = make(bitmap_impl)
    add_host(s, "h1")
    r = s.register_peer("p1", "t", "h1", "http://o/f", 0, content_length=LENGTH)
    assert isinstance(r, NeedBackToSource)
    assert r.task.piece_count == 25 and r.task.piece_length == PIECE
    assert s.peer("p1").state is PeerState.BACK_TO_SOURCE
    assert s.task("t").state is TaskState.RUNNING
    assert s.task("t").back_to_source_peers == {"p1"}


def test_back_to_source_peer_serves_the_next(bitmap_impl):
    s = make(bitmap_impl)
    add_host(s, "h1")
    add_host(s, "h2")
    source_peer(s, "p1", "h1", pieces=0)  # no piece yet: still a parent (it will have some)
    r = s.register_peer("p2", "t", "h2", "http://o/f", 1, content_length=LENGTH)
    assert isinstance(r, NormalTask)
    assert [p.peer_id for p in r.parents] == ["p1"]
    parent = r.parents[0]
    assert (parent.host_id, parent.ip, parent.download_port) == ("h1", "ip-h1", 4005)
    assert s.task("t").dag.parents("p2").keys() == {"p1"}
    s.verify_invariants()


def test_empty_tiny_small_and_metadata_only(bitmap_impl):
    s = make(bitmap_impl)
    for h in ("h1", "h2", "h3"):
        add_host(s, h)
    # EMPTY: answered inline.
    r = s.register_peer("e1", "empty", "h1", "u", 0, content_length=0)
    assert isinstance(r, EmptyTask) and s.peer("e1").state is PeerState.RECEIVED_EMPTY
    # TINY: the first peer fetches it; once it reports the bytes, later peers get them.
    r = s.register_peer("t1", "tiny", "h1", "u", 0, content_length=100)
    assert isinstance(r, NeedBackToSource)
    s.download_finished("t1", 1, content=b"x" * 100)
    r = s.register_peer("t2", "tiny", "h2", "u", 2, content_length=100)
    assert isinstance(r, TinyTask) and r.content == b"x" * 100
    assert s.peer("t2").state is PeerState.RECEIVED_TINY
    with pytest.raises(ValueError, match="bytes"):
        s.download_finished("t2", 3, content=b"short")
    # SMALL (one piece, > 128 B): a succeeded peer on another host is the one parent.
    r = s.register_peer("s1", "small", "h1", "u", 0, content_length=MiB)
    assert isinstance(r, NeedBackToSource)
    s.piece_finished("s1", 0, None, 0.5, "crc32:7", 1)
    s.download_finished("s1", 1)
    r = s.register_peer("s2", "small", "h2", "u", 2)
    assert isinstance(r, SmallTask) and r.parent.peer_id == "s1"
    assert s.peer("s2").state is PeerState.RECEIVED_SMALL
    assert s.task("small").dag.parents("s2").keys() == {"s1"}
    # The same host already holds the task: metadata only, no new peer.
    r = s.register_peer("s3", "small", "h1", "u", 3)
    assert isinstance(r, MetadataOnly) and r.holder_peer_id == "s1"
    with pytest.raises(UnknownPeer):
        s.peer("s3")
    s.verify_invariants()


def test_small_task_without_succeeded_parent_is_normal(bitmap_impl):
    s = make(bitmap_impl)
    add_host(s, "h1")
    add_host(s, "h2")
    s.register_peer("s1", "small", "h1", "u", 0, content_length=MiB)  # back to source
    r = s.register_peer("s2", "small", "h2", "u", 1, content_length=MiB)
    assert isinstance(r, NormalTask)  # s1 is fetching it: a normal parent meanwhile
    assert s.peer("s2").state is PeerState.RECEIVED_NORMAL


# --- candidate filters (one test each) -------------------------------------------------


def _filter_setup(bitmap_impl, **config):
    """Child c on host hc and a control parent 'ok' on host hok (serving)."""
    spy = SpyEvaluator()
    config.setdefault("blocklist_previous_parents", False)  # tested on its own below
    s = make(bitmap_impl, evaluator=spy, **config)
    for h in ("hc", "hok", "hx", "hy"):
        add_host(s, h)
    source_peer(s, "ok", "hok")
    return s, spy


def _scored_on_reschedule(s: Scheduler, spy: SpyEvaluator, peer: str, bad=()) -> set[str]:
    spy.scored.clear()
    s.reschedule(peer, bad, 5)
    return {pid for pid, _ in spy.scored}


def test_filter_drops_the_peer_itself(bitmap_impl):
    s, spy = _filter_setup(bitmap_impl)
    running_peer(s, "c", "hc", "ok")  # c holds a piece: it could serve, but not itself
    assert _scored_on_reschedule(s, spy, "c") == {"ok"}


def test_filter_drops_peers_on_the_same_host(bitmap_impl):
    s, spy = _filter_setup(bitmap_impl)
    source_peer(s, "same", "hc", task="t")  # serving, on the child's host
    s.register_peer("c", "t", "hc", "u", 1)
    assert _scored_on_reschedule(s, spy, "c") == {"ok"}


def test_filter_drops_blocklisted_peers(bitmap_impl):
    s, spy = _filter_setup(bitmap_impl)
    source_peer(s, "bad", "hx")
    s.register_peer("c", "t", "hc", "u", 1)
    assert _scored_on_reschedule(s, spy, "c") == {"ok", "bad"}
    assert _scored_on_reschedule(s, spy, "c", bad=["bad"]) == {"ok"}
    assert _scored_on_reschedule(s, spy, "c") == {"ok"}  # the blocklist stays


def test_filter_drops_peers_not_serving(bitmap_impl):
    s, spy = _filter_setup(bitmap_impl)
    add_host(s, "hseed", seed=True)
    add_host(s, "hz")
    s.register_peer("registered", "t", "hx", "u", 1)  # RECEIVED_NORMAL
    s.register_peer("started", "t", "hy", "u", 1)
    s.reschedule("started", ["ok"], 1)  # no parent: in-degree 0
    s.download_started("started", 1)  # RUNNING, no piece, no parent
    s.register_peer("seed", "t", "hseed", "u", 1)
    s.reschedule("seed", (), 1)
    s.download_started("seed", 1)  # a running seed peer serves even before its 1st piece
    running_peer(s, "holder", "hz", "ok")  # RUNNING with one piece
    s.register_peer("c", "t", "hc", "u", 2)
    assert _scored_on_reschedule(s, spy, "c") == {"ok", "seed", "holder"}


def test_filter_drops_bad_parents(bitmap_impl):
    s, spy = _filter_setup(bitmap_impl)
    source_peer(s, "slow", "hx", pieces=2)  # costs 0.1, 0.1
    s.piece_finished("slow", 2, None, 3.0, None, 1)  # 3.0 > 20 * 0.1: bad
    s.register_peer("c", "t", "hc", "u", 1)
    assert _scored_on_reschedule(s, spy, "c") == {"ok"}


def test_filter_drops_edges_that_would_close_a_cycle(bitmap_impl):
    s, spy = _filter_setup(bitmap_impl)
    running_peer(s, "a", "hx", "ok")  # ok -> a
    running_peer(s, "b", "hy", "a")
    # b's parents are chosen among ok and a; force a -> b by blocklisting ok for b.
    s.reschedule("b", ["ok"], 1)
    assert s.task("t").dag.parents("b").keys() == {"a"}
    # Rescheduling a: b (its descendant, serving) would close a -> b -> a.
    assert _scored_on_reschedule(s, spy, "a") == {"ok"}
    assert s.task("t").dag.is_acyclic()


def test_no_upload_slot_filter(bitmap_impl):
    """Dragonfly keeps upload limits but its filter does not read them: a host whose
    slots are all reserved is still a candidate (its load lowers its score instead)."""
    s, spy = _filter_setup(bitmap_impl)
    add_host(s, "hfull", concurrent_upload_limit=1)
    source_peer(s, "full", "hfull")
    s.register_peer("c1", "t", "hx", "u", 1)
    s.reschedule("c1", ["ok"], 1)  # c1 takes the only slot of hfull
    assert s.host("hfull").concurrent_upload_count == 1
    s.register_peer("c", "t", "hc", "u", 1)
    assert _scored_on_reschedule(s, spy, "c") == {"ok", "full"}


def test_a_running_peer_with_parents_is_a_candidate_before_its_first_piece(bitmap_impl):
    """Dragonfly's in-degree rule: a running normal peer with no piece yet is dropped
    only while it has no parent in the DAG; once it has one it serves (soon)."""
    s, spy = _filter_setup(bitmap_impl)
    s.register_peer("orphan", "t", "hx", "u", 1, need_back_to_source=False)
    s.reschedule("orphan", ["ok"], 1)  # no parent left for it: in-degree 0
    s.download_started("orphan", 1)
    s.register_peer("child", "t", "hy", "u", 1)  # gets ok as its parent
    s.download_started("child", 1)
    assert s.task("t").dag.in_degree("child") == 1 and s.peer("child").finished_count == 0
    assert s.task("t").dag.in_degree("orphan") == 0
    s.register_peer("c", "t", "hc", "u", 2)
    assert _scored_on_reschedule(s, spy, "c") == {"ok", "child"}


# --- limits -----------------------------------------------------------------------------


def test_samples_fifteen_and_returns_the_best_three(bitmap_impl):
    spy = SpyEvaluator()
    s = make(bitmap_impl, evaluator=spy)
    for i in range(80):
        # Different IDCs/locations so the scores differ.
        add_host(s, f"h{i}", idc=f"idc{i % 3}", location=f"cn|r{i % 5}")
        source_peer(s, f"p{i}", f"h{i}")
    add_host(s, "hc", idc="idc0", location="cn|r0")
    spy.scored.clear()
    r = s.register_peer("c", "t", "hc", "u", 1)
    scored_ids = [pid for pid, _ in spy.scored]
    # 15 distinct peers drawn from 81 (c itself may be one of them: filtered out).
    assert len(scored_ids) in (14, 15) and len(set(scored_ids)) == len(scored_ids)
    assert "c" not in scored_ids
    assert isinstance(r, NormalTask) and len(r.parents) == 3
    best = sorted(spy.scored, key=lambda x: x[1], reverse=True)[:3]
    assert [(p.peer_id, p.score) for p in r.parents] == best
    assert s.task("t").dag.in_degree("c") == 3


def test_sampling_is_uniform(bitmap_impl):
    s = make(bitmap_impl, seed=8)
    for i in range(100):
        add_host(s, f"h{i}")
        source_peer(s, f"p{i}", f"h{i}")
    add_host(s, "hc")
    s.register_peer("c", "t", "hc", "u", 1)
    counts: dict[str, int] = {}
    for _ in range(2000):
        for peer in s._sample(s.peer("c")):
            counts[peer.id] = counts.get(peer.id, 0) + 1
    # 2000 draws of 15 among 101: 297 expected each; binomial sd ~16.
    assert len(counts) == 101
    assert all(220 < n < 380 for n in counts.values())


def test_small_pools_use_random_sample(bitmap_impl):
    rng = SpyRandom(11)
    s = make(bitmap_impl, rng=rng)
    for i in range(40):
        add_host(s, f"h{i}")
        source_peer(s, f"p{i}", f"h{i}")
    add_host(s, "hc")
    rng.sample_sizes.clear()
    s.register_peer("c", "t", "hc", "u", 1)
    assert rng.sample_sizes == [(41, 15)]  # 40 parents + c itself, 15 drawn


def test_limits_are_configurable(bitmap_impl):
    rng = SpyRandom(3)
    s = make(bitmap_impl, rng=rng, filter_parent_limit=4, candidate_parent_limit=2)
    for i in range(10):
        add_host(s, f"h{i}")
        source_peer(s, f"p{i}", f"h{i}")
    add_host(s, "hc")
    rng.sample_sizes.clear()
    r = s.register_peer("c", "t", "hc", "u", 1)
    assert rng.sample_sizes == [(11, 4)]
    assert isinstance(r, NormalTask) and 1 <= len(r.parents) <= 2


# --- load reservation -------------------------------------------------------------------


def _loads(s: Scheduler, host: str) -> tuple[int, int, int, int]:
    h = s.host(host)
    return (
        h.tx_bandwidth,
        h.concurrent_upload_piece_count,
        h.upload_content_length,
        h.concurrent_upload_count,
    )


def test_edges_reserve_and_release_load(bitmap_impl):
    s = make(bitmap_impl, blocklist_previous_parents=False)
    for h in ("h1", "h2", "hc"):
        add_host(s, h)
    source_peer(s, "p1", "h1")
    source_peer(s, "p2", "h2")  # p1 was its parent until it went to source
    assert _loads(s, "h1") == (0, 0, 0, 0)
    r = s.register_peer("c", "t", "hc", "u", 1, concurrent_piece_count=4)
    assert {p.peer_id for p in r.parents} == {"p1", "p2"}
    # Each edge: 4 MiB pieces * 4 concurrent * 8 bits; 4 pieces; the task's 100 MiB.
    expected = (PIECE * 4 * 8, 4, LENGTH, 1)
    assert _loads(s, "h1") == expected and _loads(s, "h2") == expected
    assert s.host("h1").upload_count == 2  # cumulative: p2's brief edge, then c's
    s.verify_invariants()
    # Rescheduling drops the in-edges first; the same parents are chosen again.
    s.reschedule("c", (), 2)
    assert _loads(s, "h1") == expected
    s.download_started("c", 2)
    s.download_finished("c", 3)
    assert _loads(s, "h1") == (0, 0, 0, 0) and _loads(s, "h2") == (0, 0, 0, 0)
    assert s.host("h1").upload_count == 3  # the reschedule added c's edge again
    s.verify_invariants()


def test_parent_leaving_releases_and_orphans(bitmap_impl):
    s = make(bitmap_impl)
    for h in ("h1", "hc", "hd"):
        add_host(s, h)
    source_peer(s, "p1", "h1")
    s.register_peer("c", "t", "hc", "u", 1)
    s.register_peer("d", "t", "hd", "u", 1)
    assert _loads(s, "h1")[3] == 2
    left = s.leave_peer("p1", 2)
    assert left.peer_ids == ("p1",) and set(left.orphaned_children) == {"c", "d"}
    assert _loads(s, "h1") == (0, 0, 0, 0)
    left = s.leave_host("hc", 3)
    assert left.peer_ids == ("c",)
    s.verify_invariants()


# --- back-to-source and retries -----------------------------------------------------------


def _stranded(bitmap_impl, **config) -> Scheduler:
    """Child c whose only possible parent gets blocklisted: every round fails."""
    s = make(bitmap_impl, **config)
    add_host(s, "h1")
    add_host(s, "hc")
    source_peer(s, "p1", "h1")
    assert isinstance(s.register_peer("c", "t", "hc", "u", 1), NormalTask)
    return s


def test_failed_rounds_then_back_to_source(bitmap_impl):
    s = _stranded(bitmap_impl)
    results = [s.reschedule("c", ["p1"], 2)] + [s.reschedule("c", (), 3 + i) for i in range(3)]
    assert [type(r) for r in results] == [Retry, Retry, Retry, NeedBackToSource]
    assert [r.round for r in results[:3]] == [1, 2, 3]
    for r in results[:3]:
        assert 0.4 <= r.retry_after <= 0.6  # 0.5 s +- 20 % jitter
    assert len({r.retry_after for r in results[:3]}) == 3  # jittered
    assert "4 scheduling rounds" in results[3].reason
    assert s.peer("c").state is PeerState.BACK_TO_SOURCE
    assert s.task("t").back_to_source_peers == {"p1", "c"}
    # Asking again changes nothing.
    assert isinstance(s.reschedule("c", (), 9), NeedBackToSource)
    s.verify_invariants()


def test_retry_limit_when_back_to_source_is_exhausted(bitmap_impl):
    s = _stranded(bitmap_impl, back_to_source_limit=1)  # p1 used the only slot
    results = [s.reschedule("c", ["p1"], 2)] + [s.reschedule("c", (), 3 + i) for i in range(4)]
    assert [type(r) for r in results] == [Retry, Retry, Retry, Retry, ScheduleFailed]
    assert "retry_limit" in results[-1].reason
    assert s.peer("c").state is PeerState.RECEIVED_NORMAL  # the daemon reports the failure
    s.download_failed("c", 8)
    assert s.peer("c").state is PeerState.FAILED


def test_back_to_source_limit_counts_normal_peers(bitmap_impl):
    s = make(bitmap_impl, back_to_source_limit=2)
    for h in ("h1", "h2", "h3", "hs"):
        add_host(s, h, seed=h == "hs")
    for pid, h in (("a", "h1"), ("b", "h2")):
        r = s.register_peer(pid, "t", h, "u", 0, content_length=LENGTH, need_back_to_source=True)
        assert isinstance(r, NeedBackToSource) and "asked" in r.reason
    r = s.register_peer("c", "t", "h3", "u", 0, need_back_to_source=True)
    assert isinstance(r, NormalTask)  # the limit is reached: it must use peers
    # A seed peer is never refused and not counted.
    r = s.register_peer("s", "t", "hs", "u", 0, need_back_to_source=True)
    assert isinstance(r, NeedBackToSource)
    assert s.task("t").back_to_source_peers == {"a", "b"}


def test_reschedule_state_errors(bitmap_impl):
    s = make(bitmap_impl)
    add_host(s, "h1")
    source_peer(s, "p1", "h1")
    s.download_finished("p1", 1)
    with pytest.raises(PeerStateError, match="SUCCEEDED"):
        s.reschedule("p1", (), 2)
    with pytest.raises(TypeError):
        s.reschedule("p1", "p2", 2)
    assert isinstance(s.register_peer("q", "t", "h1", "u", 0), MetadataOnly)
    with pytest.raises(UnknownPeer):  # metadata-only creates no peer
        s.piece_finished("q", 0, None, 0.1, None, 0)
    add_host(s, "h2")
    s.register_peer("q2", "t", "h2", "u", 3)
    with pytest.raises(PeerStateError, match="download_started"):
        s.piece_finished("q2", 0, "p1", 0.1, None, 3)
    s.download_started("q2", 3)
    # Reports that do not fit are the caller's errors, SchedulerErrors the daemon answers
    # (an IllegalTransition or a bare IndexError would crash its connection instead).
    with pytest.raises(PeerStateError, match="RUNNING: DOWNLOAD is not allowed"):
        s.download_started("q2", 3)
    with pytest.raises(ValueError, match="cost"):
        s.piece_finished("q2", 0, "p1", -1.0, None, 3)
    with pytest.raises(PieceNumberError, match="piece number 25 is outside"):
        s.piece_finished("q2", 25, "p1", 1.0, None, 3)
    with pytest.raises(PieceNumberError, match="piece number -1 is outside"):
        s.piece_finished("q2", -1, "p1", 1.0, None, 3)
    s.download_finished("q2", 4)
    with pytest.raises(PeerStateError, match="SUCCEEDED: DOWNLOAD_SUCCEEDED"):
        s.download_finished("q2", 4)


# --- seed peers through the ring --------------------------------------------------------


def test_seed_trigger_follows_the_ring(bitmap_impl):
    s = make(bitmap_impl)
    seeds = ["s0", "s1", "s2"]
    for name in seeds:
        add_host(s, name, seed=True)
    add_host(s, "h1")
    add_host(s, "h2")
    add_host(s, "h3")
    ring = HashRing(seeds, vnodes=100)
    r = s.register_peer("p1", "task-a", "h1", "http://o/a", 0, content_length=LENGTH)
    assert isinstance(r, TriggerSeedPeer)
    assert r.seed_host_id == ring.get("task-a")
    assert r.url == "http://o/a" and r.seed_ip == f"ip-{r.seed_host_id}"
    # Nobody waits for the seed: the first round ran at once (and found no parent).
    assert isinstance(r.then, Retry) and 0.4 <= r.then.retry_after <= 0.6
    assert s.peer("p1").state is PeerState.RECEIVED_NORMAL
    # While the trigger is pending, others wait; nobody goes to the origin.
    r2 = s.register_peer("p2", "task-a", "h2", "http://o/a", 0.1)
    assert isinstance(r2, Retry)
    assert not s.task("task-a").back_to_source_peers
    # The seed peer arrives and fetches from the origin; p1 gets it as parent.
    seed_host = ring.get("task-a")
    r = s.register_peer("seed-a", "task-a", seed_host, "http://o/a", 0.2)
    assert isinstance(r, NeedBackToSource)
    r = s.reschedule("p1", (), 0.5)
    assert isinstance(r, NormalTask) and r.parents[0].peer_id == "seed-a"
    assert r.parents[0].is_seed
    # The seed peer fails: the next peer triggers the next seed on the ring.
    ended = s.download_failed("seed-a", 1)
    assert ended.orphaned_children == ("p1",)
    r = s.register_peer("p3", "task-a", "h3", "http://o/a", 1.1)
    assert isinstance(r, TriggerSeedPeer)
    second = [n for n in ring.iter_nodes("task-a")][1]
    assert r.seed_host_id == second
    s.verify_invariants()


def test_seed_peer_leaving_unfinished_moves_the_task_to_the_next_seed(bitmap_impl):
    s = make(bitmap_impl)
    for name in ("s0", "s1"):
        add_host(s, name, seed=True)
    add_host(s, "h1")
    add_host(s, "h2")
    first = s.register_peer("p1", "t", "h1", "u", 0, content_length=LENGTH).seed_host_id
    s.register_peer("seed-1", "t", first, "u", 0.1)
    s.piece_finished("seed-1", 0, None, 0.1, "crc32:0", 0.2)
    assert isinstance(s.reschedule("p1", (), 0.5), NormalTask)
    left = s.leave_peer("seed-1", 1)  # stopped before it finished
    assert left.orphaned_children == ("p1",)
    r = s.register_peer("p2", "t", "h2", "u", 1.1)
    assert isinstance(r, TriggerSeedPeer) and r.seed_host_id != first
    # With every seed spent, peers go to the origin.
    s.register_peer("seed-2", "t", r.seed_host_id, "u", 1.2)
    s.download_failed("seed-2", 1.3)
    add_host(s, "h3")
    r = s.register_peer("p3", "t", "h3", "u", 1.4)
    assert isinstance(r, NeedBackToSource)


def test_seed_trigger_is_reissued_after_timeout(bitmap_impl):
    s = make(bitmap_impl, seed_peer_trigger_timeout=10.0)
    add_host(s, "s0", seed=True)
    add_host(s, "h1")
    add_host(s, "h2")
    assert isinstance(
        s.register_peer("p1", "t", "h1", "u", 0, content_length=LENGTH), TriggerSeedPeer
    )
    assert isinstance(s.register_peer("p2", "t", "h2", "u", 5), Retry)
    s.leave_peer("p2", 6)
    assert isinstance(s.register_peer("p2b", "t", "h2", "u", 10.5), TriggerSeedPeer)


def test_without_usable_seed_the_peer_goes_to_source(bitmap_impl):
    s = make(bitmap_impl)
    add_host(s, "s0", seed=True)
    add_host(s, "h1")
    s.announce_host("s0", 1, ip="x", hostname="s0", type="normal")  # no longer a seed
    assert s.seed_hosts == frozenset()
    r = s.register_peer("p1", "t", "h1", "u", 2, content_length=LENGTH)
    assert isinstance(r, NeedBackToSource)


def test_restore_after_a_scheduler_restart(bitmap_impl):
    s = make(bitmap_impl)
    for h in ("h1", "h2", "h3"):
        add_host(s, h)
    s.restore_peer(
        "p1",
        "t",
        "h1",
        "u",
        0,
        content_length=LENGTH,
        piece_length=PIECE,
        finished=b"",  # what a daemon sends for a whole task: the bitfield says nothing
        succeeded=True,
        digests={0: "crc32:7", 1: "crc32:8"},
    )
    s.restore_peer(
        "p2",
        "t",
        "h2",
        "u",
        0,
        content_length=LENGTH,
        piece_length=PIECE,
        finished=[0, 1, 2],
        succeeded=False,
        digests={1: "crc32:999", 2: "crc32:9"},
    )
    # The first restored digest of a piece is kept, as the first origin report is.
    assert dict(s.piece_digests("t")) == {0: "crc32:7", 1: "crc32:8", 2: "crc32:9"}
    assert s.peer("p1").state is PeerState.SUCCEEDED and s.peer("p1").finished.all()
    assert s.peer("p2").state is PeerState.RUNNING and s.peer("p2").finished_count == 3
    assert s.task("t").state is TaskState.SUCCEEDED
    r = s.register_peer("c", "t", "h3", "u", 1)
    assert isinstance(r, NormalTask) and {p.peer_id for p in r.parents} == {"p1", "p2"}
    assert isinstance(s.reschedule("p2", (), 1), NormalTask)  # p1 (c is not serving)
    with pytest.raises(DuplicatePeer):
        s.restore_peer(
            "p2",
            "t",
            "h2",
            "u",
            0,
            content_length=LENGTH,
            piece_length=PIECE,
            finished=b"",
            succeeded=False,
        )
    s.verify_invariants()


# --- piece reports ----------------------------------------------------------------------


def test_piece_failed_blocklists_and_asks_for_reschedule(bitmap_impl):
    s = make(bitmap_impl)
    for h in ("h1", "h2", "hc"):
        add_host(s, h)
    source_peer(s, "p1", "h1")
    source_peer(s, "p2", "h2")
    s.register_peer("c", "t", "hc", "u", 1)
    s.download_started("c", 1)
    res = s.piece_failed("c", 3, "p1", 2)
    assert res.blocklisted and not res.reschedule  # p2 is still there
    assert "p1" in s.peer("c").blocklist
    assert s.task("t").dag.parents("c").keys() == {"p2"}
    assert s.host("h1").upload_failed_count == 1
    assert _loads(s, "h1") == (0, 0, 0, 0)
    res = s.piece_failed("c", 3, "p2", 3)
    assert res.blocklisted and res.reschedule
    assert s.piece_failed("c", 3, None, 3) == type(res)("c", None, False, False)
    s.verify_invariants()


def test_piece_failures_threshold(bitmap_impl):
    s = make(bitmap_impl, blocklist_after_piece_failures=2)
    for h in ("h1", "hc"):
        add_host(s, h)
    source_peer(s, "p1", "h1")
    s.register_peer("c", "t", "hc", "u", 1)
    s.download_started("c", 1)
    assert not s.piece_failed("c", 1, "p1", 2).blocklisted
    s.piece_finished("c", 2, "p1", 0.1, None, 2)  # a success resets the streak
    assert not s.piece_failed("c", 1, "p1", 3).blocklisted
    assert s.piece_failed("c", 1, "p1", 4).blocklisted


def test_origin_digests_are_recorded(bitmap_impl):
    s = make(bitmap_impl)
    add_host(s, "h1")
    add_host(s, "h2")
    source_peer(s, "p1", "h1", pieces=3)
    assert dict(s.piece_digests("t")) == {0: "crc32:0", 1: "crc32:1", 2: "crc32:2"}
    running_peer(s, "p2", "h2", "p1", pieces=0)
    s.piece_finished("p2", 5, "p1", 0.1, "crc32:999", 1)  # from a parent: not a record
    assert 5 not in s.piece_digests("t")
    s.piece_finished("p1", 0, None, 0.1, "crc32:other", 1)  # origin changed? counted
    assert s.piece_digests("t")[0] == "crc32:0" and s.task("t").digest_conflicts == 1
    with pytest.raises(TypeError):
        s.piece_digests("t")[9] = "x"  # read-only view


def test_unknown_length_grows_then_resizes(bitmap_impl):
    s = make(bitmap_impl)
    add_host(s, "h1")
    add_host(s, "h2")
    r = s.register_peer("p1", "t", "h1", "u", 0)  # no length known
    assert isinstance(r, NeedBackToSource) and r.task.piece_count is None
    for i in range(70):
        s.piece_finished("p1", i, None, 0.1, None, 1)
    assert len(s.peer("p1").finished) >= 70
    with pytest.raises(ValueError, match="reported piece 69"):
        s.download_finished("p1", 2, content_length=10 * PIECE)
    s.download_finished("p1", 2, content_length=70 * PIECE - 5)
    assert s.task("t").piece_count == 70 and s.task("t").piece_length == PIECE
    assert len(s.peer("p1").finished) == 70 and s.peer("p1").finished.all()
    r = s.register_peer("p2", "t", "h2", "u", 3)
    assert isinstance(r, NormalTask) and r.task.piece_count == 70
    assert len(s.peer("p2").finished) == 70


def test_last_source_failure_fails_the_task(bitmap_impl):
    s = make(bitmap_impl)
    add_host(s, "h1")
    add_host(s, "h2")
    source_peer(s, "p1", "h1")
    s.register_peer("c", "t", "h2", "u", 1)
    ended = s.download_failed("p1", 2)
    assert ended.orphaned_children == ("c",)
    assert s.task("t").state is TaskState.FAILED
    assert _loads(s, "h1") == (0, 0, 0, 0)
    # A new registration starts the task again.
    add_host(s, "h3")
    s.register_peer("d", "t", "h3", "u", 3)
    assert s.task("t").state is TaskState.RUNNING


# --- GC -----------------------------------------------------------------------------------


def test_gc_host_ttl(bitmap_impl):
    s = make(bitmap_impl)
    add_host(s, "old", now=0)
    add_host(s, "fresh", now=0)
    source_peer(s, "p1", "old")
    s.register_peer("c", "t", "fresh", "u", 1)
    s.announce_host("fresh", 3000, ip="x", hostname="fresh", upload_limit_bps=GBIT)
    s.piece_finished("p1", 1, None, 0.1, None, 3000)  # peer activity does not keep a host
    gc = s.gc(3601)
    assert gc.hosts == ("old",) and "p1" in gc.peers and gc.orphaned_children == ("c",)
    assert "old" not in s.hosts and "c" in s.peers
    s.verify_invariants()


def test_gc_peer_ttl_piece_timeout_failed_and_empty_tasks(bitmap_impl):
    s = make(bitmap_impl, host_ttl=1e9)
    for h in ("h1", "h2", "h3", "h4"):
        add_host(s, h)
    source_peer(s, "stalled", "h1")  # back-to-source, last piece at 0
    s.register_peer("idle", "t2", "h2", "u", 0, content_length=0)  # EMPTY, never updated
    source_peer(s, "done", "h3", task="t3")
    s.download_finished("done", 0)
    s.register_peer("failed", "t4", "h4", "u", 0, content_length=LENGTH)
    s.download_failed("failed", 0)
    gc = s.gc(10)
    assert gc.peers == ("failed",) and gc.tasks == ("t4",)  # failed peers go at once
    gc = s.gc(1801)  # piece_download_timeout: 30 min without a piece
    assert gc.peers == ("stalled",) and gc.tasks == ("t",)
    gc = s.gc(86401)  # peer TTL 24 h
    assert set(gc.peers) == {"idle", "done"} and set(gc.tasks) == {"t2", "t3"}
    assert not s.peers and not s.tasks and len(s.hosts) == 4
    s.verify_invariants()


def test_gc_task_ttl(bitmap_impl):
    s = make(bitmap_impl, task_ttl=100.0, host_ttl=1e9, peer_ttl=1e9)
    add_host(s, "h1")
    source_peer(s, "p1", "h1")
    s.download_finished("p1", 0)
    assert s.gc(50) == type(s.gc(50))((), (), (), ())
    gc = s.gc(101)
    assert gc.tasks == ("t",) and gc.peers == ("p1",)


# --- determinism ------------------------------------------------------------------------


def _scenario(bitmap_impl, seed: int) -> list:
    s = make(bitmap_impl, seed=seed)
    add_host(s, "seed", seed=True)
    out = []
    for i in range(30):
        add_host(s, f"h{i}", idc=f"i{i % 2}")
    out.append(s.register_peer("p0", "t", "h0", "u", 0, content_length=LENGTH))
    out.append(s.register_peer("sp", "t", "seed", "u", 0))
    for i in range(1, 30):
        r = s.register_peer(f"p{i}", "t", f"h{i}", "u", i)
        out.append(r)
        if isinstance(r, NormalTask):
            s.download_started(f"p{i}", i)
            s.piece_finished(f"p{i}", i % 25, r.parents[0].peer_id, 0.1, None, i)
    return out


def test_same_seed_same_decisions(bitmap_impl):
    assert _scenario(bitmap_impl, 42) == _scenario(bitmap_impl, 42)
    assert _scenario(bitmap_impl, 42) != _scenario(bitmap_impl, 43)


# --- Dragonfly's rules and the d7y policy's -------------------------------------------------


def test_dragonfly_registrations_get_a_random_backoff_before_their_first_round(bitmap_impl):
    s = make(bitmap_impl, register_backoff_min=0.03, register_backoff_max=1.0)
    for h in ("h1", "hc"):
        add_host(s, h)
    source_peer(s, "p1", "h1")
    waits = []
    for i in range(20):
        if i:
            s.leave_peer(f"c{i - 1}", 1)
        r = s.register_peer(f"c{i}", "t", "hc", "u", 1)
        assert isinstance(r, Retry) and r.reason == "registration backoff"
        assert s.peer(f"c{i}").schedule_rounds == 0  # a backoff is not a failed round
        waits.append(r.retry_after)
    assert all(0.03 <= w <= 1.0 for w in waits) and len(set(waits)) == len(waits)
    # After the wait the round runs and finds the parent.
    assert isinstance(s.reschedule("c19", (), 2), NormalTask)


def test_back_to_source_limit_caps_concurrent_downloads_not_a_total(bitmap_impl):
    s = make(bitmap_impl, back_to_source_limit=1, retry_back_to_source_limit=0)
    for h in ("h1", "h2", "h3"):
        add_host(s, h)
    assert isinstance(
        s.register_peer("a", "t", "h1", "u", 0, content_length=LENGTH), NeedBackToSource
    )
    s.register_peer("b", "t", "h2", "u", 0)
    s.reschedule("b", ["a"], 0)  # no parent for b: the cap (1) is taken by a
    assert not isinstance(s.reschedule("b", [], 1), NeedBackToSource)
    # a's origin download succeeds: it leaves the set, and b may go now.
    s.download_finished("a", 2)
    assert s.task("t").back_to_source_peers == set()
    assert isinstance(s.reschedule("b", [], 3), NeedBackToSource)


def test_dragonfly_reschedule_blocklists_every_parent_ever_given(bitmap_impl):
    s = make(bitmap_impl)
    for h in ("h1", "h2", "hc"):
        add_host(s, h)
    source_peer(s, "p1", "h1")
    r = s.register_peer("c", "t", "hc", "u", 1)
    assert [p.peer_id for p in r.parents] == ["p1"]
    source_peer(s, "p2", "h2")
    r = s.reschedule("c", (), 2)
    assert [p.peer_id for p in r.parents] == ["p2"] and "p1" in s.peer("c").blocklist


def test_d7y_keeps_serving_parents_and_tops_up(bitmap_impl):
    s = make(bitmap_impl, policy="d7y", candidate_parent_limit=1, max_parents=2)
    for h in ("h1", "h2", "h3", "hc"):
        add_host(s, h)
    source_peer(s, "p1", "h1")
    r = s.register_peer("c", "t", "hc", "u", 1)
    assert [p.peer_id for p in r.parents] == ["p1"]
    source_peer(s, "p2", "h2")
    r = s.reschedule("c", (), 2)  # p1 kept, p2 added
    assert [p.peer_id for p in r.parents] == ["p2"]
    assert s.task("t").dag.parents("c").keys() == {"p1", "p2"}
    source_peer(s, "p3", "h3")
    r = s.reschedule("c", (), 3)  # full: nothing new, not a failed round
    assert isinstance(r, NormalTask) and r.parents == () and s.peer("c").schedule_rounds == 0
    r = s.reschedule("c", ["p1"], 4)  # a bad parent makes room
    assert [p.peer_id for p in r.parents] == ["p3"]
    assert s.task("t").dag.parents("c").keys() == {"p2", "p3"}
    s.verify_invariants()


def _burst(bitmap_impl, source_upload=GBIT, **hosts):
    """d7y (``starting_overflow``): a seed peer on host 'hs' serving from the origin,
    child 'a' just given it (not started), then 'b' registers. Returns the scheduler and
    b's parents."""
    s = make(bitmap_impl, policy="d7y")
    add_host(s, "hs", seed=True, upload_limit_bps=source_upload, **hosts.get("hs", {}))
    for h in ("ha", "hb"):
        add_host(s, h, download_limit_bps=GBIT, **hosts.get(h, {}))
    source_peer(s, "src", "hs")
    assert [p.peer_id for p in s.register_peer("a", "t", "ha", "u", 1).parents] == ["src"]
    assert s.peer("a").state is PeerState.RECEIVED_NORMAL
    return s, [p.peer_id for p in s.register_peer("b", "t", "hb", "u", 2).parents]


def test_d7y_burst_takes_a_starting_peer_before_overfilling_a_capped_parent(bitmap_impl):
    """The parent feeds one child at full speed (1 Gbit/s up, 1 Gbit/s children) and has
    it: a second child would halve both. 'a' was just given parents and relays as soon
    as its first piece lands: 'b' gets 'a', and the parent keeps one child."""
    s, parents = _burst(bitmap_impl)
    assert parents == ["a"]
    assert s.task("t").dag.parents("b").keys() == {"a"}
    assert s.task("t").dag.children("src").keys() == {"a"}
    s.verify_invariants()
    # 'a' starts: it is no longer starting, and b keeps it in its next round.
    s.download_started("a", 3)
    assert s.peer("a") not in s.task("t").starting
    s.reschedule("b", (), 4)
    assert "a" in s.task("t").dag.parents("b")


def test_d7y_burst_overfills_a_parent_when_one_more_child_costs_little(bitmap_impl):
    """A parent that feeds two children (2 Gbit/s up) and has two takes a third (each
    keeps 2/3 of its share, OVERFILL) rather than sending the child to a starting peer."""
    s = make(bitmap_impl, policy="d7y")
    add_host(s, "hs", seed=True, upload_limit_bps=2 * GBIT)
    for h in ("ha", "hx", "hb"):
        add_host(s, h, download_limit_bps=GBIT)
    source_peer(s, "src", "hs")
    s.register_peer("a", "t", "ha", "u", 1)
    s.register_peer("x", "t", "hx", "u", 1)
    assert s.task("t").dag.children("src").keys() == {"a", "x"}
    assert [p.peer_id for p in s.register_peer("b", "t", "hb", "u", 2).parents] == ["src"]


def test_d7y_burst_starting_peer_must_be_as_near_as_the_full_parent(bitmap_impl):
    """Nearest first: a starting peer in another IDC does not replace a full parent in
    the child's own IDC (the child takes the over-full local one)."""
    _, parents = _burst(bitmap_impl, hs={"idc": "east"}, ha={"idc": "west"}, hb={"idc": "east"})
    assert parents == ["src"]
    _, parents = _burst(bitmap_impl, hs={"idc": "east"}, ha={"idc": "east"}, hb={"idc": "east"})
    assert parents == ["a"]


def _with_one_parent(bitmap_impl, content_length: int, full_upload: int = GBIT // 2, **config):
    """d7y: every root is full (one child each: 1 Gbit/s children, parents of at most
    1 Gbit/s up) but 'mine', which child 'c' takes as its first parent; 'c' starts and
    asks for more (the download loop's min_parents). 'full' is slower than the child
    unless ``full_upload`` says otherwise. Returns the scheduler and c's new parents."""
    s = make(bitmap_impl, policy="d7y", **config)  # up to 4 new parents a round
    add_host(s, "hseed", seed=True)
    add_host(s, "hfull", upload_limit_bps=full_upload)
    add_host(s, "hmine")
    for h in ("h1", "h2", "hc"):
        add_host(s, h, download_limit_bps=GBIT)

    def root(pid: str, host: str) -> None:
        r = s.register_peer(pid, "t", host, "u", 0, content_length=content_length)
        if not isinstance(r, NeedBackToSource):
            s.download_started(pid, 0, back_to_source=True)
        s.piece_finished(pid, 0, None, 0.1, "crc32:0", 0)

    # One root at a time, each taking the next child as its one child (the children stay
    # registered, not started: no candidates themselves). A parentless peer keeps to the
    # cap: 'c' takes only 'mine' at registration, though the task has 256 pieces.
    for pid, host, child, child_host in (
        ("seed", "hseed", "c1", "h1"),
        ("full", "hfull", "c2", "h2"),
    ):
        root(pid, host)
        assert [p.peer_id for p in s.register_peer(child, "t", child_host, "u", 1).parents] == [pid]
    root("mine", "hmine")
    assert [p.peer_id for p in s.register_peer("c", "t", "hc", "u", 2).parents] == ["mine"]
    s.download_started("c", 2)
    parents = [p.peer_id for p in s.reschedule("c", (), 3).parents]
    s.verify_invariants()
    return s, parents


def test_d7y_peer_with_a_parent_may_add_a_full_normal_parent_of_a_many_piece_task(bitmap_impl):
    """A 1 GiB task (256 pieces, extra_parent_pieces 32): a full normal parent may take
    up to 8 children as an extra parent; the full seed peer stays at its cap."""
    s, parents = _with_one_parent(bitmap_impl, GiB)
    assert parents == ["full"]
    assert s.task("t").dag.parents("c").keys() == {"mine", "full"}
    assert s.task("t").dag.children("seed").keys() == {"c1"}


@pytest.mark.parametrize(
    ("content_length", "extra_parent_pieces", "added"),
    [
        (100 * MiB, 32, False),  # 25 pieces: fewer than 32, the tree stays a chain
        (GiB, 256, False),  # limit 1 child: 'full' has it
        (GiB, 128, True),  # limit 2 children
        (GiB, 0, False),  # the rule off
    ],
)
def test_d7y_extra_parent_limit_follows_the_piece_count(
    bitmap_impl, content_length, extra_parent_pieces, added
):
    _, parents = _with_one_parent(
        bitmap_impl, content_length, extra_parent_pieces=extra_parent_pieces
    )
    assert parents == (["full"] if added else [])


@pytest.mark.parametrize(("below", "added"), [(1, False), (2, True), (0, True)])
def test_d7y_extra_parents_go_to_peers_with_few_parents(bitmap_impl, below, added):
    """'c' holds one parent: with ``extra_parents_below`` 1 that is enough and it takes
    parents with room only; with 2 (or no bound) it may add the full 'full'."""
    _, parents = _with_one_parent(bitmap_impl, GiB, extra_parents_below=below)
    assert parents == (["full"] if added else [])


@pytest.mark.parametrize(("full_upload", "added"), [(GBIT, True), (GBIT // 2, False)])
def test_d7y_peer_with_one_parent_may_take_a_full_second_one_that_could_feed_it(
    bitmap_impl, full_upload, added
):
    """A 25-piece task (no extra parents by piece count): a peer with one parent still
    takes a full normal parent that could feed it alone (upload >= its download), not a
    slower one, and never the full seed peer; with two parents, none of them."""
    s, parents = _with_one_parent(bitmap_impl, 100 * MiB, full_upload=full_upload)
    assert parents == (["full"] if added else [])
    assert s.task("t").dag.children("seed").keys() == {"c1"}
    if added:
        assert s.reschedule("c", (), 5).parents == ()


def _behind_the_swarm(bitmap_impl, child_pieces: int, **config) -> list[str]:
    """d7y, a 1 GiB task: child 'c' holds four parents (the roots r1-r4, 200 pieces
    each), so the extra-parent rule no longer serves it. 'fin' finished and 'run' holds
    200 pieces; both have one child, 'k' (their cap: 1 Gbit/s up, 1 Gbit/s children).
    'c', holding ``child_pieces``, asks for more. Returns its new parents."""
    s = make(bitmap_impl, policy="d7y", **config)

    def root(pid: str, pieces: int) -> None:
        add_host(s, f"h{pid}")
        r = s.register_peer(pid, "t", f"h{pid}", "u", 0, content_length=GiB)
        if not isinstance(r, NeedBackToSource):
            s.download_started(pid, 0, back_to_source=True)
        for i in range(pieces):
            s.piece_finished(pid, i, None, 0.1, f"crc32:{i}", 0)

    for pid in ("r1", "r2", "r3", "r4"):
        root(pid, 200)
    add_host(s, "hc", download_limit_bps=GBIT)
    assert {p.peer_id for p in s.register_peer("c", "t", "hc", "u", 1).parents} == {
        "r1",
        "r2",
        "r3",
        "r4",
    }
    s.download_started("c", 1)
    for i in range(child_pieces):
        s.piece_finished("c", 255 - i, "r1", 0.1, f"crc32:{255 - i}", 1)
    root("fin", 256)
    s.download_finished("fin", 1)
    root("run", 200)
    add_host(s, "hk", download_limit_bps=GBIT)
    # (k may take 'c' too: it has parents and room)
    assert {"fin", "run"} <= {p.peer_id for p in s.register_peer("k", "t", "hk", "u", 1).parents}
    parents = [p.peer_id for p in s.reschedule("c", (), 2).parents]
    s.verify_invariants()
    return parents


@pytest.mark.parametrize(
    ("child_pieces", "lagging_ratio", "takes_fin"),
    [
        (10, 0.9, True),  # 10 pieces against a mean near 200: behind
        (250, 0.9, False),  # ahead of the swarm: parents with room only
        (10, 0.0, False),  # the rule off
    ],
)
def test_d7y_peer_behind_the_swarm_may_add_a_finished_parent_over_its_cap(
    bitmap_impl, child_pieces, lagging_ratio, takes_fin
):
    """A peer behind the swarm may add a finished parent over its cap (fewer children
    than pieces/32), however many parents it holds; a running parent over its cap is
    not offered to it, nor is the finished one to a peer that is not behind."""
    parents = _behind_the_swarm(bitmap_impl, child_pieces, lagging_ratio=lagging_ratio)
    assert ("fin" in parents) is takes_fin
    assert "run" not in parents


def test_children_cap_divides_a_parent_by_its_childs_relay_rate(bitmap_impl):
    """A 1 Gbit/s seed over children that download at 1 Gbit/s but upload at 200 Mbit/s
    takes five (each passes on only 200 Mbit/s of what it gets); children whose upload
    is as fast as their download, or unknown, count by their download."""
    from d7y.core.scheduling.candidates import children_cap

    s = make(bitmap_impl, policy="d7y")
    add_host(s, "hs", seed=True)
    add_host(s, "slow_up", upload_limit_bps=GBIT // 5, download_limit_bps=GBIT)
    add_host(s, "even", download_limit_bps=GBIT)
    add_host(s, "fast_down", upload_limit_bps=GBIT, download_limit_bps=2 * GBIT)
    add_host(s, "unknown_up", upload_limit_bps=0, download_limit_bps=GBIT // 2)
    seed = s.host("hs")
    assert children_cap(seed, s.host("slow_up"), 1) == 5
    assert children_cap(seed, s.host("slow_up"), 2) == 10
    assert children_cap(seed, s.host("even"), 1) == 1
    assert children_cap(seed, s.host("fast_down"), 1) == 1
    assert children_cap(seed, s.host("unknown_up"), 1) == 2


@pytest.mark.parametrize("overflow", [True, False])
def test_d7y_burst_rule_protects_seed_peers_only(bitmap_impl, overflow):
    """The rule needs a seed peer among the full candidates: a full normal parent is
    over-filled as before (chains of not-yet-started parents slow big crowds), and with
    ``starting_overflow`` off a full seed peer is over-filled too."""
    s = make(bitmap_impl, policy="d7y")
    add_host(s, "hs")
    for h in ("ha", "hb"):
        add_host(s, h, download_limit_bps=GBIT)
    source_peer(s, "src", "hs")
    s.register_peer("a", "t", "ha", "u", 1)
    assert [p.peer_id for p in s.register_peer("b", "t", "hb", "u", 2).parents] == ["src"]
    s = make(bitmap_impl, policy="d7y", starting_overflow=overflow)
    add_host(s, "hs", seed=True)
    for h in ("ha", "hb"):
        add_host(s, h, download_limit_bps=GBIT)
    source_peer(s, "src", "hs")
    s.register_peer("a", "t", "ha", "u", 1)
    parents = [p.peer_id for p in s.register_peer("b", "t", "hb", "u", 2).parents]
    assert parents == (["a"] if overflow else ["src"])


def test_dragonfly_has_no_burst_rule(bitmap_impl):
    """Dragonfly's filter: a peer not started yet is no candidate (ReceivedNormal is a bad
    node), and there is no capacity cap: 'b' gets the source too."""
    s = make(bitmap_impl)
    for h in ("hs", "ha", "hb"):
        add_host(s, h)
    source_peer(s, "src", "hs")
    s.register_peer("a", "t", "ha", "u", 1)
    assert [p.peer_id for p in s.register_peer("b", "t", "hb", "u", 2).parents] == ["src"]


def test_answer_loop_triggers_the_seed_then_retries_until_an_answer(bitmap_impl):
    from d7y.core.scheduling import answers

    s = make(bitmap_impl)
    add_host(s, "s0", seed=True)
    add_host(s, "h1")
    step = answers.first_step(s.register_peer("p1", "t", "h1", "u", 0, content_length=LENGTH))
    assert step.trigger is not None and step.trigger.seed_host_id == "s0"
    assert step.final is None and 0.4 <= step.wait <= 0.6
    s.register_peer("seed", "t", "s0", "u", 0.1)  # the seed peer fetches from the origin
    s.piece_finished("seed", 0, None, 0.1, "crc32:0", 0.2)
    step = answers.resume(s, "p1", 0.5)
    assert step.trigger is None and isinstance(step.final, NormalTask)
    s.leave_peer("p1", 1)
    assert answers.resume(s, "p1", 1.5) is None  # gone meanwhile: nothing to send


def test_config_defaults_are_dragonflys():
    """DESIGN.md section 4's numbers, written out (a changed default must show here)."""
    c = SchedulerConfig(policy="dragonfly")
    assert (c.filter_parent_limit, c.candidate_parent_limit) == (15, 3)
    assert (c.retry_limit, c.retry_back_to_source_limit, c.retry_interval) == (5, 4, 0.5)
    assert (c.back_to_source_limit, c.concurrent_piece_count) == (200, 8)
    assert c.default_piece_length == 4 * 1024 * 1024
    assert (c.piece_cost_window, c.blocklist_after_piece_failures) == (2000, 1)
    assert (c.seed_peer_trigger_timeout, c.hash_ring_vnodes) == (60.0, 100)
    assert c.sample_servable_only is False
    assert (c.children_per_capacity, c.prefer_locality) == (0, False)
    assert (c.extra_parent_pieces, c.extra_parents_below) == (0, 0)


def test_config_defaults_of_the_d7y_policy():
    """The d7y policy's values (docs/simulation.md, "The d7y policy", has the evidence)."""
    c = SchedulerConfig()
    assert (c.policy, c.filter_parent_limit, c.candidate_parent_limit, c.max_parents) == (
        "d7y",
        40,
        4,
        12,
    )
    assert (c.retry_interval, c.concurrent_piece_count, c.children_per_capacity) == (0.2, 4, 1)
    assert (c.extra_parent_pieces, c.extra_parents_below) == (32, 4)
    assert c.sample_servable_only is True and c.prefer_locality is True
    assert (c.register_backoff_min, c.register_backoff_max) == (0.0, 0.0)
    assert c.blocklist_previous_parents is False


def test_config_bounds_are_inclusive():
    SchedulerConfig(retry_jitter=1.0, retry_interval=0.0, host_ttl=0.0)  # the edges are valid
    with pytest.raises(ValueError, match=r"retry_jitter must be in \[0, 1\]"):
        SchedulerConfig(retry_jitter=1.01)
    with pytest.raises(ValueError, match="back_to_source_limit must be >= 0, got -1"):
        SchedulerConfig(back_to_source_limit=-1)
    with pytest.raises(ValueError, match="retry_interval must be a finite number >= 0"):
        SchedulerConfig(retry_interval=-0.1)


def test_early_parents_makes_a_peer_given_parents_a_candidate_before_it_starts(bitmap_impl):
    for early in (False, True):
        spy = SpyEvaluator()
        s = make(bitmap_impl, evaluator=spy, early_parents=early, blocklist_previous_parents=False)
        for h in ("h1", "hx", "hc"):
            add_host(s, h)
        source_peer(s, "ok", "h1")
        s.register_peer("fresh", "t", "hx", "u", 1)  # given 'ok', not started yet
        assert s.peer("fresh").state is PeerState.RECEIVED_NORMAL
        spy.scored.clear()
        s.register_peer("c", "t", "hc", "u", 2)
        assert ("fresh" in {pid for pid, _ in spy.scored}) is early


@pytest.mark.parametrize("limit", [1, 2, 4])
def test_back_to_source_after_exactly_the_failed_rounds(bitmap_impl, limit):
    """retry_back_to_source_limit failed rounds, counting the registration's own: the
    last of them answers NeedBackToSource (the seed triggered by the registration never
    shows up, so nothing serves)."""
    s = make(bitmap_impl, retry_back_to_source_limit=limit)
    add_host(s, "h1")
    add_host(s, "s0", seed=True)
    first = s.register_peer("p", "t", "h1", "http://o/f", 0, content_length=LENGTH)
    assert isinstance(first, TriggerSeedPeer)  # the round ran at once: its result is then
    answers = [first.then]
    while isinstance(answers[-1], Retry) and len(answers) < 10:
        answers.append(s.reschedule("p", [], len(answers)))
    kinds = [type(a).__name__ for a in answers]
    assert kinds == ["Retry"] * (limit - 1) + ["NeedBackToSource"]


def test_results_are_immutable_values():
    """results.py promises plain, immutable result objects: the daemon and the simulator
    may keep and share them. Every dataclass there refuses assignment."""
    import dataclasses

    from d7y.core.scheduling import results

    classes = [
        obj
        for obj in vars(results).values()
        if isinstance(obj, type)
        and dataclasses.is_dataclass(obj)
        and obj.__module__ == results.__name__
    ]
    assert len(classes) >= 10
    for cls in classes:
        assert cls.__dataclass_params__.frozen, cls.__name__
        instance = cls(**{f.name: None for f in dataclasses.fields(cls)})
        with pytest.raises(dataclasses.FrozenInstanceError):
            instance.__setattr__(dataclasses.fields(cls)[0].name, 1)


def test_d7y_peer_with_parents_is_never_offered_its_own_descendant(bitmap_impl):
    """d7y makes the cycle test after choosing the candidates a peer with parents may
    add (to walk the DAG only when one of them has a parent); a descendant with room
    is still never offered. 'c' (parent r1) feeds 'd'; both have room, as has 'x'."""
    s = make(bitmap_impl, policy="d7y")

    def root(pid: str) -> None:
        add_host(s, f"h{pid}")
        r = s.register_peer(pid, "t", f"h{pid}", "u", 0, content_length=GiB)
        if not isinstance(r, NeedBackToSource):
            s.download_started(pid, 0, back_to_source=True)
        s.piece_finished(pid, 0, None, 0.1, "crc32:0", 0)

    root("r1")
    for pid in ("c", "d"):
        add_host(s, f"h{pid}")
        s.register_peer(pid, "t", f"h{pid}", "u", 1)
    s.reschedule("c", (), 1)
    s.download_started("c", 1)
    s.piece_finished("c", 0, "r1", 0.1, None, 1)
    s.reschedule("d", ["r1"], 1)  # d's only candidate left is c
    s.download_started("d", 1)
    s.piece_finished("d", 0, "c", 0.1, None, 1)
    dag = s.task("t").dag
    assert dag.parents("c").keys() == {"r1"} and dag.parents("d").keys() == {"c"}
    root("x")
    parents = [p.peer_id for p in s.reschedule("c", (), 2).parents]
    assert parents == ["x"]
    s.verify_invariants()
    assert dag.is_acyclic()
