"""The simulator's driver compiled (d7y.sim._swarm, the pure-mode build of
sim/_swarm_py.py typed by sim/_swarm.pxd) and as Python (d7y.sim._swarm_py) give the
same runs bit for bit, in one process: every peer's times and byte counts, every piece
time, the event count and the counters. The Python driver runs here on the compiled
download loop (the pair a stale build of the driver alone would select); the twins'
test pass (scripts/test.sh) runs it on the Python loop and compares with the pinned
summaries of tests/test_sim_unchanged.py."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import yaml

from d7y.sim import scenario as sc
from d7y.sim.cli import find_scenario
from tests.conftest import import_built


def small(name: str, **changes) -> sc.Scenario:
    """A shipped scenario, smaller: fewer hosts and smaller tasks keep it to seconds."""
    path = find_scenario(name)
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    raw["topology"]["hosts"] = changes.pop("hosts", 40)
    size = changes.pop("size", "64MiB")
    for task in raw["tasks"]:
        task["size"] = size
        task.pop("peers", None)
    raw.update(changes)
    return sc.parse(raw, name=name, base_dir=Path(path).parent)


def _time(t: float) -> float | None:
    # NaN (not done, not ended) is unequal even to itself: compare it as None
    return None if math.isnan(t) else t


def outcome(sim) -> tuple:
    peers = sorted(
        (
            p.id,
            p.state,
            _time(p.done_at),
            _time(p.end_at),
            p.from_origin,
            p.from_seeds,
            p.from_peers,
            p.reschedules,
            p.bts_reason,
        )
        for p in sim.peers.values()
    )
    hosts = sorted((h.name, h.uploaded, h.alive) for h in sim.hosts.values())
    counters = (
        sim.events,
        sim.end_time,
        sim.pieces_done,
        sim.ended,
        sim.scheduler_calls,
        sim.busy_answers,
        sorted(sim.fallbacks.items()),
        [t.origin_bytes for t in sim.tasks],
    )
    return counters, bytes(sim.piece_times), peers, hosts


# multi-idc-churn's churn and failure, sooner: within the small run
HARSH = {
    "hosts": 60,
    "churn": {"rate": 0.3, "linger": "1s"},
    "failures": [{"at": "0.4s", "host": "seed0"}],
}

CASES = [
    ("flash-crowd-100", "bittorrent", {}),
    ("flash-crowd-100", "d7y", {}),
    ("flash-crowd-100", "dragonfly", {}),
    ("flash-crowd-100", "client_server", {"hosts": 12}),
    # churn, lingering, a seed peer's host failing mid-run, two tasks, racks and IDCs
    ("multi-idc-churn", "d7y", HARSH),
    ("multi-idc-churn", "bittorrent", HARSH),
    ("multi-idc-churn", "random", HARSH),
    # cut-through relaying: transfers in blocks
    ("netns-shaped-8", "d7y:download.cut_through=true", {"size": "16MiB"}),
]


@pytest.mark.parametrize(("name", "policy", "changes"), CASES, ids=lambda v: str(v))
def test_the_compiled_driver_runs_as_its_source_does(name, policy, changes):
    from d7y import ext

    if ext.NO_EXTENSIONS:
        # the build runs on the compiled kernels and event queue only (which these
        # selectors then do not give it), as d7y.sim.swarm selects it
        pytest.skip("D7Y_NO_EXTENSIONS=1: the compiled driver is never selected")
    compiled = import_built("d7y.sim._swarm")
    python = importlib.import_module("d7y.sim._swarm_py")
    scenario = small(name, **dict(changes))
    runs = [m.Simulation(scenario, sc.parse_policy(policy)).run() for m in (compiled, python)]
    assert type(runs[0]).__module__ == "d7y.sim._swarm"
    assert type(runs[1]).__module__ == "d7y.sim._swarm_py"
    one, other = (outcome(r) for r in runs)
    assert one == other
    assert runs[0].ended == runs[0].expected > 0  # a whole run, not an empty one
    done = [p for p in runs[0].peers.values() if p.state == python.DONE]
    assert done and not any(math.isnan(p.done_at) for p in done)


def test_the_outcome_tells_two_runs_apart():
    # the comparison above would pass on an outcome that records nothing
    python = importlib.import_module("d7y.sim._swarm_py")
    scenario = small("flash-crowd-100")
    one, other = (
        outcome(python.Simulation(scenario, sc.parse_policy(p)).run()) for p in ("d7y", "random")
    )
    assert one != other


def test_a_build_whose_compiled_import_is_stale_is_not_used(monkeypatch):
    # The driver's build calls the download loop's build in C: if that one is from
    # another version of its source (and so passed over by its own selector), the
    # driver's build is passed over too, and the Python driver runs the edit.
    from d7y import ext

    compiled = import_built("d7y.sim._swarm")
    download = import_built("d7y.core.scheduling._download")
    monkeypatch.setattr(ext, "NO_EXTENSIONS", False)  # (also in the twins' test pass)
    assert "d7y.core.scheduling._download" in compiled._D7Y_COMPILED_IMPORTS
    assert ext.load_backend("swarm", "d7y.sim") is compiled
    monkeypatch.setattr(download, "_D7Y_SOURCE_DIGEST", "0" * 64)
    with pytest.warns(RuntimeWarning, match="built from another version of .*_download_py.py"):
        chosen = ext.load_backend("swarm", "d7y.sim")
    assert chosen is importlib.import_module("d7y.sim._swarm_py")


@pytest.mark.parametrize("policy", ["bittorrent", "d7y"])
def test_the_stepping_loop_runs_as_the_inline_one_does(policy):
    # Against a SimPy whose queue is not the heap list the inline loop and the event
    # queue were written for, the driver schedules through env.schedule and steps with
    # env.step (Simulation._run_stepping): the same run.
    from d7y.sim import swarm

    scenario = small("multi-idc-churn", **dict(HARSH))
    inline = swarm.Simulation(scenario, sc.parse_policy(policy))
    stepping = swarm.Simulation(scenario, sc.parse_policy(policy))
    stepping._queue = stepping._eid = stepping._calls = None  # as for another SimPy
    runs = [inline.run(), stepping.run()]
    assert outcome(runs[0]) == outcome(runs[1])
    assert runs[1].events > 1000
