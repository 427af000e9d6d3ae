"""dfdaemon's proxy with real clients: curl through the forward proxy (http, and https
through a hijacked CONNECT with the proxy's CA), the P2P and direct routes, and faults
(upstream down or cutting its body, clients that leave mid-stream or send garbage)."""

from __future__ import annotations

import hashlib
import re
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from d7y.core import ids
from d7y.core.proxy import DEFAULT_FILTERED_QUERY_PARAMS
from d7y.daemons.proxy.tls import LeafCertificates, write_ca
from tests.origin_server import ThreadedOriginServer, generated_bytes
from tests.peer_harness import PeerProcess, free_port, wait_for

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

SIZE = 9 * 1024 * 1024 + 12345  # three 4 MiB pieces, the last one short
BLOB = "v2/lib/app/blobs/sha256:" + "ab" * 32  # matches the default rule blobs/sha256.*


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The proxy's CA, and the HTTPS origin's own CA (trusted by the proxy upstream)."""
    root = tmp_path_factory.mktemp("pki")
    proxy_cert, proxy_key = write_ca(root / "proxy", "test proxy CA")
    origin_cert, origin_key = write_ca(root / "origin", "test origin CA")
    origin_tls = LeafCertificates(origin_cert, origin_key).context_for("127.0.0.1")
    return {"proxy_ca": proxy_cert, "proxy_key": proxy_key, "origin_ca": origin_cert,
            "origin_tls": origin_tls}  # fmt: skip


@pytest.fixture(scope="module")
def origins(pki):
    tls_origin = ThreadedOriginServer(ssl_context=pki["origin_tls"])
    with ThreadedOriginServer() as plain, tls_origin as tls:
        for server in (plain, tls):
            server.add_file(BLOB, size=SIZE, seed=5)
            server.add_file("plain.bin", size=300_000, seed=6)
        yield plain, tls


@pytest.fixture(scope="module")
def peer(tmp_path_factory, pki):
    proxy = {
        "ca_cert": str(pki["proxy_ca"]),
        "ca_key": str(pki["proxy_key"]),
        "upstream_ca_bundle": str(pki["origin_ca"]),
        "max_header_size": 16384,
        "read_timeout": "20s",
    }
    with PeerProcess(tmp_path_factory.mktemp("proxy"), proxy=proxy) as process:
        yield process


def curl(peer: PeerProcess, url: str, out: Path, *args: str) -> tuple[int, dict[str, str], str]:
    """curl through the peer's proxy; (exit code, response headers lower-cased, stderr)."""
    headers = out.with_suffix(".headers")
    proc = subprocess.run(
        ["curl", "-sS", "-x", f"http://127.0.0.1:{peer.proxy_port}", "-o", str(out),
         "-D", str(headers), "--max-time", "60", *args, url],
        capture_output=True,
        text=True,
        timeout=90,
    )  # fmt: skip
    parsed: dict[str, str] = {}
    if headers.exists():
        for line in headers.read_text(errors="replace").splitlines():
            if line.startswith("HTTP/"):
                parsed = {":status": line.split()[1]}  # the last answer's (after CONNECT)
            elif ":" in line:
                name, _, value = line.partition(":")
                parsed[name.strip().lower()] = value.strip()
    return proc.returncode, parsed, proc.stderr


def task_state(peer: PeerProcess, task_id: str) -> dict:
    status, body = peer.api("GET", f"/v1/tasks/{task_id}")
    assert status == 200, body
    return body


def metric(peer: PeerProcess, name: str) -> float:
    return peer.metrics().get(name, 0.0)


