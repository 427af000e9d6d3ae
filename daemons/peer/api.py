"""The local API of dfdaemon: HTTP over a unix socket, spoken by dfget.

    POST   /v1/tasks              start or join a download; streams progress as NDJSON
                                  (one JSON object a line), the last line has the result.
                                  Body: the DownloadRequest fields plus "output" (absolute
                                  path to export to when done) and "content" (true: the
                                  response body is the task's bytes in order, for stdout).
    GET    /v1/tasks              stored and running tasks
    GET    /v1/tasks/{id}         one task
    DELETE /v1/tasks/{id}         remove a stored task (409 while it is in use)
    GET    /v1/healthy            "ok"

Only the local user can reach a unix socket (its mode is 0600), so the API is not
authenticated; it never listens on TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from d7y.daemons.peer.storage import NoSpaceError, StorageError
from d7y.daemons.peer.task_manager import (
    DownloadError,
    DownloadRequest,
    FailureKind,
    Task,
    TaskManager,
)

log = logging.getLogger("d7y.dfdaemon.api")

PROGRESS_INTERVAL = 0.25
#: At stop, a request still being answered gets this long (the downloads it may wait
#: for are cancelled first, so it has its answer by then).
SHUTDOWN_TIMEOUT = 5.0
_REQUEST_FIELDS = {
    "url": str,
    "headers": dict,
    "tag": str,
    "application": str,
    "filtered_query_params": (list, type(None)),
    "piece_length": (int, type(None)),
    "digest": str,
    "disable_back_to_source": bool,
    "priority": int,
}


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": {"kind": "bad_request", "message": message}}, status=400)


def parse_download_request(body: Any) -> tuple[DownloadRequest, Path | None, bool]:
    """Validate a POST /v1/tasks body; ValueError names the bad field."""
    if not isinstance(body, dict):
        raise ValueError("request body must be a JSON object")
    unknown = set(body) - set(_REQUEST_FIELDS) - {"output", "content"}
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    if "url" not in body:
        raise ValueError("field 'url' is required")
    for name, kind in _REQUEST_FIELDS.items():
        if name in body and not isinstance(body[name], kind):
            raise ValueError(f"field {name!r} has the wrong type: {body[name]!r}")
    headers = body.get("headers", {})
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
        raise ValueError("field 'headers' must map strings to strings")
    params = body.get("filtered_query_params") or []
    if not all(isinstance(p, str) for p in params):
        raise ValueError(
            f"field 'filtered_query_params' must be a list of strings, got {params!r:.200}"
        )
    for name in ("piece_length", "priority"):  # bool is an int to isinstance
        if isinstance(body.get(name), bool):
            raise ValueError(f"field {name!r} must be an integer, got {body[name]!r}")
    request = DownloadRequest(**{k: v for k, v in body.items() if k in _REQUEST_FIELDS})
    output = body.get("output")
    if output is not None:
        if not isinstance(output, str) or not os.path.isabs(output):
            raise ValueError(f"field 'output' must be an absolute path, got {output!r}")
        output = Path(output)
        if not output.parent.is_dir():
            raise ValueError(f"output directory {str(output.parent)!r} does not exist")
    return request, output, bool(body.get("content", False))


class LocalAPI:
    def __init__(self, manager: TaskManager, *, idle_timeout: float = 60.0) -> None:
        self.manager = manager
        # aiohttp arms this when a connection opens and after each response, so it also
        # closes a connection that sends only part of a request head (slowloris).
        self.idle_timeout = idle_timeout
        self.app = web.Application(client_max_size=1024 * 1024)
        self.app.add_routes(
            [
                web.post("/v1/tasks", self.create_task),
                web.get("/v1/tasks", self.list_tasks),
                web.get("/v1/tasks/{task_id}", self.get_task),
                web.delete("/v1/tasks/{task_id}", self.delete_task),
                web.get("/v1/healthy", self.healthy),
            ]
        )
        self._runner: web.AppRunner | None = None
        self._refusing = False  # draining: no new downloads
        self._attached: set[asyncio.Task] = set()  # POST /v1/tasks requests being answered
        self._detached = asyncio.Event()  # set whenever _attached becomes empty

    def refuse_new_downloads(self) -> None:
        """From now on POST /v1/tasks answers 503: the daemon is shutting down."""
        self._refusing = True

    async def drain(self) -> None:
        """Refuse new downloads; return once no client waits for one."""
        self.refuse_new_downloads()
        while self._attached:
            self._detached.clear()
            await self._detached.wait()

    async def start(self, socket_path: Path) -> None:
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            socket_path.unlink()  # a stale socket from a killed daemon
        self._runner = web.AppRunner(
            self.app,
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.idle_timeout,
            shutdown_timeout=SHUTDOWN_TIMEOUT,
        )
        await self._runner.setup()
        site = web.UnixSite(self._runner, str(socket_path))
        await site.start()
        os.chmod(socket_path, 0o600)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthy(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def create_task(self, request: web.Request) -> web.StreamResponse:
        if self._refusing:
            return web.json_response(
                {
                    "error": {
                        "kind": "unavailable",
                        "message": "dfdaemon is shutting down and takes no new downloads; "
                        "run dfget again once it is back",
                    }
                },
                status=503,
            )
        handler = asyncio.current_task()
        assert handler is not None
        self._attached.add(handler)
        try:
            return await self._create_task(request)
        finally:
            self._attached.discard(handler)
            if not self._attached:
                self._detached.set()

    async def _create_task(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            download, output, content = parse_download_request(body)
            task = self.manager.start(download, streaming=content)
        except (ValueError, json.JSONDecodeError) as exc:
            return _bad_request(str(exc))
        except RecursionError:
            return _bad_request(
                "the request body is nested too deeply to be a download request: send one "
                'JSON object such as {"url": "...", "output": "..."}'
            )
        except DownloadError as exc:
            return web.json_response(
                {"error": {"kind": exc.kind.value, "message": str(exc)}}, status=400
            )
        if content:
            return await self._stream_content(request, task)
        return await self._stream_progress(request, task, output)

    async def _stream_progress(
        self, request: web.Request, task: Task, output: Path | None
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        while not task.done.done():
            await response.write(json.dumps(task.snapshot()).encode() + b"\n")
            await task.wait_change(timeout=PROGRESS_INTERVAL)
        final = task.snapshot()
        if final["state"] == "succeeded" and output is not None:
            final["export"] = await self._export(task, output, final)
        await response.write(json.dumps(final).encode() + b"\n")
        await response.write_eof()
        return response

    async def _export(self, task: Task, output: Path, final: dict) -> str | None:
        storage = self.manager.storage
        with self.manager.pin(task.id):
            try:
                return await storage.run(storage.export, task.id, output)
            except NoSpaceError as exc:
                final["state"] = "failed"
                final["error"] = {"kind": FailureKind.NO_SPACE.value, "message": exc.strerror}
            except StorageError as exc:
                final["state"] = "failed"
                final["error"] = {"kind": "output", "message": exc.strerror}
        return None

    async def _stream_content(self, request: web.Request, task: Task) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        await response.prepare(request)
        try:
            async for block in self.manager.read_in_order(task):
                await response.write(block)
        except DownloadError as exc:
            # The status line is gone already: cut the connection so the client sees a
            # broken body, then asks GET /v1/tasks/{id} for the reason.
            log.info("content stream ended by task failure task=%s error=%s", task.id, exc)
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    async def list_tasks(self, _request: web.Request) -> web.Response:
        storage = self.manager.storage
        records = await storage.run(storage.meta.list_tasks)
        tasks = [self._describe(r.id, r) for r in records]
        stored = {t["task_id"] for t in tasks}
        for task_id in list(self.manager.busy_task_ids()):
            running = self.manager.running(task_id)
            if running is not None and task_id not in stored:
                tasks.append(running.snapshot())
        return web.json_response({"tasks": tasks})

    def _describe(self, task_id: str, record) -> dict[str, Any]:
        running = self.manager.running(task_id)
        if running is not None:
            return running.snapshot()
        return {
            "task_id": record.id,
            "url": record.url,
            "state": record.state,
            "content_length": record.content_length,
            "piece_length": record.piece_length,
            "error": {"message": record.error} if record.error else None,
            "last_access": record.last_access,
        }

    async def get_task(self, request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        running = self.manager.running(task_id)
        if running is not None:
            return web.json_response(running.snapshot())
        storage = self.manager.storage
        record = await storage.run(storage.meta.get_task, task_id)
        if record is None:
            return web.json_response(
                {"error": {"kind": "not_found", "message": f"no task {task_id}"}}, status=404
            )
        return web.json_response(self._describe(task_id, record))

    async def delete_task(self, request: web.Request) -> web.Response:
        task_id = request.match_info["task_id"]
        if task_id in self.manager.busy_task_ids():
            return web.json_response(
                {"error": {"kind": "busy", "message": f"task {task_id} is in use"}}, status=409
            )
        storage = self.manager.storage
        record = await storage.run(storage.meta.get_task, task_id)
        if record is None:
            return web.json_response(
                {"error": {"kind": "not_found", "message": f"no task {task_id}"}}, status=404
            )
        await self.manager.delete_task(task_id)
        return web.json_response({"deleted": task_id})
