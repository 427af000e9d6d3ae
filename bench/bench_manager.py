"""Manager REST API throughput on SQLite and on PostgreSQL, each against an anchor.

    python bench/bench_manager.py [--hosts 1000] [--schedulers 100] [--clusters 10]
        [--requests 3000] [--concurrency 32] [--databases sqlite,postgresql]

For each database, ``d7y manager`` runs as a process (SQLite in its data dir; PostgreSQL
a real server, initdb'd into a temporary directory by tests/postgres_server.py, with
``database.pool_size: 10`` so the pool is not what 32 requests in flight wait on). The
bench fills it through the REST API: ``--clusters`` clusters, ``--hosts`` seed peers
and ``--schedulers`` schedulers spread over them (the 1,000 registered hosts of issue
11). Then, with ``--concurrency`` requests in flight at all times, it measures:

* ``GET /api/v1/clusters`` requests/s (a personal access token authenticates each one,
  as for a scheduler or a script);
* scheduler keepalives/s: ``POST /api/v1/schedulers/{id}/keepalive``, round-robin over
  the registered schedulers (each one is a write: the row and an audit entry).

The anchor, measured in the same run by the same client: a minimal aiohttp server
process on uvloop (as the manager) that answers the same two routes with the same JSON
bytes from memory. The ratio anchor / manager is the manager's own cost per request
(database, auth, audit, serialisation) over what aiohttp and the client cost anyway.

The client shares the machine's cores with the server, so every figure is a lower bound;
run it twice and quote the load average it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from d7y.daemons.procman import ServiceProcess
from d7y.daemons.service import run_loop
from tests.manager_harness import ManagerProcess
from tests.peer_harness import free_port

TOKEN = "d7y-bench-" + uuid.uuid4().hex
CLUSTERS = "/api/v1/clusters"
KEEPALIVE = "/api/v1/schedulers/{id}/keepalive"


# -- the anchor: the same answers from memory -------------------------------------------


def serve_anchor(port: int, answers: Path) -> None:
    """Run the anchor server (in its own process) until SIGTERM."""
    from aiohttp import web

    stored = json.loads(answers.read_text())
    clusters = stored["clusters"].encode()
    keepalive = stored["keepalive"].encode()
    total = stored["total"]

    async def list_clusters(_request: web.Request) -> web.Response:
        return web.Response(
            body=clusters, content_type="application/json", headers={"X-Total-Count": total}
        )

    async def keep_alive(_request: web.Request) -> web.Response:
        return web.Response(body=keepalive, content_type="application/json")

    async def main() -> None:
        app = web.Application()
        app.router.add_get(CLUSTERS, list_clusters)
        app.router.add_post("/api/v1/schedulers/{id}/keepalive", keep_alive)
        app.router.add_get("/healthy", lambda _r: web.Response(text="ok"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        await asyncio.Event().wait()

    run_loop(main())


# -- the load ---------------------------------------------------------------------------


async def hammer(
    base: str, method: str, paths: list[str], requests: int, concurrency: int
) -> tuple[float, dict[int, int]]:
    """``requests`` calls (paths used round-robin) with ``concurrency`` in flight;
    (requests/s, {status: count}). A warm-up of one round per worker is not counted."""
    statuses: dict[int, int] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base, headers=headers, connector=connector) as session:

        async def call(i: int) -> None:
            async with session.request(method, paths[i % len(paths)]) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1

        await asyncio.gather(*(call(i) for i in range(concurrency)))
        statuses.clear()
        issued = 0

        async def worker() -> None:
            nonlocal issued
            while issued < requests:
                i = issued
                issued += 1
                await call(i)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return requests / elapsed, statuses


def measure(base: str, scheduler_ids: list[int], args: argparse.Namespace) -> dict[str, tuple]:
    keepalives = [KEEPALIVE.format(id=i) for i in scheduler_ids]
    return {
        "GET /api/v1/clusters": run_loop(
            hammer(base, "GET", [CLUSTERS], args.requests, args.concurrency)
        ),
        "scheduler keepalive": run_loop(
            hammer(base, "POST", keepalives, args.requests, args.concurrency)
        ),
    }


# -- filling the manager ----------------------------------------------------------------


async def populate(base: str, args: argparse.Namespace) -> list[int]:
    """Clusters, seed peers and schedulers through the REST API; the scheduler IDs."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    connector = aiohttp.TCPConnector(limit=8)
    async with aiohttp.ClientSession(base, headers=headers, connector=connector) as session:

        async def post(path: str, body: dict) -> dict:
            async with session.post(path, json=body) as response:
                answer = await response.json()
                if response.status not in (200, 201):
                    raise RuntimeError(f"POST {path} {body}: {response.status} {answer}")
                return answer

        cluster_ids = [1]  # cluster-1, seeded at first start
        for n in range(2, args.clusters + 1):
            created = await post(CLUSTERS, {"name": f"bench-{n}", "scopes": {"idc": f"idc{n}"}})
            cluster_ids.append(created["id"])

        async def in_batches(bodies: list[tuple[str, dict]]) -> list[dict]:
            out = []
            for at in range(0, len(bodies), 64):
                out += await asyncio.gather(*(post(p, b) for p, b in bodies[at : at + 64]))
            return out

        await in_batches([
            ("/api/v1/seed-peers", {
                "hostname": f"seed-{i}", "ip": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                "port": 65002, "download_port": 65000,
                "cluster_id": cluster_ids[i % len(cluster_ids)],
            })
            for i in range(args.hosts)
        ])  # fmt: skip
        schedulers = await in_batches([
            ("/api/v1/schedulers", {
                "hostname": f"scheduler-{i}", "ip": f"10.200.{i >> 8 & 255}.{i & 255}",
                "port": 8002, "cluster_id": cluster_ids[i % len(cluster_ids)],
            })
            for i in range(args.schedulers)
        ])  # fmt: skip
    return [s["id"] for s in schedulers]