def test_curl_http_blob_goes_p2p_and_serves_ranges(peer, origins, tmp_path):
    plain, _ = origins
    url = plain.url(BLOB)
    code, headers, err = curl(peer, url, tmp_path / "blob")
    assert code == 0, err
    assert headers[":status"] == "200"
    assert (tmp_path / "blob").read_bytes() == generated_bytes(SIZE, 5)
    task_id = headers["x-dragonfly-task-id"]
    assert task_state(peer, task_id)["state"] == "succeeded"
    assert metric(peer, 'd7y_proxy_requests_total{route="p2p"}') >= 1
    fetched = plain.stats(BLOB)["bytes_sent"]

    # A range across a piece boundary, served from the task: the origin sends nothing more.
    first, last = 4 * 1024 * 1024 - 100, 8 * 1024 * 1024 + 99
    code, headers, err = curl(peer, url, tmp_path / "part", "-r", f"{first}-{last}")
    assert code == 0, err
    assert headers[":status"] == "206"
    assert headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert headers["x-dragonfly-task-id"] == task_id
    expected = generated_bytes(SIZE, 5, offset=first, length=last - first + 1)
    assert (tmp_path / "part").read_bytes() == expected
    assert plain.stats(BLOB)["bytes_sent"] == fetched

    code, headers, _ = curl(peer, url, tmp_path / "none", "-r", f"{SIZE + 10}-")
    assert headers[":status"] == "416"
    assert headers["x-dragonfly-error-type"] == "range"


def test_curl_https_through_hijacked_connect(peer, origins, pki, tmp_path):
    _, tls = origins
    url = tls.url(BLOB)
    assert url.startswith("https://127.0.0.1:")
    cacert = ("--cacert", str(pki["proxy_ca"]))
    code, headers, err = curl(peer, url, tmp_path / "blob", *cacert)
    assert code == 0, err
    assert (tmp_path / "blob").read_bytes() == generated_bytes(SIZE, 5)
    task_id = headers["x-dragonfly-task-id"]
    assert task_state(peer, task_id)["state"] == "succeeded"
    assert metric(peer, "d7y_proxy_certificates_issued_total") >= 1

    code, headers, err = curl(peer, url, tmp_path / "part", *cacert, "-r", "-1000")
    assert code == 0, err
    assert headers[":status"] == "206"
    assert (tmp_path / "part").read_bytes() == generated_bytes(SIZE, 5, offset=SIZE - 1000)

    # Not a blob: direct, through the same tunnel, verified against the origin's CA.
    code, headers, err = curl(peer, tls.url("plain.bin"), tmp_path / "plain", *cacert)
    assert code == 0, err
    assert "x-dragonfly-task-id" not in headers
    assert (tmp_path / "plain").read_bytes() == generated_bytes(300_000, 6)
    # ... unless the client asks for P2P.
    p2p = ("-H", "X-Dragonfly-Use-P2P: true", "-H", "X-Dragonfly-Tag: t1")
    code, headers, err = curl(peer, tls.url("plain.bin"), tmp_path / "p2p", *cacert, *p2p)
    assert code == 0, err
    assert headers["x-dragonfly-task-id"] == ids.task_id(
        tls.url("plain.bin"), tag="t1", filtered_query_params=DEFAULT_FILTERED_QUERY_PARAMS
    )
    assert (tmp_path / "p2p").read_bytes() == generated_bytes(300_000, 6)

    # A client that does not trust the proxy's CA refuses the hijacked tunnel.
    code, _, err = curl(peer, url, tmp_path / "untrusted")
    assert code == 60, err  # curl: peer certificate cannot be authenticated


class RawUpstream:
    """A one-connection-at-a-time HTTP upstream answering a scripted byte string and
    recording each request head as received (repeated headers and all)."""

    def __init__(self, answer: bytes | Callable[[bytes], bytes]) -> None:
        self.answer = answer
        self.heads: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                head = data.split(b"\r\n\r\n")[0]
                self.heads.append(head)
                conn.sendall(self.answer(head) if callable(self.answer) else self.answer)

    def close(self) -> None:
        self.sock.close()


