"""End-to-end benchmark of dfdaemon's proxy (issue 12), two parts, ratios in one run:

1. ``throughput``: one blob (default 1 GiB) already cached in a peer, fetched with
   ``curl -x`` through the peer's proxy vs ``curl`` straight from nginx serving the same
   file (sendfile on). Pairs alternate (proxy, nginx, proxy, ...); the figure is the
   median of the per-pair ratios proxy MB/s / nginx MB/s. Target: >= 0.8x.
2. ``pull``: a cold pull of a 5-layer image (default 5 x 100 MiB, uncompressed tar
   layers of random bytes) by 4 peers at once, each ``skopeo copy docker://... dir:``
   through its own proxy (``[[registry.mirror]]``), from Debian's docker-registry,
   with a scheduler and one seed peer; then the same 4 pulls straight from the registry.
   Registry egress (the body bytes in its access log) / image size, target <= 1.05x,
   and the wall time of the 4 pulls through the proxies vs directly.

    .venv/bin/python bench/bench_proxy.py [--blob-size 1GiB] [--pairs 5]
        [--layer-size 100MiB] [--layers 5] [--peers 4] [--only throughput|pull]

Needs nginx, curl, skopeo and docker-registry (Debian packages; scripts/test.sh
installs them). Prints the machine, the load average before and after, each figure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from d7y.core.ids import task_id
from d7y.core.proxy import DEFAULT_FILTERED_QUERY_PARAMS
from d7y.daemons.config import parse_size
from tests.nginx_origin import NginxOrigin, nginx_binary
from tests.peer_harness import PeerProcess, SchedulerProcess, free_port, peer_config, wait_for
from tests.registry_server import Registry

REPO = "d7y/bench"
ACCESS = re.compile(r'"(GET|HEAD) (\S+) HTTP/[\d.]+" (\d{3}) (\d+)')


def machine() -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{platform.node()}: {os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}"


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes used so far."""
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def children_cpu() -> float:
    """CPU seconds of this process's finished children (the skopeo runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def write_random(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    block = os.urandom(8 << 20)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, len(block))
            f.write(block[:n])
            left -= n


def curl_time(url: str, proxy: str | None) -> tuple[float, int]:
    """(seconds, bytes) of one curl of ``url`` to /dev/null."""
    command = ["curl", "-sS", "-o", "/dev/null", "-w", "%{time_total} %{size_download}"]
    command += ["-x", proxy] if proxy else ["--noproxy", "*"]
    out = subprocess.run(
        [*command, url], capture_output=True, text=True, check=True, timeout=600
    ).stdout
    seconds, size = out.split()
    return float(seconds), int(size)


def throughput(work: Path, size: int, pairs: int) -> None:
    www = work / "www"
    name = "v2/bench/blobs/sha256:" + "be" * 32
    write_random(www / name, size)
    (www / "probe").write_text("ok\n")
    (work / "nginx-run").mkdir(exist_ok=True)
    with NginxOrigin(work / "nginx-run", www, f"127.0.0.1:{free_port()}") as nginx:
        nginx.start("probe")
        peer = PeerProcess(work, "peer", log={"level": "info"})
        with peer:
            proxy = f"http://127.0.0.1:{peer.proxy_port}"
            url = nginx.url(name)
            cold, got = curl_time(url, proxy)
            assert got == size, got
            tid = task_id(url, filtered_query_params=DEFAULT_FILTERED_QUERY_PARAMS)
            wait_for(
                lambda: peer.api("GET", f"/v1/tasks/{tid}")[1].get("state") == "succeeded",
                "the blob to be cached",
            )
            print(f"cold fetch through the proxy: {cold:.2f} s ({size / cold / 1e6:.0f} MB/s)")
            ratios = []
            for i in range(pairs):
                t_proxy, n1 = curl_time(url, proxy)
                t_nginx, n2 = curl_time(url, None)
                assert n1 == n2 == size, (n1, n2)
                ratio = t_nginx / t_proxy  # = proxy MB/s / nginx MB/s
                ratios.append(ratio)
                print(
                    f"pair {i + 1}: proxy {size / t_proxy / 1e6:7.0f} MB/s  "
                    f"nginx {size / t_nginx / 1e6:7.0f} MB/s  ratio {ratio:.2f}"
                )
            served = sum(r.body_bytes for r in nginx.requests() if name in r.request)
            print(
                f"THROUGHPUT: {size / 2**20:.0f} MiB cached blob, curl -x proxy vs curl nginx: "
                f"median ratio {median(ratios):.2f}x over {pairs} pairs "
                f"(min {min(ratios):.2f}, max {max(ratios):.2f}); nginx served the blob "
                f"{served / size:.2f} times ({pairs} direct + the cold fetch)"
            )


def registry_egress(registry: Registry, since: int) -> tuple[int, int]:
    """(body bytes of blob answers, of all answers) in the registry's access log after
    byte offset ``since``."""
    text = registry.log_path.read_text(errors="replace")[since:]
    blobs = total = 0
    for method, path, _status, size in ACCESS.findall(text):
        if method != "GET":
            continue
        total += int(size)
        if "/blobs/" in path:
            blobs += int(size)
    return blobs, total


def check_dir_image(out: Path, digests: list[str]) -> None:
    for digest in digests:
        data_path = out / digest.split(":", 1)[1]
        h = hashlib.sha256()
        with open(data_path, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
        assert "sha256:" + h.hexdigest() == digest, f"{data_path} does not match {digest}"


def pull(work: Path, layer_size: int, layers: int, peers: int) -> None:
    policy = work / "policy.json"
    policy.write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
    (work / "registry-run").mkdir(exist_ok=True)
    registry = Registry(work / "registry-run")
    registry.start()
    try:
        blobs = [os.urandom(layer_size) for _ in range(layers)]
        _manifest, digests = registry.push_artifact(REPO, "v1", blobs)
        image_size = layer_size * layers
        del blobs
        image = f"docker://{registry.host}/{REPO}:v1"
        quiet = {"log": {"level": "info"}}
        mirror = {"registry_mirror": {"addr": registry.base}}
        with SchedulerProcess(work, **quiet) as scheduler:
            seed = PeerProcess(
                work, "seed", **peer_config(scheduler, "seed", seed=True, proxy=mirror), **quiet
            )
            nodes = [
                PeerProcess(
                    work, f"peer{i}", **peer_config(scheduler, f"peer{i}", proxy=mirror), **quiet
                )
                for i in range(peers)
            ]
            with seed:
                for node in nodes:
                    node.start()
                try:
                    mark = len(registry.log_path.read_text(errors="replace"))
                    daemons = [scheduler.proc.pid, seed.proc.pid] + [n.proc.pid for n in nodes]
                    registry_pid = registry.service.proc.pid
                    cpu_before = cpu_seconds(daemons), cpu_seconds([registry_pid]), children_cpu()

                    def through(i: int) -> float:
                        conf = work / f"mirror{i}.conf"
                        conf.write_text(
                            f'[[registry]]\nprefix = "{registry.host}"\n'
                            f'location = "{registry.host}"\ninsecure = true\n'
                            f"[[registry.mirror]]\n"
                            f'location = "127.0.0.1:{nodes[i].proxy_port}"\ninsecure = true\n'
                        )
                        return skopeo_copy(policy, image, work / f"out-p2p{i}", conf)

                    started = time.monotonic()
                    with ThreadPoolExecutor(peers) as pool:
                        each = list(pool.map(through, range(peers)))
                    wall_p2p = time.monotonic() - started
                    cpu_p2p = (
                        cpu_seconds(daemons) - cpu_before[0],
                        cpu_seconds([registry_pid]) - cpu_before[1],
                        children_cpu() - cpu_before[2],
                    )
                    blob_bytes, all_bytes = registry_egress(registry, mark)
                    for i in range(peers):
                        check_dir_image(work / f"out-p2p{i}", digests)
                    p2p_requests = sum(
                        n.metrics().get('d7y_proxy_requests_total{route="p2p"}', 0) for n in nodes
                    )
                finally:
                    for node in nodes:
                        node.stop()
        for i in range(peers):
            shutil.rmtree(work / f"out-p2p{i}", ignore_errors=True)
        mark = len(registry.log_path.read_text(errors="replace"))
        registry_pid = registry.service.proc.pid
        cpu_before = cpu_seconds([registry_pid]), children_cpu()
        started = time.monotonic()
        with ThreadPoolExecutor(peers) as pool:
            direct_each = list(
                pool.map(
                    lambda i: skopeo_copy(policy, image, work / f"out-direct{i}", None),
                    range(peers),
                )
            )
        wall_direct = time.monotonic() - started
        cpu_direct = cpu_seconds([registry_pid]) - cpu_before[0], children_cpu() - cpu_before[1]
        direct_blob_bytes, _ = registry_egress(registry, mark)
        for i in range(peers):
            check_dir_image(work / f"out-direct{i}", digests)
        print(
            f"pull through proxies: each {', '.join(f'{t:.1f}' for t in each)} s; "
            f"direct: each {', '.join(f'{t:.1f}' for t in direct_each)} s; "
            f"p2p requests {p2p_requests:.0f}"
        )
        print(
            f"CPU seconds, through the proxies: d7y daemons {cpu_p2p[0]:.1f}, registry "
            f"{cpu_p2p[1]:.1f}, skopeo {cpu_p2p[2]:.1f} (total {sum(cpu_p2p):.1f}); "
            f"direct: registry {cpu_direct[0]:.1f}, skopeo {cpu_direct[1]:.1f} "
            f"(total {sum(cpu_direct):.1f}); the machine has {os.cpu_count()} CPUs"
        )
        print(
            f"PULL: {layers} x {layer_size / 2**20:.0f} MiB image, {peers} peers at once: "
            f"registry egress {blob_bytes / image_size:.3f}x the image through the proxies "
            f"({blob_bytes / 2**20:.1f} MiB of blobs, {all_bytes / 2**20:.1f} MiB in all) vs "
            f"{direct_blob_bytes / image_size:.3f}x direct; wall {wall_p2p:.1f} s through the "
            f"proxies vs {wall_direct:.1f} s direct ({wall_p2p / wall_direct:.2f}x)"
        )
    finally:
        registry.stop()


def skopeo_copy(policy: Path, image: str, out: Path, conf: Path | None) -> float:
    command = ["skopeo", "--policy", str(policy)]
    if conf is not None:
        command += ["--registries-conf", str(conf)]
    command += ["copy", "--src-tls-verify=false", image, f"dir:{out}"]
    started = time.monotonic()
    proc = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blob-size", default="1GiB")
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--layer-size", default="100MiB")
    parser.add_argument("--layers", type=int, default=5)
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--only", choices=("throughput", "pull"))
    parser.add_argument("--workdir", default="", help="default: a temporary directory")
    args = parser.parse_args(argv)
    missing = [t for t in ("curl", "skopeo", "docker-registry") if shutil.which(t) is None]
    if nginx_binary() is None:
        missing.append("nginx")
    if missing:
        print(f"missing: {', '.join(missing)} (apt-get install them); stopping")
        return 2
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"machine: {machine()}")
    print(f"command: {' '.join([sys.executable, *sys.argv])}")
    print(f"load average before: {load()}")
    with tempfile.TemporaryDirectory(dir=args.workdir or None) as tmp:
        work = Path(tmp)
        if args.only in (None, "throughput"):
            (work / "t").mkdir()
            throughput(work / "t", parse_size(args.blob_size), args.pairs)
        if args.only in (None, "pull"):
            (work / "p").mkdir()
            pull(work / "p", parse_size(args.layer_size), args.layers, args.peers)
    print(f"load average after: {load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
