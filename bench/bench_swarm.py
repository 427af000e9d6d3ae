"""Swarm benchmark with real daemons: how close d7y gets to the Kumar-Ross bound (issue 9).

    python bench/bench_swarm.py --mode loopback [--peers 6,12] [--size 128MiB]
        [--seed-rate 16MiB] [--policies load_aware,base] [--runs 1]
    python bench/bench_swarm.py --mode netns [--peers 8,16] [--size 64MiB]
        [--rate 4MiB,16MiB] [--systems d7y,libtorrent,libtorrent-superseed]
        [--policies load_aware] [--runs 3]

Run as root from the checkout with its venv (``.venv/bin/python bench/...``). It takes
minutes, so it is a script, not part of the test run. It installs nothing; it needs these
Debian packages and says so when one is missing:

    apt-get install -y nginx               # the origin, both modes
    apt-get install -y iproute2            # ip / tc, --mode netns
    apt-get install -y python3-libtorrent  # the libtorrent swarm, --mode netns (system python3)

``--mode loopback``: a real nginx origin (private config, own port, access log with the
body bytes of every response), a scheduler, one seed peer whose upload is capped with
``upload.rate_limit`` and N uncapped peers, all on 127.0.0.1; dfget on every peer at once.
T_min = max(F/u_seed, N*F/(u_seed + sum u_i)), u_seed the cap and u_i the loopback
upload rate of one d7y peer serving another, calibrated once before the runs.

``--mode netns``: every host in a network namespace of its own (see swarm_net.py): the
scheduler (uncapped), nginx, the seed peer and N peers, each capped to ``--rate`` up
with ``tc tbf``. The same hosts then run a libtorrent swarm: the initial seeder in the
origin's namespace, an empty session in the seed peer's, one per peer (``connect_peer``,
no tracker), with and without super-seeding. T_min = max(F/u_s, F/d_min,
N*F/(u_s + u_seed + sum u_i)) with the caps (d_min unbounded unless ``--down-rate``).
Origin and seed egress are counted twice: by the applications (nginx's access log, the
seed's metrics, libtorrent's payload counters) and by the link (eth0 tx bytes: frames as the
kernel hands them to the veth, GSO super-frames carrying one set of headers each, so close
to payload plus protocol overhead).

A policy label (``--policies``) is ``d7y``, ``dragonfly`` or ``dragonfly:EVALUATOR``; a
bare evaluator (load_aware, base, random) means Dragonfly's rules with it. The scheduler
gets ``scheduling.policy`` and ``scheduling.algorithm``, every daemon
``download.policy``. ``+SECTION.KEY=VALUE`` after a label sets a dfdaemon key on every
daemon of the run (VALUE read as YAML): ``d7y+download.cut_through=true``. Every run has
a hard limit of ``--time-limit-factor`` x T_min; a run past it is stopped and reported as
not finished with how many peers finished. Every process, namespace, veth and bridge is
removed at exit (Ctrl-C too); leftovers of a crashed run make it refuse to start unless
``--clean-leftovers``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from swarm_net import SUBNET, Host, Network, call_in_netns, leftovers, remove_namespace

from d7y.daemons.config import parse_size
from d7y.daemons.procman import ServiceProcess
from tests.nginx_origin import NginxOrigin, nginx_binary
from tests.peer_harness import PeerProcess, SchedulerProcess, dfget_command, free_port

SYSTEM_PYTHON = "/usr/bin/python3"
LT_SESSION = Path(__file__).resolve().parent / "lt_session.py"
LT_PORT = 6881
SCHEDULER_PORT = 8002
FILE_NAME = "swarm.bin"


class Interrupted(Exception):
    """SIGTERM arrived: unwind like Ctrl-C so every cleanup runs."""


# ---------------------------------------------------------------- prerequisites


def check_prerequisites(mode: str, systems: list[str]) -> None:
    missing = []
    if nginx_binary() is None:
        missing.append("nginx")
    if mode == "netns":
        if os.geteuid() != 0:
            raise SystemExit("--mode netns creates network namespaces: run it as root")
        if not shutil.which("ip") or not shutil.which("tc"):
            missing.append("iproute2")
        if any(s.startswith("libtorrent") for s in systems):
            probe = subprocess.run(
                [SYSTEM_PYTHON, "-c", "import libtorrent"], capture_output=True, text=True
            )
            if probe.returncode != 0:
                missing.append("python3-libtorrent")
    if missing:
        raise SystemExit(
            f"missing Debian package(s): {', '.join(missing)}; install with\n"
            f"    apt-get update && apt-get install -y {' '.join(missing)}"
        )


# ---------------------------------------------------------------- results


@dataclass
class RunResult:
    mode: str
    system: str  # d7y | libtorrent | libtorrent-superseed
    variant: str  # d7y: the policy
    peers: int
    size: int
    rate: int  # loopback: the seed's cap; netns: every host's upload cap (bytes/s)
    run: int
    t_min: float
    limit: float
    peer_times: list[float | None]  # per peer; None: it did not finish in time
    origin_bytes: int  # as counted by the origin (nginx body bytes / seeder payload)
    seed_bytes: int  # as counted by the seed (d7y metrics / libtorrent payload)
    origin_link: int | None = None  # eth0 tx bytes of the origin's host (netns)
    seed_link: int | None = None
    details: dict = field(default_factory=dict)
    # Derived from peer_times (kept as fields so the JSON output carries them).
    t: float | None = field(init=False)  # until the last peer finished; None: not all did
    finished: int = field(init=False)

    def __post_init__(self) -> None:
        done = [t for t in self.peer_times if t is not None]
        self.finished = len(done)
        self.t = max(done) if self.finished == len(self.peer_times) and done else None

    @property
    def ratio(self) -> float | None:
        return None if self.t is None else self.t / self.t_min


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def print_run(r: RunResult) -> None:
    f = r.size
    done = (
        f"T {r.t:.1f} s = {r.ratio:.2f}x T_min"
        if r.t is not None
        else (f"NOT FINISHED: {r.finished}/{r.peers} peers in {r.limit:.0f} s")
    )
    link = ""
    if r.origin_link is not None:
        link = f" (eth0 tx {r.origin_link / f:.2f}x / {r.seed_link / f:.2f}x)"
    print(
        f"  run {r.run}: {done}; origin {r.origin_bytes / f:.2f}x F, seed upload "
        f"{r.seed_bytes / f:.2f}x F{link}"
    )
    times = " ".join("-" if t is None else f"{t:.1f}" for t in r.peer_times)
    print(f"    peer completion s: {times}")
    for key, value in r.details.items():
        print(f"    {key}: {value}")


def _spread(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} [{min(values):.2f}-{max(values):.2f}]"


def summarise(results: list[RunResult]) -> str:
    """The side-by-side table: one row per (system, policy, N, rate), median [range]."""
    groups: dict[tuple, list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.mode, r.peers, r.rate, r.system, r.variant), []).append(r)
    link = any(r.origin_link is not None for r in results)
    head = (
        f"| N | cap MiB/s | system | policy | runs | finished | T s | T/T_min "
        f"| origin / F | seed up / F |{' origin eth0 tx / F | seed eth0 tx / F |' if link else ''}"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for (_, n, rate, system, variant), rs in groups.items():
        done = [r for r in rs if r.t is not None]
        fin = ", ".join(f"{r.finished}/{r.peers}" for r in rs if r.t is None)
        row = (
            f"| {n} | {rate / 2**20:g} | {system} | {variant} | {len(rs)} "
            f"| {len(done)}/{len(rs)}{f' (DNF: {fin})' if fin else ''} "
            f"| {_spread([r.t for r in done])} | {_spread([r.ratio for r in done])} "
            f"| {_spread([r.origin_bytes / r.size for r in rs])} "
            f"| {_spread([r.seed_bytes / r.size for r in rs])} |"
        )
        if link:
            row += (
                f" {_spread([r.origin_link / r.size for r in rs if r.origin_link is not None])}"
                f" | {_spread([r.seed_link / r.size for r in rs if r.seed_link is not None])} |"
            )
        lines.append(row)
    return "\n".join(lines)


def targets(r: RunResult) -> list[str]:
    def mark(ok: bool) -> str:
        return "met" if ok else "MISSED"

    f = r.size
    lines = [
        f"origin <= 1.05x F: {mark(r.origin_bytes <= 1.05 * f)} ({r.origin_bytes / f:.2f}x)",
        f"T <= 1.5x T_min: {mark(r.ratio is not None and r.ratio <= 1.5)} "
        f"({'not finished' if r.ratio is None else f'{r.ratio:.2f}x'})",
    ]
    if r.mode == "loopback":
        lines.insert(
            1, f"seed upload <= 2x F: {mark(r.seed_bytes <= 2 * f)} ({r.seed_bytes / f:.2f}x)"
        )
    return lines


# ---------------------------------------------------------------- d7y processes


class InNamespace:
    """Mixin for the test harness's daemon processes: run the daemon inside a host's
    network namespace, and reach its 127.0.0.1 metrics port from inside it too."""

    host: Host

    def command_line(self) -> list[str]:
        return self.host.wrap(super().command_line())

    def call_local(self, fn, *args):
        return call_in_netns(self.host.ns, fn, *args)


class NsPeer(InNamespace, PeerProcess):
    def __init__(self, net_host: Host, workdir: Path, name: str, **config) -> None:
        self.host = net_host
        super().__init__(workdir, name, **config)


class NsScheduler(InNamespace, SchedulerProcess):
    def __init__(self, net_host: Host, workdir: Path, **config) -> None:
        self.host = net_host
        super().__init__(workdir, **config)


def peer_config(
    scheduler: str, name: str, ip: str, *, seed: bool = False, label: str = "d7y", **extra
) -> dict:
    """The daemon's defaults, except what a benchmark host must set (its name, address,
    scheduler, the run's download policy) and a fast origin backoff."""
    config: dict = {
        "seed_peer": seed,
        "host": {"hostname": name, "ip": ip},
        "upload": {"listen": ip},
        "scheduler": {"address": scheduler},
        # The origin (nginx) is on loopback or in the benchmark's own namespaces: seed
        # peers fetch from it for others, so it must be allowed (source.allow).
        "source": {"allow": ["127.0.0.0/8", "::1/128", f"{SUBNET}.0/24"]},
        "download": {
            "origin_backoff": "0.1s",
            "origin_backoff_max": "5s",
            "policy": policy_rules(label)[0],
        },
        "log": {"level": "info"},
    }
    for section, values in [*label_overrides(label).items(), *extra.items()]:
        config.setdefault(section, {}).update(values)
    return config


