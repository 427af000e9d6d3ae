"""``d7y sim sweep`` on real Dask clusters: the embedded LocalCluster, an external
``dask scheduler`` with two ``dask worker`` processes on loopback, and that cluster
losing a worker mid-sweep. Every CSV must equal, byte for byte, the one written from
the same runs done one after another in this process."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from d7y.sim import scenario as sc
from d7y.sim import sweep
from d7y.sim.cli import main

DASK = str(Path(sys.executable).with_name("dask"))

TINY = """\
name: tiny
seed: 1
topology: {kind: flat, hosts: 6}
tasks: [{size: 16MiB}]
"""

# Runs long enough (about a second each) that a worker is still busy when the first
# result comes back.
SMALL = """\
name: small
seed: 1
topology: {kind: flat, hosts: 30}
tasks: [{size: 64MiB}]
"""


def scenario_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(text)
    return path


def serial_csv(path: Path, grid: list[str], seeds: int) -> str:
    """The reference: every run in this process, in order."""
    _base, runs = sweep.plan(path, [sweep.parse_axis(g) for g in grid], seeds)
    return sweep.tidy_csv(runs, [sweep.run_one(spec) for spec in runs])


GRID = ["policy=d7y,dragonfly", "scheduling.candidate_parent_limit=1,3"]


def test_sweep_on_the_embedded_local_cluster(tmp_path, capsys):
    path = scenario_file(tmp_path, TINY)
    out = tmp_path / "out"
    argv = ["sweep", str(path), "--seeds", "2", "--workers", "2", "--out", str(out)]
    for g in GRID:
        argv += ["--grid", g]
    assert main(argv) == 0
    text = (out / "sweep.csv").read_text()
    assert text == serial_csv(path, GRID, 2)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 2 * 2 * 2
    # grid order: policy outermost, then the limit, then the seeds
    assert [(r["policy"], r["scheduling.candidate_parent_limit"], r["seed"]) for r in rows] == [
        (p, lim, s) for p in ("d7y", "dragonfly") for lim in ("1", "3") for s in ("1", "2")
    ]
    assert all(r["done"] == "6" for r in rows)
    assert "wall_seconds" not in rows[0]
    for name in ("t_over_t_min", "makespan", "origin_over_size"):
        png = out / f"sweep-{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    err = capsys.readouterr().err
    assert "8/8" in err  # the progress bar reached the end


def test_the_swept_parameter_reaches_the_scheduler(tmp_path):
    # Dragonfly's candidate_parent_limit changes the outcome of a 30-host crowd: the
    # grid value is applied, not dropped.
    path = scenario_file(tmp_path, SMALL)
    _base, runs = sweep.plan(
        path,
        [
            sweep.parse_axis("policy=dragonfly"),
            sweep.parse_axis("scheduler.candidate_parent_limit=1,3"),
        ],
        1,
    )
    a, b = (sweep.run_one(spec) for spec in runs)
    assert a["makespan"] != b["makespan"]


@pytest.fixture
def dask_cluster(tmp_path):
    """A ``dask scheduler`` and two ``dask worker`` processes (no nanny: killing one
    kills the worker) on loopback; yields (address, {worker name: process})."""
    scheduler_file = tmp_path / "scheduler.json"
    procs = []
    log = open(tmp_path / "dask.log", "w")  # noqa: SIM115 (closed below)
    try:
        procs.append(
            subprocess.Popen(
                [
                    DASK,
                    "scheduler",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    "0",
                    "--no-dashboard",
                    "--scheduler-file",
                    str(scheduler_file),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
        from dask.distributed import Client

        client = Client(scheduler_file=str(scheduler_file), timeout=60)
        address = client.scheduler.address
        workers = {}
        for name in ("w0", "w1"):
            workers[name] = subprocess.Popen(
                [
                    DASK,
                    "worker",
                    address,
                    "--name",
                    name,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            procs.append(workers[name])
        client.wait_for_workers(2, timeout=60)
        yield address, workers, client
        client.shutdown()  # the scheduler and its workers begin to exit
    finally:
        # A worker's own graceful close can wait tens of seconds for its thread pool;
        # these are the test's processes and hold nothing worth a clean exit.
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        log.close()


def test_sweep_on_an_external_scheduler_and_two_workers(tmp_path, dask_cluster):
    address, _workers, client = dask_cluster
    path = scenario_file(tmp_path, TINY)
    axes = [sweep.parse_axis(g) for g in GRID]
    files = sweep.sweep(path, axes, 2, tmp_path / "out", scheduler=address, plots=False)
    assert files == [tmp_path / "out" / "sweep.csv"]
    assert files[0].read_text() == serial_csv(path, GRID, 2)
    # both workers took part
    assert len(client.scheduler_info()["workers"]) == 2


def test_a_worker_killed_mid_sweep_leaves_the_csv_complete_and_identical(tmp_path, dask_cluster):
    address, workers, client = dask_cluster
    path = scenario_file(tmp_path, SMALL)
    grid = ["policy=d7y,dragonfly"]
    axes = [sweep.parse_axis(g) for g in grid]
    killed = []

    def kill_a_busy_worker(done: int) -> None:
        if done != 1:
            return
        # The first result is back; kill a worker that is running a run now.
        names = {a: w["name"] for a, w in client.scheduler_info()["workers"].items()}
        busy = [names[a] for a, keys in client.processing().items() if keys and a in names]
        assert busy, "no worker was running a run when the first result came back"
        os.kill(workers[busy[0]].pid, signal.SIGKILL)
        workers[busy[0]].wait()
        killed.append(busy[0])

    files = sweep.sweep(
        path, axes, 3, tmp_path / "out", scheduler=address, plots=False, on_done=kill_a_busy_worker
    )
    assert len(killed) == 1
    text = files[0].read_text()
    assert len(text.splitlines()) == 1 + 2 * 3  # header + every run
    assert text == serial_csv(path, grid, 3)


def test_bad_grids_are_refused_with_the_value_named(tmp_path, capsys):
    path = scenario_file(tmp_path, TINY)
    with pytest.raises(sc.ScenarioError, match="KEY=VALUE1"):
        sweep.parse_axis("policy")
    with pytest.raises(sc.ScenarioError, match="--seeds"):
        sweep.parse_axis("seed=1,2")
    with pytest.raises(sc.ScenarioError, match="nosuch"):
        sweep.parse_axis("policy=d7y,nosuch")
    with pytest.raises(sc.ScenarioError, match="frobnicate"):
        sweep.plan(path, [sweep.parse_axis("scheduler.frobnicate=1,2")], 1)
    with pytest.raises(sc.ScenarioError, match="seeds"):
        sweep.plan(path, [sweep.parse_axis("policy=d7y")], 0)
    assert main(["sweep", str(path), "--grid", "topology.hosts=-3"]) == 2
    assert "hosts" in capsys.readouterr().err
    # a value the scheduler itself refuses, for one policy of the grid: refused up front
    argv = ["sweep", str(path), "--grid", "policy=d7y,dragonfly"]
    assert main([*argv, "--grid", "scheduling.candidate_parent_limit=3,8"]) == 2
    assert "candidate_parent_limit (8)" in capsys.readouterr().err
