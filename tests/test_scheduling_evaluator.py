"""Evaluators: hand-computed scores (the arithmetic is in the comments), bad parents,
and weights that are read at scoring time."""

from __future__ import annotations

import random
import statistics

import pytest

from d7y.core.scheduling import (
    BaseEvaluator,
    HostType,
    LoadAwareEvaluator,
    RandomEvaluator,
    Scheduler,
    SchedulerConfig,
    make_evaluator,
)
from d7y.core.scheduling.evaluator import (
    bandwidth_duration_score,
    concurrency_score,
    host_type_score,
    location_affinity,
    peak_bandwidth_score,
)
from d7y.core.scheduling.resource import Host, Peer, Task
from d7y.core.states import PeerEvent, PeerState

MiB = 1024 * 1024
GBIT = 1_000_000_000


def make_host(host_id: str = "h", **kw) -> Host:
    fields = dict(
        ip="10.0.0.1",
        hostname=host_id,
        port=4000,
        download_port=4005,
        idc="",
        location="",
        type=HostType.NORMAL,
        upload_limit_bps=GBIT,
        concurrent_upload_limit=50,
        now=0.0,
    )
    fields.update(kw)
    return Host(host_id, **fields)


_PATHS = {
    PeerState.PENDING: [],
    PeerState.RECEIVED_NORMAL: [PeerEvent.REGISTER_NORMAL],
    PeerState.RECEIVED_EMPTY: [PeerEvent.REGISTER_EMPTY],
    PeerState.RECEIVED_TINY: [PeerEvent.REGISTER_TINY],
    PeerState.RECEIVED_SMALL: [PeerEvent.REGISTER_SMALL],
    PeerState.RUNNING: [PeerEvent.REGISTER_NORMAL, PeerEvent.DOWNLOAD],
    PeerState.BACK_TO_SOURCE: [PeerEvent.REGISTER_NORMAL, PeerEvent.DOWNLOAD_BACK_TO_SOURCE],
    PeerState.SUCCEEDED: [PeerEvent.REGISTER_NORMAL, PeerEvent.DOWNLOAD_SUCCEEDED],
    PeerState.FAILED: [PeerEvent.REGISTER_NORMAL, PeerEvent.DOWNLOAD_FAILED],
    PeerState.LEAVE: [PeerEvent.LEAVE],
}


def make_peer(
    host: Host,
    state: PeerState = PeerState.RUNNING,
    pieces: int = 0,
    total: int = 100,
    bitmap_impl=None,
    window: int = 2000,
) -> Peer:
    from d7y.ext.bitmap import backend

    bitmaps = bitmap_impl or backend
    task = Task("t", "http://o/f", content_length=None, piece_length=None, piece_count=None, now=0)
    bm = bitmaps.Bitmap(total)
    for i in range(pieces):
        bm.set(i)
    peer = Peer(
        f"peer-{host.id}",
        task,
        host,
        finished=bm,
        concurrent_piece_count=16,
        cost_window=window,
        need_back_to_source=False,
        now=0.0,
    )
    peer.finished_count = pieces
    for event in _PATHS[state]:
        peer.fsm.fire(event)
    assert peer.fsm.state is state
    return peer


# --- load-aware: DESIGN.md section 4 exactly ------------------------------------------


def test_load_aware_hand_computed_normal_parent():
    parent_host = make_host(
        "p",
        upload_limit_bps=GBIT,
        idc="IDC-A",
        location="cn|zj|hz|az1|r1|x",
    )
    parent_host.tx_bandwidth = 250_000_000
    parent_host.upload_content_length = 1_875_000_000
    parent_host.concurrent_upload_piece_count = 10
    child_host = make_host("c", idc="idc-a", location="CN|ZJ|sh|az1")
    parent = make_peer(parent_host)
    child = make_peer(child_host)
    # peak_bw     = 1 - 250e6/1e9                              = 0.75
    # bw_duration = 1 - 1.875e9*8/1e9/60 = 1 - 15/60           = 0.75
    # need        = 1e9/(16 MiB*8) = 1e9/134217728             = 7.450580596923828
    # concurrency = count 10 > need -> need/10                 = 0.7450580596923828
    # load        = 0.5*0.75 + 0.3*0.75 + 0.2*0.74505805969... = 0.7490116119384766
    # idc         = "IDC-A" == "idc-a" ignoring case           = 1
    # location    = cn, zj equal, hz != sh -> 2/5              = 0.4
    # host_type   = normal                                     = 0.5
    # total = 0.6*0.7490116119384766 + 0.2*1 + 0.1*0.4 + 0.1*0.5 = 0.7394069671630859
    assert peak_bandwidth_score(parent_host) == pytest.approx(0.75)
    assert bandwidth_duration_score(parent_host) == pytest.approx(0.75)
    assert concurrency_score(parent_host) == pytest.approx(7.450580596923828 / 10)
    ev = LoadAwareEvaluator()
    assert ev.load_quality(parent_host) == pytest.approx(0.7490116119384766, rel=1e-12)
    assert ev.score(parent, child, 100) == pytest.approx(0.7394069671630859, rel=1e-12)