def test_direct_route_streams_and_keeps_repeated_headers(peer, tmp_path):
    body = b"x" * 5000
    upstream = RawUpstream(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-Up: 1\r\n\r\n%s" % (len(body), body)
    )
    try:
        url = f"http://127.0.0.1:{upstream.port}/v2/lib/app/manifests/1"
        code, headers, err = curl(
            peer, url, tmp_path / "manifest", "-H", "Accept: application/a", "-H",
            "Accept: application/b", "-H", "X-Dragonfly-Tag: t",
        )  # fmt: skip
        assert code == 0, err
        assert (tmp_path / "manifest").read_bytes() == body
        assert headers["x-up"] == "1" and "x-dragonfly-task-id" not in headers
        head = upstream.heads[-1].lower()
        assert head.startswith(b"get /v2/lib/app/manifests/1 http/1.1")
        assert b"accept: application/a\r\n" in head and b"accept: application/b" in head
        assert b"x-dragonfly-tag" not in head and b"proxy-connection" not in head
    finally:
        upstream.close()


def test_registry_auth_passes_through(peer, tmp_path):
    """A token-protected registry: its 401 challenge reaches the client unchanged, and
    the client's Authorization reaches the registry on the P2P task's fetches."""
    challenge = b'Bearer realm="http://127.0.0.1:9/token",service="reg",scope="repository:x:pull"'
    body = bytes(range(256)) * 1000

    def answer(head: bytes) -> bytes:
        if b"\r\nauthorization: bearer secret-token" in head.lower():
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
                len(body),
                body,
            )
        return (
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: %s\r\nContent-Length: 2\r\n"
            b"Connection: close\r\n\r\n{}" % challenge
        )

    upstream = RawUpstream(answer)
    try:
        url = f"http://127.0.0.1:{upstream.port}/v2/x/blobs/sha256:" + "ef" * 32
        code, headers, err = curl(peer, url, tmp_path / "denied")
        assert code == 0, err
        assert headers[":status"] == "401"
        assert headers["www-authenticate"] == challenge.decode()
        token = ("-H", "Authorization: Bearer secret-token")
        code, headers, err = curl(peer, url, tmp_path / "blob", *token)
        assert code == 0, err
        assert headers[":status"] == "200" and "x-dragonfly-task-id" in headers
        assert (tmp_path / "blob").read_bytes() == body
        assert b"authorization: bearer secret-token" in upstream.heads[-1].lower()
    finally:
        upstream.close()


def test_upstream_down_gives_502_with_error_type(peer, tmp_path):
    closed = free_port()
    # P2P route (a blob) and direct route: both a clear 502 naming what failed.
    _, headers, _ = curl(peer, f"http://127.0.0.1:{closed}/{BLOB}", tmp_path / "a")
    assert headers[":status"] == "502", headers
    assert headers["x-dragonfly-error-type"] == "origin"
    assert "x-dragonfly-task-id" in headers
    _, headers, _ = curl(peer, f"http://127.0.0.1:{closed}/other", tmp_path / "b")
    assert headers[":status"] == "502"
    assert headers["x-dragonfly-error-type"] == "upstream_connect"
    assert f"127.0.0.1:{closed}" in (tmp_path / "b").read_text()
    # The registry-mirror form (as containerd sends it): the same 502, and the failed
    # task left nothing behind that a later request could take for the blob.
    answer = _raw_exchange(
        peer,
        f"GET /{BLOB}?ns=x HTTP/1.1\r\nHost: a\r\n"
        f"X-Dragonfly-Registry: http://127.0.0.1:{closed}\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 502 Bad Gateway"), answer[:300]
    assert b"x-dragonfly-error-type: origin" in answer.lower()
    task_id = re.search(rb"x-dragonfly-task-id: (\w+)", answer.lower()).group(1).decode()
    status, body = peer.api("GET", f"/v1/tasks/{task_id}")
    assert status == 404 or body["state"] == "failed", body


def test_connect_to_a_refusing_port(peer, pki, tmp_path):
    closed = free_port()
    code, headers, err = curl(
        peer, f"https://127.0.0.1:{closed}/x", tmp_path / "c", "--cacert", str(pki["proxy_ca"])
    )
    assert code == 0, err  # the tunnel is hijacked: the error is an HTTP answer inside it
    assert headers[":status"] == "502"
    assert headers["x-dragonfly-error-type"] == "upstream_connect"


