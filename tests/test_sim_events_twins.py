"""The simulator's own event queue: the compiled heap (d7y.sim._events) and its twin
(d7y.sim._events_py) keep the same order, by (time, priority, id), and that order is
SimPy's: the event loop merges this queue with SimPy's by these keys, so any other
order would move events (tests/test_sim_swarm_twins.py and test_sim_unchanged.py check
whole runs)."""

from __future__ import annotations

import gc
import importlib
import math
import weakref
from heapq import heappop, heappush

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import import_built


@pytest.fixture(params=["c", "py"])
def heaps(request):
    if request.param == "c":
        return import_built("d7y.sim._events")
    return importlib.import_module("d7y.sim._events_py")


# times from a small set, so that ties on time (and on priority) are common
operations = st.lists(
    st.one_of(
        st.tuples(
            st.just("push"),
            st.sampled_from([0.0, 0.5, 1.0, 1.0000000000000002, 2.0, math.inf]),
            st.sampled_from([0, 1]),
        ),
        st.tuples(st.just("pop"), st.just(0.0), st.just(0)),
    ),
    max_size=300,
)


@settings(max_examples=150, deadline=None)
@given(ops=operations)
def test_both_heaps_pop_in_simpy_queue_order(ops):
    compiled = import_built("d7y.sim._events")
    twin = importlib.import_module("d7y.sim._events_py")
    heaps = [compiled.EventHeap(), twin.EventHeap()]
    simpy_queue: list = []  # what SimPy's own queue would do with the same entries
    eid = 0
    for op, time, priority in ops:
        if op == "push":
            eid += 1
            item = ("event", eid)
            for h in heaps:
                h.push(time, priority, eid, item)
            heappush(simpy_queue, (time, priority, eid, item))
        elif simpy_queue:
            first = simpy_queue[0]
            probe = (first[0], first[1], first[2] + 1, None)  # just after the first
            assert [h.before(probe) for h in heaps] == [True, True]
            assert [h.before(first) for h in heaps] == [False, False]  # not before itself
            assert [h.first_time() for h in heaps] == [first[0]] * 2
            expected = heappop(simpy_queue)[3]
            assert [h.pop() for h in heaps] == [expected, expected]
        assert [len(h) for h in heaps] == [len(simpy_queue)] * 2


def test_empty(heaps):
    h = heaps.EventHeap()
    assert len(h) == 0 and not h
    assert h.first_time() == math.inf
    assert h.before((0.0, 0, 0, None)) is False
    with pytest.raises(IndexError, match="empty EventHeap"):
        h.pop()


def test_ties_go_by_priority_then_id(heaps):
    h = heaps.EventHeap()
    h.push(1.0, 1, 7, "normal, later id")
    h.push(1.0, 1, 3, "normal, earlier id")
    h.push(1.0, 0, 9, "urgent")
    h.push(0.5, 1, 10, "earlier time")
    assert h.before((1.0, 0, 0, None))  # 0.5 < 1.0 whatever the rest
    assert [h.pop() for _ in range(4)] == [
        "earlier time",
        "urgent",
        "normal, earlier id",
        "normal, later id",
    ]


def test_the_heap_holds_its_items_and_lets_them_go(heaps):
    class Item:
        pass

    h = heaps.EventHeap()
    items = [Item() for _ in range(3000)]  # past the first growth of the array
    refs = [weakref.ref(i) for i in items]
    for k, item in enumerate(items):
        h.push(float(k % 17), 1, k, item)
    del items, item
    gc.collect()
    assert all(r() is not None for r in refs)  # held by the heap
    popped = h.pop()
    assert popped is refs[0]()  # time 0.0, the lowest id
    del popped
    gc.collect()
    assert refs[0]() is None  # popped and dropped: freed
    del h
    gc.collect()
    assert all(r() is None for r in refs)  # the heap's own references went with it


def test_a_cycle_through_the_heap_is_collected(heaps):
    # A queued event refers back to its simulation, which holds the heap: the collector
    # must see the heap's references, or the cycle (a whole simulation) is never freed.
    class Owner:
        pass

    owner = Owner()
    owner.heap = heaps.EventHeap()
    for k in range(5):
        owner.heap.push(float(k), 1, k, (owner, k))  # an item referring to its owner
    owner.heap.pop()  # and a freed slot, handed out again below
    owner.heap.push(9.0, 1, 9, (owner, 9))
    ref = weakref.ref(owner)
    del owner
    gc.collect()
    assert ref() is None


def test_slots_are_reused_in_heap_order(heaps):
    h = heaps.EventHeap()
    for round_ in range(3):  # pops free slots, pushes take them again
        for k in range(50):
            h.push(float((k * 7) % 50), 1, round_ * 100 + k, (round_, k))
        got = [h.pop() for _ in range(25)]
        assert got == sorted(got, key=lambda item: ((item[1] * 7) % 50, item))
    assert len(h) == 75