def label_overrides(label: str) -> dict[str, dict]:
    """The dfdaemon keys a label sets after ``+``: ``d7y+download.cut_through=true``."""
    overrides: dict[str, dict] = {}
    for item in label.split("+")[1:]:
        key, eq, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not (eq and dot and section and name):
            raise ValueError(f"policy label {label!r}: {item!r} is not SECTION.KEY=VALUE")
        overrides.setdefault(section, {})[name] = yaml.safe_load(value)
    return overrides


def policy_rules(label: str) -> tuple[str, str]:
    """(scheduling/download policy, evaluator) of a --policies label: ``d7y``,
    ``dragonfly``, ``dragonfly:base``; a bare evaluator name (load_aware, base, random)
    means Dragonfly's rules with that evaluator. Overrides after ``+`` are not part of
    it (:func:`label_overrides`)."""
    policy, _, evaluator = label.split("+", 1)[0].partition(":")
    if policy in ("load_aware", "base", "random"):
        return "dragonfly", policy
    return policy, evaluator or "load_aware"


def scheduler_config(label: str) -> dict:
    policy, evaluator = policy_rules(label)
    return {"scheduling": {"policy": policy, "algorithm": evaluator}, "log": {"level": "info"}}


def start_all(processes: list) -> None:
    """Start daemons in parallel (each waits for its own /healthy)."""
    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(p.start, 60.0) for p in processes]:
            future.result()


