"""The exact max-min reference solver, on cases small enough to compute by hand."""

import pytest

from d7y.sim.maxmin import max_min_rates


def test_one_resource_is_shared_equally():
    assert max_min_rates([["a"], ["a"], ["a"]], {"a": 9.0}) == [3.0, 3.0, 3.0]


def test_weights_stand_for_identical_flows():
    # 1 + 2 flows on a 9-capacity link: each of the three gets 3.
    assert max_min_rates([["a"], ["a"]], {"a": 9.0}, [1, 2]) == [3.0, 3.0]


def test_bottleneck_elsewhere_frees_capacity_for_the_others():
    # f0 crosses a (10) and b (2); f1 only a. f0 is held to 2 by b; an equal split of a
    # (5 each) would leave 3 of a unused, max-min gives f1 the rest: 10 - 2 = 8.
    assert max_min_rates([["a", "b"], ["a"]], {"a": 10.0, "b": 2.0}) == [2.0, 8.0]


def test_classic_three_link_example():
    # Links x (1) and y (1); f0 crosses both, f1 only x, f2 only y. Everyone gets 1/2:
    # x and y both fill at level 1/2.
    rates = max_min_rates([["x", "y"], ["x"], ["y"]], {"x": 1.0, "y": 1.0})
    assert rates == pytest.approx([0.5, 0.5, 0.5])


def test_sender_and_receiver_capacities():
    # Host uploads/downloads: s1 up 4, s2 up 1, r1 down 3, r2 down 10.
    # flows: s1->r1, s2->r1, s1->r2.
    # Level 1: s2 (1 flow, cap 1) fills first -> s2->r1 = 1.
    # Then r1 has 3-1 = 2 for s1->r1; s1 has 4 for s1->r1 and s1->r2: level 2 fills both
    # r1 (2) and s1 (2+2=4) at once -> s1->r1 = 2, s1->r2 = 2.
    caps = {"s1": 4.0, "s2": 1.0, "r1": 3.0, "r2": 10.0}
    rates = max_min_rates([["s1", "r1"], ["s2", "r1"], ["s1", "r2"]], caps)
    assert rates == pytest.approx([2.0, 1.0, 2.0])


def test_shared_link_between_racks():
    # Two senders (up 10 each) to two receivers (down 10 each) across a rack uplink of 6,
    # plus one flow inside the rack (s1 -> r3, down 10): uplink flows get 3 each, and s1's
    # in-rack flow gets s1's remaining 7.
    caps = {"s1": 10.0, "s2": 10.0, "L": 6.0, "r1": 10.0, "r2": 10.0, "r3": 10.0}
    flows = [["s1", "L", "r1"], ["s2", "L", "r2"], ["s1", "r3"]]
    assert max_min_rates(flows, caps) == pytest.approx([3.0, 3.0, 7.0])


def test_every_resource_stays_within_capacity_and_someone_is_bottlenecked():
    import random

    rng = random.Random(5)
    for _ in range(50):
        caps = {f"r{i}": rng.choice([1.0, 2.0, 5.0]) for i in range(6)}
        flows = [rng.sample(sorted(caps), rng.randint(1, 3)) for _ in range(8)]
        rates = max_min_rates(flows, caps)
        for r, cap in caps.items():
            assert sum(x for f, x in zip(flows, rates, strict=True) if r in f) <= cap + 1e-9
        # max-min: every flow crosses a full resource where it has the largest rate
        for f, x in zip(flows, rates, strict=True):
            assert any(
                abs(sum(y for g, y in zip(flows, rates, strict=True) if r in g) - caps[r]) < 1e-9
                and all(y <= x + 1e-9 for g, y in zip(flows, rates, strict=True) if r in g)
                for r in f
            )


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="crosses no resource"):
        max_min_rates([[]], {"a": 1.0})
    with pytest.raises(ValueError, match="no capacity"):
        max_min_rates([["b"]], {"a": 1.0})
    with pytest.raises(ValueError, match="weights"):
        max_min_rates([["a"]], {"a": 1.0}, [1, 1])
