"""Memory per idle connection (dfdaemon, scheduler) and per registered peer (scheduler).

    python bench/bench_memory.py [--connections 3000] [--peers 3000] [--tls]

Starts a real dfdaemon and a real ``d7y scheduler`` as processes and reads their RSS
(/proc/PID/status, VmRSS) before and after:

- dfdaemon: N connections to the piece port, each answered once (a Ping) and then left
  idle; N connections that sent half a frame header and stalled (slowloris); N
  keep-alive connections to the HTTP upload endpoint after one request each. Then all
  of them leave, and the RSS is read again (memory kept after the attack).
- scheduler: N connections, each announcing one host and then idle; then N peers
  registered over those connections (one per host; each reports DownloadStarted and
  ``--pieces`` PieceFinished, so its cost window and bitmap are in use), 100 peers a
  task.

Limits and timeouts are switched off in both daemons for the measurement (the default
per-address limits would refuse most of these loopback connections, and the idle
timeout would close them). ``--baseline`` leaves those config keys out, to measure a
checkout from before they existed (e.g. with ``PYTHONPATH`` pointing at its tree).
``--tls`` adds the piece port under mutual TLS (security.tls, certificates from
d7y.daemons.certs): N idle connections after one Ping each, through the handshake.
Issue 13's targets: <= 32 KB per idle connection, <= 16 KB per registered peer.
Prints one line per figure.
"""

from __future__ import annotations

import argparse
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from d7y.core import messages as m
from d7y.core.protocol import encode_frame
from tests import frames
from tests.peer_harness import PeerProcess, SchedulerProcess

UNLIMITED = {
    "idle_timeout": 0,
    "request_timeout": 0,
    "max_connections": 0,
    "max_connections_per_ip": 0,
}
PIECE = 4 * 2**20


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def settle(pid: int) -> int:
    """RSS once it stops moving (the daemon has handled what was sent)."""
    last = rss_kib(pid)
    for _ in range(50):
        time.sleep(0.1)
        now = rss_kib(pid)
        if now == last:
            return now
        last = now
    return last


def read_frame(sock: socket.socket) -> m.Message:
    return frames.read_frame(sock)[1]


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def per_item(before: int, after: int, n: int) -> str:
    return f"{(after - before) * 1024 / n / 1024:.1f} KiB"


