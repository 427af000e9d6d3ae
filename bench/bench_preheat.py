"""Preheat benchmark: a 3-layer image preheated to 3 seed peers vs the same layers
fetched directly from the registry by skopeo.

    python bench/bench_preheat.py [--layer-size 32MiB] [--runs 3] [--queue sql|redis]

On loopback, in one run: Debian's docker-registry holding an image built here (3 layers
of random bytes, pushed with skopeo from an OCI layout), a manager (SQLite; its job queue
in SQL or in a redis-server started here), a scheduler and 3 seed peers.

* Preheat: ``POST /api/v1/jobs`` (type image, the manifest URL) until the job is SUCCESS;
  the hash ring spreads the config and layers over the seed peers.
* Anchor: ``skopeo copy docker://... dir:OUT`` of the same image (manifest, config and
  layers straight from the registry to one disk).

Each run pushes a fresh image (new bytes), so no seed peer holds it before. Reports both
wall times per run, their ratio (preheat / skopeo), and the median ratio, with the
machine and its load average.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from d7y.core import ids
from d7y.daemons.config import parse_size
from tests.manager_harness import ManagerProcess
from tests.peer_harness import PeerProcess, SchedulerProcess, peer_config, wait_for
from tests.registry_server import Registry
from tests.test_registry_mirror_e2e import write_oci_layout

PAT = "d7y_pat_bench-preheat"
REPO = "bench/preheat"


def skopeo(policy: Path, *args: str) -> None:
    proc = subprocess.run(
        ["skopeo", "--policy", str(policy), *args], capture_output=True, text=True, timeout=600
    )
    if proc.returncode != 0:
        raise SystemExit(f"skopeo {' '.join(args)} failed: {proc.stderr}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer-size", default="32MiB", help="size of each of the 3 layers")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--queue", choices=["sql", "redis"], default="sql")
    args = parser.parse_args()
    size = int(parse_size(args.layer_size))
    for tool in ("skopeo", "docker-registry") + (
        ("redis-server",) if args.queue == "redis" else ()
    ):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (apt-get install {tool})")
    work = Path(tempfile.mkdtemp(prefix="d7y-bench-preheat-"))
    policy = work / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    rows = []
    try:
        with contextlib.ExitStack() as stack:
            (work / "registry").mkdir()
            registry = stack.enter_context(Registry(work / "registry"))
            overrides = {"log": {"level": "info"}}
            if args.queue == "redis":
                from tests.redis_server import RedisServer

                (work / "redis").mkdir()
                redis = stack.enter_context(RedisServer(work / "redis"))
                overrides["redis"] = {"address": redis.address}
            manager = stack.enter_context(ManagerProcess(work, pat=PAT, **overrides))
            scheduler = stack.enter_context(SchedulerProcess(work, manager={
                "address": f"127.0.0.1:{manager.port}", "token": PAT,
                "keepalive_interval": "200ms",
            }, log={"level": "info"}))  # fmt: skip
            for i in range(3):
                name = f"seed{i}"
                config = peer_config(scheduler, name, seed=True, log={"level": "info"})
                stack.enter_context(PeerProcess(work, name, **config))
                host = ids.host_id("127.0.0.1", name, seed=True)
                scheduler.wait_log(f"host announced host={host} type=seed")
            client = manager.client(PAT)
            wait_for(
                lambda: any(s["state"] == "active" for s in client.get("/api/v1/schedulers")),
                "the scheduler to register",
            )
            for run in range(args.runs):
                tag = f"run{run}"
                layout = work / f"layout-{tag}"
                write_oci_layout(layout, tag, [size] * 3, seed=1000 + run)
                skopeo(policy, "copy", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
                       f"docker://{registry.host}/{REPO}:{tag}")  # fmt: skip
                url = f"{registry.base}/v2/{REPO}/manifests/{tag}"
                started = time.perf_counter()
                job = client.ok("POST", "/api/v1/jobs", {"type": "preheat", "args": {
                    "type": "image", "url": url}, "scheduler_cluster_ids": [1]}, 201)  # fmt: skip
                job = wait_for(
                    lambda j=job: (
                        lambda got: got if got["state"] in ("SUCCESS", "FAILURE") else None
                    )(client.get(f"/api/v1/jobs/{j['id']}")),
                    "the preheat job",
                    timeout=600,
                    interval=0.01,
                )
                preheat = time.perf_counter() - started
                if job["state"] != "SUCCESS":
                    raise SystemExit(f"preheat failed: {job['result']}")
                seeds = sorted({t["seed_peer"] for t in job["result"]["tasks"]})
                started = time.perf_counter()
                skopeo(
                    policy,
                    "copy",
                    "--src-tls-verify=false",
                    f"docker://{registry.host}/{REPO}:{tag}",
                    f"dir:{work / ('out-' + tag)}",
                )
                direct = time.perf_counter() - started  # fmt: skip
                shutil.rmtree(work / f"out-{tag}")
                rows.append((run, preheat, direct, len(seeds)))
                print(
                    f"run {run}: preheat {preheat:.2f}s to {len(seeds)} seed peers, "
                    f"skopeo {direct:.2f}s, ratio {preheat / direct:.2f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    ratios = [p / d for _, p, d, _ in rows]
    load = os.getloadavg()
    print()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}")
    print(f"command: python bench/bench_preheat.py --layer-size {args.layer_size} "
          f"--runs {args.runs} --queue {args.queue}")  # fmt: skip
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print()
    print("| run | preheat s | seed peers used | skopeo s | preheat / skopeo |")
    print("|---|---|---|---|---|")
    for (run, preheat, direct, seeds), ratio in zip(rows, ratios, strict=True):
        print(f"| {run} | {preheat:.2f} | {seeds} | {direct:.2f} | {ratio:.2f} |")
    print(f"| median | | | | {statistics.median(ratios):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
