"""The process manager (d7y.daemons.procman) on real processes: the demo origin (a d7y
service under the lifecycle) and small Python programs that misbehave on purpose."""

from __future__ import annotations

import signal
import sys
import urllib.request

import pytest

from d7y.daemons.procman import ProcessError, ServiceProcess
from tests.peer_harness import free_port

PYTHON = sys.executable


def demo_origin(tmp_path, **options) -> ServiceProcess:
    www = tmp_path / "www"
    www.mkdir(exist_ok=True)
    (www / "hello.txt").write_bytes(b"hello, swarm\n")
    argv = [PYTHON, "-m", "d7y.daemons.cli", "origin", "--dir", str(www)]
    if "port" in options:
        argv += ["--port", str(options.pop("port"))]
    return ServiceProcess("origin", argv, log_path=tmp_path / "origin.log", **options)


def origin_url(proc: ServiceProcess) -> str:
    return next(line for line in proc.log().splitlines() if line.startswith("http://"))


def test_a_service_is_ready_when_it_notifies_and_stops_on_sigterm(tmp_path):
    proc = demo_origin(tmp_path, notify=True).start(timeout=30)
    assert "origin ready url=" in proc.log()
    with urllib.request.urlopen(origin_url(proc) + "hello.txt", timeout=10) as resp:
        assert resp.read() == b"hello, swarm\n"
    assert proc.stop() == 0 and not proc.killed
    assert "origin stopped" in proc.log()
    # Started again: a fresh notify socket, the log goes on.
    proc.start(timeout=30)
    assert proc.log().count("origin ready url=") == 2
    assert proc.stop() == 0


def test_ready_by_url(tmp_path):
    port = free_port()
    proc = demo_origin(tmp_path, port=port, ready_url=f"http://127.0.0.1:{port}/_stats")
    hello = f"http://127.0.0.1:{port}/hello.txt"
    with proc, urllib.request.urlopen(hello, timeout=10) as resp:  # entering starts it
        assert resp.status == 200
    assert proc.returncode == 0


IGNORES_SIGTERM = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('up', flush=True)\n"
    "while True: time.sleep(1)\n"
)


def test_a_process_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    proc = ServiceProcess(
        "stubborn", [PYTHON, "-c", IGNORES_SIGTERM], log_path=tmp_path / "s.log", ready_log="up"
    ).start(timeout=30)
    assert proc.stop(grace=0.2) == -signal.SIGKILL
    assert proc.killed and not proc.running


def test_a_process_that_exits_early_is_an_error_quoting_its_log(tmp_path):
    proc = ServiceProcess(
        "broken",
        [PYTHON, "-c", "import sys; sys.exit('config key foo.bar: nonsense')"],
        log_path=tmp_path / "b.log",
        notify=True,
    )
    with pytest.raises(ProcessError, match="exited early with status 1") as excinfo:
        proc.start(timeout=30)
    assert "config key foo.bar: nonsense" in str(excinfo.value)


def test_a_process_never_ready_is_killed_not_left_half_started(tmp_path):
    proc = ServiceProcess(
        "silent", [PYTHON, "-c", IGNORES_SIGTERM], log_path=tmp_path / "q.log", ready_log="never"
    )
    with pytest.raises(ProcessError, match=r"did not become ready within 0\.3s"):
        proc.start(timeout=0.3)
    assert not proc.running


def test_a_long_log_is_quoted_by_its_tail(tmp_path):
    # 10,000 numbered lines then the reason: the error quotes the end (the reason), marked
    # as cut, not the whole log and not its start.
    program = "import sys\nfor n in range(10000): print(f'line {n}')\nsys.exit('the reason')\n"
    proc = ServiceProcess(
        "chatty", [PYTHON, "-c", program], log_path=tmp_path / "c.log", notify=True
    )
    with pytest.raises(ProcessError, match="exited early with status 1") as excinfo:
        proc.start(timeout=30)
    message = str(excinfo.value)
    assert "...\n" in message and "the reason" in message
    assert "line 9999" in message and "line 0\n" not in message
    assert len(message) < len(proc.log())


def test_wait_log_gives_up_after_its_timeout_on_a_running_process(tmp_path):
    proc = ServiceProcess(
        "quiet", [PYTHON, "-c", IGNORES_SIGTERM], log_path=tmp_path / "w.log", ready_log="up"
    ).start(timeout=30)
    try:
        proc.wait_log("up")  # already there: returns at once
        with pytest.raises(ProcessError, match=r"quiet did not log 'never' within 0\.3s"):
            proc.wait_log("never", timeout=0.3)
        assert proc.running
    finally:
        proc.stop(grace=0.2)
