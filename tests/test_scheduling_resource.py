"""Resources: the per-task DAG, the indexed set, the seed hash ring and the config."""

from __future__ import annotations

import dataclasses
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d7y.core.scheduling import DAG, HashRing, SchedulerConfig
from d7y.core.scheduling.resource import CostWindow, IndexedSet

# --- DAG ----------------------------------------------------------------------------------


def dag_of(*vertices: str) -> DAG:
    dag = DAG()
    for v in vertices:
        dag.add_vertex(v)
    return dag


def test_dag_refuses_cycles_self_loops_and_duplicates():
    dag = dag_of("a", "b", "c", "d")
    assert dag.add_edge("a", "b", 1)
    assert dag.add_edge("b", "c", 2)
    assert not dag.add_edge("c", "a")  # a -> b -> c -> a
    assert not dag.add_edge("a", "a")
    assert not dag.add_edge("a", "b")  # exists
    assert dag.add_edge("a", "c")  # a shortcut is not a cycle
    assert dag.add_edge("d", "a")
    assert not dag.add_edge("c", "d")  # d -> a -> c -> d
    assert dag.is_acyclic()
    assert dag.edge_count() == 4
    with pytest.raises(KeyError, match="add it first"):
        dag.add_edge("a", "zz")


def test_dag_degrees_descendants_and_deletion():
    dag = dag_of("a", "b", "c", "d")
    dag.add_edge("a", "b", "ab")
    dag.add_edge("a", "c", "ac")
    dag.add_edge("b", "d", "bd")
    dag.add_edge("c", "d", "cd")
    assert (dag.in_degree("d"), dag.out_degree("a")) == (2, 2)
    assert dag.descendants("a") == {"b", "c", "d"}
    assert dag.descendants("d") == set()
    assert dag.delete_edge("a", "b") == "ab"
    with pytest.raises(KeyError):
        dag.delete_edge("a", "b")
    assert sorted(dag.delete_in_edges("d")) == [("b", "d", "bd"), ("c", "d", "cd")]
    assert dag.in_degree("d") == 0 and dag.out_degree("b") == 0
    assert dag.delete_vertex("a") == [("a", "c", "ac")]
    assert "a" not in dag and dag.in_degree("c") == 0
    assert len(dag) == 3


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 11), st.integers(0, 11), st.booleans()), max_size=150))
def test_dag_never_has_a_cycle(ops):
    dag = dag_of(*(str(i) for i in range(12)))
    edges: set[tuple[str, str]] = set()
    for a, b, add in ops:
        p, c = str(a), str(b)
        if add:
            if dag.add_edge(p, c):
                edges.add((p, c))
        elif (p, c) in edges:
            dag.delete_edge(p, c)
            edges.discard((p, c))
        assert dag.is_acyclic()
    assert {(p, c) for p, c, _ in dag.edges()} == edges
    assert dag.is_consistent()  # the walk's child lists mirror the edges


def test_indexed_set():
    s: IndexedSet[str] = IndexedSet()
    for x in "abcde":
        s.add(x)
    s.add("a")
    s.discard("b")
    s.discard("zz")
    assert sorted(s) == ["a", "c", "d", "e"] and len(s) == 4 and "b" not in s
    s.discard("e")  # the last one
    assert sorted(s.items) == ["a", "c", "d"]
    for x in "acd":
        s.discard(x)
    assert len(s) == 0


# --- hash ring ------------------------------------------------------------------------------

KEYS = [f"task-{i}" for i in range(4000)]


def test_ring_basics():
    ring = HashRing(vnodes=50)
    assert ring.get("k") is None and list(ring.iter_nodes("k")) == []
    ring.add("s1")
    assert ring.get("k") == "s1"
    ring.add("s2")
    ring.add("s3")
    order = list(ring.iter_nodes("k"))
    assert sorted(order) == ["s1", "s2", "s3"] and order[0] == ring.get("k")
    assert len(ring) == 3 and "s2" in ring
    with pytest.raises(ValueError):
        HashRing(vnodes=0)
    with pytest.raises(TypeError):
        ring.add(3)  # type: ignore[arg-type]


