"""The compiled network model (d7y.sim._network) and its pure-Python twin
(d7y.sim._network_py) give the same simulation bit for bit: the same completion times,
the same rates after every re-solve, the same counters, and the same summaries of whole
simulated runs. Exact equality, no tolerance: the port does the twin's floating-point
operations in the same order, and a difference in the last bit would move an event.
"""

from __future__ import annotations

import importlib
import random
from types import ModuleType

import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from d7y.sim import scenario as sc
from d7y.sim import swarm
from d7y.sim.cli import find_scenario
from d7y.sim.runner import run_policy
from tests.conftest import REQUIRE_EXTENSIONS


def _compiled() -> ModuleType:
    try:
        return importlib.import_module("d7y.sim._network")
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            raise AssertionError(
                f"d7y.sim._network is not built but D7Y_REQUIRE_EXTENSIONS is set: {exc}"
            ) from exc
        pytest.skip(f"d7y.sim._network not built: {exc}")


def _twin() -> ModuleType:
    return importlib.import_module("d7y.sim._network_py")


# Capacities of every scale the simulator meets: a few B/s (the hand-made tests) up to
# 10 Gbit/s links, equal ones included so that several resources fill at one level.
CAPS = [1.0, 2.0, 5.0, 7.0, 10.0, 125e6, 125e6, 1.25e9]
SIZES = [1.0, 3.5, 10.0, 4 * 2**20, 1e3]


def trace(backend: ModuleType, seed: int, depth: int, hub_slack: float, scale: int = 1) -> list:
    """Drive a random workload on ``backend``'s Network: flows starting (some at the
    same instant, some more on completions) over host links, hubs and shared links,
    some cancelled; ``scale`` multiplies the hosts and the operations (large groups,
    heaps rebuilt, hubs holding many pairs). Returns everything observable: each
    completion and cancel with its time and bytes, every pair's rate after every
    re-solve, and the counters."""
    rng = random.Random(seed)
    env = simpy.Environment()
    net = backend.Network(env, depth=depth, hub_slack=hub_slack)
    hosts = rng.randint(2, 7 * scale)
    up = [net.resource(f"u{i}", rng.choice(CAPS), hub=rng.random() < 0.3) for i in range(hosts)]
    down = [net.resource(f"d{i}", rng.choice(CAPS)) for i in range(hosts)]
    links = [net.resource(f"L{i}", rng.choice(CAPS), hub=True) for i in range(2)]
    # an origin every host fetches from: at scale, a hub group of many pairs
    origin = net.resource("origin", rng.choice(CAPS), hub=True)
    log: list = []
    live: list = []

    flush = net._flush

    def flush_and_record(event=None):
        flush(event)
        log.append(("rates", env.now, [(q.key, q.k, q.rate) for q in net._pairs.values()]))

    net._flush_callbacks = (flush_and_record,)

    def start(tag) -> None:
        s = rng.randrange(hosts)
        r = (s + 1 + rng.randrange(hosts - 1)) % hosts
        route = rng.randrange(4)
        path = [up[s], *links[:route], down[r]] if route < 3 else [origin, down[r]]
        size = rng.choice(SIZES) * (0.5 + rng.random())
        live.append(net.start_flow(net.pair((s, r, route), path), size, done, tag))

    def done(flow) -> None:
        log.append(("done", flow.arg, env.now))
        live.remove(flow)
        if rng.random() < 0.3:  # a completion that starts the next request at once
            start((flow.arg, "next"))

    def driver():
        for i in range(rng.randint(5, 50 * scale)):
            gap = rng.choice([0.0, 0.0, rng.expovariate(2.0), rng.expovariate(1e-3)])
            yield env.timeout(gap)
            if live and rng.random() < 0.15:
                flow = live.pop(rng.randrange(len(live)))
                log.append(("cancel", flow.arg, env.now, net.cancel(flow)))
                if rng.random() < 0.2:  # cancelling a finished flow returns 0 bytes
                    log.append(("again", flow.arg, net.cancel(flow)))
            else:
                start(i)

    env.process(driver())
    env.run()
    log.append(
        (
            "counters",
            net.flows_started,
            net.flows_completed,
            net.flows_cancelled,
            net.solves,
            net.flushes,
        )
    )
    net.check()
    return log


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    depth=st.sampled_from([0, 0, 1, 2, 100]),
    hub_slack=st.sampled_from([0.0, 0.005, 0.1]),
)
def test_random_workloads_give_identical_traces(seed, depth, hub_slack):
    compiled = _compiled()
    got = trace(compiled, seed, depth, hub_slack)
    want = trace(_twin(), seed, depth, hub_slack)
    assert got == want


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    depth=st.sampled_from([0, 1, 100]),
    hub_slack=st.sampled_from([0.0, 0.005]),
)
def test_large_random_workloads_give_identical_traces(seed, depth, hub_slack):
    got = trace(_compiled(), seed, depth, hub_slack, scale=8)
    want = trace(_twin(), seed, depth, hub_slack, scale=8)
    assert got == want


def test_the_traces_can_tell_a_difference():
    # The comparison above would pass on traces that record nothing; they hold the
    # completions, and another propagation depth (the same workload) shows in them.
    twin = _twin()
    runs = [trace(twin, seed, 0, 0.005) for seed in range(20)]
    assert sum(e[0] == "done" for run in runs for e in run) > 100
    assert runs != [trace(twin, seed, 100, 0.005) for seed in range(20)]


def run_with(backend: ModuleType, monkeypatch, scenario: str, policy: str) -> tuple:
    # swarm builds its network with its backend's module-level name Network: point it at one
    # backend for this run (the rest of d7y.sim does not touch the model's classes).
    monkeypatch.setattr(swarm.backend, "Network", backend.Network)
    sim, result, _bounds = run_policy(sc.load(find_scenario(scenario)), sc.parse_policy(policy))
    assert type(sim.net) is backend.Network
    summary = {
        k: v
        for k, v in result.summary.items()
        if k not in {"wall_seconds", "events_per_second"}  # machine-dependent
    }
    counters = (
        sim.events,
        sim.net.flows_started,
        sim.net.flows_completed,
        sim.net.flows_cancelled,
        sim.net.solves,
        sim.net.flushes,
    )
    return summary, counters


@pytest.mark.parametrize(
    ("scenario", "policy"),
    [
        ("flash-crowd-100", "d7y"),
        ("flash-crowd-100", "bittorrent"),
        # IDCs joined by shared inter-IDC links (hubs), racks behind uplinks. (Cancelled
        # flows, which churn makes, are in the random workloads above: multi-idc-churn
        # takes longer than the rest of this file.)
        ("multi-idc-100", "dragonfly"),
    ],
)
def test_simulated_runs_are_identical(monkeypatch, scenario, policy):
    compiled = _compiled()
    got = run_with(compiled, monkeypatch, scenario, policy)
    want = run_with(_twin(), monkeypatch, scenario, policy)
    assert got[1] == want[1]
    assert got[0] == want[0]
    assert want[0]["done"] > 0
