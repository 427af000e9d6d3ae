"""Parameter sweeps: a scenario under the cross product of a grid, over several seeds, run
on Dask (``dask.distributed``), into one tidy CSV and a plot per result.

    d7y sim sweep SCENARIO --grid 'policy=d7y,dragonfly' \\
        --grid 'scheduling.candidate_parent_limit=3,6,10' --seeds 5 [--out DIR]
        [--scheduler tcp://HOST:8786 | --workers N] [--no-plots] [--quiet]

A grid key is ``policy`` (policy labels, as ``--policies`` takes them) or a dotted path
into the scenario's mapping (``topology.hosts``, ``peer.max_in_flight``,
``scheduler.candidate_parent_limit``; ``scheduling.`` is another name for
``scheduler.``); values are read as YAML scalars (``3`` an int, ``1Gbit`` a string the
scenario parser reads). Every combination is validated before anything runs.

A run is a pure function of (scenario, overrides, seed, policy): the simulator draws
every random choice from the seed, whatever the process (tests/test_sim_determinism.py).
So the CSV is the same bit for bit however the runs are spread over workers, in whatever
order they finish, and if a worker dies and Dask runs its runs again elsewhere. Rows are
written in grid order (the grid's keys in the order given, the last varying fastest, then
the seeds), floats as ``repr`` (exact round trip). Wall time and events per second are
left out: they measure the machine, not the scenario.
"""

from __future__ import annotations

import copy
import csv
import io
import itertools
import os
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from d7y.sim import scenario as sc

#: Summary fields that measure the machine rather than the scenario.
MACHINE_DEPENDENT = ("wall_seconds", "events_per_second")
#: Alias accepted for the first part of a grid key (the issue's spelling).
KEY_ALIASES = {"scheduling": "scheduler"}


@dataclass(frozen=True)
class Axis:
    key: str  # as given on the command line (the CSV column)
    values: tuple[Any, ...]


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker needs for one run (plain data: it is pickled to workers)."""

    index: int
    name: str
    base_dir: str
    data: dict[str, Any]  # the scenario mapping with this run's overrides applied
    seed: int
    policy: str
    params: tuple[tuple[str, Any], ...]  # (grid key, value) for the CSV


def parse_axis(text: str) -> Axis:
    """``KEY=V1,V2,...`` into an axis; a clear error on anything else."""
    key, eq, values = text.partition("=")
    key = key.strip()
    if not eq or not key or not values.strip():
        raise sc.ScenarioError(
            f"--grid {text!r}: write KEY=VALUE1,VALUE2,... (e.g. policy=d7y,dragonfly)"
        )
    if key == "seed":
        raise sc.ScenarioError("--grid seed=...: use --seeds N for seeds")
    if key == "policy":
        items: list[Any] = sc.split_policies(values)
        for label in items:
            sc.parse_policy(label)
    else:
        items = [yaml.safe_load(v.strip()) for v in values.split(",") if v.strip()]
    if not items:
        raise sc.ScenarioError(f"--grid {text!r} names no value")
    if len(set(map(repr, items))) != len(items):
        raise sc.ScenarioError(f"--grid {text!r} repeats a value")
    return Axis(key, tuple(items))


def _set_path(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    parts[0] = KEY_ALIASES.get(parts[0], parts[0])
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise sc.ScenarioError(
                f"grid key {key!r}: {'.'.join(parts[: i + 1])} is {child!r}, not a mapping"
            )
        node = child
    node[parts[-1]] = value


def plan(
    scenario_path: Path, axes: Sequence[Axis], seeds: int
) -> tuple[sc.Scenario, list[RunSpec]]:
    """Every run of the sweep, in grid order, each combination validated."""
    if seeds < 1:
        raise sc.ScenarioError(f"--seeds must be >= 1, got {seeds}")
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise sc.ScenarioError(f"a grid key appears twice: {keys}")
    base = sc.load(scenario_path)
    runs: list[RunSpec] = []
    for combo in itertools.product(*(a.values for a in axes)):
        data = copy.deepcopy(base.raw)
        policy = None
        for axis, value in zip(axes, combo, strict=True):
            if axis.key == "policy":
                policy = value
            else:
                _set_path(data, axis.key, value)
        parsed = sc.parse(data, name=base.name, base_dir=base.base_dir)  # validates
        labels = [policy] if policy is not None else [p.label for p in parsed.policies]
        for label in labels:
            policy_obj = sc.parse_policy(label)
            if policy_obj.uses_scheduler:  # the scheduler's own checks, before any run
                parsed.scheduler_config(policy_obj)
            parsed.download_config(policy_obj)
            params = tuple(zip(keys, combo, strict=True))
            if policy is None:
                params = (("policy", label), *params)
            for i in range(seeds):
                runs.append(
                    RunSpec(
                        len(runs),
                        base.name,
                        str(base.base_dir.resolve()),  # workers may run elsewhere
                        data,
                        base.seed + i,
                        label,
                        params,
                    )
                )
    return base, runs


def run_one(spec: RunSpec) -> dict[str, Any]:
    """One run (called on a Dask worker): the summary without machine figures."""
    from d7y.sim.runner import run_policy

    scenario = sc.parse(spec.data, name=spec.name, base_dir=Path(spec.base_dir))
    scenario = scenario.with_seed(spec.seed)
    _sim, result, _bounds = run_policy(scenario, sc.parse_policy(spec.policy))
    return {k: v for k, v in result.summary.items() if k not in MACHINE_DEPENDENT}


class RunProgress:
    """A text progress bar over runs on ``stream`` (stderr): redrawn in place on a
    terminal, one line per tenth of the runs elsewhere (a pipe, CI)."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 30) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.started = time.perf_counter()
        self._shown = -1

    def __call__(self, done: int) -> None:
        tenth = done * 10 // self.total if self.total else 10
        if not self.tty and tenth == self._shown and done < self.total:
            return
        self._shown = tenth
        fill = done * self.width // self.total if self.total else self.width
        line = (
            f"runs [{'#' * fill}{'.' * (self.width - fill)}] {done}/{self.total}  "
            f"{time.perf_counter() - self.started:6.1f} s"
        )
        end = "\n" if not self.tty or done == self.total else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()


