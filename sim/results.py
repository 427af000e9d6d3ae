"""What a run measured, the Kumar-Ross bound, and the files it writes.

Per policy: every download's completion time (from its arrival), their distribution,
each task's makespan T (first arrival to last completion) against the Kumar-Ross lower
bound T_min, the origin's egress per task as a multiple of the file size, and each
host's upload utilisation (bytes uploaded / (upload capacity x the run's duration)).

Kumar-Ross (DESIGN.md section 7) for a file of F bytes, an origin of upload u_s and N
peers of uploads u_i and smallest download d_min::

    T_min = max(F/u_s, F/d_min, N*F/(u_s + sum u_i))

Seed peers' uploads count in the sum (they are capacity the system may use; they need
not receive the file, so they are not in N). With arrivals spread in time, a peer
arriving at a_i cannot finish before a_i + F/d_i, so T_min also covers
max_i(a_i - a_0 + F/d_i). Latency and shared links are ignored: the bound stays a lower
bound for every topology, just a looser one. With several tasks at once each task's
bound assumes it has the cluster to itself (still a lower bound).
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from d7y.sim.swarm import STATE_NAMES, Simulation
from d7y.sim.units import format_size


@dataclass(frozen=True)
class Bound:
    """The Kumar-Ross bound of one task, with its terms (seconds)."""

    task: str
    size: int
    peers: int
    server: float  # F/u_s
    download: float  # F/d_min (and the arrival term)
    swarm: float  # N*F/(u_s + sum u_i)
    client_server: float  # max(N*F/u_s, F/d_min): what the origin alone needs

    @property
    def t_min(self) -> float:
        return max(self.server, self.download, self.swarm)


def kumar_ross(
    size: int,
    origin_upload: float,
    uploads: list[float],
    downloads: list[float],
    arrivals: list[float] | None = None,
    seed_uploads: float = 0.0,
    task: str = "",
) -> Bound:
    """The bound for ``size`` bytes to peers with these capacities (bytes/s)."""
    n = len(uploads)
    if n == 0:
        return Bound(task, size, 0, 0.0, 0.0, 0.0, 0.0)
    d_min = min(downloads)
    download = size / d_min
    if arrivals:
        a0 = min(arrivals)
        download = max(a - a0 + size / d for a, d in zip(arrivals, downloads, strict=True))
    server = size / origin_upload
    swarm = n * size / (origin_upload + seed_uploads + sum(uploads))
    client_server = max(n * size / origin_upload, size / d_min)
    return Bound(task, size, n, server, download, swarm, client_server)


def scenario_bounds(sim: Simulation) -> list[Bound]:
    """The bound of each task of a prepared simulation (its workload drawn)."""
    seeds = sum(h.upload for h in sim.seed_hosts)
    out = []
    for task in sim.tasks:
        hosts = [h for _t, h in task.plan]
        out.append(
            kumar_ross(
                task.size,
                sim.origin.upload,
                [h.upload for h in hosts],
                [h.download for h in hosts],
                [t for t, _h in task.plan],
                seeds,
                task.name,
            )
        )
    return out


def _pct(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    values = sorted(values)
    i = min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))
    return values[i]


@dataclass
class PolicyResult:
    label: str
    policy: str
    summary: dict[str, Any]
    tasks: list[dict[str, Any]]
    peers: list[dict[str, Any]] = field(repr=False)
    hosts: list[dict[str, Any]] = field(repr=False)
    cdf: list[float] = field(repr=False)  # sorted completion times (s)
    progress: tuple[list[float], list[float]] = field(repr=False)  # time, fraction held


def collect(sim: Simulation, bounds: list[Bound], wall: float) -> PolicyResult:
    """Turn a finished simulation into numbers."""
    by_task = {b.task: b for b in bounds}
    peers = []
    durations: list[float] = []
    task_rows = []
    for task in sim.tasks:
        done = []
        counts = dict.fromkeys(STATE_NAMES, 0)
        for peer in sim.peers.values():
            if peer.task is not task or peer.is_seed:
                continue
            counts[STATE_NAMES[peer.state]] += 1
            if not math.isnan(peer.done_at):
                done.append(peer.done_at - peer.arrival)
            peers.append(
                {
                    "policy": sim.policy.label,
                    "task": task.name,
                    "peer": peer.id,
                    "host": peer.host.name,
                    "arrival": round(peer.arrival, 9),
                    "state": STATE_NAMES[peer.state],
                    "completion": round(peer.done_at - peer.arrival, 9)
                    if not math.isnan(peer.done_at)
                    else None,
                    "from_origin": int(peer.from_origin),
                    "from_seeds": int(peer.from_seeds),
                    "from_peers": int(peer.from_peers),
                    "reschedules": peer.reschedules,
                    "back_to_source": peer.bts_reason,
                }
            )
        durations.extend(done)
        bound = by_task[task.name]
        finished_at = [
            p.done_at
            for p in sim.peers.values()
            if p.task is task and not p.is_seed and not math.isnan(p.done_at)
        ]
        complete = len(done) == task.expected and task.expected > 0
        makespan = (max(finished_at) - task.first_arrival) if finished_at else math.nan
        task_rows.append(
            {
                "policy": sim.policy.label,
                "task": task.name,
                "size": task.size,
                "piece_length": task.piece_length,
                "peers": task.expected,
                "done": len(done),
                "left": counts["left"],
                "unfinished": task.expected - len(done) - counts["left"],
                "makespan": makespan,
                "complete": complete,
                "t_min": bound.t_min,
                "t_over_t_min": makespan / bound.t_min if bound.t_min else math.nan,
                "client_server_bound": bound.client_server,
                "mean_completion": statistics.fmean(done) if done else math.nan,
                "p50_completion": _pct(done, 0.5),
                "p95_completion": _pct(done, 0.95),
                "max_completion": max(done) if done else math.nan,
                "origin_bytes": int(task.origin_bytes),
                "origin_over_size": task.origin_bytes / task.size,
            }
        )
    duration = sim.end_time if sim.end_time > 0 else math.nan
    hosts = []
    utils = []
    for h in [sim.origin, *sim.seed_hosts, *sim.normal_hosts]:
        util = h.uploaded / (h.upload * duration) if duration == duration else math.nan
        hosts.append(
            {
                "policy": sim.policy.label,
                "host": h.name,
                "kind": h.kind,
                "upload": h.upload,
                "uploaded": int(h.uploaded),
                "utilisation": util,
            }
        )
        if h.kind == "host":
            utils.append(util)
    ratios = [t["t_over_t_min"] for t in task_rows]
    total_size = sum(t.size for t in sim.tasks)
    peers_total = sum(t.expected for t in sim.tasks)
    summary = {
        "policy": sim.policy.label,
        "downloads": peers_total,
        "done": len(durations),
        "left": sum(t["left"] for t in task_rows),
        "unfinished": sum(t["unfinished"] for t in task_rows),
        "t_over_t_min": max(ratios) if ratios else math.nan,
        "makespan": max((t["makespan"] for t in task_rows), default=math.nan),
        "t_min": max((b.t_min for b in bounds), default=math.nan),
        "mean_completion": statistics.fmean(durations) if durations else math.nan,
        "p50_completion": _pct(durations, 0.5),
        "p95_completion": _pct(durations, 0.95),
        "origin_over_size": sum(t.origin_bytes for t in sim.tasks) / total_size,
        "back_to_source_scheduler": sim.fallbacks.get("scheduler", 0),
        "back_to_source_schedule_failed": sim.fallbacks.get("schedule_failed", 0),
        "back_to_source_stall": sim.fallbacks.get("stall", 0),
        "mean_upload_utilisation": statistics.fmean(utils) if utils else math.nan,
        "max_upload_utilisation": max(utils) if utils else math.nan,
        "simulated_seconds": sim.end_time,
        "wall_seconds": wall,
        "events": sim.events,
        "events_per_second": sim.events / wall if wall > 0 else math.nan,
        "flows": sim.net.flows_started,
        "scheduler_calls": sim.scheduler_calls,
    }
    times = list(sim.piece_times)
    expected = max(1, sim.pieces_expected)
    # at most ~2,000 points: enough for a plot, small in JSON
    step = max(1, len(times) // 2000)
    pt = [0.0, *times[step - 1 :: step]]
    pf = [0.0] + [min(1.0, (i + 1) * step / expected) for i in range(len(pt) - 1)]
    if times and pt[-1] != times[-1]:
        pt.append(times[-1])
        pf.append(len(times) / expected)
    return PolicyResult(
        sim.policy.label,
        sim.policy.name,
        summary,
        task_rows,
        peers,
        hosts,
        sorted(durations),
        (pt, pf),
    )


# ------------------------------------------------------------------- writing --


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def write(
    out: Path, scenario_info: dict[str, Any], bounds: list[Bound], results: list[PolicyResult]
) -> list[Path]:
    """results.json, summary.csv, tasks.csv, peers.csv, hosts.csv under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    doc = {
        "scenario": scenario_info,
        "bounds": [asdict(b) | {"t_min": b.t_min} for b in bounds],
        "policies": [
            {
                "label": r.label,
                "policy": r.policy,
                "summary": r.summary,
                "tasks": r.tasks,
                "completion_cdf": r.cdf,
                "progress": {"time": r.progress[0], "fraction": r.progress[1]},
            }
            for r in results
        ],
    }
    path = out / "results.json"
    path.write_text(json.dumps(_clean(doc), indent=1, sort_keys=False) + "\n")
    written.append(path)
    for name, rows in (
        ("summary.csv", [r.summary for r in results]),
        ("tasks.csv", [t for r in results for t in r.tasks]),
        ("peers.csv", [p for r in results for p in r.peers]),
        ("hosts.csv", [h for r in results for h in r.hosts]),
    ):
        path = out / name
        with path.open("w", newline="") as fh:
            if rows:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
                writer.writeheader()
                for row in rows:
                    writer.writerow({k: _csv(v) for k, v in row.items()})
        written.append(path)
    return written


