"""The numpy max-min solver and its pure-Python twin: on random networks they agree to
1e-9 relative, and every allocation is feasible and max-min fair."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from d7y.sim import maxmin_np
from d7y.sim.maxmin import max_min_rates
from d7y.sim.maxmin_np import Incidence, component, max_min_rates_np, solve

CAPACITIES = st.sampled_from([0.3, 1.0, 1.0, 2.0, 5.0, 7.7, 10.0, 125e6, 1.25e9])


@st.composite
def networks(draw, max_resources: int = 12, max_flows: int = 30):
    """(paths, capacity, weights): flows over 1..3 distinct resources of mixed
    capacities (equal ones too, so that several resources fill at one level)."""
    m = draw(st.integers(1, max_resources))
    names = [f"r{i}" for i in range(m)]
    capacity = {r: draw(CAPACITIES) for r in names}
    n = draw(st.integers(1, max_flows))
    paths = [
        draw(st.lists(st.sampled_from(names), min_size=1, max_size=min(3, m), unique=True))
        for _ in range(n)
    ]
    weights = draw(st.lists(st.integers(1, 4), min_size=n, max_size=n))
    return paths, capacity, weights


def assert_feasible_and_fair(paths, capacity, weights, rates, tol=1e-9):
    load = dict.fromkeys(capacity, 0.0)
    top = dict.fromkeys(capacity, 0.0)
    for path, w, x in zip(paths, weights, rates, strict=True):
        assert x > 0
        for r in path:
            load[r] += w * x
            top[r] = max(top[r], x)
    for r, cap in capacity.items():
        assert load[r] <= cap * (1 + tol), f"{r}: load {load[r]} over capacity {cap}"
    # Max-min: every flow crosses a full resource where no flow is faster than it, so
    # it cannot grow without shrinking a flow that is no faster.
    for i, (path, x) in enumerate(zip(paths, rates, strict=True)):
        assert any(load[r] >= capacity[r] * (1 - tol) and top[r] <= x * (1 + tol) for r in path), (
            f"flow {i} ({path}, rate {x}) has no bottleneck"
        )


@settings(max_examples=200, deadline=None)
@given(networks())
def test_numpy_and_python_twins_agree_and_are_max_min_fair(net):
    paths, capacity, weights = net
    python = max_min_rates(paths, capacity, weights)
    vector = max_min_rates_np(Incidence.from_paths(paths, capacity, weights)).tolist()
    assert vector == pytest.approx(python, rel=1e-9)
    assert_feasible_and_fair(paths, capacity, weights, python)
    assert_feasible_and_fair(paths, capacity, weights, vector)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32), st.integers(600, 800))
def test_solve_agrees_on_both_sides_of_the_size_switch(seed, n):
    # Large systems drawn from a seed (drawing 800 paths element by element is slow).
    rng = random.Random(seed)
    capacity = {f"r{i}": rng.choice([0.3, 1.0, 2.0, 5.0, 7.7]) for i in range(120)}
    names = sorted(capacity)
    paths = [rng.sample(names, rng.randint(1, 3)) for _ in range(n)]
    weights = [rng.randint(1, 4) for _ in range(n)]
    assert solve(paths, capacity, weights) == pytest.approx(
        max_min_rates(paths, capacity, weights), rel=1e-9
    )


def test_solve_uses_numpy_from_the_threshold(monkeypatch):
    calls = []
    monkeypatch.setattr(
        maxmin_np, "max_min_rates_np", lambda p: calls.append(p) or np.ones(len(p.weight))
    )
    small = [["a"]] * (maxmin_np.NUMPY_FROM_FLOWS - 1)
    assert solve(small, {"a": 1.0}) == pytest.approx([1 / len(small)] * len(small))
    assert not calls
    big = [["a"]] * maxmin_np.NUMPY_FROM_FLOWS
    solve(big, {"a": 1.0})
    assert len(calls) == 1


def test_hand_computed_case():
    # s1 up 4, s2 up 1, r1 down 3, r2 down 10 (test_sim_maxmin's case): 2, 1, 2.
    caps = {"s1": 4.0, "s2": 1.0, "r1": 3.0, "r2": 10.0}
    problem = Incidence.from_paths([["s1", "r1"], ["s2", "r1"], ["s1", "r2"]], caps)
    assert max_min_rates_np(problem).tolist() == pytest.approx([2.0, 1.0, 2.0])


def test_component_is_what_a_change_can_reach():
    paths = [("a", "b"), ("b", "c"), ("d", "e"), ("c",), ("e", "f")]
    assert component(paths, ["a"]) == ([0, 1, 3], {"a", "b", "c"})
    assert component(paths, ["f"]) == ([2, 4], {"d", "e", "f"})
    assert component(paths, ["z"]) == ([], {"z"})
    # The rates of one component do not depend on the other's.
    caps = dict.fromkeys("abcdef", 3.0)
    whole = max_min_rates(paths, caps)
    flows, _res = component(paths, ["a"])
    part = max_min_rates([paths[i] for i in flows], caps)
    assert part == [whole[i] for i in flows]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="crosses no resource"):
        Incidence.from_paths([[]], {"a": 1.0})
    with pytest.raises(ValueError, match="no capacity"):
        Incidence.from_paths([["b"]], {"a": 1.0})
    with pytest.raises(ValueError, match="weights"):
        Incidence.from_paths([["a"]], {"a": 1.0}, [1, 1])
    with pytest.raises(ValueError, match="weight 0"):
        Incidence.from_paths([["a"]], {"a": 1.0}, [0])
    with pytest.raises(ValueError, match="capacity 0"):
        Incidence(np.array([0, 1]), np.array([0]), np.array([0.0]))
    with pytest.raises(ValueError, match="outside"):
        Incidence(np.array([0, 1]), np.array([3]), np.array([1.0]))