def stop_all(processes: list) -> None:
    """SIGTERM the peers at once, then the scheduler (so no peer logs a lost scheduler
    while stopping); the harness kills a daemon that ignores SIGTERM."""

    def stop(p) -> None:
        with contextlib.suppress(AssertionError, OSError):
            p.stop(timeout=15.0)

    schedulers = [p for p in processes if isinstance(p, SchedulerProcess)]
    for wave in ([p for p in processes if p not in schedulers], schedulers):
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(stop, wave))


def wait_connected(scheduler, count: int, timeout: float = 30.0) -> None:
    """Until ``count`` daemons hold a connection to the scheduler (they announce on it)."""
    deadline = time.monotonic() + timeout
    seen = 0.0
    while time.monotonic() < deadline:
        seen = scheduler.metrics().get("d7y_scheduler_connections", 0.0)
        if seen >= count:
            return
        time.sleep(0.1)
    raise RuntimeError(f"only {seen:.0f} of {count} daemons connected to the scheduler")


def scheduler_decisions(scheduler) -> dict[str, int]:
    out = {}
    for name, value in scheduler.metrics().items():
        if name.startswith("d7y_scheduler_decisions_total{"):
            out[name.split('kind="', 1)[1].split('"', 1)[0]] = int(value)
    return out


