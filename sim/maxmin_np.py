"""Exact max-min fair rates on numpy arrays: progressive filling over a flows x resources
incidence, the vectorized twin of :func:`d7y.sim.maxmin.max_min_rates`.

Both compute the same thing in the same order of floating-point operations (per
resource: ``remaining -= step * active``; a resource is full when ``remaining <= 1e-12 x
capacity``), so they agree to rounding (tests/test_sim_maxmin_twins.py asserts 1e-9
relative on random networks). The Python twin walks dicts, this one arrays: one
iteration of the filling is a handful of array operations over all resources, however
many flows cross them, which pays once a system has a few hundred flows
(bench/bench_maxmin.py; the crossover is in docs/simulation.md). :func:`solve` picks the
faster one by size.

:func:`component` finds the flows and resources connected to a set of changed resources:
max-min rates of one connected component do not depend on any other, so a change needs
only its component re-solved.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

from d7y.sim.maxmin import max_min_rates

#: Flows from which :func:`solve` uses the numpy solver (below: the Python twin).
#: Measured by bench/bench_maxmin.py; see docs/simulation.md.
NUMPY_FROM_FLOWS = 700


class Incidence:
    """Flows x resources in CSR form: flow i crosses resources
    ``indices[indptr[i]:indptr[i+1]]``; ``capacity[r]`` > 0; ``weight[i]`` >= 1 flows
    stand behind entry i (identical flows share one entry)."""

    __slots__ = ("capacity", "flow_of", "indices", "indptr", "weight")

    def __init__(
        self,
        indptr: np.ndarray,
        indices: np.ndarray,
        capacity: np.ndarray,
        weight: np.ndarray | None = None,
    ) -> None:
        self.indptr = np.asarray(indptr, dtype=np.int64)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.capacity = np.asarray(capacity, dtype=np.float64)
        n = len(self.indptr) - 1
        if n < 0 or self.indptr[0] != 0 or self.indptr[-1] != len(self.indices):
            raise ValueError("indptr must start at 0 and end at len(indices)")
        lengths = np.diff(self.indptr)
        if n and lengths.min() <= 0:
            i = int(np.argmin(lengths))
            raise ValueError(f"flow {i} crosses no resource: its rate would be unbounded")
        m = len(self.capacity)
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= m):
            raise ValueError(f"a flow crosses a resource outside 0..{m - 1}")
        if m and not (self.capacity > 0).all():
            r = int(np.argmin(self.capacity > 0))
            raise ValueError(f"resource {r} has capacity {float(self.capacity[r])!r}: use one > 0")
        if weight is None:
            self.weight = np.ones(n, dtype=np.float64)
        else:
            self.weight = np.asarray(weight, dtype=np.float64)
            if len(self.weight) != n:
                raise ValueError(f"{len(self.weight)} weights for {n} flows")
            if n and self.weight.min() <= 0:
                i = int(np.argmin(self.weight))
                raise ValueError(f"flow {i} has weight {self.weight[i]:g}: use a weight >= 1")
        self.flow_of = np.repeat(np.arange(n, dtype=np.int64), lengths)

    @classmethod
    def from_paths(
        cls,
        flows: Sequence[Sequence[Hashable]],
        capacity: Mapping[Hashable, float],
        weights: Sequence[int] | None = None,
    ) -> Incidence:
        """From the arguments of :func:`d7y.sim.maxmin.max_min_rates`."""
        index: dict[Hashable, int] = {}
        caps: list[float] = []
        indices: list[int] = []
        indptr = [0]
        for i, path in enumerate(flows):
            if not path:
                raise ValueError(f"flow {i} crosses no resource: its rate would be unbounded")
            for r in path:
                j = index.get(r)
                if j is None:
                    if r not in capacity:
                        raise ValueError(f"flow {i} crosses resource {r!r}, which has no capacity")
                    j = index[r] = len(caps)
                    caps.append(float(capacity[r]))
                indices.append(j)
            indptr.append(len(indices))
        return cls(np.array(indptr), np.array(indices, dtype=np.int64), np.array(caps), weights)


def max_min_rates_np(problem: Incidence) -> np.ndarray:
    """Per-flow max-min fair rates of ``problem`` (progressive filling; see
    :mod:`d7y.sim.maxmin` for the algorithm and its tolerances)."""
    n = len(problem.indptr) - 1
    rate = np.full(n, np.nan)
    if n == 0:
        return rate
    indices, flow_of, weight, cap = (
        problem.indices,
        problem.flow_of,
        problem.weight,
        problem.capacity,
    )
    m = len(cap)
    # active[r]: flows still growing through r (weights are whole numbers: exact sums).
    active = np.bincount(indices, weights=weight[flow_of], minlength=m)
    remaining = cap.copy()
    threshold = 1e-12 * cap
    frozen = np.zeros(n, dtype=bool)
    entry_live = np.ones(len(indices), dtype=bool)  # the entry's flow is not frozen
    level = 0.0
    left = n
    while left:
        used = active > 0
        best = float(np.min(remaining[used] / active[used]))
        if best < 0.0:
            best = 0.0
        level += best
        remaining[used] -= best * active[used]
        full = used & (remaining <= threshold)
        # Flows crossing a full resource freeze at this level.
        hit = entry_live & full[indices]
        newly = np.unique(flow_of[hit])
        if newly.size == 0:  # cannot happen with capacities > 0; guards an endless loop
            raise RuntimeError("progressive filling made no progress")
        frozen[newly] = True
        rate[newly] = level
        left -= newly.size
        gone = entry_live & frozen[flow_of]
        active -= np.bincount(indices[gone], weights=weight[flow_of[gone]], minlength=m)
        entry_live &= ~gone
    return rate


def solve(
    flows: Sequence[Sequence[Hashable]],
    capacity: Mapping[Hashable, float],
    weights: Sequence[int] | None = None,
) -> list[float]:
    """Max-min rates as :func:`d7y.sim.maxmin.max_min_rates` returns them, by the Python
    twin below :data:`NUMPY_FROM_FLOWS` flows and by numpy from there."""
    if len(flows) < NUMPY_FROM_FLOWS:
        return max_min_rates(flows, capacity, weights)
    return max_min_rates_np(Incidence.from_paths(flows, capacity, weights)).tolist()


def component(
    paths: Sequence[Sequence[Hashable]], start: Iterable[Hashable]
) -> tuple[list[int], set[Hashable]]:
    """The flows (indices into ``paths``) and resources connected to the resources in
    ``start`` through flows that cross them, in ascending flow order."""
    users: dict[Hashable, list[int]] = {}
    for i, path in enumerate(paths):
        for r in path:
            users.setdefault(r, []).append(i)
    seen_r = set(start)
    stack = list(seen_r)
    seen_f: set[int] = set()
    while stack:
        r = stack.pop()
        for i in users.get(r, ()):
            if i not in seen_f:
                seen_f.add(i)
                for s in paths[i]:
                    if s not in seen_r:
                        seen_r.add(s)
                        stack.append(s)
    return sorted(seen_f), seen_r
