"""The simulator's event loop holds CPython's automatic cyclic collections back and makes a
full one every ``GC_EVERY`` events instead (sim/swarm.py): the collector is off during
the loop, on again afterwards (unless the caller had turned it off), the periodic
collections happen, and none of it changes a result."""

import gc

import pytest

from d7y.sim import scenario as sc
from d7y.sim import swarm
from d7y.sim.swarm import Simulation


def scenario() -> sc.Scenario:
    return sc.parse(
        {
            "seed": 5,
            "topology": {"kind": "flat", "hosts": 24, "upload": "1Gbit"},
            "tasks": [{"name": "t", "size": "32MiB", "piece_length": "1MiB"}],
            "policies": ["bittorrent"],
        }
    )


def outcome(sim: Simulation) -> tuple:
    peers = sorted(
        (p.host.name, p.state, p.done_at, p.from_origin, p.from_peers) for p in sim.peers.values()
    )
    return sim.events, sim.end_time, bytes(sim.piece_times), peers


@pytest.fixture
def collector_on():
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_collector_off_during_the_loop_and_on_after(collector_on):
    s = scenario()
    seen = []
    sim = Simulation(s, s.policies[0], progress=lambda _sim: seen.append(gc.isenabled()))
    sim.run()
    assert sim.events > 4096  # the progress hook ran inside the loop at least once
    assert seen and not any(seen[:-1])  # the last call is after the loop
    assert gc.isenabled()


def test_periodic_full_collections_change_nothing(collector_on, monkeypatch):
    s = scenario()
    baseline = Simulation(s, s.policies[0]).run()

    full = []

    def count(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(info)

    monkeypatch.setattr(swarm.backend, "GC_EVERY", 4096)
    gc.callbacks.append(count)
    try:
        sim = Simulation(s, s.policies[0]).run()
    finally:
        gc.callbacks.remove(count)
    # every 4096 events one full collection, and no automatic one besides
    assert len(full) == sim.events // 4096 >= 1
    assert outcome(sim) == outcome(baseline)


def test_a_caller_that_turned_the_collector_off_keeps_it_off(collector_on, monkeypatch):
    s = scenario()
    monkeypatch.setattr(swarm.backend, "GC_EVERY", 4096)
    collections = []
    gc.disable()
    gc.callbacks.append(lambda phase, info: collections.append(phase))
    try:
        sim = Simulation(s, s.policies[0]).run()
        assert not gc.isenabled()
    finally:
        gc.callbacks.pop()
    assert sim.events > 4096
    assert collections == []
