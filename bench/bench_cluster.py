"""Swarm benchmark: 1 seed + N peers distributing one file vs N clients of the origin.

    python bench/bench_cluster.py [--peers 8] [--size 512MiB]

Both runs use the same origin (``d7y origin``, loopback) and the same file, in one run:

* P2P: ``d7y cluster`` (scheduler, seed peer, N peers); dfget on every peer at once.
* Anchor: N ``curl -o`` of the file from the origin at once (every peer back to source).

``--origin-rate`` caps the origin's total egress (as a real origin's uplink would be);
on loopback without it the origin is as fast as the peers and P2P cannot win on time.

Reports both wall times, their ratio, and the origin's egress / file size for each.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from d7y.daemons.cluster import LocalCluster, _generate
from d7y.daemons.config import parse_size


def origin_sent(cluster: LocalCluster) -> int:
    with urllib.request.urlopen(cluster.origin_url + "_stats") as resp:
        return json.load(resp)["bytes_sent"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=8)
    parser.add_argument("--size", default="512MiB")
    parser.add_argument(
        "--origin-rate",
        default="0",
        help="origin egress limit per second, e.g. 100MiB (0: loopback speed)",
    )
    args = parser.parse_args()
    size = int(parse_size(args.size))
    work = Path(tempfile.mkdtemp(prefix="d7y-bench-cluster-"))
    cluster = LocalCluster(work, args.peers)
    try:
        www = work / "www"
        www.mkdir()
        _generate(www / "f.bin", size)
        expected = hashlib.sha256((www / "f.bin").read_bytes()).hexdigest()
        url = cluster.start_origin(www, args.origin_rate) + "f.bin"
        cluster.start()

        # Anchor: every client straight from the origin, at the same moment.
        before = origin_sent(cluster)
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.peers) as pool:
            list(
                pool.map(
                    lambda i: subprocess.run(
                        ["curl", "-sS", "-f", "-o", str(work / f"curl{i}.out"), url], check=True
                    ),
                    range(args.peers),
                )
            )
        direct_s = time.perf_counter() - start
        direct_egress = (origin_sent(cluster) - before) / size
        for i in range(args.peers):
            (work / f"curl{i}.out").unlink()

        before = origin_sent(cluster)
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.peers) as pool:
            runs = list(
                pool.map(lambda n: cluster.dfget(n, url, work / f"{n['name']}.out"), cluster.peers)
            )
        p2p_s = time.perf_counter() - start
        p2p_egress = (origin_sent(cluster) - before) / size
        assert all(rc == 0 for rc, _, _ in runs), runs
        for node in cluster.peers:
            digest = hashlib.sha256((work / f"{node['name']}.out").read_bytes()).hexdigest()
            assert digest == expected, f"{node['name']} output differs"
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(
        f"\nswarm of 1 seed + {args.peers} peers, {size / 2**20:.0f} MiB, origin rate "
        f"{args.origin_rate}, {time.strftime('%Y-%m-%d')}"
    )
    print(f"{'mode':<34} {'wall s':>7} {'origin egress / F':>18}")
    print(f"{'P2P (d7y cluster, dfget on all)':<34} {p2p_s:>7.2f} {p2p_egress:>18.3f}")
    print(f"{'direct (N x curl from the origin)':<34} {direct_s:>7.2f} {direct_egress:>18.3f}")
    print(
        f"P2P wall / direct wall = {p2p_s / direct_s:.2f}; "
        f"origin egress cut {direct_egress / max(p2p_egress, 1e-9):.1f}x"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
