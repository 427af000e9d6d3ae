"""The services' lifecycle (d7y.daemons.service): ready, drain, stop on signals.

The first tests drive :class:`Lifecycle` around a small service that records what it
was asked to do; the last ones run the real dfdaemon under it in this process, with the
real test origin and real dfget processes, and send this process SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from d7y.core.ids import task_id
from d7y.daemons.peer.config import load_peer_config
from d7y.daemons.peer.daemon import PeerDaemon
from d7y.daemons.peer.storage import MetadataStore
from d7y.daemons.service import Lifecycle, State
from tests.origin_server import OriginServer
from tests.peer_harness import dfget_command, free_port

PIECE = 4 * 1024 * 1024


class RecordingService:
    """A service whose drain waits until the test lets it finish."""

    name = "recorder"

    def __init__(self, *, fail_start: bool = False) -> None:
        self.events: list[str] = []
        self.fail_start = fail_start
        self.drain_started = asyncio.Event()
        self.finish_drain = asyncio.Event()

    async def start(self) -> None:
        self.events.append("start")
        if self.fail_start:
            raise OSError(98, "Address already in use")

    async def drain(self) -> None:
        self.events.append("drain")
        self.drain_started.set()
        try:
            await self.finish_drain.wait()
        except asyncio.CancelledError:
            self.events.append("drain cancelled")
            raise
        self.events.append("drained")

    async def stop(self) -> None:
        self.events.append("stop")

    def ready_details(self) -> dict[str, object]:
        return {"port": 1234}

    def render_metrics(self) -> bytes:
        return b"recorder_things 7\n"


class NotifySocket:
    """What a supervisor (systemd) listens on: a datagram socket at $NOTIFY_SOCKET."""

    def __init__(self, monkeypatch) -> None:
        self.dir = tempfile.mkdtemp(prefix="d7y-test-notify-")  # AF_UNIX paths are short
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", self.path)

    async def next(self) -> list[str]:
        data = await asyncio.get_running_loop().sock_recv(self.sock, 4096)
        return data.decode().split("\n")

    def close(self) -> None:
        self.sock.close()
        os.unlink(self.path)
        os.rmdir(self.dir)


@pytest.fixture
def notify_socket(monkeypatch):
    sock = NotifySocket(monkeypatch)
    yield sock
    sock.close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_ready_then_sigterm_drains_then_stops(notify_socket, tmp_path, caplog):
    caplog.set_level(logging.INFO)
    ready_file = tmp_path / "recorder.ready"
    metrics_port = free_port()

    async def main() -> None:
        service = RecordingService()
        lifecycle = Lifecycle(
            service, drain_timeout=60, ready_file=ready_file, metrics_port=metrics_port
        )
        run = asyncio.create_task(lifecycle.run())
        ready = await notify_socket.next()
        assert "READY=1" in ready and f"MAINPID={os.getpid()}" in ready, ready
        record = json.loads(ready_file.read_text())
        assert record == {
            "pid": os.getpid(),
            "service": "recorder",
            "port": 1234,
            "metrics_port": metrics_port,
        }
        base = f"http://127.0.0.1:{metrics_port}"
        assert await asyncio.to_thread(get, base + "/healthy") == (200, b"ok")
        assert await asyncio.to_thread(get, base + "/metrics") == (200, b"recorder_things 7\n")

        os.kill(os.getpid(), signal.SIGTERM)
        assert "STOPPING=1" in await notify_socket.next()
        await service.drain_started.wait()
        assert lifecycle.state is State.DRAINING
        assert not ready_file.exists(), "a draining service is not ready"
        # A supervisor or load balancer must see it is not taking work now.
        status, body = await asyncio.to_thread(get, base + "/healthy")
        assert (status, body) == (503, b"draining\n")
        assert service.events == ["start", "drain"]

        service.finish_drain.set()
        await asyncio.wait_for(run, 30)
        assert service.events == ["start", "drain", "drained", "stop"]
        assert lifecycle.state is State.STOPPED

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "d7y.recorder"]
    assert lines[0] == f"recorder ready port=1234 metrics_port={metrics_port}"
    assert lines[1].startswith("recorder draining signal=SIGTERM")
    assert lines[2:] == ["recorder stopping", "recorder stopped"]
    # The handlers are gone with the lifecycle: this process is as it was.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_a_second_signal_during_the_drain_stops_at_once(caplog):
    caplog.set_level(logging.INFO)

    async def main() -> list[str]:
        service = RecordingService()
        lifecycle = Lifecycle(service, drain_timeout=3600)
        run = asyncio.create_task(lifecycle.run())
        await lifecycle.ready.wait()
        os.kill(os.getpid(), signal.SIGTERM)
        await service.drain_started.wait()
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(run, 30)
        return service.events

    events = asyncio.run(main())
    assert events == ["start", "drain", "drain cancelled", "stop"]
    assert any("second signal SIGINT" in r.getMessage() for r in caplog.records)


def test_a_drain_that_outlasts_its_timeout_is_cut_short(caplog):
    caplog.set_level(logging.INFO)

    async def main() -> list[str]:
        service = RecordingService()  # its drain never finishes on its own
        lifecycle = Lifecycle(service, drain_timeout=0.05)
        run = asyncio.create_task(lifecycle.run())
        await lifecycle.ready.wait()
        lifecycle.request_stop()
        await asyncio.wait_for(run, 30)
        return service.events

    assert asyncio.run(main()) == ["start", "drain", "drain cancelled", "stop"]
    assert any("drain not done after 0.05s" in r.getMessage() for r in caplog.records)


def test_a_failed_start_stops_what_it_opened_and_is_never_ready(notify_socket, tmp_path):
    ready_file = tmp_path / "ready"

    async def main() -> RecordingService:
        service = RecordingService(fail_start=True)
        with pytest.raises(OSError, match="Address already in use"):
            await Lifecycle(service, ready_file=ready_file).run()
        return service

    service = asyncio.run(main())
    assert service.events == ["start", "stop"]
    assert not ready_file.exists()
    with pytest.raises(BlockingIOError):
        notify_socket.sock.recv(4096)  # no READY=1 was sent
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


# -- the real dfdaemon under the lifecycle ------------------------------------------------


class InProcessPeer:
    """dfdaemon's PeerDaemon run by a Lifecycle on this process's event loop."""

    def __init__(self, tmp_path: Path) -> None:
        self.data_dir = tmp_path / "data"
        self.metrics_port = free_port()
        config = load_peer_config(
            env={},
            overrides={
                "storage": {"data_dir": str(self.data_dir)},
                "upload": {"listen": "127.0.0.1", "port": 0, "piece_port": 0},
                "metrics": {"listen": "127.0.0.1", "port": self.metrics_port},
                "proxy": {"port": 0},  # off: the default 4001 may be taken on this machine
                "download": {"origin_backoff": "10ms"},
            },
        )
        self.socket = config.socket_path
        self.daemon = PeerDaemon(config)
        self.lifecycle = Lifecycle(self.daemon, drain_timeout=3600, metrics_port=self.metrics_port)

    async def dfget(self, url: str, output: Path) -> asyncio.subprocess.Process:
        argv = dfget_command(url, output, "--no-progress", "--daemon-socket", str(self.socket))
        return await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )

    async def healthy(self) -> int:
        return (await asyncio.to_thread(get, f"http://127.0.0.1:{self.metrics_port}/healthy"))[0]


async def wait_until(predicate, what: str, timeout: float = 30.0) -> None:
    """Poll a state of this process (never a fixed sleep as synchronisation)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def test_sigterm_lets_the_attached_download_finish_and_refuses_new_ones(notify_socket, tmp_path):
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> None:
        async with OriginServer() as origin:
            url = origin.add_file("slow.bin", size=2 * PIECE + 5, seed=61)
            other = origin.add_file("other.bin", size=1000, seed=62)
            # The probe answers; the pieces wait until the test lifts the hold.
            origin.set_faults("/slow.bin", hold={"count": -1, "skip": 1})
            peer = InProcessPeer(tmp_path)
            run = asyncio.create_task(peer.lifecycle.run())
            assert "READY=1" in await notify_socket.next()
            first = await peer.dfget(url, out / "slow.bin")
            await wait_until(lambda: origin.active_requests >= 1, "a held piece request")

            os.kill(os.getpid(), signal.SIGTERM)
            assert "STOPPING=1" in await notify_socket.next()
            assert await peer.healthy() == 503
            # Draining: a new download is refused with a sentence, the old one goes on.
            late = await peer.dfget(other, out / "other.bin")
            _, stderr = await late.communicate()
            assert late.returncode != 0
            assert "shutting down" in stderr.decode(), stderr
            assert not run.done()

            origin.set_faults("/slow.bin", hold=None)
            _, stderr = await first.communicate()
            assert first.returncode == 0, stderr.decode()
            assert (out / "slow.bin").read_bytes() == origin.content("slow.bin")
            await asyncio.wait_for(run, 60)  # the drain ended: it stopped by itself
            assert not peer.socket.exists()
            assert sorted(p.name for p in out.iterdir()) == ["slow.bin"]

    asyncio.run(main())