def test_ring_is_independent_of_insertion_order():
    nodes = [f"seed-{i}" for i in range(7)]
    a = HashRing(nodes)
    b = HashRing(reversed(nodes))
    assert [a.get(k) for k in KEYS] == [b.get(k) for k in KEYS]


def test_ring_balance():
    ring = HashRing([f"seed-{i}" for i in range(5)], vnodes=100)
    counts: dict[str, int] = {}
    for k in KEYS:
        node = ring.get(k)
        counts[node] = counts.get(node, 0) + 1
    # 800 keys each on average; 100 virtual nodes keep every share within +-35 %.
    assert len(counts) == 5 and all(520 < c < 1080 for c in counts.values())


def test_ring_is_stable_when_a_seed_is_added_or_removed():
    nodes = [f"seed-{i}" for i in range(5)]
    ring = HashRing(nodes)
    before = {k: ring.get(k) for k in KEYS}
    ring.add("seed-new")
    after = {k: ring.get(k) for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert all(after[k] == "seed-new" for k in moved)  # keys only move to the new node
    assert 0.08 < len(moved) / len(KEYS) < 0.26  # about 1/6 of them
    ring.remove("seed-new")
    assert {k: ring.get(k) for k in KEYS} == before
    ring.remove("seed-2")
    after = {k: ring.get(k) for k in KEYS}
    moved = [k for k in KEYS if before[k] != after[k]]
    assert {before[k] for k in moved} == {"seed-2"}  # only seed-2's keys move
    assert all(after[k] == list(HashRing(nodes).iter_nodes(k))[1] for k in moved)


# --- config --------------------------------------------------------------------------------


def test_config_defaults_follow_dragonfly():
    cfg = SchedulerConfig(policy="dragonfly")
    assert (cfg.filter_parent_limit, cfg.candidate_parent_limit, cfg.max_parents) == (15, 3, 3)
    assert (cfg.register_backoff_min, cfg.register_backoff_max) == (0.03, 1.0)
    assert cfg.blocklist_previous_parents and not cfg.sample_servable_only
    assert (cfg.peer_concurrent_upload_limit, cfg.seed_peer_concurrent_upload_limit) == (
        200,
        2000,
    )
    assert (cfg.retry_limit, cfg.retry_back_to_source_limit, cfg.retry_interval) == (5, 4, 0.5)
    assert cfg.back_to_source_limit == 200
    assert (cfg.piece_download_timeout, cfg.peer_ttl, cfg.host_ttl, cfg.task_ttl) == (
        1800.0,
        86400.0,
        3600.0,
        86400.0,
    )
    assert cfg.piece_cost_window == 2000


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("filter_parent_limit", 0, ValueError),
        ("candidate_parent_limit", 1.5, TypeError),
        ("retry_interval", -1, ValueError),
        ("retry_jitter", 2, ValueError),
        ("peer_ttl", float("nan"), ValueError),
        ("algorithm", "ml", ValueError),
        ("sample_servable_only", 1, TypeError),
        ("back_to_source_limit", True, TypeError),
    ],
)
def test_config_validation(field, value, error):
    with pytest.raises(error, match=field if field != "algorithm" else "unknown"):
        SchedulerConfig(**{field: value})


def test_d7y_is_the_default_policy_and_fields_override_it():
    cfg = SchedulerConfig()
    assert cfg.policy == "d7y"
    assert cfg.max_parents > cfg.candidate_parent_limit  # parents are topped up
    assert cfg.register_backoff_max == 0 and not cfg.blocklist_previous_parents
    assert SchedulerConfig(candidate_parent_limit=2).candidate_parent_limit == 2
    with pytest.raises(ValueError, match="max_parents"):
        SchedulerConfig(policy="dragonfly", max_parents=2)
    with pytest.raises(ValueError, match="policy 'bittorrent' is unknown"):
        SchedulerConfig(policy="bittorrent")


def test_config_is_frozen_and_replaceable():
    cfg = SchedulerConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.retry_limit = 9  # type: ignore[misc]
    assert dataclasses.replace(cfg, retry_limit=9).retry_limit == 9


# --- CostWindow ---------------------------------------------------------------------------