@pytest.mark.parametrize(
    "state, host_type",
    [
        (PeerState.RECEIVED_NORMAL, 1.0),  # received its task: the first download goes here
        (PeerState.RUNNING, 1.0),  # running from a parent
        (PeerState.BACK_TO_SOURCE, 0.0),  # fetching from the origin: Dragonfly scores 0
        (PeerState.SUCCEEDED, 0.0),
    ],
)
def test_load_aware_hand_computed_idle_seed_by_state(state, host_type):
    seed = make_host("s", type=HostType.SEED, upload_limit_bps=10 * GBIT, idc="x")
    parent = make_peer(seed, state)
    child = make_peer(make_host("c", idc="y"))
    # peak 1, duration 1 (nothing queued), need = 1e10/134217728 = 74.5 > 1 and count 0
    # -> concurrency 1; load = 0.5 + 0.3 + 0.2 = 1
    # idc x != y -> 0; location empty -> 0; host type by state
    # total = 0.6*1 + 0 + 0 + 0.1*host_type
    assert host_type_score(parent) == host_type
    assert LoadAwareEvaluator().score(parent, child, 0) == pytest.approx(0.6 + 0.1 * host_type)


def test_load_aware_zero_and_saturated_capacity():
    # max_tx 0: every load sub-score is 0 (nothing to divide by), as in Dragonfly.
    host = make_host("z", upload_limit_bps=0)
    host.upload_content_length = 0
    assert peak_bandwidth_score(host) == 0.0
    assert bandwidth_duration_score(host) == 0.0
    assert concurrency_score(host) == 0.0
    # Over-reserved and over-queued: clamped at 0, never negative.
    busy = make_host("b", upload_limit_bps=GBIT)
    busy.tx_bandwidth = 3 * GBIT
    busy.upload_content_length = 10 * GBIT  # 80e9 bits / 1e9 / 60 = 1.33 -> 0
    assert peak_bandwidth_score(busy) == 0.0
    assert bandwidth_duration_score(busy) == 0.0
    # 100 Mbit/s: need = 1e8/134217728 = 0.745 <= 1 -> concurrency 0 even when idle.
    slow = make_host("s", upload_limit_bps=100_000_000)
    assert concurrency_score(slow) == 0.0
    # count <= need -> 1 (need 7.45 at 1 Gbit/s, count 7).
    g = make_host("g", upload_limit_bps=GBIT)
    g.concurrent_upload_piece_count = 7
    assert concurrency_score(g) == 1.0


def test_load_aware_seed_states_and_empty_affinity():
    child = make_peer(make_host("c"))
    seed = make_host("s", type=HostType.SEED, upload_limit_bps=0)
    # A seed that finished the task is "seed otherwise": 0. Normal: 0.5. Running seed: 1.
    assert host_type_score(make_peer(seed, PeerState.SUCCEEDED)) == 0.0
    assert host_type_score(make_peer(seed, PeerState.RUNNING)) == 1.0
    assert host_type_score(make_peer(make_host("n"))) == 0.5
    # Empty IDCs on both sides do not match (unknown is not evidence of closeness).
    a, b = make_host("a", idc="", location=""), make_host("b", idc="", location="")
    assert LoadAwareEvaluator().score(make_peer(a), make_peer(b), 0) == pytest.approx(
        0.6 * (0.5 * 1 + 0.3 * 1 + 0.2 * 1) + 0.1 * 0.5  # idle 1 Gbit/s normal host: 0.65
    )
    # 0.6*0 (no capacity) + 0.2*0 + 0.1*0 + 0.1*0 (finished seed) = 0
    assert LoadAwareEvaluator().score(make_peer(seed, PeerState.SUCCEEDED), child, 0) == 0.0


