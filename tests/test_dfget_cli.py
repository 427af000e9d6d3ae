"""dfget's flags and exit codes through the real command against a real dfdaemon, and
the other user-facing commands (`d7y pieces`, `d7y cluster up`) run as a user would.

The exit codes are dfget's table (daemons/dfget.py): 0 ok, 1 other error, 2 usage,
3 dfdaemon not running, 4 origin error, 5 timeout, 6 digest mismatch, 7 disk full,
8 back-to-source disabled and no peer had the task.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import signal
import socket
import subprocess
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import pytest

from d7y.core.ids import task_id
from d7y.core.pieces import MiB
from tests.manager_harness import ApiClient
from tests.peer_harness import PYTHON, PeerProcess, wait_for

PIECE = 4 * MiB


# One real dfdaemon and origin for the module (tests/conftest.py); each test starts with
# the origin reset.
pytestmark = pytest.mark.usefixtures("clean_origin")


def stored(peer: PeerProcess, tid: str) -> dict | None:
    status, info = peer.api("GET", f"/v1/tasks/{tid}")
    return info if status == 200 else None


# -- health ----------------------------------------------------------------------------


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def unix_get(path: Path, target: str) -> tuple[int, bytes]:
    class Connection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.connect(str(path))

    conn = Connection("localhost", timeout=10)
    try:
        conn.request("GET", target)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_healthy_on_the_metrics_port_and_the_local_api(tmp_path):
    peer = PeerProcess(tmp_path).start()
    url = f"http://127.0.0.1:{peer.metrics_port}/healthy"
    assert get(url) == (200, b"ok")
    assert unix_get(peer.socket_path, "/v1/healthy") == (200, b"ok")
    assert get(f"http://127.0.0.1:{peer.metrics_port}/nothing")[0] == 404
    assert peer.stop() == 0
    with pytest.raises(OSError):  # a stopped daemon is not healthy: nobody answers
        urllib.request.urlopen(url, timeout=5)


# -- flags -----------------------------------------------------------------------------


def test_disable_back_to_source_fails_with_8_when_nobody_has_the_task(origin, peer, tmp_path):
    url = origin.add_file("nosource.bin", size=PIECE + 3, seed=81)
    out = tmp_path / "x"
    result = peer.dfget(url, out, "--disable-back-to-source", "--no-progress")
    assert result.returncode == 8, result.stderr.decode()
    message = result.stderr.decode()
    assert "back-to-source is disabled" in message and task_id(url) in message
    assert origin.stats("/nosource.bin")["requests"] == 0  # not even a probe
    assert not out.exists()
    # Without the flag the same task downloads; with it, it is now served from storage.
    assert peer.dfget(url, out, "--no-progress").returncode == 0
    again = peer.dfget(url, tmp_path / "y", "--disable-back-to-source", "--no-progress")
    assert again.returncode == 0, again.stderr.decode()
    assert (tmp_path / "y").read_bytes() == origin.content("nosource.bin")


def test_filtered_query_param_leaves_the_parameter_out_of_the_task(origin, peer, tmp_path):
    origin.add_file("signed.bin", size=PIECE + 1, seed=82)
    first = origin.url("signed.bin?sig=aaa&v=1")
    second = origin.url("signed.bin?sig=bbb&v=1")
    flags = ("--filtered-query-param", "sig", "--no-progress")
    assert peer.dfget(first, tmp_path / "a", *flags).returncode == 0
    requests = origin.stats("/signed.bin")["requests"]
    # Another signature, same task: served from storage, the origin is not asked.
    result = peer.dfget(second, tmp_path / "b", *flags)
    assert result.returncode == 0, result.stderr.decode()
    assert origin.stats("/signed.bin")["requests"] == requests
    assert (tmp_path / "b").read_bytes() == origin.content("signed.bin")
    tid = task_id(first, filtered_query_params=["sig"])
    assert tid == task_id(second, filtered_query_params=["sig"])
    assert stored(peer, tid) is not None
    # Without the flag the signature is part of the task: a new task, fetched again.
    assert peer.dfget(second, tmp_path / "c", "--no-progress").returncode == 0
    assert origin.stats("/signed.bin")["requests"] > requests
    assert stored(peer, task_id(second)) is not None


def test_header_flag_reaches_the_origin_on_every_request(origin, peer, tmp_path):
    url = origin.add_file("headers.bin", size=2 * PIECE + 5, seed=83)
    result = peer.dfget(
        url, tmp_path / "x", "-H", "Authorization: Bearer t0k3n", "-H", "X-Trace:  42 ",
        "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    seen = origin.stats("/headers.bin")["headers"]
    assert len(seen) == 4  # the probe and three pieces
    for headers in seen:
        assert headers.get("Authorization") == "Bearer t0k3n", headers
        assert headers.get("X-Trace") == "42", headers
    bad = peer.dfget(url, tmp_path / "y", "-H", "no colon here", "--no-progress")
    assert bad.returncode == 2
    assert "'no colon here' is not 'Name: value'" in bad.stderr.decode()


def test_piece_length_flag_sets_the_pieces_and_the_task(origin, peer, tmp_path):
    size = 2 * 8 * MiB + 100
    url = origin.add_file("pieces.bin", size=size, seed=84)
    result = peer.dfget(url, tmp_path / "x", "--piece-length", "8MiB", "--no-progress")
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "x").read_bytes() == origin.content("pieces.bin")
    ranges = [r for r in origin.stats("/pieces.bin")["ranges"][1:] if r]
    eight = 8 * MiB
    assert sorted(ranges) == sorted(
        f"bytes={o}-{min(o + eight, size) - 1}" for o in range(0, size, eight)
    )
    info = stored(peer, task_id(url, piece_length=eight))
    assert info is not None and info["piece_length"] == eight
    assert stored(peer, task_id(url)) is None  # not the default task
    small = peer.dfget(url, tmp_path / "y", "--piece-length", "1MiB", "--no-progress")
    assert small.returncode == 2
    assert "--piece-length" in small.stderr.decode() and "1048576" in small.stderr.decode()


def test_application_flag_makes_its_own_task(origin, peer, tmp_path):
    url = origin.add_file("app.bin", size=1000, seed=85)
    assert peer.dfget(url, tmp_path / "a", "--no-progress").returncode == 0
    requests = origin.stats("/app.bin")["requests"]
    result = peer.dfget(url, tmp_path / "b", "--application", "trainer", "--no-progress")
    assert result.returncode == 0, result.stderr.decode()
    assert origin.stats("/app.bin")["requests"] > requests  # another task: fetched again
    assert stored(peer, task_id(url, application="trainer")) is not None
    assert task_id(url, application="trainer") != task_id(url)


def test_priority_flag_is_checked_and_sent(origin, peer, tmp_path):
    url = origin.add_file("prio.bin", size=100, seed=86)
    result = peer.dfget(url, tmp_path / "x", "--priority", "6", "--no-progress")
    assert result.returncode == 0, result.stderr.decode()
    bad = peer.dfget(url, tmp_path / "y", "--priority", "high", "--no-progress")
    assert bad.returncode == 2 and "--priority" in bad.stderr.decode()


def test_timeout_exits_5_and_the_download_goes_on(origin, peer, tmp_path):
    url = origin.add_file("slow.bin", size=PIECE, seed=87)
    origin.set_faults("/slow.bin", delay={"seconds": 2.0, "count": 1})  # the probe waits
    result = peer.dfget(url, tmp_path / "x", "--timeout", "300ms", "--no-progress")
    assert result.returncode == 5, result.stderr.decode()
    assert "timed out after 300ms" in result.stderr.decode()
    assert not (tmp_path / "x").exists()
    # The daemon carried on: the task finishes without dfget and is then served.
    wait_for(
        lambda: (stored(peer, task_id(url)) or {}).get("state") == "succeeded",
        "the task to finish in dfdaemon after dfget timed out",
    )
    requests = origin.stats("/slow.bin")["requests"]
    assert peer.dfget(url, tmp_path / "y", "--timeout", "30s", "--no-progress").returncode == 0
    assert origin.stats("/slow.bin")["requests"] == requests
    bad = peer.dfget(url, tmp_path / "z", "--timeout", "soon", "--no-progress")
    assert bad.returncode == 2 and "--timeout" in bad.stderr.decode()


def test_daemon_dying_mid_download_exits_1_naming_dfdaemon(origin, tmp_path):
    url = origin.add_file("orphan.bin", size=2 * PIECE, seed=88)
    origin.set_faults("/orphan.bin", delay={"seconds": 0.5, "count": -1})
    peer = PeerProcess(tmp_path).start()
    proc = peer.dfget_popen(url, tmp_path / "x", "--no-progress")
    wait_for(lambda: stored(peer, task_id(url)), "the download to start in dfdaemon")
    peer.kill()
    assert proc.wait(30) == 1
    assert "dfdaemon" in proc.stderr.read().decode()
    assert not (tmp_path / "x").exists()


# -- d7y pieces and d7y cluster up -------------------------------------------------------


def test_d7y_pieces_hashes_and_sends_every_piece(tmp_path):
    data = os.urandom(2 * PIECE + 12345)
    path = tmp_path / "sample.bin"
    path.write_bytes(data)
    proc = subprocess.run(
        [PYTHON, "-m", "d7y.daemons.cli", "pieces", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert hashlib.sha256(data).hexdigest() in out
    assert f"{PIECE:,} bytes -> 3 pieces" in out
    digests = [int(d) for d in re.findall(r"crc32:(\d+)", out)]
    assert digests == [zlib.crc32(data[o : o + PIECE]) for o in range(0, len(data), PIECE)]
    assert "digests agree: True" in out
    assert "3/3 pieces verified, bitmap complete: True" in out
    fixed = subprocess.run(
        [PYTHON, "-m", "d7y.daemons.cli", "pieces", str(path), "--piece-length", "8MiB"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fixed.returncode == 0 and f"{8 * MiB:,} bytes -> 2 pieces" in fixed.stdout


def test_d7y_cluster_up_serves_dfget_until_sigterm(origin, tmp_path):
    url = origin.add_file("up.bin", size=PIECE + 77, seed=89)
    work = tmp_path / "cluster"
    proc = subprocess.Popen(
        [PYTHON, "-m", "d7y.daemons.cli", "cluster", "up", "--peers", "2", "--workdir", str(work)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # Block-buffered stdout, as with `d7y cluster up > cluster.log &`: the lines up to
        # "stops the cluster." must still arrive while the cluster runs.
        env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
    )
    try:
        lines = []
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "stops the cluster." in line:
                break
        printed = "".join(lines)
        assert f"Ctrl-C (or kill -TERM {proc.pid}) stops the cluster." in printed
        sockets = dict(re.findall(r"^\s+(\S+)\s+dfget URL -O FILE --daemon-socket (\S+)$",
                                  printed, re.M))  # fmt: skip
        assert set(sockets) == {"seed", "peer0", "peer1"}, printed
        # Each node's metrics URL follows its dfget line (and proxy line, for a peer).
        metrics = dict(re.findall(r"^\s+(\S+)\s+dfget URL.*\n(?:.*proxy.*\n)?\s+metrics (\S+)$",
                                  printed, re.M))  # fmt: skip
        assert set(metrics) == set(sockets) and len(set(metrics.values())) == 3, printed
        # The manager is up with it: root signs in with the password printed once, and
        # the cluster's token lists the scheduler, alive.
        console = re.search(r"manager console: (http://127\.0\.0\.1:\d+)/ ", printed)
        password = re.search(r"user root, password (\S+) ", printed)
        assert console and password, printed
        manager = ApiClient(console.group(1))
        status, body, _ = manager.call(
            "POST", "/api/v1/users/signin", {"name": "root", "password": password.group(1)}
        )
        assert status == 200, body
        manager.token = (work / "manager.token").read_text().strip()
        schedulers = manager.get("/api/v1/schedulers")
        assert [(s["hostname"], s["state"]) for s in schedulers] == [("scheduler", "active")]
        for name in ("peer0", "peer1"):
            out = tmp_path / f"{name}.out"
            result = subprocess.run(
                [PYTHON, "-m", "d7y.daemons.cli", "dfget", url, "-O", str(out),
                 "--daemon-socket", sockets[name], "--no-progress"],
                capture_output=True, timeout=120,
            )  # fmt: skip
            assert result.returncode == 0, result.stderr.decode()
            assert out.read_bytes() == origin.content("up.bin")
            # The printed metrics URL is this peer's: it counts the one download.
            with urllib.request.urlopen(metrics[name], timeout=10) as answer:
                text = answer.read().decode()
            counted = dict(re.findall(r"^(d7y_peer_download_\w+_bytes_total) (\S+)$", text, re.M))
            fetched = float(counted["d7y_peer_download_origin_bytes_total"]) + float(
                counted["d7y_peer_download_peer_bytes_total"]
            )
            assert fetched == PIECE + 77, text
        # The seed fetched it once; the second peer got it from the swarm.
        assert origin.stats("/up.bin")["bytes_sent"] <= PIECE + 77 + 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0
    for name, path in sockets.items():
        assert not Path(path).exists(), f"{name} still has its socket after the cluster stopped"
