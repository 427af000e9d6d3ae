"""Simulator benchmark: 1,000 and 10,000 hosts, one 1 GiB task (256 pieces of 4 MiB),
flash crowd, flat topology (sim/scenarios/flash-crowd-1000.yaml and -10000.yaml).

    .venv/bin/python bench/bench_sim.py                  # 1,000 hosts, every policy
    .venv/bin/python bench/bench_sim.py --hosts 10000    # 10,000 hosts (slow)
    .venv/bin/python bench/bench_sim.py --hosts 1000 10000 --policies load_aware

Each (scenario, policy) runs in a fresh subprocess, on one core, so its wall time and
peak RSS are its own. Reported per run: wall seconds, peak RSS, simulated events per
second (SimPy events processed / wall), flows (piece transfers) per second, the
makespan T, the Kumar-Ross T_min and T/T_min, the origin's egress / file size.

Targets (issue 14): 1,000 hosts <= 30 s wall; 10,000 hosts <= 5 min and <= 2 GiB RSS
(issue 5's were 60 s, 15 min, 4 GiB). ``cpu s`` is the run's CPU time and ``load``
the 1-minute load average at its end: on a shared machine the wall time includes waiting.
The anchor of the T figures is the Kumar-Ross bound of the same scenario.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {1000: "flash-crowd-1000", 10000: "flash-crowd-10000"}
TARGET_WALL = {1000: 30.0, 10000: 300.0}
TARGET_RSS_GIB = {10000: 2.0}


def one(scenario_name: str, policy: str, network: str = "default") -> dict:
    """Run one policy in this process; returns its figures (called in a subprocess).
    ``network`` "py": the network model's pure-Python twin even where the compiled one
    is built (the before/after of bench/RESULTS.md; the kernels of d7y.ext stay as
    they are, which D7Y_NO_EXTENSIONS=1 would not)."""
    from d7y.sim import network as net_mod
    from d7y.sim import scenario as sc
    from d7y.sim import swarm
    from d7y.sim.cli import find_scenario
    from d7y.sim.runner import run_policy

    backend = net_mod.backend
    if network == "py":
        from d7y.sim import _network_py as backend

        swarm.backend.Network = backend.Network  # the one name swarm builds its network with
    s = sc.load(find_scenario(scenario_name))
    started = time.perf_counter()
    cpu_started = time.process_time()
    sim, result, bounds = run_policy(s, sc.parse_policy(policy))
    wall = time.perf_counter() - started
    # CPU seconds too: on a shared machine (load above the core count) wall time
    # measures the neighbours as much as the simulator.
    cpu = time.process_time() - cpu_started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = result.summary
    return {
        "scenario": scenario_name,
        "hosts": len(sim.normal_hosts),
        "policy": policy,
        "network": backend.__name__,
        "wall": wall,
        "cpu": cpu,
        "loadavg": Path("/proc/loadavg").read_text().split()[0]
        if Path("/proc/loadavg").exists()
        else "",
        "peak_rss_mib": peak_kib / 1024,
        "events": sim.events,
        "events_per_s": sim.events / wall,
        "flows_per_s": sim.net.flows_started / wall,
        "done": summary["done"],
        "downloads": summary["downloads"],
        "makespan": summary["makespan"],
        "t_min": bounds[0].t_min,
        "t_over_t_min": summary["t_over_t_min"],
        "client_server_bound": bounds[0].client_server,
        "origin_over_size": summary["origin_over_size"],
        "mean_completion": summary["mean_completion"],
        "upload_utilisation": summary["mean_upload_utilisation"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[1000], choices=sorted(SCENARIOS))
    parser.add_argument(
        "--policies", default=None, help="comma-separated (default: the scenario's)"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument(
        "--network",
        choices=["default", "py"],
        default="default",
        help="py: the network model's pure-Python twin (default: the compiled one if built)",
    )
    parser.add_argument("--one", nargs=2, metavar=("SCENARIO", "POLICY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(one(*args.one, network=args.network)))
        return 0

    from d7y.sim import scenario as sc
    from d7y.sim.cli import find_scenario

    rows = []
    for hosts in args.hosts:
        name = SCENARIOS[hosts]
        if args.policies:
            policies = sc.split_policies(args.policies)
        else:
            policies = [p.label for p in sc.load(find_scenario(name)).policies]
        for policy in policies:
            print(f"running {name} / {policy} ...", file=sys.stderr, flush=True)
            proc = subprocess.run(
                [sys.executable, __file__, "--one", name, policy, "--network", args.network],
                capture_output=True,
                text=True,
                cwd=ROOT,
            )
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                return 1
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(_line(row) + f"  [{row['network']}]", file=sys.stderr, flush=True)
    print()
    head = (
        f"{'hosts':>6} {'policy':<24} {'wall s':>8} {'cpu s':>8} {'load':>6} {'target':>8} "
        f"{'peak RSS':>9} "
        f"{'events/s':>9} {'flows/s':>8} {'done':>11} {'T s':>8} {'T_min s':>8} "
        f"{'T/T_min':>8} {'origin/F':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        print(_line(r))
    print()
    for hosts in args.hosts:
        mine = [r for r in rows if r["hosts"] == hosts]
        if not mine:
            continue
        worst = max(r["wall"] for r in mine)
        rss = max(r["peak_rss_mib"] for r in mine) / 1024
        worst_cpu = max(r["cpu"] for r in mine)
        verdict = "met" if worst <= TARGET_WALL[hosts] else "MISSED"
        verdict += f" (slowest CPU time {worst_cpu:.1f} s: " + (
            "met)" if worst_cpu <= TARGET_WALL[hosts] else "MISSED)"
        )
        extra = ""
        if hosts in TARGET_RSS_GIB:
            ok = rss <= TARGET_RSS_GIB[hosts]
            extra = f"; peak RSS {rss:.2f} GiB vs <= {TARGET_RSS_GIB[hosts]:g} GiB: " + (
                "met" if ok else "MISSED"
            )
        ratios = ", ".join(f"{r['policy']} {r['t_over_t_min']:.2f}" for r in mine)
        print(
            f"{hosts} hosts: slowest policy {worst:.1f} s vs <= {TARGET_WALL[hosts]:g} s: "
            f"{verdict}{extra}; T/T_min (anchor: Kumar-Ross) {ratios}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


def _line(r: dict) -> str:
    target = TARGET_WALL[r["hosts"]] if r["hosts"] in TARGET_WALL else float("nan")
    return (
        f"{r['hosts']:>6} {r['policy']:<24} {r['wall']:>8.1f} {r['cpu']:>8.1f} "
        f"{r['loadavg']:>6} {target:>8.0f} "
        f"{r['peak_rss_mib']:>6.0f} MiB {r['events_per_s']:>9.0f} {r['flows_per_s']:>8.0f} "
        f"{r['done']:>5}/{r['downloads']:<5} {r['makespan']:>8.1f} {r['t_min']:>8.2f} "
        f"{r['t_over_t_min']:>8.2f} {r['origin_over_size']:>8.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