def test_location_affinity_rules():
    def loc(a: str, b: str, full: bool = False) -> float:
        return location_affinity(make_host("a", location=a), make_host("b", location=b), full)

    assert loc("a|b|c|d|e|f", "a|b|c|d|e|g") == 1.0  # 5 equal, capped at 5 -> 5/5
    assert loc("a|b|c", "a|b|x") == pytest.approx(0.4)
    assert loc("a|b", "a|b") == pytest.approx(0.4)  # DESIGN: count/5
    assert loc("a|b", "a|b", full=True) == 1.0  # Dragonfly base: identical -> 1
    assert loc("A|B", "a|b|c") == pytest.approx(0.4)  # case-insensitive
    assert loc("x|b", "a|b") == 0.0  # leading elements only
    assert loc("", "a") == 0.0 and loc("a", "") == 0.0


# --- base evaluator (Dragonfly's evaluator_base.go) --------------------------------


def test_base_evaluator_hand_computed():
    ph = make_host("p", idc="hz", location="a|b")
    ph.upload_count = 10
    ph.upload_failed_count = 2
    ph.concurrent_upload_count = 10  # limit 50 -> 40 free
    parent = make_peer(ph, pieces=30, total=100)
    child = make_peer(make_host("c", idc="HZ", location="a|b"), pieces=10, total=100)
    # pieces   = 30/100                 = 0.3
    # success  = (10 - 2)/10            = 0.8
    # free     = 40/50                  = 0.8
    # type     = normal                 = 0.5
    # idc      = equal                  = 1
    # location = identical              = 1
    # total = 0.2*0.3 + 0.2*0.8 + 0.15*0.8 + 0.15*0.5 + 0.15*1 + 0.15*1
    #       = 0.06 + 0.16 + 0.12 + 0.075 + 0.15 + 0.15 = 0.715
    assert BaseEvaluator().score(parent, child, 100) == pytest.approx(0.715)


def test_base_evaluator_unknown_total_and_edge_cases():
    ph = make_host("p", concurrent_upload_limit=50)
    ph.upload_count = 1
    ph.upload_failed_count = 3  # more failures than uploads -> 0
    ph.concurrent_upload_count = 50  # no free slot -> 0
    parent = make_peer(ph, pieces=30, total=100)
    child = make_peer(make_host("c"), pieces=10, total=100)
    # total unknown: pieces = 30 - 10 = 20 (unbounded, as in Dragonfly)
    # 0.2*20 + 0.2*0 + 0.15*0 + 0.15*0.5 + 0 + 0 = 4.075
    assert BaseEvaluator().score(parent, child, 0) == pytest.approx(4.075)
    fresh = make_host("f")  # never uploaded: success 1, 50/50 free -> 1
    # 0.2*0 + 0.2*1 + 0.15*1 + 0.15*0.5 = 0.425
    assert BaseEvaluator().score(make_peer(fresh), child, 100) == pytest.approx(0.425)


# --- weights are read at scoring time -----------------------------------------------


def test_changing_a_weight_changes_the_score(monkeypatch):
    parent = make_peer(make_host("p", idc="a"))
    child = make_peer(make_host("c", idc="a"))
    ev = LoadAwareEvaluator()
    before = ev.score(parent, child, 0)  # 0.6*1 + 0.2*1 + 0 + 0.1*0.5 = 0.85
    assert before == pytest.approx(0.85)
    monkeypatch.setattr(LoadAwareEvaluator, "IDC_WEIGHT", 0.5)
    assert ev.score(parent, child, 0) == pytest.approx(1.15)
    monkeypatch.setattr(LoadAwareEvaluator, "PEAK_BANDWIDTH_WEIGHT", 0.0)
    # load = 0.3 + 0.2 = 0.5 -> 0.6*0.5 + 0.5 + 0.05 = 0.85
    assert ev.score(parent, child, 0) == pytest.approx(0.85)
    monkeypatch.setattr(BaseEvaluator, "HOST_TYPE_WEIGHT", 1.0)
    base = BaseEvaluator()
    # 0.2*0 + 0.2*1 + 0.15*1 + 1.0*0.5 + 0.15*1 + 0 = 1.0
    assert base.score(parent, child, 100) == pytest.approx(1.0)


