"""``d7y cluster``: a whole d7y deployment on loopback, in one command.

    d7y cluster demo [--peers 4] [--size 256MiB | --url URL] [--tls]
    d7y cluster up   [--peers 4] [--tls]    # leave it running; Ctrl-C stops it

``demo`` starts an origin serving a generated file (or uses the URL given), a scheduler,
one seed peer and N peers, each with its own data dir and ports, runs dfget on every
peer at once, checks every output's SHA-256, prints who got what from where and how
much the origin sent compared to the file size, then stops everything cleanly.
With ``--tls`` every protocol connection (scheduler and piece ports) is mutual TLS:
a CA and one certificate per service are made in the work dir (d7y.daemons.certs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import yaml

from d7y.daemons.procman import ServiceProcess

PYTHON = sys.executable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_metrics(url: str) -> dict[str, float]:
    """A Prometheus text endpoint as {sample name with labels: value}."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


class LocalCluster:
    def __init__(self, work: Path, peers: int, *, tls: bool = False) -> None:
        self.work = work
        self.tls = tls
        self._ca = None
        self.services: list[ServiceProcess] = []  # in start order; stopped in reverse
        self.scheduler_port = _free_port()
        self.peers: list[dict] = []
        self.seed: dict | None = None
        self.origin_url: str | None = None
        self.peer_count = peers

    def _cli(self, *args: str) -> list[str]:
        return [PYTHON, "-m", "d7y.daemons.cli", *args]

    def _service(self, name: str, *args: str) -> ServiceProcess:
        """A d7y service of this cluster; ready when it notifies READY=1."""
        service = ServiceProcess(
            name, self._cli(*args), log_path=self.work / f"{name}.log", notify=True
        )
        self.services.append(service)
        return service

    def start_origin(self, root: Path, rate: str = "0") -> str:
        origin = self._service("origin", "origin", "--dir", str(root), "--rate", rate)
        origin.start()
        # The demo origin prints its URL (with the port it bound) as its first line.
        self.origin_url = next(
            line for line in origin.log().splitlines() if line.startswith("http://")
        )
        return self.origin_url

    def _security(self, name: str, role: str) -> dict:
        """The ``security`` config section of a service: mutual TLS with a certificate
        of its own for ``name`` (its host ID for a peer), or nothing without --tls."""
        if not self.tls:
            return {}
        from d7y.daemons import certs

        directory = self.work / "certs"
        if self._ca is None:
            self._ca = certs.create_ca(directory)
        cert, key = certs.issue(directory, name, role, self._ca)
        tls = {"enabled": True, "ca_cert": str(directory / certs.CA_CERT)}
        return {"security": {"tls": {**tls, "cert": str(cert), "key": str(key)}}}

    def _peer(self, name: str, seed: bool) -> dict:
        from d7y.core import ids

        data_dir = self.work / name
        metrics = _free_port()
        config = {
            "seed_peer": seed,
            "host": {"hostname": name},
            "storage": {"data_dir": str(data_dir)},
            "upload": {"listen": "127.0.0.1", "port": _free_port(), "piece_port": _free_port()},
            "metrics": {"listen": "127.0.0.1", "port": metrics},
            # Each peer's proxy / registry mirror on a port of its own (the seed has none).
            "proxy": {"listen": "127.0.0.1", "port": 0 if seed else _free_port()},
            "scheduler": {"address": f"127.0.0.1:{self.scheduler_port}"},
            # The demo's origin is on loopback and the seed fetches it for the peers: a
            # download a remote party caused, refused on loopback unless allowed.
            "source": {"allow": ["127.0.0.0/8", "::1/128"]},
            **self._security(ids.host_id("127.0.0.1", name, seed=seed), "seed" if seed else "peer"),
        }
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return {
            "name": name,
            "service": self._service(name, "dfdaemon", "--config", str(path)),
            "socket": data_dir / "dfdaemon.sock",
            "metrics": metrics,
            "proxy_port": config["proxy"]["port"],
            "config": path,
        }

    def start(self) -> None:
        sched_metrics = _free_port()
        config = {
            "server": {"listen": "127.0.0.1", "port": self.scheduler_port},
            "metrics": {"listen": "127.0.0.1", "port": sched_metrics},
            **self._security("scheduler", "scheduler"),
        }
        path = self.work / "scheduler.yaml"
        path.write_text(yaml.safe_dump(config))
        self._service("scheduler", "scheduler", "--config", str(path)).start()
        self.seed = self._peer("seed", True)
        self.peers = [self._peer(f"peer{i}", False) for i in range(self.peer_count)]
        nodes = [self.seed, *self.peers]
        for node in nodes:
            node["service"].launch()
        for node in nodes:
            node["service"].wait_ready()
        for node in nodes:  # it announces its host first thing on the connection
            node["service"].wait_log("connected to scheduler address=")

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop(grace=20.0)
            if service.killed:
                print(f"{service.name} ignored SIGTERM for 20 s and was killed")

    def metrics(self, node: dict) -> dict[str, float]:
        return read_metrics(f"http://127.0.0.1:{node['metrics']}/metrics")

    def dfget(self, node: dict, url: str, output: Path) -> tuple[int, float, str]:
        start = time.perf_counter()
        proc = subprocess.run(
            self._cli(
                "dfget",
                url,
                "-O",
                str(output),
                "--no-progress",
                "--daemon-socket",
                str(node["socket"]),
            ),
            capture_output=True,
            text=True,
        )
        return proc.returncode, time.perf_counter() - start, proc.stderr.strip()


