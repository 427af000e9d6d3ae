"""dfdaemon + dfget end to end: real processes, a real HTTP origin, loopback only."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
import zlib
from pathlib import Path

import pytest

from d7y.core.ids import task_id
from d7y.core.pieces import MiB
from d7y.daemons.peer.storage import MetadataStore
from tests.origin_server import ThreadedOriginServer
from tests.peer_harness import PYTHON, PeerProcess, dfget, wait_for

PIECE = 4 * MiB


# One real dfdaemon and origin for the module (tests/conftest.py); each test starts with
# the origin reset.
pytestmark = pytest.mark.usefixtures("clean_origin")


def wait_for_state(peer, tid: str, state: str, what: str) -> dict:
    def reached():
        status, info = peer.api("GET", f"/v1/tasks/{tid}")
        return info if status == 200 and info.get("state") == state else None

    return wait_for(reached, what)


def ranged_requests(origin, name: str) -> list[str]:
    return [r for r in origin.stats(f"/{name}")["ranges"] if r is not None]


def piece_requests(origin, name: str) -> list[str]:
    """Ranged requests after the probe (the first request, ``bytes=0-0``)."""
    ranges = origin.stats(f"/{name}")["ranges"]
    assert ranges and ranges[0] == "bytes=0-0", ranges
    return [r for r in ranges[1:] if r is not None]


def piece_ranges(size: int) -> set[str]:
    return {f"bytes={o}-{min(o + PIECE, size) - 1}" for o in range(0, size, PIECE)}


@pytest.mark.parametrize(
    "size",
    [0, 1, 128, PIECE, 2 * PIECE + 12345],
    ids=["empty", "1B", "128B", "one-piece", "short-last-piece"],
)
def test_sizes_byte_exact(origin, peer, tmp_path, size):
    name = f"size-{size}.bin"
    url = origin.add_file(name, size=size, seed=size)
    out = tmp_path / "out.bin"
    result = peer.dfget(url, out, "--no-progress")
    assert result.returncode == 0, result.stderr.decode()
    assert out.read_bytes() == origin.content(name)
    if size > 0:
        assert sorted(piece_requests(origin, name)) == sorted(piece_ranges(size))


@pytest.mark.parametrize("mode", ["no-range", "no-length"])
def test_origin_without_range_or_length_is_streamed_once(origin, peer, tmp_path, mode):
    name = f"stream-{mode}.bin"
    url = origin.add_file(name, size=3 * PIECE + 777, seed=3)
    if mode == "no-range":
        origin.set_faults(f"/{name}", range=False)
    else:
        origin.set_faults(f"/{name}", range=False, content_length=False)
    out = tmp_path / "out.bin"
    result = peer.dfget(url, out, "--no-progress")
    assert result.returncode == 0, result.stderr.decode()
    assert out.read_bytes() == origin.content(name)
    # One probe, one streaming GET: the body was read once, not once per piece.
    assert origin.stats(f"/{name}")["requests"] == 2
    status, body = peer.http_get(task_id(url))
    assert status == 200 and body == origin.content(name)


def test_concurrent_dfget_share_one_download(origin, peer, tmp_path):
    name = "shared.bin"
    size = 6 * PIECE + 1
    url = origin.add_file(name, size=size, seed=11)
    origin.set_faults(f"/{name}", delay={"seconds": 0.2, "count": -1})
    procs = [peer.dfget_popen(url, tmp_path / f"out{i}.bin", "--no-progress") for i in range(4)]
    for proc in procs:
        assert proc.wait(120) == 0, proc.stderr.read().decode()
    expected = origin.content(name)
    for i in range(4):
        assert (tmp_path / f"out{i}.bin").read_bytes() == expected
    pieces = piece_requests(origin, name)
    assert sorted(pieces) == sorted(piece_ranges(size)), "each piece fetched exactly once"


def test_cached_task_served_with_origin_down(tmp_path):
    with ThreadedOriginServer() as origin, PeerProcess(tmp_path) as peer:
        url = origin.add_file("cached.bin", size=PIECE + 5, seed=5)
        expected = origin.content("cached.bin")
        assert peer.dfget(url, tmp_path / "a", "--no-progress").returncode == 0
    # The origin is gone now; the daemon restarts and still has the task.
    with PeerProcess(tmp_path) as peer:
        result = peer.dfget(url, tmp_path / "b", "--no-progress")
        assert result.returncode == 0, result.stderr.decode()
        assert (tmp_path / "b").read_bytes() == expected


def test_stdout_streams_the_content(origin, peer):
    url = origin.add_file("stdout.bin", size=3 * PIECE + 3, seed=8)
    result = peer.dfget(url, "-")
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == origin.content("stdout.bin")


def test_http_endpoint_serves_ranges(origin, peer, tmp_path):
    url = origin.add_file("ranged.bin", size=PIECE + 100, seed=9)
    assert peer.dfget(url, tmp_path / "x", "--no-progress").returncode == 0
    data = origin.content("ranged.bin")
    tid = task_id(url)
    assert peer.http_get(tid) == (200, data)
    assert peer.http_get(tid, "bytes=10-19") == (206, data[10:20])
    assert peer.http_get(tid, "bytes=-7") == (206, data[-7:])
    status, _ = peer.http_get(tid, f"bytes={len(data)}-")
    assert status == 416
    status, body = peer.http_get("0" * 64)
    assert status == 404 and b"not available" in body


def raw_download(peer, task: str, range_header: str | None = None, method: str = "GET"):
    """(status, headers with lower-case names, body) of one request to /download."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", peer.upload_port, timeout=30)
    try:
        conn.request(
            method, f"/download/{task}", headers={"Range": range_header} if range_header else {}
        )
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_http_endpoint_range_headers(origin, peer, tmp_path):
    """Content-Range, Content-Length and Accept-Ranges of each kind of answer, and the
    416's ``bytes */N`` (RFC 9110 14.4), read from the response itself."""
    size = PIECE + 100
    url = origin.add_file("headers.bin", size=size, seed=22)
    assert peer.dfget(url, tmp_path / "x", "--no-progress").returncode == 0
    data = origin.content("headers.bin")
    tid = task_id(url)
    cases = [
        (None, 200, None, data),
        ("bytes=10-19", 206, f"bytes 10-19/{size}", data[10:20]),
        ("bytes=-7", 206, f"bytes {size - 7}-{size - 1}/{size}", data[-7:]),
        (f"bytes={PIECE}-", 206, f"bytes {PIECE}-{size - 1}/{size}", data[PIECE:]),
        (f"bytes=0-{size + 50}", 206, f"bytes 0-{size - 1}/{size}", data),  # end clamped
        ("bytes=0-0", 206, f"bytes 0-0/{size}", data[:1]),
    ]
    for range_header, status, content_range, body in cases:
        got_status, headers, got_body = raw_download(peer, tid, range_header)
        assert (got_status, headers.get("content-range")) == (status, content_range), range_header
        assert headers["content-length"] == str(len(body)), range_header
        assert headers["accept-ranges"] == "bytes", range_header
        assert got_body == body, range_header
    # HEAD: the same headers, no body.
    status, headers, body = raw_download(peer, tid, "bytes=10-19", method="HEAD")
    assert (status, headers["content-range"], headers["content-length"], body) == (
        206,
        f"bytes 10-19/{size}",
        "10",
        b"",
    )
    for unsatisfiable in (f"bytes={size}-", f"bytes={size + 5}-{size + 9}"):
        status, headers, _ = raw_download(peer, tid, unsatisfiable)
        assert status == 416, unsatisfiable
        assert headers["content-range"] == f"bytes */{size}", unsatisfiable