def _decide(bitmap_impl, idc_weight=None) -> str:
    """Which of two parents the scheduler picks: 'near' (same IDC, busy) or 'far'."""
    sched = Scheduler(  # Dragonfly's rules: the weights alone decide
        SchedulerConfig(
            policy="dragonfly",
            candidate_parent_limit=1,
            max_parents=1,
            register_backoff_min=0.0,
            register_backoff_max=0.0,
        ),
        rng=random.Random(5),
        bitmaps=bitmap_impl,
    )
    if idc_weight is not None:
        sched.evaluator.IDC_WEIGHT = idc_weight  # instance attribute, read per score
    for name, idc in (("near", "a"), ("far", "b"), ("child", "a")):
        sched.announce_host(name, 0, ip=name, hostname=name, idc=idc, upload_limit_bps=GBIT)
    for name in ("near", "far"):
        sched.register_peer(name, "t", name, "u", 0, content_length=100 * MiB)
        sched.download_started(name, 0, back_to_source=True)
        sched.piece_finished(name, 0, None, 0.1, None, 0)
    # Load the near host: half its bandwidth reserved, long queue.
    near = sched.host("near")
    near.tx_bandwidth = GBIT // 2
    near.upload_content_length = 3_000_000_000
    result = sched.register_peer("c", "t", "child", "u", 1)
    return result.parents[0].host_id


def test_changing_a_weight_changes_the_decision(bitmap_impl):
    # near: peak 1 - 0.5 = 0.5; duration 1 - 3e9*8/1e9/60 = 1 - 0.4 = 0.6; concurrency 1
    #       load = 0.5*0.5 + 0.3*0.6 + 0.2*1 = 0.63
    #       total = 0.6*0.63 + 0.2*1 + 0.1*0.5 = 0.628
    # far:  load 1 -> 0.6*1 + 0.2*0 + 0.1*0.5 = 0.65  -> far wins by default
    assert _decide(bitmap_impl) == "far"
    # IDC weight 0.5: near 0.378 + 0.5 + 0.05 = 0.928 > far 0.65
    assert _decide(bitmap_impl, idc_weight=0.5) == "near"


# --- random evaluator -----------------------------------------------------------------


def test_random_evaluator_is_seeded():
    p = make_peer(make_host("p"))
    c = make_peer(make_host("c"))
    a = [RandomEvaluator(random.Random(3)).score(p, c, 0) for _ in range(1)]
    b = [RandomEvaluator(random.Random(3)).score(p, c, 0) for _ in range(1)]
    assert a == b
    with pytest.raises(TypeError):
        RandomEvaluator(3)  # type: ignore[arg-type]
    assert isinstance(make_evaluator("random", random.Random(1)), RandomEvaluator)
    assert isinstance(make_evaluator("base", random.Random(1)), BaseEvaluator)
    with pytest.raises(ValueError, match="unknown evaluator"):
        make_evaluator("ml", random.Random(1))


# --- bad parents ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "state",
    [
        PeerState.PENDING,
        PeerState.RECEIVED_NORMAL,
        PeerState.RECEIVED_SMALL,
        PeerState.RECEIVED_TINY,
        PeerState.RECEIVED_EMPTY,
        PeerState.FAILED,
        PeerState.LEAVE,
    ],
)
def test_bad_parent_by_state(state):
    assert LoadAwareEvaluator().is_bad_parent(make_peer(make_host("p"), state))


@pytest.mark.parametrize(
    "state", [PeerState.RUNNING, PeerState.BACK_TO_SOURCE, PeerState.SUCCEEDED]
)
def test_good_states_without_costs(state):
    peer = make_peer(make_host("p"), state)
    assert not LoadAwareEvaluator().is_bad_parent(peer)
    peer.record_cost(1000.0)  # one sample: too few to judge
    assert not BaseEvaluator().is_bad_parent(peer)


