"""End-to-end benchmark of one peer: dfget vs curl, the HTTP endpoint vs nginx, RSS.

    python bench/bench_dfdaemon.py [--size 1GiB] [--rss-size 4GiB] [--workdir DIR]

Everything runs on loopback on this machine, in one run, so the ratios compare like
with like:

1. dfget of SIZE from an nginx origin (through dfdaemon, fresh task) vs ``curl -o`` of
   the same file from the same origin. Target: dfget >= 0.8x curl (issue 10).
2. dfdaemon's HTTP endpoint serving the stored task to ``curl -o /dev/null`` vs nginx
   (sendfile on) serving the same file to curl. Target: >= 0.9x nginx (issue 10).
3. dfdaemon's peak RSS while downloading RSS_SIZE. Target: < 150 MiB.

nginx comes from Debian (apt-get install nginx-light); without it the benchmark says so
and stops. nginx (tests/nginx_origin.py) and dfdaemon (tests/peer_harness.py) are run by
d7y's process manager.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from statistics import median

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from d7y.core.ids import task_id
from d7y.daemons.config import parse_size
from tests.nginx_origin import NginxOrigin, nginx_binary
from tests.peer_harness import PeerProcess, free_port

ROUNDS = 5


def write_file(path: Path, size: int) -> None:
    block = os.urandom(8 * 1024 * 1024)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(len(block), left)
            f.write(block[:n])
            left -= n


def curl_seconds(url: str, output: str) -> float:
    start = time.perf_counter()
    subprocess.run(["curl", "-sS", "-f", "-o", output, url], check=True)
    return time.perf_counter() - start


def drop_file(path: Path) -> None:
    with open(path, "rb") as f:  # evict from the page cache where allowed
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1GiB")
    parser.add_argument("--rss-size", default="4GiB")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    size = int(parse_size(args.size))
    rss_size = int(parse_size(args.rss_size))
    if nginx_binary() is None:
        print("nginx not found: install nginx-light for the anchors; stopping")
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="d7y-bench-"))
    work.mkdir(parents=True, exist_ok=True)  # --workdir may name a directory to create
    www = work / "www"
    www.mkdir(exist_ok=True)
    write_file(www / "file.bin", size)
    (work / "nginx").mkdir(exist_ok=True)
    nginx = NginxOrigin(work / "nginx", www, f"127.0.0.1:{free_port()}")
    nginx.start("file.bin")
    url = nginx.base_url + "file.bin"
    results = []
    peer = PeerProcess(work, "bench", log={"level": "info"})
    try:
        peer.start()
        # Warm the origin's page cache so every download reads memory, not disk, then
        # alternate the contenders and keep each one's median of ROUNDS runs: this
        # machine is shared and noisy, alternation spreads the noise over both.
        curl_seconds(url, "/dev/null")
        curl_runs, dfget_runs = [], []
        for round_no in range(ROUNDS):
            curl_runs.append(curl_seconds(url, str(work / "curl.out")))
            os.unlink(work / "curl.out")
            start = time.perf_counter()
            result = peer.dfget(url, work / "dfget.out", "--no-progress", "--tag", f"r{round_no}")
            dfget_runs.append(time.perf_counter() - start)
            assert result.returncode == 0, result.stderr.decode()
            os.unlink(work / "dfget.out")
            peer.api("DELETE", f"/v1/tasks/{task_id(url, tag=f'r{round_no}')}")
        results.append(
            (
                "dfget vs curl -o (nginx origin)",
                size / median(dfget_runs),
                size / median(curl_runs),
                0.8,
            )
        )

        assert peer.dfget(url, work / "kept.out", "--no-progress").returncode == 0
        os.unlink(work / "kept.out")
        endpoint = f"http://127.0.0.1:{peer.upload_port}/download/{task_id(url)}"
        curl_seconds(endpoint, "/dev/null")  # warm
        ours, theirs = [], []
        for _ in range(ROUNDS):
            ours.append(curl_seconds(endpoint, "/dev/null"))
            theirs.append(curl_seconds(url, "/dev/null"))
        results.append(
            ("HTTP endpoint vs nginx (to curl)", size / median(ours), size / median(theirs), 0.9)
        )

        write_file(www / "big.bin", rss_size)
        process = psutil.Process(peer.proc.pid)
        base_rss = process.memory_info().rss
        peak = [base_rss]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], process.memory_info().rss)
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        result = peer.dfget(
            nginx.base_url + "big.bin", work / "big.out", "--no-progress", timeout=900
        )
        done.set()
        sampler.join()
        assert result.returncode == 0, result.stderr.decode()
    finally:
        peer.stop()
        nginx.stop()
    print(f"\nd7y peer benchmark, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
    print(f"{'comparison':<36} {'d7y MiB/s':>10} {'anchor MiB/s':>13} {'ratio':>6} {'target':>7}")
    for name, ours_bps, anchor_bps, target in results:
        ratio = ours_bps / anchor_bps
        print(
            f"{name:<36} {ours_bps / 2**20:>10.0f} {anchor_bps / 2**20:>13.0f} "
            f"{ratio:>6.2f} {'>=' + str(target):>7} {'ok' if ratio >= target else 'MISS'}"
        )
    print(
        f"dfdaemon peak RSS downloading {rss_size / 2**30:.0f} GiB: "
        f"{peak[0] / 2**20:.0f} MiB (start {base_rss / 2**20:.0f} MiB; target < 150 MiB) "
        f"{'ok' if peak[0] < 150 * 2**20 else 'MISS'}"
    )
    if not args.workdir:  # a directory the user named is theirs to keep
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
