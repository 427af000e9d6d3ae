"""Scheduler daemon under load: N peer connections speaking the real protocol.

    python bench/bench_scheduler_load.py [--peers 500] [--reports 200] [--in-flight N]

Starts ``d7y scheduler`` as a process, opens N connections (one host and one peer each,
all on one task, as a flash crowd), registers every peer and measures the register ->
answer latency (all registrations sent at once, or at most ``--in-flight`` unanswered at
a time, so the latency is the scheduler's rather than the queue's); then every peer
sends ``--reports`` PieceFinished reports as fast as it can, and a Ping after them, whose
Pong proves the scheduler applied the reports before it (one connection is processed in
order). Prints the latency p50/p99 and reports/s,
and the scheduler's RSS (/proc, once it stops moving) per connection with its announced
host and per registered peer. All connections come from 127.0.0.1, so the scheduler's
``server.max_connections_per_ip`` (and ``max_connections``) are raised in its config to
fit N. The load generator shares the 2 cores with the scheduler, so figures are a lower
bound.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import urllib.request
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_memory import settle
from d7y.core import messages as m
from d7y.core.protocol import encode_frame_into
from d7y.daemons.framing import FramedStream
from tests.peer_harness import SchedulerProcess

TASK = "b7" * 32
PIECES = 256
HOLDERS = 40
DIGEST = f"crc32:{zlib.crc32(b'x')}"


async def ping_all(conns: list[FramedStream]) -> None:
    """A Ping on every connection and its Pong: the scheduler has handled all that each
    connection sent before it."""
    for i, conn in enumerate(conns):
        await conn.send(m.Ping(nonce=i))

    async def pong(conn: FramedStream) -> None:
        while not isinstance((await conn.read())[1], m.Pong):
            pass

    await asyncio.gather(*(pong(conn) for conn in conns))


async def run(port: int, pid: int, peers: int, reports: int, in_flight: int) -> None:
    rss_start = settle(pid)
    conns = [await FramedStream.connect("127.0.0.1", port) for _ in range(peers)]
    for i, conn in enumerate(conns):
        await conn.send(
            m.AnnounceHost(
                host_id=f"10.0.{i // 250}.{i % 250}-h{i}",
                ip="127.0.0.1",
                hostname=f"h{i}",
                port=4000,
                download_port=4005,
                max_tx_bandwidth_bps=10**10,
            )
        )
    await ping_all(conns)
    rss_hosts = settle(pid)
    # The first HOLDERS peers fetch from the origin (need_back_to_source) and finish, so
    # the crowd that follows finds parents with free upload slots at once: the latency
    # measured is the scheduler's, not the algorithm's retry_interval waits.
    latencies: list[float] = []

    async def register(i: int, conn: FramedStream, holder: bool = False) -> None:
        start = time.perf_counter()
        await conn.send(
            m.RegisterPeer(
                peer_id=f"peer-{i}",
                task_id=TASK,
                host_id=f"10.0.{i // 250}.{i % 250}-h{i}",
                url="http://origin/f.bin",
                need_back_to_source=holder,
            ),
            1,
        )
        _, answer = await conn.read()
        if not holder:
            latencies.append(time.perf_counter() - start)
            await conn.send(m.DownloadStarted(peer_id=f"peer-{i}", task_id=TASK), 1)
            return
        assert isinstance(answer, m.NeedBackToSource), answer
        batch = bytearray()
        encode_frame_into(
            batch,
            m.DownloadStarted(
                peer_id=f"peer-{i}",
                task_id=TASK,
                back_to_source=True,
                content_length=PIECES * 4 * 2**20,
                piece_length=4 * 2**20,
            ),
            1,
        )
        for n in range(PIECES):
            encode_frame_into(
                batch,
                m.PieceFinished(
                    peer_id=f"peer-{i}",
                    task_id=TASK,
                    number=n,
                    cost_ns=10**6,
                    length=4 * 2**20,
                    digest=DIGEST,
                ),
                1,
            )
        encode_frame_into(
            batch,
            m.DownloadFinished(
                peer_id=f"peer-{i}",
                task_id=TASK,
                content_length=PIECES * 4 * 2**20,
                piece_count=PIECES,
            ),
            1,
        )
        await conn.stream.send_all(batch)

    for i in range(HOLDERS):
        await register(i, conns[i], holder=True)
    await asyncio.sleep(0.5)
    slots = asyncio.Semaphore(in_flight or peers)

    async def register_when_free(i: int, conn: FramedStream) -> None:
        async with slots:
            await register(i, conn)

    start = time.perf_counter()
    await asyncio.gather(*(register_when_free(i, c) for i, c in enumerate(conns) if i >= HOLDERS))
    register_wall = time.perf_counter() - start
    registered = len(latencies)
    await ping_all(conns)  # the DownloadStarted after each answer are handled too
    rss_peers = settle(pid)

    async def report(i: int, conn: FramedStream) -> None:
        if i < HOLDERS:
            return
        batch = bytearray()
        for n in range(reports):
            encode_frame_into(
                batch,
                m.PieceFinished(
                    peer_id=f"peer-{i}",
                    task_id=TASK,
                    number=n % PIECES,
                    parent_id="peer-0",
                    cost_ns=10**6,
                    length=4 * 2**20,
                    digest=DIGEST,
                ),
                1,
            )
        encode_frame_into(batch, m.Ping(nonce=i))
        await conn.stream.send_all(batch)
        while True:
            _, answer = await conn.read()
            if isinstance(answer, m.Pong):
                return

    start = time.perf_counter()
    await asyncio.gather(*(report(i, c) for i, c in enumerate(conns)))
    report_wall = time.perf_counter() - start
    for conn in conns:
        conn.close()
    q = statistics.quantiles(latencies, n=100)
    sent = f"at most {in_flight} unanswered at a time" if in_flight else "sent at once"
    print(f"\nscheduler daemon, {peers} peer connections, one task, {time.strftime('%Y-%m-%d')}")
    print(
        f"register -> answer latency: p50 {q[49] * 1e3:.2f} ms, p99 {q[98] * 1e3:.2f} ms "
        f"({registered} registrations, {sent}, answered in {register_wall:.2f} s = "
        f"{registered / register_wall:,.0f}/s)"
    )
    total = (peers - HOLDERS) * reports
    print(f"piece reports: {total:,} in {report_wall:.2f} s = {total / report_wall:,.0f}/s")
    print(
        f"scheduler RSS: {rss_start / 1024:.1f} MiB at start, {rss_hosts / 1024:.1f} MiB with "
        f"{peers} connections and hosts, {rss_peers / 1024:.1f} MiB with {peers} peers "
        f"registered"
    )
    print(
        f"per connection with its host: {(rss_hosts - rss_start) / peers:.1f} KiB; per "
        f"registered peer: {(rss_peers - rss_hosts) / peers:.1f} KiB; all three together: "
        f"{(rss_peers - rss_start) / peers:.1f} KiB"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--peers", type=int, default=500)
    parser.add_argument("--reports", type=int, default=200)
    parser.add_argument(
        "--in-flight", type=int, default=0, help="most registrations unanswered at once (0: all)"
    )
    args = parser.parse_args()
    import resource

    # Both ends of every connection are on this machine: the generator's and the
    # scheduler's (which inherits the limit) each need one descriptor per peer.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, args.peers + 1024)), hard))
    # Every connection comes from 127.0.0.1: the per-address limit must fit them all.
    limit = max(1024, args.peers + 64)
    with tempfile.TemporaryDirectory() as work:
        scheduler = SchedulerProcess(
            Path(work),
            log={"level": "info"},
            scheduling={"sample_servable_only": "on"},
            server={"max_connections": 0, "max_connections_per_ip": limit},
        ).start()
        try:
            import uvloop

            pid = scheduler.proc.pid
            uvloop.run(run(scheduler.port, pid, args.peers, args.reports, args.in_flight))
            url = f"http://127.0.0.1:{scheduler.metrics_port}/metrics"
            with urllib.request.urlopen(url) as resp:
                errors = [
                    line
                    for line in resp.read().decode().splitlines()
                    if line.startswith("d7y_scheduler_errors_total")
                ]
            print("requests refused:", ", ".join(errors) or "none")
        finally:
            scheduler.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
