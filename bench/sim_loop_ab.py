"""One simulation with the piece picker and the download loop compiled or as Python.

    .venv/bin/python bench/sim_loop_ab.py SCENARIO POLICY [--loop compiled|python]

The before/after of their pure-mode builds (bench/RESULTS.md, "Session 9"): ``python``
loads ``d7y.core.scheduling._picker_py`` and ``_download_py`` while the kernels and the
network model stay compiled (``D7Y_NO_EXTENSIONS=1`` would switch those too). Prints the
run's CPU seconds (``time.process_time`` around ``run_policy``), its SimPy events and
T/T_min, which must be the same for both. Run the two alternately, one process each,
on one core (``taskset -c 0``): this VM's speed drifts too much for anything else.
"""

from __future__ import annotations

import argparse
import importlib
import time


def use_python_loop() -> None:
    """Make d7y.core.scheduling.picker and .download select their Python modules (before
    anything imports them)."""
    from d7y import ext

    chosen = ext.load_backend

    def load_backend(name: str, package: str = "d7y.ext"):
        if package == "d7y.core.scheduling" and name in ("picker", "download"):
            return importlib.import_module(f"{package}._{name}_py")
        return chosen(name, package)

    ext.load_backend = load_backend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", help="a scenario file or a shipped scenario's name")
    parser.add_argument("policy")
    parser.add_argument("--loop", choices=["compiled", "python"], default="compiled")
    args = parser.parse_args()
    if args.loop == "python":
        use_python_loop()
    from d7y.core.scheduling import download, picker
    from d7y.sim import scenario as sc
    from d7y.sim.cli import find_scenario
    from d7y.sim.runner import run_policy

    backends = f"{picker.backend.__name__}, {download.backend.__name__}"
    scenario = sc.load(find_scenario(args.scenario))
    started = time.process_time()
    sim, result, _bounds = run_policy(scenario, sc.parse_policy(args.policy))
    cpu = time.process_time() - started
    summary = result.summary
    print(
        f"{args.policy} [{backends}]: cpu {cpu:.2f} s, events {sim.events}, "
        f"T/T_min {summary['t_over_t_min']:.4f}, done {summary['done']}"
    )


if __name__ == "__main__":
    main()