def measure_dfdaemon(work: Path, n: int, unlimited: dict) -> None:
    with PeerProcess(work, "peer", upload=unlimited, log={"level": "info"}) as peer:
        pid = peer.proc.pid
        start = settle(pid)
        idle = []
        for i in range(n):
            s = connect(peer.piece_port)
            s.sendall(encode_frame(m.Ping(nonce=i)))
            assert read_frame(s) == m.Pong(nonce=i)
            idle.append(s)
        after_idle = settle(pid)
        print(
            f"dfdaemon piece port, {n} idle connections: RSS {start / 1024:.0f} -> "
            f"{after_idle / 1024:.0f} MiB, {per_item(start, after_idle, n)} per connection"
        )
        stalled = []
        for i in range(n):
            s = connect(peer.piece_port)
            s.sendall(encode_frame(m.Ping(nonce=i))[:7])
            stalled.append(s)
        # The last one is only accepted when the daemon answers a Ping sent after it.
        with connect(peer.piece_port) as probe:
            probe.sendall(encode_frame(m.Ping(nonce=n)))
            read_frame(probe)
        after_stalled = settle(pid)
        print(
            f"dfdaemon piece port, {n} half-sent headers: "
            f"{per_item(after_idle, after_stalled, n)} per connection"
        )
        http = []
        for _ in range(n):
            s = connect(peer.upload_port)
            s.sendall(b"GET /download/none HTTP/1.1\r\nHost: bench\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            http.append(s)
        after_http = settle(pid)
        print(
            f"dfdaemon HTTP upload port, {n} idle keep-alive connections: "
            f"{per_item(after_stalled, after_http, n)} per connection"
        )
        for s in idle + stalled + http:
            s.close()
        time.sleep(2)  # let the daemon see every close
        left = settle(pid)
        print(
            f"dfdaemon after all {3 * n} left: RSS {left / 1024:.0f} MiB "
            f"(started at {start / 1024:.0f} MiB, peak {after_http / 1024:.0f} MiB)"
        )


def measure_tls_piece_port(work: Path, n: int, unlimited: dict) -> None:
    import ssl

    from d7y.daemons import certs

    ca = certs.create_ca(work / "certs")
    cert, key = certs.issue(work / "certs", "127.0.0.1-tls", "peer", ca)
    client_cert, client_key = certs.issue(work / "certs", "client", "peer", ca)
    tls = {"enabled": True, "ca_cert": str(work / "certs" / certs.CA_CERT),
           "cert": str(cert), "key": str(key)}  # fmt: skip
    context = ssl.create_default_context(cafile=tls["ca_cert"])
    context.check_hostname = False
    context.load_cert_chain(client_cert, client_key)
    config = {"upload": unlimited, "log": {"level": "info"}, "host": {"hostname": "tls"},
              "security": {"tls": tls}}  # fmt: skip
    with PeerProcess(work, "tls-peer", **config) as peer:
        pid = peer.proc.pid
        start = settle(pid)
        idle = []
        for i in range(n):
            s = context.wrap_socket(connect(peer.piece_port))
            s.sendall(encode_frame(m.Ping(nonce=i)))
            assert read_frame(s) == m.Pong(nonce=i)
            idle.append(s)
        after = settle(pid)
        print(
            f"dfdaemon piece port under mutual TLS, {n} idle connections: RSS "
            f"{start / 1024:.0f} -> {after / 1024:.0f} MiB, {per_item(start, after, n)} "
            f"per connection"
        )
        for s in idle:
            s.close()


def measure_scheduler(work: Path, n: int, pieces: int, unlimited: dict) -> None:
    config = {"server": unlimited, "log": {"level": "info"}}
    with SchedulerProcess(work, "scheduler", **config) as scheduler:
        pid = scheduler.proc.pid
        start = settle(pid)
        conns = []
        for i in range(n):
            s = connect(scheduler.port)
            s.sendall(
                encode_frame(
                    m.AnnounceHost(
                        host_id=f"host-{i}",
                        ip="127.0.0.1",
                        hostname=f"host-{i}",
                        port=4000,
                        download_port=4005,
                    )
                )
                + encode_frame(m.Ping(nonce=i % 65536))
            )
            assert read_frame(s) == m.Pong(nonce=i % 65536)
            conns.append(s)
        after_hosts = settle(pid)
        print(
            f"scheduler, {n} connections each with an announced host: RSS "
            f"{start / 1024:.0f} -> {after_hosts / 1024:.0f} MiB, "
            f"{per_item(start, after_hosts, n)} per connection (host included)"
        )
        for i, s in enumerate(conns):
            peer_id, task = f"host-{i}-peer", f"{i // 100:064x}"
            frames = [
                encode_frame(
                    m.RegisterPeer(
                        peer_id=peer_id,
                        task_id=task,
                        host_id=f"host-{i}",
                        url=f"http://origin.invalid/{i // 100}",
                        need_back_to_source=True,
                    ),
                    1,
                ),
                encode_frame(
                    m.DownloadStarted(
                        peer_id=peer_id,
                        task_id=task,
                        back_to_source=True,
                        content_length=max(pieces, 1) * PIECE,
                        piece_length=PIECE,
                    ),
                    1,
                ),
            ]
            frames += [
                encode_frame(
                    m.PieceFinished(
                        peer_id=peer_id,
                        task_id=task,
                        number=k,
                        cost_ns=10**6 + k,
                        length=PIECE,
                        digest=f"crc32:{k}",
                    ),
                    1,
                )
                for k in range(pieces)
            ]
            s.sendall(b"".join(frames))
            answer = read_frame(s)
            assert isinstance(answer, m.NeedBackToSource), answer
        for i, s in enumerate(conns):  # every report applied (a connection is in order)
            s.sendall(encode_frame(m.Ping(nonce=i % 65536)))
            assert read_frame(s) == m.Pong(nonce=i % 65536)
        after_peers = settle(pid)
        print(
            f"scheduler, {n} registered peers ({pieces} pieces reported each, 100 a task): "
            f"{per_item(after_hosts, after_peers, n)} per peer"
        )
        for s in conns:
            s.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--peers", type=int, default=3000)
    parser.add_argument("--pieces", type=int, default=64)
    parser.add_argument(
        "--baseline", action="store_true", help="code without the limit and timeout keys"
    )
    parser.add_argument("--tls", action="store_true", help="also the piece port under mTLS")
    args = parser.parse_args()
    unlimited = {} if args.baseline else UNLIMITED
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 4 * max(args.connections, args.peers) + 256
    if soft < need:  # the daemons inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, need), hard))
    print(f"bench_memory {time.strftime('%Y-%m-%d')}, Python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory() as work:
        measure_dfdaemon(Path(work), args.connections, unlimited)
        if args.tls:
            measure_tls_piece_port(Path(work), args.connections, unlimited)
        measure_scheduler(Path(work), args.peers, args.pieces, unlimited)
    return 0


if __name__ == "__main__":
    sys.exit(main())