def _csv(value: Any) -> Any:
    if isinstance(value, float):
        if not math.isfinite(value):
            return ""
        return f"{value:.6g}" if abs(value) < 1e6 else f"{value:.0f}"
    return value


def table(bounds: list[Bound], results: list[PolicyResult]) -> str:
    """The terminal summary."""
    lines = []
    for b in bounds:
        lines.append(
            f"task {b.task}: {format_size(b.size)} to {b.peers} peers; Kumar-Ross "
            f"T_min = {b.t_min:.2f} s (F/u_s {b.server:.2f}, F/d_min {b.download:.2f}, "
            f"NF/(u_s+sum u) {b.swarm:.2f}); client-server needs {b.client_server:.2f} s"
        )
    head = (
        f"{'policy':<28} {'done':>11} {'T (s)':>9} {'T/T_min':>8} {'mean (s)':>9} "
        f"{'p95 (s)':>9} {'origin/F':>9} {'to origin':>9} {'upload util':>11} {'wall (s)':>9} "
        f"{'events/s':>9}"
    )
    lines += ["", head, "-" * len(head)]
    for r in results:
        s = r.summary
        lines.append(
            f"{r.label:<28} {s['done']:>5}/{s['downloads']:<5} {_f(s['makespan'], 2):>9} "
            f"{_f(s['t_over_t_min'], 3):>8} {_f(s['mean_completion'], 2):>9} "
            f"{_f(s['p95_completion'], 2):>9} {_f(s['origin_over_size'], 2):>9} "
            f"{_to_origin(s):>9} "
            f"{_f(100 * s['mean_upload_utilisation'], 1) + ' %':>11} "
            f"{_f(s['wall_seconds'], 1):>9} {_f(s['events_per_second'], 0):>9}"
        )
    return "\n".join(lines)


def _to_origin(s: dict[str, Any]) -> str:
    """Downloads that went back to source (NeedBackToSource + ScheduleFailed + stall)."""
    return str(
        s["back_to_source_scheduler"]
        + s["back_to_source_schedule_failed"]
        + s["back_to_source_stall"]
    )


def _f(value: float, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:.{digits}f}"
