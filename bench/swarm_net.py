"""Per-host network namespaces on one bridge, with tc tbf shaping, for bench_swarm.py.

Every emulated host is a network namespace ``d7yb-<name>`` with one interface, ``eth0``,
whose other end sits on the bridge ``br0`` in the namespace ``d7yb-sw``. Nothing is
added to the root namespace: the addresses (``10.77.0.0/24``) exist only inside these
namespaces, so no packet of the benchmark can leave them.

Shaping: a host's upload is the egress of its ``eth0`` (``tbf`` on it); its download,
when capped, is the egress of its bridge port (``tbf`` there). netem is not available
here, so there is no added latency beyond the queues.

Needs root and iproute2 (``ip``, ``tc``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

PREFIX = "d7yb-"
BRIDGE_NS = PREFIX + "sw"
SUBNET = "10.77.0"
CLONE_NEWNET = 0x40000000


class NetError(RuntimeError):
    """An ip/tc command failed; the message has the command and its stderr."""


def ip(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def tc(ns: str, *args: str) -> str:
    proc = subprocess.run(["ip", "netns", "exec", ns, "tc", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise NetError(f"tc {' '.join(args)} (in {ns}): {proc.stderr.strip()}")
    return proc.stdout


def leftovers() -> list[str]:
    """Namespaces of a previous run (ours all start with PREFIX)."""
    names = [line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()]
    return [n for n in names if n.startswith(PREFIX)]


def remove_namespace(ns: str) -> None:
    """Stop every process still inside ``ns`` (they were started in it by this benchmark),
    then delete it; its veth ends (and their peers on the bridge) go with it."""
    pids = [int(p) for p in ip("netns", "pids", ns, check=False).split()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 5
        while pids and time.monotonic() < deadline:
            pids = [p for p in pids if os.path.exists(f"/proc/{p}")]
            time.sleep(0.05)
        if not pids:
            break
    ip("netns", "del", ns, check=False)


def call_in_netns(ns: str, fn, *args):
    """Run ``fn(*args)`` on a fresh thread that has joined network namespace ``ns``.

    A network namespace is per thread on Linux, so this changes nothing for the rest of
    the process; sockets the thread opens live in ``ns`` (how the benchmark reaches a
    daemon's 127.0.0.1 metrics port inside its namespace)."""
    outcome: dict = {}

    def body() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({ns}): {os.strerror(err)}")
        finally:
            os.close(fd)
        try:
            outcome["value"] = fn(*args)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


@dataclass
class Host:
    """One emulated machine: a namespace, its address, its caps (bytes/s, 0 = none)."""

    name: str
    ns: str
    ip: str
    bridge_port: str
    up_rate: int
    down_rate: int

    def wrap(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def link_bytes(self) -> tuple[int, int]:
        """(tx, rx) bytes of eth0 so far, Ethernet frames with all headers."""
        stats = json.loads(ip("-n", self.ns, "-j", "-s", "link", "show", "dev", "eth0"))
        s = stats[0]["stats64"]
        return s["tx"]["bytes"], s["rx"]["bytes"]


def _tbf(ns: str, dev: str, rate: int) -> None:
    # burst: 20 ms at the rate (at least 32 KiB), so short bursts cannot beat the cap by much
    # yet the kernel timer granularity never starves the queue; 50 ms of queue beyond that.
    burst = max(rate // 50, 32 * 1024)
    tc(
        ns,
        "qdisc",
        "add",
        "dev",
        dev,
        "root",
        "tbf",
        "rate",
        f"{rate}bps",
        "burst",
        f"{burst}b",
        "latency",
        "50ms",
    )


@dataclass
class Network:
    """The namespaces of one benchmark run; ``close()`` removes every one of them."""

    hosts: list[Host] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._add_ns(BRIDGE_NS)
        ip("-n", BRIDGE_NS, "link", "add", "br0", "type", "bridge")
        ip("-n", BRIDGE_NS, "link", "set", "br0", "up")

    def _add_ns(self, ns: str) -> None:
        ip("netns", "add", ns)
        self._namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def add_host(self, name: str, up_rate: int = 0, down_rate: int = 0) -> Host:
        index = len(self.hosts) + 1
        if index > 250:
            raise ValueError(f"at most 250 hosts in {SUBNET}.0/24, asked for host {index}")
        host = Host(name, PREFIX + name, f"{SUBNET}.{index}", f"p{index}", up_rate, down_rate)
        self._add_ns(host.ns)
        # created inside the host's namespace with its peer straight on the bridge's side:
        # neither end ever exists in the root namespace
        ip(
            "-n",
            host.ns,
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            host.bridge_port,
            "netns",
            BRIDGE_NS,
        )
        ip("-n", BRIDGE_NS, "link", "set", host.bridge_port, "master", "br0", "up")
        ip("-n", host.ns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
        ip("-n", host.ns, "link", "set", "eth0", "up")
        if up_rate:
            _tbf(host.ns, "eth0", up_rate)
        if down_rate:
            _tbf(BRIDGE_NS, host.bridge_port, down_rate)
        self.hosts.append(host)
        return host

    def close(self) -> None:
        for ns in reversed(self._namespaces):
            remove_namespace(ns)
        self._namespaces.clear()
