"""``d7y cluster``: a whole d7y deployment on loopback, in one command.

    d7y cluster demo [--peers 4] [--size 256MiB | --url URL] [--tls]
    d7y cluster up   [--peers 4] [--tls]    # leave it running; Ctrl-C stops it

``demo`` starts an origin serving a generated file (or uses the URL given), a manager, a
scheduler, one seed peer and N peers, each with its own data dir and ports, runs dfget on
every peer at once, checks every output's SHA-256, prints who got what from where and how
much the origin sent compared to the file size, then stops everything cleanly.

The manager (SQLite in the work dir) is how the others meet, as in a real deployment:
the scheduler registers with it and keeps alive; the seed peer and the peers are given
only ``manager.address`` and ask it for their scheduler. Both carry a personal access
token the manager seeds from ``$D7Y_PAT`` (kept in ``manager.token`` in the work dir);
root's password is generated at the work dir's first start and printed once.
With ``--tls`` every protocol connection (scheduler and piece ports) is mutual TLS:
a CA and one certificate per service are made in the work dir (d7y.daemons.certs). The
manager's REST API stays plain HTTP on loopback.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import random
import re
import secrets
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
#: What a dfdaemon logs when it points its scheduler client at one the manager listed.
FROM_MANAGER = re.compile(r"using scheduler (\S+) \(from the manager\)")


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
        self.manager_port = _free_port()
        self.manager_data = work / "manager"
        self.root_password: str | None = None  # set when this start seeded root
        self.manager_token = ""
        self.peers: list[dict] = []
        self.seed: dict | None = None
        self.origin_url: str | None = None
        self.peer_count = peers

    def _cli(self, *args: str) -> list[str]:
        return [PYTHON, "-m", "d7y.daemons.cli", *args]

    @property
    def manager_url(self) -> str:
        return f"http://127.0.0.1:{self.manager_port}"

    def _service(self, name: str, *args: str, env: dict[str, str] | None = None) -> ServiceProcess:
        """A d7y service of this cluster; ready when it notifies READY=1. A log left by an
        earlier run in the same work dir is moved to ``<name>.previous.log``: what this run
        waits for and reads (a URL, a log line) must be this run's."""
        log_path = self.work / f"{name}.log"
        if log_path.exists():
            log_path.replace(self.work / f"{name}.previous.log")
        service = ServiceProcess(name, self._cli(*args), log_path=log_path, env=env, notify=True)
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
            # No scheduler.address: the daemon asks the manager which scheduler to use.
            "manager": {"address": self.manager_url},
            # The demo's origin is on loopback and the seed fetches it for the peers: a
            # download a remote party caused, refused on loopback unless allowed.
            "source": {"allow": ["127.0.0.0/8", "::1/128"]},
            **self._security(ids.host_id("127.0.0.1", name, seed=seed), "seed" if seed else "peer"),
        }
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config))
        return {
            "name": name,
            "service": self._service(
                name,
                "dfdaemon",
                "--config",
                str(path),
                env={"D7Y_DFDAEMON_MANAGER__TOKEN": self.manager_token},
            ),
            "socket": data_dir / "dfdaemon.sock",
            "metrics": metrics,
            "proxy_port": config["proxy"]["port"],
            "config": path,
        }

    def _cluster_token(self) -> str:
        """The personal access token the scheduler and the peers call the manager with:
        made at the work dir's first start, kept (owner-only) for the next ones and for
        whoever wants to call the REST API by hand."""
        path = self.work / "manager.token"
        if path.exists():
            return path.read_text().strip()
        token = "d7y-cluster-" + secrets.token_urlsafe(24)
        path.touch(mode=0o600)
        path.write_text(token + "\n")
        return token

    def start_manager(self) -> None:
        """The manager, with SQLite in the work dir. root's password is generated when
        the database is new (seeded then; an existing one keeps its root)."""
        self.manager_token = self._cluster_token()
        env = {"D7Y_PAT": self.manager_token}
        if not (self.manager_data / "manager.db").exists():
            self.root_password = secrets.token_urlsafe(12)
            env["D7Y_INITIAL_ROOT_PASSWORD"] = self.root_password
        config = {
            "data_dir": str(self.manager_data),
            "server": {"listen": "127.0.0.1", "port": self.manager_port},
            "metrics": {"listen": "127.0.0.1", "port": _free_port()},
        }
        path = self.work / "manager.yaml"
        path.write_text(yaml.safe_dump(config))
        self._service("manager", "manager", "--config", str(path), env=env).start(timeout=60)

    def start(self) -> None:
        self.start_manager()
        config = {
            "server": {"listen": "127.0.0.1", "port": self.scheduler_port},
            "metrics": {"listen": "127.0.0.1", "port": _free_port()},
            # It registers (and keeps alive) in the default cluster; peers find it there.
            "manager": {"address": self.manager_url, "hostname": "scheduler", "ip": "127.0.0.1"},
            **self._security("scheduler", "scheduler"),
        }
        path = self.work / "scheduler.yaml"
        path.write_text(yaml.safe_dump(config))
        scheduler = self._service(
            "scheduler",
            "scheduler",
            "--config",
            str(path),
            env={"D7Y_SCHEDULER_MANAGER__TOKEN": self.manager_token},
        ).start()
        # Registered before any peer asks the manager: a peer's first answer lists it
        # (the next would be a refresh interval, a minute, later).
        scheduler.wait_log("registered with the manager id=")
        self.seed = self._peer("seed", True)
        self.peers = [self._peer(f"peer{i}", False) for i in range(self.peer_count)]
        nodes = [self.seed, *self.peers]
        for node in nodes:
            node["service"].launch()
        for node in nodes:
            node["service"].wait_ready()
        for node in nodes:  # it announces its host first thing on the connection
            node["service"].wait_log("connected to scheduler address=")

    def registered_schedulers(self) -> list[dict]:
        """The schedulers of every cluster as the manager's REST API lists them."""
        request = urllib.request.Request(
            self.manager_url + "/api/v1/schedulers",
            headers={"Authorization": f"Bearer {self.manager_token}"},
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.load(resp)

    def schedulers_found(self) -> dict[str, str]:
        """{node name: the scheduler address its daemon took from the manager}, read from
        each daemon's log (a node missing here was not pointed at one by the manager)."""
        found = {}
        for node in [self.seed, *self.peers]:
            match = FROM_MANAGER.search(node["service"].log())
            if match:
                found[node["name"]] = match.group(1)
        return found

    def describe_manager(self) -> list[str]:
        """What to tell the user about the manager: where its console is, how to sign
        in, the schedulers it lists and which nodes found theirs through it."""
        lines = [
            f"\nmanager console: {self.manager_url}/  (REST API /api/v1, docs /api/docs)",
            f"  SQLite database {self.manager_data / 'manager.db'}",
        ]
        if self.root_password is not None:
            lines.append(f"  user root, password {self.root_password}  (generated now; shown once)")
        else:
            lines.append("  user root, with the password printed when this work dir was first used")
        lines += [
            f"  REST API token (scopes cluster, job) in {self.work / 'manager.token'}",
            "schedulers registered in the manager (GET /api/v1/schedulers):",
        ]
        lines.append(
            f"  {'id':>3}  {'hostname':<12} {'address':<22} {'cluster':>7}  {'state':<8} "
            "last keepalive"
        )
        try:
            rows = self.registered_schedulers()
        except OSError as exc:  # urllib's URLError and HTTPError included
            rows = []
            lines.append(f"  the manager did not answer: {exc}; see {self.work / 'manager.log'}")
        for row in rows:
            lines.append(
                f"  {row['id']:>3}  {row['hostname']:<12} {row['ip'] + ':' + str(row['port']):<22} "
                f"{row['cluster_id']:>7}  {row['state']:<8} {row['last_keepalive_at']}"
            )
        found = self.schedulers_found()
        by_address: dict[str, list[str]] = {}
        for name, address in found.items():
            by_address.setdefault(address, []).append(name)
        for address, names in by_address.items():
            lines.append(
                f"{', '.join(names)} found scheduler {address} through the manager "
                "(manager.address only; no scheduler.address in their config)"
            )
        missing = [n["name"] for n in [self.seed, *self.peers] if n["name"] not in found]
        if missing:
            lines.append(f"not pointed at a scheduler by the manager: {', '.join(missing)}")
        return [*lines, ""]

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
        mtls = (
            ", mutual TLS between scheduler and peers (the manager's REST API: HTTP on loopback)"
            if args.tls
            else ""
        )
        print(
            f"d7y local cluster in {work}: manager, scheduler, 1 seed peer, "
            f"{args.peers} peers{mtls}"
        )
        cluster.start()
        print("\n".join(cluster.describe_manager()))
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
        print("\n".join(cluster.describe_manager()))
        for node in [cluster.seed, *cluster.peers]:
            print(f"  {node['name']:<8} dfget URL -O FILE --daemon-socket {node['socket']}")
            if node["proxy_port"]:
                print(f"  {'':<8} proxy / registry mirror 127.0.0.1:{node['proxy_port']}")
            print(f"  {'':<8} metrics http://127.0.0.1:{node['metrics']}/metrics")
        # Flushed: with stdout in a file (``d7y cluster up > cluster.log &``) a script waits
        # for this line to know the cluster is up.
        print(f"Ctrl-C (or kill -TERM {os.getpid()}) stops the cluster.", flush=True)
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