def test_http_endpoint_status_lines_carry_reason_phrases(origin, peer, tmp_path):
    """``HTTP/1.1 200 OK``, not a bare ``HTTP/1.1 200 `` (RFC 9112 allows it, but tools
    and people read the phrase), for answers with a body from the file and for errors."""
    import socket
    from http import HTTPStatus

    url = origin.add_file("reasons.bin", size=1000, seed=25)
    assert peer.dfget(url, tmp_path / "x", "--no-progress").returncode == 0
    tid = task_id(url)
    unsatisfiable = HTTPStatus(416).phrase.encode()
    cases = [
        (f"/download/{tid}", "", b"HTTP/1.1 200 OK\r\n"),
        (f"/download/{tid}", "Range: bytes=1-2\r\n", b"HTTP/1.1 206 Partial Content\r\n"),
        # "Requested Range Not Satisfiable" before Python 3.13, as RFC 7233 named it
        (f"/download/{tid}", "Range: bytes=5000-\r\n", b"HTTP/1.1 416 %s\r\n" % unsatisfiable),
        ("/download/" + "0" * 64, "", b"HTTP/1.1 404 Not Found\r\n"),
        ("/elsewhere", "", b"HTTP/1.1 404 Not Found\r\n"),
    ]
    for path, extra, status_line in cases:
        with socket.create_connection(("127.0.0.1", peer.upload_port), timeout=10) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: d7y\r\n{extra}\r\n".encode())
            head = b""
            while b"\r\n" not in head:
                chunk = s.recv(4096)
                assert chunk, head
                head += chunk
        assert head.startswith(status_line), (path, extra, head[:80])


