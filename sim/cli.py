"""``d7y sim``: run a simulation scenario and write its results.

    d7y sim run SCENARIO [--out DIR] [--seed N] [--policies P1,P2,...] [--no-plots]
    d7y sim sweep SCENARIO --grid KEY=V1,V2 [--grid ...] [--seeds N] [--out DIR]
        [--scheduler tcp://HOST:8786 | --workers N] [--no-plots] [--quiet]

SCENARIO is a path to a scenario YAML file, or the name of one shipped with d7y
(``flash-crowd-100`` for sim/scenarios/flash-crowd-100.yaml). The summary table goes to
stdout, the progress bar to stderr, the files (results.json, summary.csv, tasks.csv,
peers.csv, hosts.csv, completion_cdf.png, swarm_progress.png) to DIR (default
``sim-results/<scenario name>``).

Exit status: 0 on success, 2 on a bad scenario or argument.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SCENARIO_DIR = Path(__file__).resolve().parent / "scenarios"


def find_scenario(arg: str) -> Path:
    """A path as given, else a scenario shipped in d7y.sim's scenarios folder."""
    path = Path(arg)
    if path.is_file():
        return path
    for candidate in (SCENARIO_DIR / arg, SCENARIO_DIR / f"{arg}.yaml"):
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml")) if SCENARIO_DIR.is_dir() else []
    raise FileNotFoundError(
        f"scenario {arg!r} is neither a file nor a shipped scenario "
        f"(shipped: {', '.join(shipped) or 'none'})"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="d7y sim", description="d7y simulator")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a scenario under each of its policies")
    run.add_argument("scenario", help="scenario YAML file, or the name of a shipped one")
    run.add_argument("--out", type=Path, default=None, help="output directory")
    run.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    run.add_argument(
        "--policies",
        default=None,
        help="comma-separated policies (load_aware, base, random, client_server, "
        "bittorrent; scheduler ones take ':field=value' overrides)",
    )
    run.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    sweep = sub.add_parser(
        "sweep", help="run a grid of parameters x seeds on Dask; one CSV, a plot per result"
    )
    sweep.add_argument("scenario", help="scenario YAML file, or the name of a shipped one")
    sweep.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="KEY=V1,V2,...",
        help="a swept parameter: policy, or a dotted scenario key "
        "(scheduler.candidate_parent_limit, peer.max_in_flight, topology.hosts, ...); "
        "repeat for a cross product",
    )
    sweep.add_argument("--seeds", type=int, default=1, help="seeds per combination (default 1)")
    sweep.add_argument("--out", type=Path, default=None, help="output directory")
    where = sweep.add_mutually_exclusive_group()
    where.add_argument(
        "--scheduler", default=None, help="address of a running Dask scheduler (tcp://HOST:8786)"
    )
    where.add_argument(
        "--workers", type=int, default=None, help="embedded cluster's worker processes (cores)"
    )
    sweep.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    sweep.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("list", help="list the shipped scenarios")
    return parser


def _sweep(args: argparse.Namespace) -> int:
    try:
        import dask.distributed  # noqa: F401 (runs go there: fail now, not after planning)

        from d7y.sim import scenario as sc
        from d7y.sim import sweep
    except ImportError as exc:  # simpy, networkx, matplotlib or dask missing
        print(
            f"d7y sim: {exc}; the simulator needs the sim extra: pip install 'd7y[sim]'",
            file=sys.stderr,
        )
        return 2
    try:
        path = find_scenario(args.scenario)
        axes = [sweep.parse_axis(g) for g in args.grid]
        if args.workers is not None and args.workers < 1:
            raise sc.ScenarioError(f"--workers must be >= 1, got {args.workers}")
        _base, runs = sweep.plan(path, axes, args.seeds)  # validate before starting Dask
    except (FileNotFoundError, ValueError) as exc:
        print(f"d7y sim: {exc}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else Path("sim-results") / f"{path.stem}-sweep"
    progress = None if args.quiet else sweep.RunProgress(len(runs))
    started = time.perf_counter()
    files = sweep.sweep(
        path,
        axes,
        args.seeds,
        out,
        scheduler=args.scheduler,
        workers=args.workers,
        plots=not args.no_plots,
        on_done=progress,
    )
    print(f"{len(runs)} runs; wrote {', '.join(str(f) for f in files)}")
    print(f"total wall time {time.perf_counter() - started:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``d7y sim`` (``argv`` without the leading ``sim``)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "list":
        for path in sorted(SCENARIO_DIR.glob("*.yaml")):
            print(path.stem)
        return 0
    if args.command == "sweep":
        return _sweep(args)
    try:
        from d7y.sim import scenario as sc
        from d7y.sim.plots import write_plots
        from d7y.sim.results import table, write
        from d7y.sim.runner import ProgressBar, run_scenario
    except ImportError as exc:  # simpy, networkx or matplotlib missing
        print(
            f"d7y sim: {exc}; the simulator needs the sim extra: pip install 'd7y[sim]'",
            file=sys.stderr,
        )
        return 2

    try:
        path = find_scenario(args.scenario)
        scenario = sc.load(path)
        if args.seed is not None:
            if args.seed < 0:
                raise sc.ScenarioError(f"--seed must be >= 0, got {args.seed}")
            scenario = scenario.with_seed(args.seed)
        if args.policies:
            labels = sc.split_policies(args.policies)
            if not labels:
                raise sc.ScenarioError("--policies names no policy")
            scenario = scenario.with_policies(labels)
        scenario.build_topology()  # fail early on a bad topology
    except (FileNotFoundError, ValueError) as exc:
        print(f"d7y sim: {exc}", file=sys.stderr)
        return 2
    out = args.out if args.out is not None else Path("sim-results") / scenario.name
    progress = None if args.quiet else ProgressBar()
    started = time.perf_counter()
    try:
        outcome = run_scenario(scenario, progress)
    except ValueError as exc:  # e.g. a task asking for more peers than hosts
        print(f"d7y sim: {exc}", file=sys.stderr)
        return 2
    info = {
        "name": scenario.name,
        "file": str(path),
        "seed": scenario.seed,
        "policies": [p.label for p in scenario.policies],
        "model": {"depth": scenario.depth, "hub_slack": scenario.hub_slack},
        "definition": scenario.raw,
    }
    files = write(out, info, outcome.bounds, outcome.results)
    if not args.no_plots:
        files += write_plots(out, scenario.name, outcome.bounds, outcome.results)
    print(f"scenario {scenario.name} (seed {scenario.seed})")
    print(table(outcome.bounds, outcome.results))
    print()
    print(f"wrote {', '.join(str(f) for f in files)}")
    print(f"total wall time {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