@dataclass
class Download:
    peer: PeerProcess
    output: Path
    proc: subprocess.Popen
    started: float
    ended: float | None = None


def run_dfgets(
    peers: list[PeerProcess], url: str, outdir: Path, limit: float, wrap=lambda p, a: a
) -> tuple[float, list[Download]]:
    """dfget on every peer at once; returns (start time, downloads) once all ended or the
    limit passed (then the ones still running are killed, ``ended`` stays None)."""
    downloads = []
    start = time.monotonic()
    for peer in peers:
        output = outdir / f"{peer.name}.out"
        argv = dfget_command(url, output, "--no-progress", "--daemon-socket", str(peer.socket_path))
        with open(outdir / f"{peer.name}.dfget.log", "wb") as log:
            proc = subprocess.Popen(wrap(peer, argv), stdout=log, stderr=subprocess.STDOUT)
        downloads.append(Download(peer, output, proc, start))
    deadline = start + limit
    try:
        while time.monotonic() < deadline:
            running = 0
            for d in downloads:
                if d.ended is None and d.proc.poll() is not None:
                    d.ended = time.monotonic()
                running += d.ended is None
            if not running:
                break
            time.sleep(0.05)
    finally:
        for d in downloads:
            if d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait()
    return start, downloads


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def completion(downloads: list[Download], start: float, digest: str) -> list[float | None]:
    """Each peer's completion time, None unless dfget exited 0 with the right bytes."""
    times: list[float | None] = []
    for d in downloads:
        ok = d.ended is not None and d.proc.returncode == 0 and d.output.exists()
        if ok and sha256(d.output) != digest:
            print(f"    {d.peer.name}: WRONG CONTENT (sha256 differs from the origin's)")
            ok = False
        times.append(d.ended - start if ok else None)
        if d.ended is not None and d.proc.returncode != 0:
            log = (d.output.parent / f"{d.peer.name}.dfget.log").read_text(errors="replace")
            print(f"    {d.peer.name}: dfget exit {d.proc.returncode}: {log.strip()[-300:]}")
    return times


def peer_traffic(peers: list[PeerProcess]) -> dict[str, tuple[float, float, float]]:
    """Per daemon: (MiB from the origin, MiB from peers, MiB uploaded)."""
    out = {}
    for p in peers:
        m = p.metrics()
        out[p.name] = tuple(
            round(m.get(k, 0.0) / 2**20, 1)
            for k in (
                "d7y_peer_download_origin_bytes_total",
                "d7y_peer_download_peer_bytes_total",
                "d7y_peer_upload_bytes_total",
            )
        )
    return out


def generate(path: Path, size: int) -> str:
    rng = random.Random(9)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = rng.randbytes(min(left, 4 << 20))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- mode loopback


def calibrate_loopback(work: Path, url: str) -> tuple[float, str]:
    """Upload rate of one uncapped d7y peer serving another on this machine: A fetches the
    file from the origin (no seed peer exists), then B from A alone; rate = F / B's task
    time as B's daemon measures it."""
    work.mkdir()
    scheduler = SchedulerProcess(work, log={"level": "info"})  # its default policy
    procs: list = [scheduler]
    try:
        scheduler.start()
        a = PeerProcess(work, "cal-a", **peer_config(scheduler.address, "cal-a", "127.0.0.1"))
        b = PeerProcess(work, "cal-b", **peer_config(scheduler.address, "cal-b", "127.0.0.1"))
        procs += [a, b]
        start_all([a, b])
        wait_connected(scheduler, 2)
        for peer in (a, b):
            out = peer.dfget(url, work / f"{peer.name}.out", "--no-progress", timeout=600)
            if out.returncode != 0:
                raise RuntimeError(f"calibration dfget on {peer.name} failed: {out.stderr!r}")
        m = b.metrics()
        seconds = m["d7y_peer_task_duration_seconds_sum"]
        from_peers = m.get("d7y_peer_download_peer_bytes_total", 0.0)
        size = (work / "cal-b.out").stat().st_size
        if from_peers < size:
            print(
                f"warning: in the calibration B got only {mib(from_peers)} of {mib(size)} MiB "
                "from A; the rate below is partly the origin's"
            )
        note = (
            f"u_i calibrated: one d7y peer served another {mib(from_peers)} of "
            f"{mib(size)} MiB in {seconds:.2f} s (B's task time) = "
            f"{size / seconds / 2**20:.0f} MiB/s; every peer is taken to upload that fast "
            f"(an upper bound: the N peers share {os.cpu_count()} cores)"
        )
        return size / seconds, note
    finally:
        stop_all(procs)
        shutil.rmtree(work, ignore_errors=True)