def test_http_endpoint_keeps_the_connection_alive(origin, peer, tmp_path):
    import http.client

    url = origin.add_file("alive.bin", size=1000, seed=24)
    assert peer.dfget(url, tmp_path / "x", "--no-progress").returncode == 0
    data = origin.content("alive.bin")
    conn = http.client.HTTPConnection("127.0.0.1", peer.upload_port, timeout=30)
    try:
        for first in (0, 10, 500):  # three requests, one connection
            conn.request("GET", f"/download/{task_id(url)}", headers={"Range": f"bytes={first}-"})
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (206, data[first:])
        conn.request("HEAD", f"/download/{task_id(url)}")
        resp = conn.getresponse()
        assert (resp.status, resp.getheader("content-length"), resp.read()) == (200, "1000", b"")
    finally:
        conn.close()


def test_http_endpoint_refuses_an_oversized_header(peer):
    import socket

    with socket.create_connection(("127.0.0.1", peer.upload_port), timeout=10) as s:
        # A head that never ends: the server stops buffering it past 16 KiB.
        s.sendall(b"GET /download/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 40_000)
        reply = s.recv(4096)
    assert reply.startswith((b"HTTP/1.1 431", b"HTTP/1.1 400")), reply[:100]
    assert peer.healthy()


def test_http_endpoint_does_not_serve_a_task_still_downloading(origin, tmp_path):
    with PeerProcess(tmp_path, download={"concurrency": 1}) as peer:
        url = origin.add_file("partial.bin", size=3 * PIECE, seed=25)
        origin.set_faults("/partial.bin", delay={"seconds": 0.5, "count": -1})
        proc = peer.dfget_popen(url, tmp_path / "x", "--no-progress")
        tid = task_id(url)
        wait_for(
            lambda: (peer.api("GET", f"/v1/tasks/{tid}")[1].get("completed_bytes") or 0) >= PIECE,
            "the first piece to be stored",
        )
        status, body = peer.http_get(tid)
        assert status == 404 and b"is not available (running)" in body, body
        assert proc.wait(60) == 0
        assert peer.http_get(tid) == (200, origin.content("partial.bin"))


def test_http_endpoint_under_an_upload_rate_limit_serves_the_exact_range(origin, tmp_path):
    # Rate-limited bodies go out in 1 MiB slices, each paid for first.
    with PeerProcess(tmp_path, upload={"rate_limit": "64MiB"}) as peer:
        url = origin.add_file("limited.bin", size=3 * MiB + 5, seed=26)
        assert peer.dfget(url, tmp_path / "x", "--no-progress").returncode == 0
        data = origin.content("limited.bin")
        status, body = peer.http_get(task_id(url), "bytes=1000-")
        assert status == 206 and body == data[1000:]
        assert peer.metrics()["d7y_peer_upload_bytes_total"] == len(data) - 1000


def test_digest_verified_and_mismatch_fails(origin, peer, tmp_path):
    url = origin.add_file("digest.bin", size=PIECE + 1, seed=4)
    good = "sha256:" + hashlib.sha256(origin.content("digest.bin")).hexdigest()
    bad = "sha256:" + "0" * 64
    out = tmp_path / "bad.bin"
    result = peer.dfget(url, out, "--digest", bad, "--tag", "mismatch", "--no-progress")
    assert result.returncode == 6
    message = result.stderr.decode()
    assert "digest mismatch" in message and bad in message and good in message
    assert not out.exists()
    # The wrong content is never served.
    assert peer.http_get(task_id(url, tag="mismatch"))[0] == 404
    ok = peer.dfget(url, tmp_path / "good.bin", "--digest", good, "--no-progress")
    assert ok.returncode == 0, ok.stderr.decode()


@pytest.mark.parametrize(("piece_length", "in_flight"), [(None, 16), ("8MiB", 8)])
def test_pieces_in_flight_are_bounded_by_concurrency_and_memory(
    origin, peer, tmp_path, piece_length, in_flight
):
    """At most download.concurrency (16) pieces at once; with 8 MiB pieces the 64 MiB
    piece-buffer budget allows only 8. Every answer is delayed long enough that all the
    requests the daemon allows itself are open at once, even on a busy machine."""
    name = f"wide-{piece_length}.bin"
    url = origin.add_file(name, size=24 * PIECE, seed=23)
    origin.set_faults(f"/{name}", delay={"seconds": 1.5, "count": -1})
    flags = ("--piece-length", piece_length) if piece_length else ()
    result = peer.dfget(url, tmp_path / "x", *flags, "--no-progress")
    assert result.returncode == 0, result.stderr.decode()
    assert origin.stats(f"/{name}")["peak_concurrency"] == in_flight


def test_origin_404(origin, peer, tmp_path):
    result = peer.dfget(origin.url("missing.bin"), tmp_path / "x", "--no-progress")
    assert result.returncode == 4
    assert "404" in result.stderr.decode()
    assert not (tmp_path / "x").exists()


def test_unsupported_scheme(peer, tmp_path):
    result = peer.dfget("ftp://example.com/file", tmp_path / "x", "--no-progress")
    assert result.returncode == 2
    assert "unsupported URL scheme 'ftp'" in result.stderr.decode()


def test_origin_500_then_200_is_retried(origin, peer, tmp_path):
    url = origin.add_file("flaky.bin", size=2 * PIECE, seed=12)
    origin.set_faults("/flaky.bin", fail={"status": 500, "count": 2})
    result = peer.dfget(url, tmp_path / "x", "--no-progress")
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "x").read_bytes() == origin.content("flaky.bin")
    assert 500 in origin.stats("/flaky.bin")["statuses"]


