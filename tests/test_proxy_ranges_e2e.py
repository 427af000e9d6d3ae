"""The proxy against real nginx origins (plain HTTP, and HTTPS with its own CA): Range
requests fetch only the pieces they need, the X-Dragonfly-* request headers that shape a
P2P answer (Prefetch, Output-Path, Force-Hard-Link, Content-For-Calculating-Task-ID),
and kept-alive upstream connections on the direct route. What the origin served is read
from nginx's access log."""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from d7y.core import ids
from d7y.core.proxy import DEFAULT_FILTERED_QUERY_PARAMS
from d7y.daemons.proxy.tls import LeafCertificates, write_ca
from tests.nginx_origin import NginxOrigin, nginx_binary
from tests.peer_harness import PeerProcess, SchedulerProcess, free_port, peer_config, wait_for

pytestmark = [
    pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl"),
    pytest.mark.skipif(
        nginx_binary() is None and not os.environ.get("D7Y_REQUIRE_TOOLS"), reason="needs nginx"
    ),
]

MiB = 1024 * 1024
PIECE = 4 * MiB  # the piece length of objects under 2 GiB
SIZE = 5 * PIECE - 4321  # five pieces, the last one short
#: Origin bytes that are not content pieces: the probe's answer (a HEAD, or a ranged GET
#: of one byte), per task start.
SLACK = 4096


def blob(n: int) -> str:
    """A path the default rule (blobs/sha256.*) sends P2P; one per test, so that each
    starts with nothing stored."""
    return "v2/lib/app/blobs/sha256:" + f"{n:02x}" * 32


def content(n: int) -> bytes:
    return hashlib.sha256(b"seed %d" % n).digest() * (SIZE // 32 + 1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    proxy_ca, proxy_key = write_ca(root / "proxy", "test proxy CA")
    origin_ca, origin_key = write_ca(root / "origin", "test origin CA")
    leaf = root / "origin-leaf.pem"
    leaf.write_bytes(LeafCertificates(origin_ca, origin_key).leaf_pem("127.0.0.1"))
    leaf.chmod(0o600)
    return {"proxy_ca": proxy_ca, "proxy_key": proxy_key, "origin_ca": origin_ca, "leaf": leaf}


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    for n in range(1, 12):
        path = root / blob(n)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content(n)[:SIZE])
    (root / "small.txt").write_bytes(b"direct route\n" * 100)
    return root


@pytest.fixture(scope="module")
def nginx(tmp_path_factory, www):
    work = tmp_path_factory.mktemp("nginx")
    with NginxOrigin(work, www, f"127.0.0.1:{free_port()}") as origin:
        origin.start("small.txt")
        yield origin


@pytest.fixture(scope="module")
def nginx_tls(tmp_path_factory, www, pki):
    work = tmp_path_factory.mktemp("nginx-tls")
    listen = f"127.0.0.1:{free_port()}"
    with NginxOrigin(work, www, listen, tls_pem=pki["leaf"], ca=pki["origin_ca"]) as origin:
        origin.start("small.txt")
        yield origin


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    return tmp_path_factory.mktemp("outputs")


@pytest.fixture(scope="module")
def peer(tmp_path_factory, pki, outputs):
    proxy = {
        "ca_cert": str(pki["proxy_ca"]),
        "ca_key": str(pki["proxy_key"]),
        "upstream_ca_bundle": str(pki["origin_ca"]),
        "output_dirs": [str(outputs)],
        "upstream_idle_timeout": "2s",
        "read_timeout": "20s",
    }
    with PeerProcess(tmp_path_factory.mktemp("peer"), proxy=proxy) as process:
        yield process


def served(origin: NginxOrigin, name: str) -> int:
    """Body bytes the origin sent for ``name`` so far."""
    return sum(r.body_bytes for r in origin.requests() if f"/{name} " in r.request)