def test_second_sigterm_with_a_download_in_flight_leaves_no_partial_output(notify_socket, tmp_path):
    out = tmp_path / "out"
    out.mkdir()

    async def main() -> str:
        async with OriginServer() as origin:
            url = origin.add_file("held.bin", size=3 * PIECE, seed=63)
            origin.set_faults("/held.bin", hold={"count": -1, "skip": 2})
            peer = InProcessPeer(tmp_path)
            run = asyncio.create_task(peer.lifecycle.run())
            assert "READY=1" in await notify_socket.next()
            download = await peer.dfget(url, out / "held.bin")
            tid = task_id(url)

            def one_piece_stored() -> bool:
                running = peer.daemon.manager.running(tid)
                return running is not None and running.snapshot()["completed_bytes"] >= PIECE

            # One piece lands, the others wait at the origin: a download in flight.
            await wait_until(one_piece_stored, "the first piece to be stored")
            os.kill(os.getpid(), signal.SIGTERM)
            assert "STOPPING=1" in await notify_socket.next()
            os.kill(os.getpid(), signal.SIGTERM)  # do not wait for it
            await asyncio.wait_for(run, 60)
            _, stderr = await download.communicate()
            assert download.returncode != 0
            origin.reset()  # lift the hold so the origin can stop
            return stderr.decode()

    stderr = asyncio.run(main())
    assert "dfdaemon stopping" in stderr, stderr
    # Nothing at the output path, and no temporary file beside it.
    assert list(out.iterdir()) == []
    # The daemon's own record: an unfinished task (it resumes next time), not succeeded.
    meta = MetadataStore(tmp_path / "data" / "metadata.db")
    try:
        tasks = meta.list_tasks()
    finally:
        meta.close()
    assert [t.state != "succeeded" for t in tasks] == [True], tasks