def loopback_run(
    args,
    work: Path,
    policy: str,
    n: int,
    run: int,
    www: Path,
    digest: str,
    size: int,
    u_peer: float,
) -> RunResult:
    seed_rate = int(parse_size(args.seed_rate))
    t_min = max(size / seed_rate, n * size / (seed_rate + n * u_peer))
    limit = args.time_limit_factor * t_min
    work.mkdir(parents=True)
    origin = NginxOrigin(work, www, f"127.0.0.1:{free_port()}")
    procs: list = []
    try:
        origin.start(FILE_NAME)
        scheduler = SchedulerProcess(work, **scheduler_config(policy))
        procs.append(scheduler)
        try:
            scheduler.start()
        except RuntimeError as exc:
            raise RuntimeError(f"the scheduler refused policy {policy!r}: {exc}") from None
        addr = scheduler.address
        seed = PeerProcess(
            work,
            "seed",
            **peer_config(
                addr,
                "seed",
                "127.0.0.1",
                seed=True,
                label=policy,
                upload={"rate_limit": seed_rate},
                host={"upload_bandwidth": seed_rate * 8},
            ),
        )
        peers = [
            PeerProcess(
                work, f"peer{i}", **peer_config(addr, f"peer{i}", "127.0.0.1", label=policy)
            )
            for i in range(n)
        ]
        procs += [seed, *peers]
        start_all([seed, *peers])
        wait_connected(scheduler, n + 1)
        start, downloads = run_dfgets(peers, origin.base_url + FILE_NAME, work, limit)
        times = completion(downloads, start, digest)
        origin_bytes, requests, _ = origin.traffic()
        traffic = peer_traffic([seed, *peers])
        result = RunResult(
            mode="loopback",
            system="d7y",
            variant=policy,
            peers=n,
            size=size,
            rate=seed_rate,
            run=run,
            t_min=t_min,
            limit=limit,
            peer_times=times,
            origin_bytes=origin_bytes,
            seed_bytes=int(seed.metrics().get("d7y_peer_upload_bytes_total", 0)),
            details={
                "origin requests": requests,
                "scheduler decisions": scheduler_decisions(scheduler),
                "MiB from origin / from peers / uploaded": traffic,
            },
        )
        if result.t is not None and result.t < t_min:
            result.details["note"] = (
                "T < T_min: the bound takes the capped seed as the only source; the uncapped "
                f"origin sent {origin_bytes / size:.2f}x F (above 1x: peers fetched from it "
                "too), and a rate limiter may let a first burst through"
            )
        return result
    finally:
        stop_all(procs)
        origin.stop()


def mode_loopback(args, work: Path) -> list[RunResult]:
    size = int(parse_size(args.size))
    www = work / "www"
    www.mkdir()
    digest = generate(www / FILE_NAME, size)
    (work / "calibration-origin").mkdir()
    calib_origin = NginxOrigin(work / "calibration-origin", www, f"127.0.0.1:{free_port()}")
    calib_origin.start(FILE_NAME)
    try:
        u_peer, note = calibrate_loopback(work / "calibration", calib_origin.base_url + FILE_NAME)
    finally:
        calib_origin.stop()
    print(note)
    results = []
    for n in args.peers:
        for policy in args.policies:
            print(
                f"\nloopback: N={n}, {mib(size)} MiB, seed capped at {args.seed_rate}/s, "
                f"policy {policy}"
            )
            for run in range(1, args.runs + 1):
                try:
                    r = loopback_run(
                        args,
                        work / f"n{n}-{policy}-{run}",
                        policy,
                        n,
                        run,
                        www,
                        digest,
                        size,
                        u_peer,
                    )
                except RuntimeError as exc:  # e.g. a policy this scheduler does not know
                    print(f"  run {run}: FAILED: {exc}")
                    break
                r.details["T_min"] = (
                    f"{r.t_min:.2f} s = max(F/u_seed = {size / r.rate:.2f} s, "
                    f"N*F/(u_seed + N*u_i) = {n * size / (r.rate + n * u_peer):.2f} s)"
                )
                print_run(r)
                for line in targets(r):
                    print(f"    target {line}")
                results.append(r)
    return results


# ---------------------------------------------------------------- mode netns