def test_upstream_cutting_its_body_cuts_the_client(peer, tmp_path):
    upstream = RawUpstream(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"y" * 1000)
    try:
        code, _, _ = curl(peer, f"http://127.0.0.1:{upstream.port}/cut", tmp_path / "cut")
        assert code == 18  # curl: partial file, the client can tell
        assert (tmp_path / "cut").read_bytes() == b"y" * 1000
    finally:
        upstream.close()
    wait_for(lambda: metric(peer, 'd7y_proxy_errors_total{type="upstream_cut"}') >= 1, "count")
    assert peer.healthy()


def _raw_exchange(peer: PeerProcess, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", peer.proxy_port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


def test_malformed_and_oversized_requests(peer):
    answer = _raw_exchange(peer, b"GARBAGE\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert b"x-dragonfly-error-type: bad_request" in answer.lower()
    huge = b"GET http://127.0.0.1:1/x HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"
    answer = _raw_exchange(peer, huge)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    bad_priority = b"GET /x HTTP/1.1\r\nHost: a\r\nX-Dragonfly-Priority: high\r\n\r\n"
    answer = _raw_exchange(peer, bad_priority)
    assert answer.startswith(b"HTTP/1.1 400") and b"X-Dragonfly-Priority" in answer
    # Refusals of HEAD requests carry no body; "head" is another method (methods are
    # case-sensitive) and its refusal does (both crashed the connection: the fuzzer).
    for method, body in ((b"HEAD", False), (b"head", True)):
        for target in (b"http://127.0.0.1:1x/x", b"/x"):
            request = method + b" " + target + b" HTTP/1.1\r\nHost: a\r\n"
            answer = _raw_exchange(peer, request + b"X-Dragonfly-Use-P2P: maybe\r\n\r\n")
            assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
            assert answer.endswith(b"\r\n\r\n") != body, answer[-200:]
    assert "Traceback" not in peer.log()
    assert peer.healthy()


def _read_some(peer: PeerProcess, request: bytes, at_least: int) -> None:
    """Send ``request``, read ``at_least`` bytes of the answer, hang up."""
    with socket.create_connection(("127.0.0.1", peer.proxy_port), timeout=30) as s:
        s.sendall(request)
        received = 0
        while received < at_least:
            chunk = s.recv(65536)
            assert chunk
            received += len(chunk)


def test_clients_leaving_mid_request_leak_nothing(peer, origins):
    plain, _ = origins
    name = BLOB.replace("ab", "cd")
    plain.add_file(name, size=SIZE, seed=9)
    url = plain.url(name)
    task_id = ids.task_id(url, filtered_query_params=DEFAULT_FILTERED_QUERY_PARAMS)
    request = f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    # 1. The origin holds every piece (the probe passes): the client waits for the first
    #    byte, and hangs up while the task is running.
    plain.set_faults(name, hold={"count": -1, "skip": 1})
    with socket.create_connection(("127.0.0.1", peer.proxy_port), timeout=30) as s:
        s.sendall(request)
        wait_for(lambda: peer.api("GET", f"/v1/tasks/{task_id}")[0] == 200, "the task to run")
    plain.set_faults(name, hold=None)
    # The task goes on without its reader and finishes; the request ends when the proxy
    # finds its client gone.
    wait_for(lambda: task_state(peer, task_id)["state"] == "succeeded", "the task to finish")
    wait_for(lambda: metric(peer, "d7y_proxy_active_requests") == 0, "the request to end")
    # 2. Mid-body: read a megabyte of the stored task, hang up.
    _read_some(peer, request, 1024 * 1024)
    wait_for(lambda: metric(peer, "d7y_proxy_active_requests") == 0, "the request to end")
    # 3. The daemon serves the next client whole.
    with socket.create_connection(("127.0.0.1", peer.proxy_port), timeout=60) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
            if len(data.partition(b"\r\n\r\n")[2]) >= SIZE:
                break
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(generated_bytes(SIZE, 9)).hexdigest()


def test_basic_auth_and_rate_limit(tmp_path, origins, pki):
    auth = {"basic_auth": {"username": "u", "password": "p w"}}
    with PeerProcess(tmp_path, "auth", proxy=auth) as peer:
        upstream = RawUpstream(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
        )
        try:
            url = f"http://127.0.0.1:{upstream.port}/file"
            _, headers, _ = curl(peer, url, tmp_path / "denied")
            assert headers[":status"] == "407"
            assert headers["proxy-authenticate"] == 'Basic realm="d7y proxy"'
            assert headers["x-dragonfly-error-type"] == "proxy_auth"
            _, headers, _ = curl(peer, url, tmp_path / "wrong", "-U", "u:nope")
            assert headers[":status"] == "407"
            code, headers, err = curl(peer, url, tmp_path / "ok", "-U", "u:p w")
            assert code == 0 and headers[":status"] == "200", err
            assert (tmp_path / "ok").read_bytes() == b"ok"
            assert not any(b"proxy-authorization" in h.lower() for h in upstream.heads)
            # Without a CA configured, CONNECT is a plain tunnel: TLS end to end with the
            # origin (its own certificate), nothing P2P.
            _, tls = origins
            cacert = ("--cacert", str(pki["origin_ca"]))
            code, headers, err = curl(
                peer, tls.url("plain.bin"), tmp_path / "t", *cacert, "-U", "u:p w"
            )
            assert code == 0, err
            assert (tmp_path / "t").read_bytes() == generated_bytes(300_000, 6)
            assert peer.metrics()['d7y_proxy_requests_total{route="connect"}'] == 1
        finally:
            upstream.close()
    # One request per ~3 hours: the first passes, the next is refused at once.
    # (The mirror address is a closed loopback port: the test never leaves this machine.)
    limited = {"rate_limit": 0.0001, "registry_mirror": {"addr": f"http://127.0.0.1:{free_port()}"}}
    with PeerProcess(tmp_path, "limited", proxy=limited) as peer:
        first = _raw_exchange(peer, b"GET /v2/ HTTP/1.1\r\nHost: a\r\n\r\n")
        assert first.startswith(b"HTTP/1.1 502"), first[:100]
        second = _raw_exchange(peer, b"GET /v2/ HTTP/1.1\r\nHost: a\r\n\r\n")
        assert second.startswith(b"HTTP/1.1 429"), second[:100]
        assert b"retry-after: 1" in second.lower()
        assert b"x-dragonfly-error-type: rate_limited" in second.lower()


@pytest.mark.skipif(shutil.which("aria2c") is None, reason="needs aria2c")
@pytest.mark.parametrize("scheme", ["http", "https"])
def test_aria2c_split_download_through_the_proxy(peer, origins, pki, tmp_path, scheme):
    """aria2c fetches one blob over 4 connections at once, each a Range through the proxy
    (https: through hijacked CONNECT tunnels); the pieces come from one P2P task."""
    plain, tls = origins
    name = BLOB.replace("ab", "a2" if scheme == "http" else "a3")
    server = plain if scheme == "http" else tls
    server.add_file(name, size=SIZE, seed=11)
    proc = subprocess.run(
        ["aria2c", f"--all-proxy=http://127.0.0.1:{peer.proxy_port}", "-s", "4", "-x", "4",
         "-k", "1M", "--min-split-size=1M", f"--ca-certificate={pki['proxy_ca']}",
         "--allow-overwrite=true", "--auto-file-renaming=false", "-d", str(tmp_path),
         "-o", "out", server.url(name)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert (tmp_path / "out").read_bytes() == generated_bytes(SIZE, 11)
    task_id = ids.task_id(server.url(name), filtered_query_params=DEFAULT_FILTERED_QUERY_PARAMS)
    # Each range is a partial download of the task; the one that lands the last piece
    # records it whole, a moment after its bytes went out.
    wait_for(lambda: task_state(peer, task_id)["state"] == "succeeded", "the task to be whole")
    # The origin served the object about once (the task's piece fetches), not per range.
    assert server.stats(name)["bytes_sent"] <= SIZE + 1024