def _generate(path: Path, size: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 4 << 20)
            f.write(rng.randbytes(n))
            left -= n


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def demo(args: argparse.Namespace) -> int:
    from d7y.daemons.config import parse_size

    work = Path(args.workdir or tempfile.mkdtemp(prefix="d7y-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(work, args.peers, tls=args.tls)
    try:
        if args.url:
            url, expected, size = args.url, None, None
        else:
            size = int(parse_size(args.size))
            www = work / "www"
            www.mkdir(exist_ok=True)
            _generate(www / "demo.bin", size)
            expected = hashlib.sha256((www / "demo.bin").read_bytes()).hexdigest()
            url = cluster.start_origin(www, args.origin_rate) + "demo.bin"
        mtls = ", mutual TLS between all of them" if args.tls else ""
        print(f"d7y local cluster in {work}: scheduler, 1 seed peer, {args.peers} peers{mtls}")
        cluster.start()
        print(f"downloading {url} on {args.peers} peers at once ...")
        with concurrent.futures.ThreadPoolExecutor(args.peers) as pool:
            runs = list(
                pool.map(
                    lambda node: cluster.dfget(node, url, work / f"{node['name']}.out"),
                    cluster.peers,
                )
            )
        failed = [
            (n["name"], err) for n, (rc, _, err) in zip(cluster.peers, runs, strict=True) if rc != 0
        ]
        for name, err in failed:
            print(f"{name}: dfget failed: {err}")
        outputs = [work / f"{n['name']}.out" for n in cluster.peers]
        digests = [
            hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else "" for p in outputs
        ]
        if expected is None:
            expected = digests[0]
        size = size or (outputs[0].stat().st_size if outputs[0].exists() else 0)
        print(
            f"\n{'peer':<8} {'seconds':>8} {'origin MiB':>11} {'peers MiB':>10} "
            f"{'uploaded MiB':>13}  sha256"
        )
        for node in [cluster.seed, *cluster.peers]:
            m = cluster.metrics(node)
            secs = "-"
            ok = ""
            if node is not cluster.seed:
                i = cluster.peers.index(node)
                secs = f"{runs[i][1]:.2f}"
                ok = "ok" if digests[i] == expected else "MISMATCH"
            print(
                f"{node['name']:<8} {secs:>8} "
                f"{_mib(m.get('d7y_peer_download_origin_bytes_total', 0)):>11} "
                f"{_mib(m.get('d7y_peer_download_peer_bytes_total', 0)):>10} "
                f"{_mib(m.get('d7y_peer_upload_bytes_total', 0)):>13}  {ok}"
            )
        if cluster.origin_url:
            with urllib.request.urlopen(cluster.origin_url + "_stats") as resp:
                sent = json.load(resp)["bytes_sent"]
            print(
                f"\norigin egress: {_mib(sent)} MiB for a {_mib(size)} MiB file = "
                f"{sent / max(size, 1):.3f}x the file size"
            )
        all_ok = not failed and all(d == expected for d in digests)
        print("all outputs match the origin's SHA-256" if all_ok else "SOME OUTPUTS ARE WRONG")
        return 0 if all_ok else 1
    finally:
        cluster.stop()
        if not args.keep and not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def up(args: argparse.Namespace) -> int:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="d7y-cluster-"))
    work.mkdir(parents=True, exist_ok=True)
    cluster = LocalCluster(work, args.peers, tls=args.tls)
    stop = False

    def on_signal(*_):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        cluster.start()
        print(f"d7y cluster up in {work} (scheduler 127.0.0.1:{cluster.scheduler_port})")
        for node in [cluster.seed, *cluster.peers]:
            print(f"  {node['name']:<8} dfget URL -O FILE --daemon-socket {node['socket']}")
            if node["proxy_port"]:
                print(f"  {'':<8} proxy / registry mirror 127.0.0.1:{node['proxy_port']}")
        print("Ctrl-C stops the cluster.")
        while not stop:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="d7y cluster", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    for name in ("demo", "up"):
        p = sub.add_parser(name)
        p.add_argument("--peers", type=int, default=4, help="number of peers (default 4)")
        p.add_argument("--workdir", default=None, help="keep data dirs and logs here")
        p.add_argument(
            "--tls", action="store_true", help="mutual TLS between all services (own CA)"
        )
        if name == "demo":
            p.add_argument("--size", default="256MiB", help="size of the generated file")
            p.add_argument("--url", default=None, help="download this URL instead")
            p.add_argument("--keep", action="store_true", help="keep the temporary workdir")
            p.add_argument(
                "--origin-rate",
                default="0",
                help="limit the origin's total egress, e.g. 100MiB (per second)",
            )
    args = parser.parse_args(argv)
    if args.peers < 1:
        parser.error(f"--peers must be >= 1, got {args.peers}")
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return demo(args) if args.action == "demo" else up(args)
