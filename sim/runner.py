"""Run a scenario under each of its policies and gather the results.

:func:`run_scenario` is what ``d7y sim run`` calls; tests and the bench call it (or
:func:`run_policy`) directly. Each policy runs on a fresh copy of everything (network,
scheduler, peers) with the same workload (arrivals, churn, failures), so the numbers
compare policies and nothing else.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TextIO

from d7y.sim.results import Bound, PolicyResult, collect, scenario_bounds
from d7y.sim.scenario import Policy, Scenario
from d7y.sim.swarm import Simulation


@dataclass
class RunOutcome:
    scenario: Scenario
    bounds: list[Bound]
    results: list[PolicyResult]


class ProgressBar:
    """A one-line text progress bar on ``stream`` (stderr), redrawn at most 5 times a
    second on a terminal; elsewhere (a pipe, CI) one line per policy at the end."""

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0
        self._started = 0.0
        self.label = ""

    def start(self, label: str) -> None:
        self.label = label
        self._started = self._last = time.perf_counter()

    def __call__(self, sim: Simulation) -> None:
        now = time.perf_counter()
        if not self.tty or now - self._last < 0.2:
            return
        self._last = now
        self.stream.write("\r" + self._line(sim, now))
        self.stream.flush()

    def _line(self, sim: Simulation, now: float) -> str:
        frac = sim.pieces_done / sim.pieces_expected if sim.pieces_expected else 1.0
        fill = int(frac * self.width)
        bar = "#" * fill + "." * (self.width - fill)
        return (
            f"{self.label:<24} [{bar}] {100 * frac:5.1f}%  sim {sim.env.now:8.2f} s  "
            f"{sim.events / 1e6:6.2f}M events  {now - self._started:6.1f} s"
        )

    def done(self, sim: Simulation) -> None:
        now = time.perf_counter()
        line = self._line(sim, now)
        self.stream.write(("\r" + line + "\n") if self.tty else line + "\n")
        self.stream.flush()


def run_policy(
    scenario: Scenario, policy: Policy, progress: ProgressBar | None = None
) -> tuple[Simulation, PolicyResult, list[Bound]]:
    if progress is not None:
        progress.start(policy.label)
    sim = Simulation(scenario, policy, progress=progress)
    started = time.perf_counter()
    sim.run()
    wall = time.perf_counter() - started
    bounds = scenario_bounds(sim)
    if progress is not None:
        progress.done(sim)
    return sim, collect(sim, bounds, wall), bounds


def run_scenario(
    scenario: Scenario,
    progress: ProgressBar | None = None,
    on_result: Callable[[PolicyResult], None] | None = None,
) -> RunOutcome:
    results = []
    bounds: list[Bound] = []
    for policy in scenario.policies:
        _sim, result, bounds = run_policy(scenario, policy, progress)
        results.append(result)
        if on_result is not None:
            on_result(result)
    return RunOutcome(scenario, bounds, results)