def test_bad_parent_twenty_times_mean_before_window_full():
    ev = LoadAwareEvaluator()
    peer = make_peer(make_host("p"), window=100)
    for cost in (1.0, 2.0, 3.0):
        peer.record_cost(cost)
    # mean of the others (1, 2, 3 before the newest) ... newest 40: mean(1,2,3) = 2,
    # 40 > 20*2 = 40? no (strictly greater needed)
    peer.record_cost(40.0)
    assert not ev.is_bad_parent(peer)
    # newest 61: others 1, 2, 3, 40 -> mean 11.5 -> 230 > 61: fine
    peer.record_cost(61.0)
    assert not ev.is_bad_parent(peer)
    # others 1, 2, 3, 40, 61 -> mean 21.4 -> 428 < 429: bad
    peer.record_cost(429.0)
    assert ev.is_bad_parent(peer)


def test_bad_parent_three_sigma_once_window_full():
    ev = LoadAwareEvaluator()
    peer = make_peer(make_host("p"), window=10)
    others = [1.0, 2.0, 3.0, 4.0, 5.0, 1.0, 2.0, 3.0, 4.0]
    for cost in others:
        peer.record_cost(cost)
    mean = statistics.fmean(others)  # 25/9 = 2.777...
    sd = statistics.pstdev(others)  # population, like Dragonfly's stats.StandardDeviation
    threshold = mean + 3 * sd  # 2.777... + 3*1.3147... = 6.72
    peer.record_cost(threshold * 0.999)  # window now full (10)
    assert len(peer.piece_costs) == 10
    assert not ev.is_bad_parent(peer)
    # Below 20x the mean (55.6) but above three sigma: bad only under the sigma rule.
    peer2 = make_peer(make_host("q"), window=10)
    for cost in others:
        peer2.record_cost(cost)
    peer2.record_cost(threshold * 1.01)
    assert ev.is_bad_parent(peer2)


def test_cost_window_running_sums_stay_exact():
    peer = make_peer(make_host("p"), window=50)
    rng = random.Random(7)
    costs = [rng.uniform(0.01, 5.0) for _ in range(1234)]
    for cost in costs:
        peer.record_cost(cost)
    window = costs[-50:]
    assert list(peer.piece_costs) == window
    assert peer.cost_sum == pytest.approx(sum(window), rel=1e-9)
    assert peer.cost_sq_sum == pytest.approx(sum(c * c for c in window), rel=1e-9)


@pytest.mark.parametrize(
    ("state", "host_type"),
    [
        (PeerState.RECEIVED_NORMAL, 1.0),  # registered for the task: about to serve it
        (PeerState.RUNNING, 1.0),
        (PeerState.SUCCEEDED, 0.0),
        (PeerState.FAILED, 0.0),
    ],
)
def test_seed_host_type_by_state_through_score(state, host_type):
    """A seed peer that has received a NORMAL task scores as a serving seed (host
    type 1), like a running one; a finished or failed seed scores 0 -- checked through
    ``score`` of both evaluators that weigh host type. The seed host has no upload
    capacity and no affinity, so the score is the host-type term alone."""
    seed = make_host("s", type=HostType.SEED, upload_limit_bps=0)
    parent = make_peer(seed, state)
    child = make_peer(make_host("c"))
    load_aware = LoadAwareEvaluator()
    assert load_aware.score(parent, child, 0) == pytest.approx(
        load_aware.HOST_TYPE_WEIGHT * host_type
    )
    base = BaseEvaluator()
    base_without_host_type = base.score(make_peer(seed, PeerState.SUCCEEDED), child, 100)
    assert base.score(parent, child, 100) == pytest.approx(
        base_without_host_type + base.HOST_TYPE_WEIGHT * host_type
    )


def test_equal_costs_are_not_bad_despite_rounding():
    # Ten equal costs of 0.3 leave a variance of about -3e-17 after rounding: it must
    # count as 0 (no math domain error), and an equal newest cost is not an outlier.
    peer = make_peer(make_host("p"), window=10)
    for _ in range(10):
        peer.record_cost(0.3)
    assert not LoadAwareEvaluator().is_bad_parent(peer)


def test_bandwidth_duration_is_its_own_sub_score():
    # Nothing reserved (peak 1) but 3.75 GB queued on 1 Gbit/s: 30 of 60 s -> 0.5.
    host = make_host("h", upload_limit_bps=GBIT)
    host.upload_content_length = 3_750_000_000
    assert peak_bandwidth_score(host) == 1.0
    assert bandwidth_duration_score(host) == pytest.approx(0.5)
