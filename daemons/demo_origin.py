"""``d7y origin``: the demo origin SERVER, serving a directory over HTTP for demos and
benchmarks (the client that fetches from origins is :mod:`d7y.daemons.sources.http`).

It answers GET/HEAD with single byte ranges (RFC 9110) and counts the body bytes it
sends, so a demo can show how much of a file the origin really served when a swarm
downloaded it (``GET /_stats`` returns ``{"bytes_sent": N, "requests": M}``). It is not
a production web server; put nginx in front of real data.

It runs under the services' lifecycle (:mod:`d7y.daemons.service`): once listening it
prints its base URL on stdout (one line, for scripts), logs ``origin ready url=...`` and
notifies ``$NOTIFY_SOCKET``; SIGTERM or SIGINT stops it, and responses in flight get
:data:`STOP_GRACE` seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from aiohttp import web

from d7y.core.http_range import RangeError, parse_range
from d7y.daemons.peer.limits import TokenBucket

CHUNK = 1024 * 1024
#: At stop, responses still being sent get this long before their connections close.
STOP_GRACE = 5.0


class DemoOrigin:
    """The demo origin as a :class:`d7y.daemons.service.Service`."""

    name = "origin"

    def __init__(self, root: Path, rate: int = 0, host: str = "127.0.0.1", port: int = 0) -> None:
        self.root = Path(root).resolve()
        # Total egress limit in bytes/s shared by all clients (0: none), to play an
        # origin whose uplink is the bottleneck, as in real deployments.
        self.limiter = TokenBucket(rate, max(rate // 10, CHUNK)) if rate else None
        self.bytes_sent = 0
        self.requests = 0
        self.app = web.Application()
        self.app.add_routes([web.get("/_stats", self.stats), web.get("/{path:.+}", self.serve)])
        self._runner: web.AppRunner | None = None
        self.host = host
        self.port = port
        self.url = ""

    async def start(self) -> None:
        self._runner = web.AppRunner(
            self.app, access_log=None, handle_signals=False, shutdown_timeout=STOP_GRACE
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]  # the bound port when 0
        self.url = f"http://{self.host}:{self.port}/"
        print(self.url, flush=True)

    async def drain(self) -> None:
        """Nothing to finish first: stop() gives the responses in flight STOP_GRACE."""

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    def ready_details(self) -> dict[str, object]:
        return {"url": self.url, "root": self.root}

    def render_metrics(self) -> bytes:
        return b""  # it has no metrics port; /_stats is its account

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
    from d7y.daemons.logs import setup_logging
    from d7y.daemons.service import Lifecycle, run_loop

    setup_logging("info")
    lifecycle = Lifecycle(
        DemoOrigin(args.dir, rate, args.host, args.port), drain_timeout=STOP_GRACE
    )
    try:
        run_loop(lifecycle.run())
    except OSError as exc:
        print(f"d7y origin: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0
