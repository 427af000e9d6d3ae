"""Exact max-min fair rates by progressive filling: the reference the simulator's
incremental allocator (:mod:`d7y.sim.network`) is measured against.

A flow crosses a set of resources (a sender's upload, a receiver's download, shared
links); each resource has a capacity. Max-min fairness: no flow's rate can grow without
shrinking the rate of a flow that already has a smaller or equal rate. Progressive
filling computes it: all unfrozen flows grow together; when a resource fills, the flows
crossing it freeze at the level reached; repeat until every flow is frozen.

``weight`` lets one entry stand for ``weight`` identical flows (same resources): each
gets the returned per-flow rate. O(resources x iterations); meant for tests and small
systems, not for the simulation's hot path.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence


def max_min_rates(
    flows: Sequence[Sequence[Hashable]],
    capacity: Mapping[Hashable, float],
    weights: Sequence[int] | None = None,
) -> list[float]:
    """Per-flow max-min fair rates. ``flows[i]`` lists the resources flow i crosses
    (each must be in ``capacity``, a capacity > 0); ``weights[i]`` (default 1) is how
    many identical flows entry i stands for. A flow crossing no resource is a
    ValueError (its rate would be unbounded)."""
    n = len(flows)
    if weights is None:
        weights = [1] * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} flows")
    users: dict[Hashable, list[int]] = {}
    for i, path in enumerate(flows):
        if not path:
            raise ValueError(f"flow {i} crosses no resource: its rate would be unbounded")
        if weights[i] <= 0:
            raise ValueError(f"flow {i} has weight {weights[i]}: use a weight >= 1")
        for r in path:
            if r not in capacity:
                raise ValueError(f"flow {i} crosses resource {r!r}, which has no capacity")
            users.setdefault(r, []).append(i)
    remaining = {r: float(capacity[r]) for r in users}
    active = {r: float(sum(weights[i] for i in users[r])) for r in users}
    rate = [math.nan] * n
    frozen = [False] * n
    level = 0.0
    left = n
    while left:
        # The next resource to fill: the smallest extra level any resource can take.
        best = math.inf
        for r, k in active.items():
            if k > 0:
                step = remaining[r] / k
                if step < best:
                    best = step
        best = max(best, 0.0)
        level += best
        full = []
        for r, k in active.items():
            if k > 0:
                remaining[r] -= best * k
                if remaining[r] <= 1e-12 * capacity[r]:
                    full.append(r)
        for r in full:
            for i in users[r]:
                if not frozen[i]:
                    frozen[i] = True
                    rate[i] = level
                    left -= 1
                    for q in flows[i]:
                        active[q] -= weights[i]
    return rate
