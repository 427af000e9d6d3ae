"""``d7y origin``: a small HTTP origin serving a directory, for demos and benchmarks.

It answers GET/HEAD with single byte ranges (RFC 9110) and counts the body bytes it
sends, so a demo can show how much of a file the origin really served when a swarm
downloaded it (``GET /_stats`` returns ``{"bytes_sent": N, "requests": M}``). It is not
a production web server; put nginx in front of real data.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
from pathlib import Path

from aiohttp import web

from d7y.core.http_range import RangeError, parse_range
from d7y.daemons.peer.limits import TokenBucket

CHUNK = 1024 * 1024


class Origin:
    def __init__(self, root: Path, rate: int = 0) -> None:
        self.root = Path(root).resolve()
        # Total egress limit in bytes/s shared by all clients (0: none), to play an
        # origin whose uplink is the bottleneck, as in real deployments.
        self.limiter = TokenBucket(rate, max(rate // 10, CHUNK)) if rate else None
        self.bytes_sent = 0
        self.requests = 0
        self.app = web.Application()
        self.app.add_routes([web.get("/_stats", self.stats), web.get("/{path:.+}", self.serve)])
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # the bound port when 0
        return f"http://{host}:{self.port}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def stats(self, _request: web.Request) -> web.Response:
        return web.json_response({"bytes_sent": self.bytes_sent, "requests": self.requests})

    async def serve(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        path = (self.root / request.match_info["path"]).resolve()
        if self.root not in path.parents or not path.is_file():
            raise web.HTTPNotFound(text="not found\n")
        size = path.stat().st_size
        start, length, status = 0, size, 200
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        stat = path.stat()
        headers["ETag"] = f'"{stat.st_mtime_ns:x}-{size:x}"'
        if "Range" in request.headers:
            try:
                selected = parse_range(request.headers["Range"], size)
            except RangeError as exc:
                if exc.unsatisfiable:
                    return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
                raise web.HTTPBadRequest(text=f"{exc}\n") from None
            start, length, status = selected.start, selected.length, 206
            headers["Content-Range"] = selected.content_range(size)
        headers["Content-Length"] = str(length)
        response = web.StreamResponse(status=status, headers=headers)
        await response.prepare(request)
        if request.method == "HEAD":
            return response
        with open(path, "rb") as f:
            f.seek(start)
            left = length
            while left:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                if self.limiter is not None:
                    await self.limiter.take(len(chunk))
                await response.write(chunk)
                left -= len(chunk)
                self.bytes_sent += len(chunk)
        await response.write_eof()
        return response


async def _serve(root: Path, host: str, port: int, rate: int) -> None:
    origin = Origin(root, rate)
    url = await origin.start(host, port)
    print(url, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await origin.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="d7y origin", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", required=True, type=Path, help="directory to serve")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate", default="0", help="total egress limit, e.g. 100MiB (per s)")
    args = parser.parse_args(argv)
    from d7y.daemons.config import parse_size

    try:
        rate = int(parse_size(args.rate))
    except ValueError as exc:
        parser.error(f"--rate: {exc}")
    if not args.dir.is_dir():
        parser.error(f"--dir {str(args.dir)!r} is not a directory")
    os.chdir(args.dir)
    asyncio.run(_serve(args.dir, args.host, args.port, rate))
    return 0