def curl(peer, url: str, out: Path, *args: str) -> tuple[int, dict[str, str], str]:
    headers = out.with_suffix(".headers")
    proc = subprocess.run(
        ["curl", "-sS", "-x", f"http://127.0.0.1:{peer.proxy_port}", "-o", str(out),
         "-D", str(headers), "--max-time", "60", *args, url],
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    parsed: dict[str, str] = {}
    if headers.exists():
        for line in headers.read_text(errors="replace").splitlines():
            if line.startswith("HTTP/"):
                parsed = {":status": line.split()[1]}
            elif ":" in line:
                name, _, value = line.partition(":")
                parsed[name.strip().lower()] = value.strip()
    return proc.returncode, parsed, proc.stderr


def task_of(url: str) -> str:
    return ids.task_id(url, filtered_query_params=DEFAULT_FILTERED_QUERY_PARAMS)


def task_state(peer, task_id: str) -> str | None:
    status, body = peer.api("GET", f"/v1/tasks/{task_id}")
    return body.get("state") if status == 200 else None


# -- Range: only the pieces it needs ---------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_range_fetches_only_its_pieces_and_a_full_request_reuses_them(
    peer, nginx, nginx_tls, pki, tmp_path, scheme
):
    origin, n = (nginx, 1) if scheme == "http" else (nginx_tls, 2)
    name, data = blob(n), content(n)[:SIZE]
    url = origin.url(name)
    tls = ("--cacert", str(pki["proxy_ca"])) if scheme == "https" else ()
    # Bytes inside piece 2 only: one piece from the origin, not the object.
    first, last = 2 * PIECE + 100, 2 * PIECE + 70_000
    code, headers, err = curl(peer, url, tmp_path / "part", *tls, "-r", f"{first}-{last}")
    assert code == 0, err
    assert headers[":status"] == "206"
    assert headers["content-range"] == f"bytes {first}-{last}/{SIZE}"
    assert headers["x-dragonfly-task-id"] == task_of(url)
    assert (tmp_path / "part").read_bytes() == data[first : last + 1]
    after_range = served(origin, name)
    assert PIECE <= after_range <= PIECE + SLACK, after_range

    # A range across pieces 3 and 4 (the short last one): those two, not piece 2 again.
    code, headers, err = curl(peer, url, tmp_path / "tail", *tls, "-r", f"-{PIECE + 10}")
    assert code == 0, err
    assert (tmp_path / "tail").read_bytes() == data[-(PIECE + 10) :]
    after_tail = served(origin, name)
    assert after_tail - after_range <= (SIZE - 3 * PIECE) + SLACK, after_tail - after_range

    # The whole object: the stored pieces are reused, the origin sends only the rest.
    code, headers, err = curl(peer, url, tmp_path / "whole", *tls)
    assert code == 0, err
    assert headers[":status"] == "200"
    assert (tmp_path / "whole").read_bytes() == data
    assert served(origin, name) <= SIZE + 3 * SLACK
    wait_for(lambda: task_state(peer, task_of(url)) == "succeeded", "the task to be whole")