async def fetch_answers(base: str, scheduler_id: int) -> dict[str, str]:
    """The manager's own answers, for the anchor to send back byte for byte."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(base, headers=headers) as session:
        async with session.get(CLUSTERS) as response:
            clusters = await response.text()
            total = response.headers.get("X-Total-Count", "0")
        async with session.post(KEEPALIVE.format(id=scheduler_id)) as response:
            keepalive = await response.text()
    return {"clusters": clusters, "keepalive": keepalive, "total": total}


# -- one database -----------------------------------------------------------------------


def run_database(kind: str, work: Path, args: argparse.Namespace) -> dict[str, tuple]:
    postgres = None
    url = ""
    if kind == "postgresql":
        from tests.postgres_server import PostgresServer

        postgres = PostgresServer().start()
        url = postgres.create_database("bench")
    manager = ManagerProcess(
        work, f"manager-{kind}", database_url=url, pat=TOKEN, log={"level": "warning"},
        database={"url": url, "pool_size": 10},
    )  # fmt: skip
    anchor = None
    try:
        manager.start(timeout=60)
        scheduler_ids = run_loop(populate(manager.url, args))
        answers = work / f"anchor-{kind}.json"
        answers.write_text(json.dumps(run_loop(fetch_answers(manager.url, scheduler_ids[0]))))
        port = free_port()
        anchor = ServiceProcess(
            f"anchor-{kind}",
            [sys.executable, __file__, "--serve-anchor", str(port), str(answers)],
            log_path=work / f"anchor-{kind}.log",
            ready_url=f"http://127.0.0.1:{port}/healthy",
        ).start()
        results = {}
        for name, got in measure(manager.url, scheduler_ids, args).items():
            results[name] = {"manager": got}
        for name, got in measure(f"http://127.0.0.1:{port}", scheduler_ids, args).items():
            results[name]["anchor"] = got
        return results
    finally:
        if anchor is not None:
            anchor.stop()
        manager.stop()
        if postgres is not None:
            postgres.close()


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
        f"Python {platform.python_version()}"
    )


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-anchor":
        serve_anchor(int(sys.argv[2]), Path(sys.argv[3]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hosts", type=int, default=1000, help="seed peers registered")
    parser.add_argument("--schedulers", type=int, default=100, help="schedulers registered")
    parser.add_argument("--clusters", type=int, default=10, help="clusters (cluster-1 included)")
    parser.add_argument("--requests", type=int, default=3000, help="measured requests per case")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--databases", default="sqlite,postgresql")
    args = parser.parse_args()
    for key in ("hosts", "schedulers", "clusters", "requests", "concurrency"):
        if getattr(args, key) < 1:
            parser.error(f"--{key} must be >= 1, got {getattr(args, key)}")
    kinds = [k.strip() for k in args.databases.split(",") if k.strip()]
    for kind in kinds:
        if kind not in ("sqlite", "postgresql"):
            parser.error(f"--databases: {kind!r} is neither sqlite nor postgresql")

    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine()}")
    print(
        f"{args.clusters} clusters, {args.hosts} seed peers, {args.schedulers} schedulers "
        f"registered; {args.requests} requests per case, {args.concurrency} in flight"
    )
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="d7y-bench-manager-") as tmp:
        table = {kind: run_database(kind, Path(tmp), args) for kind in kinds}
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"\n{'database':<11} {'request':<22} {'manager req/s':>14} {'anchor req/s':>13} "
        f"{'anchor/manager':>15}  statuses (manager)"
    )
    for kind, results in table.items():
        for name, got in results.items():
            (mine, statuses), (anchor, _) = got["manager"], got["anchor"]
            print(
                f"{kind:<11} {name:<22} {mine:>14,.0f} {anchor:>13,.0f} {anchor / mine:>14.1f}x"
                f"  {dict(sorted(statuses.items()))}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