def test_origin_closing_mid_piece_is_retried(origin, peer, tmp_path):
    url = origin.add_file("cut.bin", size=3 * PIECE, seed=13)
    # The probe takes one request; the next two are cut after 1 MiB of body.
    origin.set_faults("/cut.bin", close_after={"bytes": MiB, "count": 3})
    result = peer.dfget(url, tmp_path / "x", "--no-progress")
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "x").read_bytes() == origin.content("cut.bin")


def test_truncated_origin_response_fails_and_keeps_nothing_bad(origin, peer, tmp_path):
    url = origin.add_file("short.bin", size=2 * PIECE, seed=14)
    origin.set_faults("/short.bin", range=False, truncate={"missing": 1000, "count": -1})
    out = tmp_path / "x"
    result = peer.dfget(url, out, "--no-progress")
    assert result.returncode == 4
    assert "origin" in result.stderr.decode()
    assert not out.exists()
    assert peer.http_get(task_id(url))[0] == 404
    # The same task succeeds once the origin behaves.
    origin.reset()
    assert peer.dfget(url, out, "--no-progress").returncode == 0
    assert out.read_bytes() == origin.content("short.bin")


def test_daemon_not_running(tmp_path):
    result = dfget("http://127.0.0.1:9/x", tmp_path / "x", "--daemon-socket",
                   str(tmp_path / "none.sock"))  # fmt: skip
    assert result.returncode == 3
    assert "dfdaemon is not running" in result.stderr.decode()
    assert "start it with 'dfdaemon'" in result.stderr.decode()