@pytest.mark.skipif(shutil.which("aria2c") is None, reason="needs aria2c")
def test_aria2c_split_ranges_take_each_piece_once(peer, nginx, tmp_path):
    """aria2c splits one blob over 4 connections, each a Range through the proxy: the
    partial downloads share the task, so the origin serves each piece once."""
    name, data = blob(3), content(3)[:SIZE]
    proc = subprocess.run(
        ["aria2c", f"--all-proxy=http://127.0.0.1:{peer.proxy_port}", "-s", "4", "-x", "4",
         "-k", "1M", "--min-split-size=1M", "--allow-overwrite=true",
         "--auto-file-renaming=false", "-d", str(tmp_path), "-o", "out", nginx.url(name)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert (tmp_path / "out").read_bytes() == data
    assert served(nginx, name) <= SIZE + 8 * SLACK
    assert all(r.range != "-" for r in nginx.requests() if f"/{name} " in r.request)


def test_prefetch_fetches_the_rest_in_the_background(peer, nginx, tmp_path):
    name, data = blob(4), content(4)[:SIZE]
    url = nginx.url(name)
    code, headers, err = curl(
        peer, url, tmp_path / "part", "-r", "0-999", "-H", "X-Dragonfly-Prefetch: true"
    )
    assert code == 0, err
    assert headers[":status"] == "206"
    assert (tmp_path / "part").read_bytes() == data[:1000]
    wait_for(lambda: task_state(peer, task_of(url)) == "succeeded", "the prefetch to finish")
    assert SIZE <= served(nginx, name) <= SIZE + 3 * SLACK
    code, headers, err = curl(peer, url, tmp_path / "whole")
    assert code == 0, err
    assert (tmp_path / "whole").read_bytes() == data
    assert served(nginx, name) <= SIZE + 3 * SLACK  # from the task, not the origin

    # Without the header a range stays partial.
    other = nginx.url(blob(5))
    code, _, err = curl(peer, other, tmp_path / "p2", "-r", "0-999")
    assert code == 0, err
    assert task_state(peer, task_of(other)) != "succeeded"
    assert served(nginx, blob(5)) <= PIECE + SLACK
    code, headers, _ = curl(peer, other, tmp_path / "bad", "-r", "0-9", "-H",
                            "X-Dragonfly-Prefetch: maybe")  # fmt: skip
    assert headers[":status"] == "400"
    assert headers["x-dragonfly-error-type"] == "bad_request"


# -- Output path and hard links -----------------------------------------------------------


def test_output_path_links_the_object_and_refuses_unsafe_paths(peer, nginx, outputs, tmp_path):
    name, data = blob(6), content(6)[:SIZE]
    url = nginx.url(name)
    target = outputs / "blob6.bin"
    code, headers, err = curl(
        peer, url, tmp_path / "body", "-H", f"X-Dragonfly-Output-Path: {target}",
        "-H", "X-Dragonfly-Force-Hard-Link: true",
    )  # fmt: skip
    assert code == 0, err
    assert headers[":status"] == "200"
    assert (tmp_path / "body").read_bytes() == data
    assert target.read_bytes() == data
    task_id = headers["x-dragonfly-task-id"]
    stored = peer.data_dir / "content" / "tasks" / task_id[:3] / task_id
    assert os.stat(target).st_ino == os.stat(stored).st_ino  # a hard link, not a copy

    def refused(path: str, *extra: str) -> dict[str, str]:
        code, headers, err = curl(
            peer, url, tmp_path / "refused", "-H", f"X-Dragonfly-Output-Path: {path}", *extra
        )
        assert code == 0, err
        return headers

    outside = tmp_path / "elsewhere.bin"
    headers = refused(str(outside))
    assert headers[":status"] == "403"
    assert headers["x-dragonfly-error-type"] == "output_path"
    assert not outside.exists()
    (outputs / "escape").symlink_to(tmp_path)  # a symlinked directory does not escape
    assert refused(str(outputs / "escape" / "x.bin"))[":status"] == "403"
    assert not (tmp_path / "x.bin").exists()
    assert refused("relative/x.bin")[":status"] == "400"
    headers = refused(str(target))  # exists: never overwritten
    assert headers[":status"] == "400"
    assert target.read_bytes() == data
    assert refused(str(outputs / "r.bin"), "-r", "0-9")[":status"] == "400"
    assert not (outputs / "r.bin").exists()
    code, headers, _ = curl(peer, url, tmp_path / "x", "-H", "X-Dragonfly-Force-Hard-Link: true")
    assert headers[":status"] == "400"  # nothing to link


def test_output_path_is_refused_when_no_directory_is_configured(nginx, tmp_path):
    with PeerProcess(tmp_path, "closed") as closed:
        code, headers, err = curl(
            closed, nginx.url(blob(7)), tmp_path / "body", "-H",
            f"X-Dragonfly-Output-Path: {tmp_path / 'o.bin'}",
        )  # fmt: skip
        assert code == 0, err
        assert headers[":status"] == "403"
        assert "proxy.output_dirs" in (tmp_path / "body").read_text()
        assert not (tmp_path / "o.bin").exists()
    assert served(nginx, blob(7)) == 0


# -- Task ID from the client's content -----------------------------------------------------


def test_content_for_calculating_task_id_shares_one_task_across_urls(peer, nginx, tmp_path):
    """Two URLs of the same object (a mirror, a signed URL), named by the client with
    the same content: one task, whose ID is the SHA-256 of that content."""
    name, data = blob(8), content(8)[:SIZE]
    header = ("-H", "X-Dragonfly-Content-For-Calculating-Task-ID: model/weights@v1")
    expected = hashlib.sha256(b"model/weights@v1").hexdigest()
    code, headers, err = curl(peer, nginx.url(name) + "?mirror=a", tmp_path / "a", *header)
    assert code == 0, err
    assert headers["x-dragonfly-task-id"] == expected
    code, headers, err = curl(peer, nginx.url(name) + "?mirror=b", tmp_path / "b", *header)
    assert code == 0, err
    assert headers["x-dragonfly-task-id"] == expected
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes() == data
    assert served(nginx, name) <= SIZE + SLACK  # the second URL came from the task


# -- Kept-alive upstream connections -------------------------------------------------------


def test_direct_route_reuses_upstream_connections_until_idle(peer, nginx, tmp_path):
    def connections() -> set[int]:
        return {r.connection for r in nginx.requests() if r.request.startswith("GET /small.txt")}

    def get(url: str) -> int:
        """One request on a client connection of its own."""
        client = http.client.HTTPConnection("127.0.0.1", peer.proxy_port, timeout=30)
        try:
            client.request("GET", url)
            answer = client.getresponse()
            assert answer.read() == b"direct route\n" * 100
            return answer.status
        finally:
            client.close()

    opened = peer.metrics().get("d7y_proxy_upstream_connections_total", 0.0)
    url = nginx.url("small.txt")
    # Three client connections, one after the other: one upstream connection.
    assert [get(url) for _ in range(3)] == [200, 200, 200]
    assert len(connections()) == 1
    assert peer.metrics()["d7y_proxy_upstream_connections_total"] == opened + 1
    # Unused for proxy.upstream_idle_timeout: closed, and the next request opens another.
    wait_for(
        lambda: peer.metrics().get("d7y_proxy_upstream_idle_connections", 1) == 0,
        "the idle upstream connection to be closed",
    )
    assert get(url) == 200
    assert len(connections()) == 2


def test_range_through_parents_fetches_only_its_pieces(nginx, tmp_path):
    """In a cluster, a Range's partial download takes its pieces from a parent (a seed
    peer that holds the blob), not the whole task; a later whole request takes only the
    rest."""
    name, data = blob(9), content(9)[:SIZE]
    url = nginx.url(name)
    quiet = {"log": {"level": "info"}}
    with SchedulerProcess(tmp_path, **quiet) as scheduler:
        seed = PeerProcess(tmp_path, "seed", **peer_config(scheduler, "seed", seed=True), **quiet)
        child = PeerProcess(tmp_path, "child", **peer_config(scheduler, "child"), **quiet)
        with seed, child:
            result = seed.dfget(url, tmp_path / "seed.out", "--no-progress")
            assert result.returncode == 0, result.stderr
            from_origin = served(nginx, name)

            def peer_bytes() -> float:
                return child.metrics().get("d7y_peer_download_peer_bytes_total", 0.0)

            first, last = PIECE + 10, PIECE + 20_000  # inside piece 1
            code, headers, err = curl(child, url, tmp_path / "part", "-r", f"{first}-{last}")
            assert code == 0, err
            assert headers[":status"] == "206"
            assert (tmp_path / "part").read_bytes() == data[first : last + 1]
            assert peer_bytes() == PIECE  # one piece from the seed, not five
            assert task_state(child, task_of(url)) != "succeeded"

            code, headers, err = curl(child, url, tmp_path / "whole")
            assert code == 0, err
            assert (tmp_path / "whole").read_bytes() == data
            assert peer_bytes() == SIZE  # the other four pieces, piece 1 reused
            assert child.metrics().get("d7y_peer_download_origin_bytes_total", 0.0) == 0
            assert served(nginx, name) == from_origin


def test_a_damaged_cached_piece_is_fetched_again_not_served(peer, nginx, tmp_path):
    name, data = blob(10), content(10)[:SIZE]
    url = nginx.url(name)
    code, headers, err = curl(peer, url, tmp_path / "whole")
    assert code == 0, err
    task_id = headers["x-dragonfly-task-id"]
    wait_for(lambda: task_state(peer, task_id) == "succeeded", "the blob to be cached")
    before = served(nginx, name)
    stored = peer.data_dir / "content" / "tasks" / task_id[:3] / task_id
    fd = os.open(stored, os.O_WRONLY)
    try:
        os.pwrite(fd, bytes(b ^ 0xFF for b in data[PIECE + 5 : PIECE + 9]), PIECE + 5)
    finally:
        os.close(fd)
    code, headers, err = curl(peer, url, tmp_path / "part", "-r", f"{PIECE}-{PIECE + 99}")
    assert code == 0, err
    assert (tmp_path / "part").read_bytes() == data[PIECE : PIECE + 100]
    assert PIECE <= served(nginx, name) - before <= PIECE + SLACK  # that piece, again
