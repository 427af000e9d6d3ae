import pytest

from d7y.core.eviction import StoredTask, select_evictions

MB = 1_000_000


def run(tasks, **kw):
    args = dict(now=1000.0, ttl=0, used=0, capacity=0, high_watermark=0.8, low_watermark=0.6)
    args.update(kw)
    return select_evictions(tasks, **args)


def test_ttl_expiry():
    tasks = [StoredTask("old", MB, 100.0), StoredTask("new", MB, 990.0)]
    assert run(tasks, ttl=500) == ["old"]
    assert run(tasks, ttl=0) == []  # ttl 0 disables expiry


def test_watermark_evicts_lru_down_to_low():
    tasks = [StoredTask(f"t{i}", 10 * MB, float(i)) for i in range(10)]
    # 100 MB used of 110: above 80 %; evict LRU until <= 66 MB -> 4 tasks (60 MB left)
    assert run(tasks, used=100 * MB, capacity=110 * MB) == ["t0", "t1", "t2", "t3"]


def test_below_high_watermark_nothing_happens():
    tasks = [StoredTask("a", 10 * MB, 0.0)]
    assert run(tasks, used=80 * MB, capacity=100 * MB) == []


def test_busy_tasks_are_never_evicted():
    tasks = [StoredTask("busy", 50 * MB, 0.0), StoredTask("idle", 10 * MB, 1.0)]
    got = run(tasks, used=95 * MB, capacity=100 * MB, busy={"busy"}, ttl=1)
    assert got == ["idle"]


def test_bad_watermarks():
    with pytest.raises(ValueError, match=r"low=0\.9 high=0\.8"):
        run([], low_watermark=0.9)


@pytest.mark.parametrize(("low", "high"), [(0.0, 0.8), (-0.5, 0.8), (0.6, 1.5), (0.6, 0.6)])
def test_watermarks_outside_zero_to_one_are_refused(low, high):
    with pytest.raises(ValueError, match="0 < low < high <= 1"):
        run([], low_watermark=low, high_watermark=high)


def test_high_watermark_of_one_is_allowed():
    tasks = [StoredTask("a", 10 * MB, 0.0), StoredTask("b", 10 * MB, 1.0)]
    # Full (70 of 70 MB) is not above 100 %; 71 MB is: evict down to 42 MB (60 %).
    assert run(tasks, used=70 * MB, capacity=70 * MB, high_watermark=1.0) == []
    assert run(tasks, used=71 * MB, capacity=70 * MB, high_watermark=1.0) == ["a", "b"]


def test_ttl_boundary_and_fractional_ttl():
    tasks = [StoredTask("edge", MB, 500.0), StoredTask("young", MB, 500.5)]
    # accessed exactly ttl seconds ago: expired; half a second later: not yet
    assert run(tasks, now=1000.0, ttl=500) == ["edge"]
    assert run(tasks, now=1000.0, ttl=0.5) == ["edge", "young"]


def test_zero_capacity_disables_the_watermark_and_one_byte_counts():
    tasks = [StoredTask("a", MB, 0.0)]
    assert run(tasks, used=50 * MB, capacity=0) == []  # unknown capacity: no watermark
    assert run(tasks, used=1, capacity=1) == ["a"]  # 1 of 1 byte is above 80 %


def test_watermark_eviction_stops_exactly_at_the_low_watermark():
    tasks = [StoredTask(f"t{i}", 10 * MB, float(i)) for i in range(5)]
    # 90 of 100 MB; low watermark 60 MB: three go (60 MB left == low), not a fourth.
    assert run(tasks, used=90 * MB, capacity=100 * MB) == ["t0", "t1", "t2"]


def test_watermark_eviction_goes_on_past_tasks_the_ttl_already_chose():
    tasks = [
        StoredTask("expired", 10 * MB, 0.0),
        StoredTask("lru", 10 * MB, 900.0),
        StoredTask("next", 10 * MB, 950.0),
    ]
    # TTL takes 'expired' (95 -> 85 MB); still above 80: LRU order skips the task
    # already chosen and takes 'lru' and 'next' (65 MB left, the most it can do).
    got = run(tasks, ttl=500, used=95 * MB, capacity=100 * MB)
    assert got == ["expired", "lru", "next"]