def test_config_typo_is_reported(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("download:\n  concurency: 4\n")
    proc = subprocess.run(
        [PYTHON, "-m", "d7y.daemons.cli", "dfdaemon", "--config", str(config)],
        capture_output=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "unknown config key 'download.concurency'" in proc.stderr.decode()
    assert "did you mean 'download.concurrency'" in proc.stderr.decode()


def test_dfget_killed_mid_download_daemon_stays_healthy(origin, peer, tmp_path):
    url = origin.add_file("killed.bin", size=4 * PIECE, seed=15)
    origin.set_faults("/killed.bin", delay={"seconds": 0.3, "count": -1})
    proc = peer.dfget_popen(url, tmp_path / "x", "--no-progress")
    tid = task_id(url)
    wait_for_state(peer, tid, "running", "the download to start in dfdaemon")
    proc.kill()
    proc.wait()
    # Killed mid-download: the task had not finished (it goes on in the daemon).
    status, info = peer.api("GET", f"/v1/tasks/{tid}")
    assert status == 200 and info["state"] == "running", info
    assert peer.healthy()
    result = peer.dfget(url, tmp_path / "y", "--no-progress")
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "y").read_bytes() == origin.content("killed.bin")
    assert not (tmp_path / "x").exists()


def test_restart_resumes_only_missing_pieces(tmp_path):
    size = 10 * PIECE
    with ThreadedOriginServer() as origin:
        url = origin.add_file("resume.bin", size=size, seed=16)
        origin.set_faults("/resume.bin", delay={"seconds": 0.15, "count": -1})
        peer = PeerProcess(tmp_path, download={"concurrency": 1}).start()
        proc = peer.dfget_popen(url, tmp_path / "x", "--no-progress")
        deadline = time.monotonic() + 30
        tid = task_id(url)
        stored = 0
        while time.monotonic() < deadline and stored < 3:
            status, info = peer.api("GET", f"/v1/tasks/{tid}")
            stored = info.get("completed_bytes", 0) // PIECE if status == 200 else 0
            time.sleep(0.05)
        assert stored >= 3, "download made no progress"
        peer.kill()
        proc.wait(30)
        before = set(ranged_requests(origin, "resume.bin"))
        origin.reset(faults=False)

        with PeerProcess(tmp_path, download={"concurrency": 1}) as again:
            result = again.dfget(url, tmp_path / "y", "--no-progress")
            assert result.returncode == 0, result.stderr.decode()
            assert (tmp_path / "y").read_bytes() == origin.content("resume.bin")
        after = set(ranged_requests(origin, "resume.bin")) - {"bytes=0-0"}
        # Only the pieces that were not stored before the kill were fetched again; a
        # piece in flight at the kill may be fetched twice, never a stored one.
        fetched_before = before - {"bytes=0-0"}
        assert after | fetched_before == piece_ranges(size)
        assert len(after) <= 10 - stored


def test_sigterm_mid_download_leaves_consistent_metadata(tmp_path):
    size = 6 * PIECE
    with ThreadedOriginServer() as origin:
        url = origin.add_file("term.bin", size=size, seed=17)
        content = origin.content("term.bin")
        origin.set_faults("/term.bin", delay={"seconds": 0.2, "count": -1})
        peer = PeerProcess(tmp_path, download={"concurrency": 1}).start()
        proc = peer.dfget_popen(url, tmp_path / "x", "--no-progress")
        tid = task_id(url)

        def some_pieces_stored() -> bool:
            status, info = peer.api("GET", f"/v1/tasks/{tid}")
            return status == 200 and PIECE <= info.get("completed_bytes", 0) < size

        wait_for(some_pieces_stored, "the first piece to be stored")
        # dfget goes first: with a dfget attached, a SIGTERM waits for its download.
        proc.kill()
        proc.wait(30)
        assert some_pieces_stored(), "the download finished before the SIGTERM"
        assert peer.stop(signal.SIGTERM) == 0
        assert "dfdaemon stopped" in peer.log()

        # The metadata left behind: an unfinished task whose recorded pieces are each in
        # the content file, at their offsets, with the digest of the origin's bytes.
        meta = MetadataStore(peer.data_dir / "metadata.db")
        try:
            record = meta.get_task(tid)
            pieces = meta.pieces(tid)
        finally:
            meta.close()
        assert record is not None and record.state != "succeeded", record
        assert (record.content_length, record.piece_length) == (size, PIECE)
        assert 1 <= len(pieces) < 6, pieces
        stored_bytes = (peer.data_dir / "content" / "tasks" / tid[:3] / tid).read_bytes()
        for number, (digest, source) in pieces.items():
            expected = content[number * PIECE : (number + 1) * PIECE]
            assert digest == f"crc32:{zlib.crc32(expected)}", number
            assert stored_bytes[number * PIECE : (number + 1) * PIECE] == expected, number
            assert source == "origin"

        origin.reset()
        with PeerProcess(tmp_path) as again:
            result = again.dfget(url, tmp_path / "y", "--no-progress")
            assert result.returncode == 0, result.stderr.decode()
            assert (tmp_path / "y").read_bytes() == content
        # The recorded pieces were trusted; only the others were fetched.
        missing = {f"bytes={n * PIECE}-{(n + 1) * PIECE - 1}" for n in range(6) if n not in pieces}
        assert set(piece_requests(origin, "term.bin")) == missing


@pytest.fixture
def small_tmpfs(mount_tmpfs):
    return mount_tmpfs("tmpfs", "12m")


def test_disk_full_fails_clearly_and_daemon_keeps_serving(origin, tmp_path, small_tmpfs):
    big = origin.add_file("big.bin", size=4 * PIECE, seed=18)  # 16 MiB > 12 MiB tmpfs
    small = origin.add_file("small.bin", size=MiB, seed=19)
    with PeerProcess(tmp_path, storage={"data_dir": str(small_tmpfs / "data")}) as peer:
        result = peer.dfget(big, tmp_path / "big", "--no-progress")
        assert result.returncode == 7, result.stderr.decode()
        assert "no space left" in result.stderr.decode()
        assert not (tmp_path / "big").exists()
        ok = peer.dfget(small, tmp_path / "small", "--no-progress")
        assert ok.returncode == 0, ok.stderr.decode()
        assert (tmp_path / "small").read_bytes() == origin.content("small.bin")


def test_garbage_on_http_upload_port(peer):
    import socket

    with socket.create_connection(("127.0.0.1", peer.upload_port), timeout=5) as s:
        s.sendall(b"\x00\xffNOT HTTP AT ALL\r\n\r\n")
        reply = s.recv(4096)
    assert reply.startswith(b"HTTP/1.1 400")
    assert peer.healthy()


def test_head_request_refused_without_a_body(peer):
    """A HEAD for a missing task gets the 404's headers and no body (the server once
    tried to write the error text after a HEAD answer and crashed the connection)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", peer.upload_port, timeout=10)
    try:
        for _ in range(2):  # the same connection serves the second one: it did not crash
            conn.request("HEAD", "/download/" + "0" * 64)
            resp = conn.getresponse()
            assert resp.status == 404 and resp.read() == b""
            assert int(resp.getheader("content-length")) > 0
    finally:
        conn.close()
    assert "Traceback" not in peer.log()


def test_method_names_are_case_sensitive(peer):
    """Found by the long fuzzing run: "head" (lower case) was taken for HEAD by the
    server but not by h11, and the error answer crashed the connection. It is just an
    unknown method: 405, with the whole body, and the connection goes on."""
    import socket

    with socket.create_connection(("127.0.0.1", peer.upload_port), timeout=10) as s:
        s.sendall(b"head /download/x HTTP/1.1\r\nHost: d7y\r\n\r\n")
        reply = b""
        while b"use GET\n" not in reply:
            chunk = s.recv(65536)
            assert chunk, reply
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 405")
        s.sendall(b"GET /download/x HTTP/1.1\r\nHost: d7y\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 404")
    assert "Traceback" not in peer.log()


def test_local_api_refuses_a_deeply_nested_body(peer):
    """Found by fuzzing: JSON nested past the parser's recursion limit crashed the
    handler with a traceback; it is a bad request like any other malformed body."""
    import socket

    body = b"[" * 100_000
    request = (
        b"POST /v1/tasks HTTP/1.1\r\nHost: d7y\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)
    ) + body
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(peer.socket_path))
        s.sendall(request)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b"nested too deeply" in reply
    assert "Traceback" not in peer.log()


def test_list_and_delete_tasks(origin, peer, tmp_path):
    url = origin.add_file("listed.bin", size=10, seed=20)
    assert peer.dfget(url, tmp_path / "x", "--no-progress").returncode == 0
    tid = task_id(url)
    status, listing = peer.api("GET", "/v1/tasks")
    assert status == 200 and tid in {t["task_id"] for t in listing["tasks"]}
    assert peer.api("DELETE", f"/v1/tasks/{tid}")[0] == 200
    assert peer.api("GET", f"/v1/tasks/{tid}")[0] == 404
    assert peer.http_get(tid)[0] == 404
    # The daemon is shared by the module: other tasks may share the 3-character
    # directory, so look for this task's own file only.
    shard = peer.data_dir / "content" / "tasks" / tid[:3]
    assert shard.is_dir() and not [p for p in shard.iterdir() if p.name.startswith(tid)]


def test_metrics_count_origin_bytes(origin, peer, tmp_path):
    before = peer.metrics().get("d7y_peer_download_origin_bytes_total", 0)
    url = origin.add_file("metered.bin", size=PIECE + 10, seed=21)
    assert peer.dfget(url, tmp_path / "x", "--no-progress").returncode == 0
    after = peer.metrics()["d7y_peer_download_origin_bytes_total"]
    assert after - before == PIECE + 10
    assert Path(tmp_path / "x").stat().st_size == PIECE + 10


def wait_until(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_gc_removes_tasks_past_their_ttl(origin, tmp_path):
    url = origin.add_file("ttl.bin", size=1000, seed=40)
    config = {"task_ttl": "1s", "gc_interval": "200ms"}
    with PeerProcess(tmp_path, storage=config) as peer:
        assert peer.dfget(url, tmp_path / "x", "--no-progress").returncode == 0
        tid = task_id(url)
        assert wait_until(lambda: peer.api("GET", f"/v1/tasks/{tid}")[0] == 404)
        assert "gc evicted task=" + tid in peer.log()
        assert (tmp_path / "x").read_bytes() == origin.content("ttl.bin")  # output kept


def fetch_three_touching_the_first(origin, peer, tmp_path, prefix: str) -> list[str]:
    urls = [origin.add_file(f"{prefix}{i}.bin", size=PIECE, seed=50 + i) for i in range(3)]
    for i, url in enumerate(urls[:2]):
        assert peer.dfget(url, tmp_path / f"o{i}", "--no-progress").returncode == 0
    # Use the first again so the second is the least recently used.
    assert peer.dfget(urls[0], tmp_path / "again", "--no-progress").returncode == 0
    result = peer.dfget(urls[2], tmp_path / "o2", "--no-progress")
    assert result.returncode == 0, result.stderr.decode()
    assert (tmp_path / "o2").read_bytes() == origin.content(f"{prefix}2.bin")
    return urls


def test_watermark_gc_evicts_least_recently_used(origin, tmp_path):
    # 12 MiB stored of a 14 MiB quota is above the 80 % high watermark; GC removes the
    # least recently used task, which brings usage (8 MiB) under the 60 % low watermark.
    with PeerProcess(tmp_path, storage={"quota": "14MiB", "gc_interval": "200ms"}) as peer:
        urls = fetch_three_touching_the_first(origin, peer, tmp_path, "w")
        status = lambda url: peer.api("GET", f"/v1/tasks/{task_id(url)}")[0]  # noqa: E731
        assert wait_until(lambda: status(urls[1]) == 404)
        assert status(urls[0]) == 200 and status(urls[2]) == 200


def test_task_that_does_not_fit_makes_room_first(origin, tmp_path):
    # A 10 MiB quota holds two 4 MiB tasks; the third fits only after a GC round, which
    # runs at once (the periodic one is an hour away) instead of failing with ENOSPC.
    with PeerProcess(tmp_path, storage={"quota": "10MiB"}) as peer:
        urls = fetch_three_touching_the_first(origin, peer, tmp_path, "m")
        assert peer.api("GET", f"/v1/tasks/{task_id(urls[1])}")[0] == 404
        assert "gc evicted task=" + task_id(urls[1]) in peer.log()


def test_upload_servers_listen_on_the_announced_address_by_default(tmp_path):
    """Issue 13: with upload.listen unset the piece port and the HTTP endpoint bind to
    host.ip (what the scheduler tells other peers), not to every interface."""
    import socket

    peer = PeerProcess(tmp_path, host={"ip": "127.0.0.2"})
    peer.config["upload"].pop("listen")
    with peer:
        for port in (peer.piece_port, peer.upload_port):
            socket.create_connection(("127.0.0.2", port), timeout=5).close()
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", port), timeout=5)
        assert "upload_port=" in peer.log()


def test_download_token_guards_the_http_endpoint(origin, tmp_path):
    """Issue 13: with upload.download_token set, /download answers 401 (with a Bearer
    challenge) unless the request carries the token; with it, the bytes."""
    import urllib.error
    import urllib.request

    url = origin.add_file("guarded.bin", size=1000, seed=24)
    with PeerProcess(tmp_path, upload={"download_token": "s3cret"}) as peer:
        assert peer.dfget(url, tmp_path / "x", "--no-progress").returncode == 0
        endpoint = f"http://127.0.0.1:{peer.upload_port}/download/{task_id(url)}"
        for auth in (None, "Bearer wrong", "Bearer s3cre", "s3cret"):
            request = urllib.request.Request(endpoint)
            if auth:
                request.add_header("Authorization", auth)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == 401
            assert refused.value.headers["WWW-Authenticate"].startswith("Bearer")
        request = urllib.request.Request(endpoint, headers={"Authorization": "Bearer s3cret"})
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.read() == origin.content("guarded.bin")


def test_stored_bytes_are_private_to_the_daemon(origin, peer, tmp_path):
    """Issue 13: content files 0600, their directories 0700."""
    import stat

    url = origin.add_file("private.bin", size=5000, seed=25)
    assert peer.dfget(url, tmp_path / "x", "--no-progress").returncode == 0
    content = peer.data_dir / "content" / "tasks" / task_id(url)[:3] / task_id(url)
    assert stat.S_IMODE(content.stat().st_mode) == 0o600
    for directory in (content.parent, peer.data_dir / "content" / "tasks"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