@given(st.lists(st.floats(0, 1e6), max_size=60), st.integers(1, 12))
def test_cost_window_reads_like_a_bounded_deque(costs, maxlen):
    window, reference = CostWindow(maxlen), deque(maxlen=maxlen)
    for cost in costs:
        full = len(reference) == maxlen
        oldest = reference[0] if full else None
        assert window.append(cost) == oldest  # what the append pushed out
        reference.append(cost)
        assert list(window) == list(reference)
        assert len(window) == len(reference)
        assert window[-1] == reference[-1] and window[0] == reference[0]
    assert window.maxlen == maxlen
    with pytest.raises(IndexError):
        window[len(reference)]


def test_cost_window_needs_room_for_a_sample():
    with pytest.raises(ValueError, match="maxlen=0"):
        CostWindow(0)


def test_ring_points_are_pinned():
    """Schedulers of different versions must send a task to the same seed: the point
    hash (BLAKE2b, 8 bytes, big-endian, of "<node>#<i>") and 100 points per node are
    part of the contract."""
    from d7y.core.scheduling import hashring

    assert hashring._hash("seed-a#0") == 3702276151240210450
    ring = HashRing(["seed-a", "seed-b", "seed-c"])
    assert ring.vnodes == 100 and len(ring._hashes) == 300
    assert [ring.get(f"task-{i}") for i in range(6)] == [
        "seed-a", "seed-a", "seed-a", "seed-b", "seed-a", "seed-b",
    ]  # fmt: skip


def test_ring_point_collisions_are_broken_by_node_name(monkeypatch):
    """With 64-bit points a collision is astronomically rare, so force them: a hash of
    three values. The ring must still not depend on insertion order."""
    from d7y.core.scheduling import hashring

    monkeypatch.setattr(hashring, "_hash", lambda text: sum(text.encode()) % 3)
    nodes = ["n3", "n1", "n2", "n0"]
    rings = [HashRing(order, vnodes=4) for order in (nodes, sorted(nodes), nodes[::-1])]
    layouts = {tuple(zip(r._hashes, r._owners, strict=True)) for r in rings}
    assert len(layouts) == 1
    (layout,) = layouts
    assert list(layout) == sorted(layout)  # by point, then by node name
    assert len(layout) == 16


@pytest.mark.parametrize("vnodes", [0, -1, True, 1.5])
def test_ring_vnodes_must_be_a_positive_int(vnodes):
    with pytest.raises(ValueError, match="vnodes must be an int >= 1"):
        HashRing(vnodes=vnodes)


def test_ring_with_one_point_per_node():
    ring = HashRing(["a", "b"], vnodes=1)
    assert len(ring._hashes) == 2 and {ring.get(f"k{i}") for i in range(50)} <= {"a", "b"}
    assert sorted(ring.iter_nodes("k0")) == ["a", "b"]


def test_cost_sums_are_exact_after_every_full_window():
    """The running sums are recomputed exactly once per window of appends (their
    rounding drift stays bounded): after 100 appends to a window of 50 they equal
    math.fsum of the window bit for bit; before the first window they are plain sums."""
    import math
    import random as _random

    from tests.test_scheduling_evaluator import make_host, make_peer

    peer = make_peer(make_host("p"), window=50)
    peer.record_cost(1.0)
    peer.record_cost(2.0)
    assert (peer.cost_sum, peer.cost_sq_sum) == (3.0, 5.0)
    peer = make_peer(make_host("p"), window=50)
    rng = _random.Random(3)
    for _ in range(100):
        peer.record_cost(rng.uniform(0.01, 5.0))
    window = list(peer.piece_costs)
    assert peer.cost_sum == math.fsum(window)
    assert peer.cost_sq_sum == math.fsum(c * c for c in window)


def test_free_upload_slots_and_long_locations():
    from d7y.core.scheduling.evaluator import location_affinity
    from tests.test_scheduling_evaluator import make_host

    host = make_host("h", concurrent_upload_limit=50)
    host.concurrent_upload_count = 12
    assert host.free_upload_count == 38
    # Only the first five location elements count: six equal ones are a full match (1).
    six = "a|b|c|d|e|f"
    assert location_affinity(make_host("x", location=six), make_host("y", location=six)) == 1.0
