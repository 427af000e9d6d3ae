"""The simulator's event loop holds CPython's automatic cyclic collections back and makes a
full one every ``GC_EVERY`` events instead (sim/swarm.py): the collector is off during
the loop, on again afterwards (unless the caller had turned it off), the periodic
collections happen, and none of it changes a result."""

import gc

import pytest

from d7y.sim import scenario as sc
from d7y.sim import swarm
from d7y.sim.swarm import Simulation


def scenario(hosts: int = 24) -> sc.Scenario:
    return sc.parse(
        {
            "seed": 5,
            "topology": {"kind": "flat", "hosts": hosts, "upload": "1Gbit"},
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


def test_collections_freeze_their_survivors_until_the_run_ends(collector_on, monkeypatch):
    # Each periodic collection freezes what survived it, so the next traverses only the
    # newer objects; the run unfreezes them at its end, so nothing stays frozen.
    s = scenario(hosts=48)
    baseline = Simulation(s, s.policies[0]).run()
    frozen_at_start = []

    def record(phase: str, info: dict) -> None:
        if phase == "start":
            frozen_at_start.append(gc.get_freeze_count())

    monkeypatch.setattr(swarm.backend, "GC_EVERY", 4096)
    assert gc.get_freeze_count() == 0
    sim = Simulation(s, s.policies[0])
    gc.callbacks.append(record)
    try:
        sim.run()
    finally:
        gc.callbacks.remove(record)
    assert sim.events >= 2 * 4096
    assert len(frozen_at_start) == sim.events // 4096
    assert frozen_at_start[0] == 0 and min(frozen_at_start[1:]) > 1000
    assert gc.get_freeze_count() == 0
    assert outcome(sim) == outcome(baseline)


def test_a_caller_that_froze_objects_keeps_them_frozen(collector_on, monkeypatch):
    s = scenario()
    baseline = Simulation(s, s.policies[0]).run()
    monkeypatch.setattr(swarm.backend, "GC_EVERY", 4096)
    mine = [[] for _ in range(100)]  # noqa: F841 (held: frozen below)
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        counts = []
        sim = Simulation(
            s, s.policies[0], progress=lambda _sim: counts.append(gc.get_freeze_count())
        )
        sim.run()
        # no freezing by the run (it could not tell its objects from the caller's when
        # unfreezing), and the caller's stay frozen
        assert counts and set(counts) == {before}
        assert gc.get_freeze_count() == before
    finally:
        gc.unfreeze()
    assert outcome(sim) == outcome(baseline)


def test_a_finished_run_is_freed_with_events_still_queued(collector_on):
    # Timers outlive a run's last download; their queued events refer back to the
    # simulation. Once dropped, the simulation and its peers must be collectable (a
    # sweep runs many simulations in one worker process).
    s = scenario()
    sim = Simulation(s, s.policies[0]).run()
    assert len(sim._calls) > 0
    kinds = (type(sim), type(next(iter(sim.peers.values()))))
    del sim
    gc.collect()
    assert not [o for o in gc.get_objects() if type(o) in kinds]