def build_network(n: int, rate: int, down_rate: int) -> tuple[Network, dict[str, Host]]:
    net = Network()
    hosts = {"scheduler": net.add_host("sched")}
    hosts["origin"] = net.add_host("origin", rate, down_rate)
    hosts["seed"] = net.add_host("seed", rate, down_rate)
    for i in range(n):
        hosts[f"peer{i}"] = net.add_host(f"peer{i}", rate, down_rate)
    return net, hosts


def link_tx(hosts: dict[str, Host]) -> dict[str, int]:
    return {name: host.link_bytes()[0] for name, host in hosts.items()}


def netns_bound(n: int, size: int, rate: int, down_rate: int) -> float:
    """Kumar-Ross with every uploader capped at ``rate``: the origin, the seed host's
    uploads, and the N peers'."""
    terms = [size / rate, n * size / (rate * (n + 2))]
    if down_rate:
        terms.append(size / down_rate)
    return max(terms)


def netns_d7y_run(
    args, work: Path, policy: str, n: int, rate: int, run: int, www: Path, digest: str, size: int
) -> RunResult:
    t_min = netns_bound(n, size, rate, args.down_rate)
    limit = args.time_limit_factor * t_min
    work.mkdir(parents=True)
    net, hosts = build_network(n, rate, args.down_rate)
    procs: list = []
    origin = None
    try:
        o = hosts["origin"]
        origin = NginxOrigin(
            work, www, f"{o.ip}:80", o.wrap, lambda fn, *a: call_in_netns(o.ns, fn, *a)
        )
        origin.start(FILE_NAME)
        s = hosts["scheduler"]
        scheduler = NsScheduler(
            s, work, server={"listen": s.ip, "port": SCHEDULER_PORT}, **scheduler_config(policy)
        )
        procs.append(scheduler)
        try:
            scheduler.start()
        except RuntimeError as exc:
            raise RuntimeError(f"the scheduler refused policy {policy!r}: {exc}") from None
        addr = f"{s.ip}:{SCHEDULER_PORT}"
        bandwidth = {"upload_bandwidth": rate * 8}
        seed = NsPeer(
            hosts["seed"],
            work,
            "seed",
            **peer_config(addr, "seed", hosts["seed"].ip, seed=True, label=policy, host=bandwidth),
        )
        peers = [
            NsPeer(
                hosts[f"peer{i}"],
                work,
                f"peer{i}",
                **peer_config(addr, f"peer{i}", hosts[f"peer{i}"].ip, label=policy, host=bandwidth),
            )
            for i in range(n)
        ]
        procs += [seed, *peers]
        start_all([seed, *peers])
        wait_connected(scheduler, n + 1)
        before = link_tx(hosts)
        start, downloads = run_dfgets(
            peers, origin.base_url + FILE_NAME, work, limit, wrap=lambda p, argv: p.host.wrap(argv)
        )
        after = link_tx(hosts)
        times = completion(downloads, start, digest)
        origin_bytes, requests, per_client = origin.traffic()
        by_ip = {h.ip: name for name, h in hosts.items()}
        return RunResult(
            mode="netns",
            system="d7y",
            variant=policy,
            peers=n,
            size=size,
            rate=rate,
            run=run,
            t_min=t_min,
            limit=limit,
            peer_times=times,
            origin_bytes=origin_bytes,
            seed_bytes=int(seed.metrics().get("d7y_peer_upload_bytes_total", 0)),
            origin_link=after["origin"] - before["origin"],
            seed_link=after["seed"] - before["seed"],
            details={
                "origin requests": requests,
                "origin MiB per client": {
                    by_ip.get(ip, ip): mib(b) for ip, b in sorted(per_client.items())
                },
                "scheduler decisions": scheduler_decisions(scheduler),
                "MiB from origin / from peers / uploaded": peer_traffic([seed, *peers]),
            },
        )
    finally:
        stop_all(procs)
        if origin is not None:
            origin.stop()
        net.close()


