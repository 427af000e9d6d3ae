"""The simulator's speed work changes no simulated result: the 100-host flash crowd's
summary equals the one recorded before it (tests/data/sim-flash-crowd-100-summary.json,
taken at the commit it names) within 1e-6 relative.

Four of the scenario's six policies run here, one per distinct path through the engine:
``d7y`` (per-parent limit 1, capacity-aware children), ``dragonfly`` (announcement
order, hub-heavy: every child on the seed first), ``client_server`` (the origin hub
alone) and ``bittorrent`` (no scheduler, many pairs per host). ``base`` and ``random``
are ``dragonfly`` with another evaluator: the same engine paths.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from d7y.sim import scenario as sc
from d7y.sim.cli import find_scenario
from d7y.sim.runner import run_policy

RECORDED = Path(__file__).parent / "data" / "sim-flash-crowd-100-summary.json"
# Not results: how long the run took on this machine.
MACHINE_DEPENDENT = {"wall_seconds", "events_per_second"}


@pytest.mark.parametrize("policy", ["d7y", "dragonfly", "client_server", "bittorrent"])
def test_flash_crowd_100_summary_is_unchanged(policy):
    recorded = json.loads(RECORDED.read_text())["policies"][policy]
    scenario = sc.load(find_scenario("flash-crowd-100"))
    _sim, result, _bounds = run_policy(scenario, sc.parse_policy(policy))
    summary = {k: v for k, v in result.summary.items() if k not in MACHINE_DEPENDENT}
    assert sorted(summary) == sorted(recorded)
    for key, want in recorded.items():
        got = summary[key]
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-6, abs=1e-12), key
        else:
            assert got == want, key
