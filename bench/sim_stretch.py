"""A simulation too large to wait for: run it for at most LIMIT wall seconds and report
how far it got (issue 14's stretch: 100,000 hosts, a 256 MiB task, the default policy).

    .venv/bin/python bench/sim_stretch.py                      # the stretch, 30 minutes
    .venv/bin/python bench/sim_stretch.py --hosts 20000 --limit 300 --policy bittorrent

The scenario is a shipped one (default flash-crowd-10000) with ``topology.hosts`` and
every task's ``size`` replaced. Every EVERY wall seconds, and once when it stops (the
limit, or the run's end), a line: wall and CPU seconds, simulated time, the share of
pieces delivered, downloads ended, events, events per second (recent and mean), RSS and
peak RSS. Run it on one core (``taskset -c 1``); CPU seconds are the figure to compare
on a shared machine.
"""

from __future__ import annotations

import argparse
import resource
import time

import yaml

from d7y.sim import scenario as sc
from d7y.sim.cli import find_scenario
from d7y.sim.swarm import Simulation


class _Stop(Exception):
    """Raised from the progress hook at the wall limit: ends the run where it stands."""


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenario", default="flash-crowd-10000")
    parser.add_argument("--hosts", type=int, default=100_000)
    parser.add_argument("--size", default="256MiB", help="every task's size")
    parser.add_argument("--policy", default="d7y")
    parser.add_argument("--limit", type=float, default=1800.0, help="wall seconds")
    parser.add_argument("--every", type=float, default=60.0, help="wall seconds per line")
    args = parser.parse_args()

    path = find_scenario(args.scenario)
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    raw["topology"]["hosts"] = args.hosts
    raw["name"] = f"{raw.get('name', args.scenario)}, {args.hosts} hosts, {args.size}"
    for task in raw["tasks"]:
        task["size"] = args.size
    scenario = sc.parse(raw, name=raw["name"], base_dir=path.parent)

    t0 = time.perf_counter()
    c0 = time.process_time()
    last = {"wall": t0, "events": 0}

    def line(sim: Simulation, now: float) -> str:
        done = sim.pieces_done / sim.pieces_expected if sim.pieces_expected else 0.0
        recent = (sim.events - last["events"]) / max(now - last["wall"], 1e-9)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return (
            f"wall {now - t0:7.1f} s  cpu {time.process_time() - c0:7.1f} s  "
            f"sim {sim.now:8.3f} s  pieces {100 * done:6.2f} %  "
            f"downloads ended {sim.ended}/{sim.expected}  events {sim.events:,}  "
            f"recent events/s {recent:,.0f}  mean events/s {sim.events / (now - t0):,.0f}  "
            f"RSS {rss_mib():,.0f} MiB  peak {peak:,.0f} MiB"
        )

    def progress(sim: Simulation) -> None:
        now = time.perf_counter()
        if now - last["wall"] >= args.every:
            print(line(sim, now), flush=True)
            last["wall"], last["events"] = now, sim.events
        if now - t0 >= args.limit:
            print("STOPPED at the wall limit: " + line(sim, now), flush=True)
            raise _Stop

    sim = Simulation(scenario, sc.parse_policy(args.policy), progress=progress)
    print(
        f"{scenario.name}, {args.policy}: built in {time.perf_counter() - t0:.1f} s, "
        f"RSS {rss_mib():,.0f} MiB",
        flush=True,
    )
    try:
        sim.run()
    except _Stop:
        return
    print("FINISHED: " + line(sim, time.perf_counter()), flush=True)


if __name__ == "__main__":
    main()