def read_status(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            out.append(json.loads(line))
    return out


def netns_lt_run(
    args,
    work: Path,
    super_seed: bool,
    n: int,
    rate: int,
    run: int,
    www: Path,
    torrent: Path,
    digest: str,
    size: int,
) -> RunResult:
    t_min = netns_bound(n, size, rate, args.down_rate)
    limit = args.time_limit_factor * t_min
    work.mkdir(parents=True)
    net, hosts = build_network(n, rate, args.down_rate)
    go = work / "go"
    sessions: dict[str, ServiceProcess] = {}
    try:
        members = ["origin", "seed", *[f"peer{i}" for i in range(n)]]
        addresses = {name: f"{hosts[name].ip}:{LT_PORT}" for name in members}
        for name in members:
            save = www if name == "origin" else work / f"{name}-data"
            save.mkdir(exist_ok=True)
            argv = [
                SYSTEM_PYTHON,
                str(LT_SESSION),
                "run",
                "--listen",
                addresses[name],
                "--torrent",
                str(torrent),
                "--save",
                str(save),
                "--status",
                str(work / f"{name}.status"),
                "--go",
                str(go),
            ]
            if name == "origin":
                argv.append("--seeder")
                if super_seed:
                    argv.append("--super-seed")
            for other in members:
                if other != name:
                    argv += ["--peer", addresses[other]]
            service = ServiceProcess(
                f"lt-{name}", hosts[name].wrap(argv), log_path=work / f"lt-{name}.log"
            )
            sessions[name] = service
            service.launch()
        deadline = time.monotonic() + 60
        while not all(read_status(work / f"{m}.status") for m in members):
            for name, service in sessions.items():
                if not service.running:
                    raise RuntimeError(f"libtorrent session {name} exited; see {service.log_path}")
            if time.monotonic() > deadline:
                raise RuntimeError("libtorrent sessions did not start within 60 s")
            time.sleep(0.05)
        before = link_tx(hosts)
        start = time.time()
        go.write_text("go")
        peer_names = [f"peer{i}" for i in range(n)]
        finished_at: dict[str, float] = {}
        while time.time() < start + limit and len(finished_at) < n:
            for name in peer_names:
                if name not in finished_at:
                    for record in read_status(work / f"{name}.status"):
                        if record.get("state") == "finished":
                            finished_at[name] = record["finished_at"]
            time.sleep(0.1)
        after = link_tx(hosts)
        for service in sessions.values():
            service.stop()
        last = {m: read_status(work / f"{m}.status")[-1] for m in members}
        times: list[float | None] = []
        for name in peer_names:
            t = finished_at.get(name)
            output = work / f"{name}-data" / FILE_NAME
            if t is not None and sha256(output) != digest:
                print(f"    {name}: WRONG CONTENT (sha256 differs from the origin's)")
                t = None
            times.append(None if t is None else t - start)
        return RunResult(
            mode="netns",
            system="libtorrent-superseed" if super_seed else "libtorrent",
            variant="super-seeding" if super_seed else "-",
            peers=n,
            size=size,
            rate=rate,
            run=run,
            t_min=t_min,
            limit=limit,
            peer_times=times,
            origin_bytes=last["origin"]["upload"],
            seed_bytes=last["seed"]["upload"],
            origin_link=after["origin"] - before["origin"],
            seed_link=after["seed"] - before["seed"],
            details={"MiB uploaded per session": {m: mib(last[m]["upload"]) for m in members}},
        )
    finally:
        for service in sessions.values():
            service.stop()
        net.close()


def make_torrent(www: Path) -> tuple[Path, str]:
    torrent = www.parent / "swarm.torrent"
    out = subprocess.run(
        [SYSTEM_PYTHON, str(LT_SESSION), "make-torrent", str(www / FILE_NAME), str(torrent)],
        capture_output=True,
        text=True,
        check=True,
    )
    info = json.loads(out.stdout)
    return torrent, f"{info['pieces']} pieces of {info['piece_length'] // 1024} KiB"


def mode_netns(args, work: Path) -> list[RunResult]:
    size = int(parse_size(args.size))
    www = work / "www"
    www.mkdir()
    digest = generate(www / FILE_NAME, size)
    torrent = None
    if any(s.startswith("libtorrent") for s in args.systems):
        torrent, pieces = make_torrent(www)
        print(f"torrent: {pieces}")
    results = []
    for rate_text in args.rate:
        rate = int(parse_size(rate_text))
        for n in args.peers:
            t_min = netns_bound(n, size, rate, args.down_rate)
            print(
                f"\nnetns: N={n}, {mib(size)} MiB, every host capped at {rate_text}/s up"
                f"{f', {args.down_rate} B/s down' if args.down_rate else ''}; T_min = "
                f"{t_min:.1f} s (F/u_s {size / rate:.1f} s, N*F/((N+2)u) "
                f"{n * size / ((n + 2) * rate):.1f} s), limit {args.time_limit_factor:g}x"
            )
            variants = [("d7y", p) for p in args.policies if "d7y" in args.systems]
            variants += [(s, None) for s in args.systems if s.startswith("libtorrent")]
            for run in range(1, args.runs + 1):  # interleaved, so drift hits every system
                for system, policy in variants:
                    label = f"{system} {policy}" if policy else system
                    print(f" {label}:")
                    run_dir = work / f"r{rate_text}-n{n}-{label.replace(' ', '-')}-{run}"
                    if system == "d7y":
                        try:
                            r = netns_d7y_run(
                                args, run_dir, policy, n, rate, run, www, digest, size
                            )
                        except RuntimeError as exc:  # e.g. a policy the scheduler lacks
                            print(f"  run {run}: FAILED: {exc}")
                            continue
                    else:
                        r = netns_lt_run(
                            args,
                            run_dir,
                            system == "libtorrent-superseed",
                            n,
                            rate,
                            run,
                            www,
                            torrent,
                            digest,
                            size,
                        )
                    print_run(r)
                    for line in targets(r):
                        print(f"    target {line}")
                    results.append(r)
                    if not args.keep:
                        shutil.rmtree(run_dir, ignore_errors=True)
    return results


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["loopback", "netns"], required=True)
    parser.add_argument("--peers", default=None, help="N, or several: 6,12 (default by mode)")
    parser.add_argument("--size", default=None, help="file size (128MiB loopback, 64MiB netns)")
    parser.add_argument(
        "--policies",
        default="d7y,dragonfly",
        help="policies, comma-separated: d7y, dragonfly, dragonfly:base, load_aware, ...",
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--seed-rate", default="16MiB", help="loopback: the seed's upload cap /s")
    parser.add_argument(
        "--rate", default="4MiB", help="netns: every host's upload cap /s, or several: 4MiB,16MiB"
    )
    parser.add_argument("--down-rate", default="0", help="netns: download cap /s (0: none)")
    parser.add_argument(
        "--systems",
        default="d7y,libtorrent,libtorrent-superseed",
        help="netns: which swarms to run",
    )
    parser.add_argument(
        "--time-limit-factor",
        type=float,
        default=15.0,
        help="stop a run after this many times T_min (default 15)",
    )
    parser.add_argument("--workdir", default=None, help="work here (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep logs and data dirs")
    parser.add_argument("--json", default=None, help="write every run's figures here")
    parser.add_argument(
        "--clean-leftovers",
        action="store_true",
        help="remove namespaces (and their processes) a crashed run left",
    )
    args = parser.parse_args()

    defaults = {"loopback": ("6,12", "128MiB"), "netns": ("8,16", "64MiB")}[args.mode]
    try:
        args.peers = [int(x) for x in (args.peers or defaults[0]).split(",")]
    except ValueError:
        parser.error(f"--peers takes numbers like 6 or 6,12, got {args.peers!r}")
    if min(args.peers) < 1:
        parser.error(f"--peers must be >= 1, got {args.peers}")
    args.size = args.size or defaults[1]
    for name in ("size", "seed_rate", "down_rate"):
        try:
            parse_size(getattr(args, name))
        except ValueError as exc:
            parser.error(f"--{name.replace('_', '-')}: {exc}")
    args.down_rate = int(parse_size(args.down_rate))
    args.rate = args.rate.split(",")
    args.policies = [p for p in args.policies.split(",") if p]
    args.systems = args.systems.split(",")
    unknown = set(args.systems) - {"d7y", "libtorrent", "libtorrent-superseed"}
    if unknown:
        parser.error(
            f"--systems: unknown {sorted(unknown)}; use d7y, libtorrent, libtorrent-superseed"
        )
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    check_prerequisites(args.mode, args.systems)

    if args.mode == "netns":
        found = leftovers()
        if found and not args.clean_leftovers:
            raise SystemExit(
                f"network namespaces of an earlier run are still there: {', '.join(found)}; "
                "rerun with --clean-leftovers to remove them (and the processes inside)"
            )
        for ns in found:
            remove_namespace(ns)

    def on_sigterm(*_):
        raise Interrupted()

    signal.signal(signal.SIGTERM, on_sigterm)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="d7y-bench-swarm-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        f"bench_swarm {time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} "
        f"({os.cpu_count()} cores, {platform.platform()}); work dir {work}"
    )
    print("command: " + " ".join(sys.argv))
    results: list[RunResult] = []
    try:
        results = mode_loopback(args, work) if args.mode == "loopback" else mode_netns(args, work)
    except (KeyboardInterrupt, Interrupted):
        print("\ninterrupted: cleaning up", file=sys.stderr)
        return 130
    finally:
        if args.mode == "netns":
            for ns in leftovers():  # a run that died between creating and tracking one
                remove_namespace(ns)
        if args.json and results:
            Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=1))
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + summarise(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
