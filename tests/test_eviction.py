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