def execute(
    runs: Sequence[RunSpec],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    on_done: Callable[[int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run every spec on Dask: an embedded LocalCluster (``workers`` processes, default
    one per core) or the cluster whose scheduler is at ``scheduler``. Returns the
    summaries in ``runs`` order; ``on_done(n)`` after each of the n runs finished."""
    from dask.distributed import Client, LocalCluster, as_completed

    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        )
        client = Client(cluster)
    try:
        sweep_id = uuid.uuid4().hex  # keys unique on a shared cluster; not in any result
        futures = {
            client.submit(run_one, spec, key=f"d7y-sim-{sweep_id}-{spec.index}"): spec.index
            for spec in runs
        }
        results: list[dict[str, Any] | None] = [None] * len(runs)
        for done, (future, summary) in enumerate(as_completed(futures, with_results=True), start=1):
            results[futures[future]] = summary
            if on_done is not None:
                on_done(done)
        return results  # type: ignore[return-value]
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def columns(runs: Sequence[RunSpec], results: Sequence[dict[str, Any]]) -> list[str]:
    params = [k for k, _v in runs[0].params] if runs else []
    result_keys = list(results[0]) if results else []
    return ["scenario", *params, "seed", *[k for k in result_keys if k not in params]]


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def tidy_csv(runs: Sequence[RunSpec], results: Sequence[dict[str, Any]]) -> str:
    """One row per run, every parameter and every result column, in grid order."""
    cols = columns(runs, results)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(cols)
    for spec, summary in zip(runs, results, strict=True):
        row = {"scenario": spec.name, "seed": spec.seed, **dict(spec.params), **summary}
        row.update(dict(spec.params))  # a parameter named like a result keeps its value
        writer.writerow([_cell(row[c]) for c in cols])
    return buf.getvalue()


def sweep(
    scenario_path: Path,
    axes: Sequence[Axis],
    seeds: int,
    out: Path,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    plots: bool = True,
    on_done: Callable[[int], None] | None = None,
) -> list[Path]:
    """Plan, run, write ``sweep.csv`` (and the plots) to ``out``; returns the files."""
    base, runs = plan(scenario_path, axes, seeds)
    results = execute(runs, scheduler=scheduler, workers=workers, on_done=on_done)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "sweep.csv"
    path.write_text(tidy_csv(runs, results))
    files = [path]
    if plots:
        from d7y.sim.plots import write_sweep_plots

        files += write_sweep_plots(out, base.name, [a.key for a in axes], runs, results)
    return files
