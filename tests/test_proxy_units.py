"""The proxy's decisions (d7y.core.proxy), its config section and its certificates."""

from __future__ import annotations

import json
import ssl

import pytest

from d7y.core import proxy as routing
from d7y.daemons.config import ConfigError
from d7y.daemons.peer.config import load_peer_config
from d7y.daemons.proxy.tls import CAError, LeafCertificates, write_ca

RULES = [routing.Rule(regex=routing.DEFAULT_RULE_REGEX)]
MIRROR = "https://mirror.example"


def url_for(target: str, headers=(), tunnel=None, plain=()) -> str:
    return routing.upstream_url(
        target,
        list(headers),
        tunnel_authority=tunnel,
        mirror_addr=MIRROR,
        plain_http_registries=plain,
    )


def test_upstream_of_each_request_form():
    assert url_for("http://o.example/a?b=1") == "http://o.example/a?b=1"
    # Registry mirror: the header, then ns, then the configured address.
    header = [(b"X-Dragonfly-Registry", b"http://127.0.0.1:5000")]
    assert url_for("/v2/x/manifests/1?ns=r.example", header) == (
        "http://127.0.0.1:5000/v2/x/manifests/1"
    )
    assert url_for("/v2/x/manifests/1?ns=r.example&a=1") == "https://r.example/v2/x/manifests/1?a=1"
    assert url_for("/v2/x?ns=docker.io") == "https://registry-1.docker.io/v2/x"
    assert url_for("/v2/x?ns=127.0.0.1:5000", plain=["127.0.0.1:5000"]) == (
        "http://127.0.0.1:5000/v2/x"
    )
    assert url_for("/v2/") == "https://mirror.example/v2/"
    # Inside a hijacked tunnel: https to the tunnel's host.
    assert url_for("/a", [(b"host", b"other.example")], tunnel="h.example") == "https://h.example/a"
    assert url_for("/a", [], tunnel="h.example:8443") == "https://h.example:8443/a"
    for authority in ("h.example", "h.example:8443", "[::1]:8443", "10.0.0.1:443"):
        host, port = routing.split_authority(authority, 443)
        tunnel = routing.join_authority(host, port, 443)
        assert tunnel == authority.removesuffix(":443")
        assert url_for("/a", [], tunnel=tunnel) == f"https://{tunnel}/a"
    with pytest.raises(routing.ProxyRequestError, match="neither a path"):
        url_for("*")
    with pytest.raises(routing.ProxyRequestError, match="not an http"):
        url_for("/v2/", [(b"x-dragonfly-registry", b"ftp://r")])


def test_rules_decide_p2p_for_gets_only():
    none = routing.DragonflyOptions()
    blob = "https://r.example/v2/x/blobs/sha256:abc?X-Amz-Signature=s"
    assert routing.route("GET", blob, none, RULES).p2p
    assert not routing.route("HEAD", blob, none, RULES).p2p
    assert not routing.route("GET", "https://r.example/v2/x/manifests/1", none, RULES).p2p
    # The regex sees the URL without its query.
    assert not routing.route("GET", "https://r.example/a?x=blobs/sha256:1", none, RULES).p2p
    use_p2p = routing.DragonflyOptions(use_p2p=True)
    assert routing.route("GET", "https://r.example/file", use_p2p, RULES).p2p
    assert not routing.route("PUT", "https://r.example/file", use_p2p, RULES).p2p
    redirect = routing.Rule(regex="files/", use_tls=True, redirect="cdn.example:8443")
    chosen = routing.route("GET", "http://o.example/files/a?q=1", none, [redirect])
    assert chosen.url == "https://cdn.example:8443/files/a?q=1" and chosen.rule is redirect


def test_dragonfly_headers_and_filtered_params():
    options = routing.parse_dragonfly_headers(
        [
            (b"X-Dragonfly-Tag", b"t"),
            (b"X-Dragonfly-Application", b"app"),
            (b"X-Dragonfly-Priority", b"3"),
            (b"X-Dragonfly-Piece-Length", b"8388608"),
            (b"X-Dragonfly-Filtered-Query-Params", b"a, b"),
            (b"X-Dragonfly-Use-P2P", b"true"),
        ]
    )
    assert options == routing.DragonflyOptions(
        tag="t",
        application="app",
        priority=3,
        filtered_query_params=("a", "b"),
        piece_length=8388608,
        use_p2p=True,
    )
    assert routing.filtered_query_params(options, None, ["z"]) == ["a", "b"]
    rule = routing.Rule(regex="x", filtered_query_params=("r",))
    assert routing.filtered_query_params(routing.DragonflyOptions(), rule, ["z"]) == ["r"]
    assert routing.filtered_query_params(routing.DragonflyOptions(), None, ["z"]) == ["z"]
    assert "ns" in routing.DEFAULT_FILTERED_QUERY_PARAMS
    assert "X-Amz-Signature" in routing.DEFAULT_FILTERED_QUERY_PARAMS
    for name, value in ((b"x-dragonfly-priority", b"high"), (b"x-dragonfly-use-p2p", b"yes")):
        with pytest.raises(routing.ProxyRequestError, match=value.decode()):
            routing.parse_dragonfly_headers([(name, value)])


def test_forwarded_headers_keep_repeats_and_drop_hop_by_hop():
    headers = [
        (b"Accept", b"application/a"),
        (b"Accept", b"application/b"),
        (b"Connection", b"keep-alive, X-Secret"),
        (b"X-Secret", b"1"),
        (b"Proxy-Authorization", b"Basic x"),
        (b"X-Dragonfly-Tag", b"t"),
        (b"Authorization", b"Bearer tok"),
        (b"Range", b"bytes=0-1"),
    ]
    assert routing.forwardable(headers) == [
        (b"Accept", b"application/a"),
        (b"Accept", b"application/b"),
        (b"Authorization", b"Bearer tok"),
        (b"Range", b"bytes=0-1"),
    ]
    assert routing.task_headers(headers) == {
        "Accept": "application/a, application/b",
        "Authorization": "Bearer tok",
    }


def test_proxy_config_rules_and_errors(tmp_path):
    path = tmp_path / "d.yaml"
    path.write_text(
        "proxy:\n  rules:\n    - {regex: 'layers/.*', use_tls: true}\n    - regex: 'models/'\n"
        "      filtered_query_params: [sig]\n"
    )
    config = load_peer_config(path, env={})
    rules = config.proxy.compiled_rules()
    assert [r.regex for r in rules] == ["layers/.*", "models/"]
    assert rules[0].use_tls and rules[1].filtered_query_params == ("sig",)
    assert load_peer_config(None, env={}).proxy.compiled_rules()[0].regex == "blobs/sha256.*"
    path.write_text("proxy:\n  rules:\n    - {regex: '('}\n")
    with pytest.raises(ConfigError, match=r"proxy\.rules\[0\]\.regex"):
        load_peer_config(path, env={})
    path.write_text("proxy:\n  rules:\n    - {regx: 'a'}\n")
    with pytest.raises(ConfigError, match=r"proxy\.rules\[0\]\.regx.*did you mean"):
        load_peer_config(path, env={})
    path.write_text(f"proxy: {{ca_cert: {path}}}\n")
    with pytest.raises(ConfigError, match="go together"):
        load_peer_config(path, env={})


def test_ca_init_and_leaf_certificates(tmp_path):
    cert, key = write_ca(tmp_path / "ca")
    assert (key.stat().st_mode & 0o777) == 0o600
    with pytest.raises(CAError, match="exists already"):
        write_ca(tmp_path / "ca")
    issued = []
    leaves = LeafCertificates(cert, key, on_issue=lambda: issued.append(1))
    context = leaves.context_for("registry.example")
    assert leaves.context_for("REGISTRY.example") is context and len(issued) == 1
    leaves.context_for("127.0.0.1")
    assert len(issued) == 2
    assert isinstance(context, ssl.SSLContext)
    other_cert, _ = write_ca(tmp_path / "other")
    with pytest.raises(CAError, match="does not belong"):
        LeafCertificates(other_cert, key)
    with pytest.raises(CAError, match="not a PEM certificate"):
        LeafCertificates(key, key)


def test_d7y_init_writes_backs_up_and_is_idempotent(tmp_path, capsys):
    from d7y.daemons.runtime_init import main

    hosts = tmp_path / "certs.d"
    args = ["containerd", "--hosts-dir", str(hosts), "--registry", "http://127.0.0.1:5000"]
    assert main([*args, "--dry-run"]) == 0
    assert '+server = "http://127.0.0.1:5000"' in capsys.readouterr().out
    assert not hosts.exists()  # a dry run writes nothing
    assert main(args) == 0
    written = (hosts / "127.0.0.1:5000" / "hosts.toml").read_text()
    assert '[host."http://127.0.0.1:4001"]' in written
    assert 'X-Dragonfly-Registry = ["http://127.0.0.1:5000"]' in written
    capsys.readouterr()
    assert main(args) == 0
    assert "unchanged" in capsys.readouterr().out
    assert main([*args, "--proxy", "127.0.0.1:4999"]) == 0
    assert (hosts / "127.0.0.1:5000" / "hosts.toml.d7y-backup").read_text() == written

    docker = tmp_path / "daemon.json"
    docker.write_text('{"debug": true, "registry-mirrors": ["https://m.example"]}')
    assert main(["docker", "--docker-config", str(docker)]) == 0
    merged = json.loads(docker.read_text())
    assert merged == {
        "debug": True,
        "registry-mirrors": ["http://127.0.0.1:4001", "https://m.example"],
    }
    assert main(["podman", "--registries-conf", str(tmp_path / "r.conf"),
                 "--registry", "a.example", "--registry", "b.example"]) == 1  # fmt: skip
    assert "one --registry" in capsys.readouterr().err


def test_prefetch_output_path_and_content_headers():
    options = routing.parse_dragonfly_headers(
        [
            (b"X-Dragonfly-Prefetch", b"TRUE"),
            (b"X-Dragonfly-Output-Path", b"/data/out/../blob.bin"),
            (b"X-Dragonfly-Force-Hard-Link", b"true"),
            (b"X-Dragonfly-Content-For-Calculating-Task-ID", b"weights@v1"),
        ]
    )
    assert options.prefetch is True
    assert options.output_path == "/data/blob.bin"
    assert options.force_hard_link is True
    assert options.content_for_task_id == "weights@v1"
    assert routing.parse_dragonfly_headers([]).prefetch is None  # the config decides
    bad = [
        [(b"x-dragonfly-prefetch", b"1")],
        [(b"x-dragonfly-output-path", b"relative/x")],
        [(b"x-dragonfly-output-path", b"/dir/")],
        [(b"x-dragonfly-force-hard-link", b"true")],  # nothing to link
        [(b"x-dragonfly-force-hard-link", b"yes"), (b"x-dragonfly-output-path", b"/a")],
    ]
    for headers in bad:
        with pytest.raises(routing.ProxyRequestError, match="X-Dragonfly-"):
            routing.parse_dragonfly_headers(headers)


def test_content_task_id_is_the_sha256_of_the_content():
    import hashlib

    from d7y.core.ids import content_task_id
    from d7y.daemons.peer.task import DownloadRequest

    expected = hashlib.sha256(b"This is a test file").hexdigest()
    assert content_task_id("This is a test file") == expected
    # Dragonfly's own test vector for TaskIDParameter::Content.
    assert expected == "e2d0fe1585a63ec6009c8016ff8dda8b17719a637405a4e23c0ff81339148249"
    a = DownloadRequest(url="http://a/x", content_for_task_id="c", tag="t")
    b = DownloadRequest(url="http://b/y", content_for_task_id="c")
    assert a.task_id() == b.task_id() == content_task_id("c")
    assert DownloadRequest(url="http://a/x").task_id() != a.task_id()
    with pytest.raises(ValueError, match="non-empty"):
        content_task_id("")


def test_upstream_allowlist():
    anyone = routing.UpstreamAllowlist([])
    assert not anyone and anyone.allows("169.254.169.254") and anyone.allows("x.example")
    guard = routing.UpstreamAllowlist(["127.0.0.0/8", "::1/128", "registry.local", "*.corp.io"])
    for host in ("127.0.0.1", "[::1]", "::ffff:127.0.0.1", "registry.local", "a.b.corp.io"):
        assert guard.allows(host), host
    for host in ("169.254.169.254", "10.0.0.1", "localhost", "corp.io", "xcorp.io", "::2"):
        assert not guard.allows(host), host
    with pytest.raises(ValueError, match="neither a CIDR"):
        routing.UpstreamAllowlist(["not a host!"])


def test_proxy_config_new_keys_are_checked(tmp_path):
    path = tmp_path / "c.yaml"
    for proxy, message in (
        ({"upstream_allow": ["bad host!"]}, "proxy.upstream_allow"),
        ({"output_dirs": ["relative"]}, "proxy.output_dirs"),
        ({"output_dirs": [str(tmp_path / "missing")]}, "proxy.output_dirs"),
        ({"upstream_max_idle": -1}, "proxy.upstream_max_idle"),
    ):
        path.write_text(json.dumps({"proxy": proxy}))
        with pytest.raises(ConfigError, match=message):
            load_peer_config(path)


def test_upstream_pool_bounds_and_drops_closed_connections():
    import asyncio
    import socket

    from d7y.daemons.proxy.pool import UpstreamPool

    class Conn:
        def __init__(self) -> None:
            self.sock, self.peer = socket.socketpair()
            self.closed = False

        def close(self) -> None:
            self.closed = True
            self.sock.close()

    async def scenario() -> None:
        pool = UpstreamPool(max_idle_per_host=2, max_idle=3, idle_timeout=30)
        a, b, c = Conn(), Conn(), Conn()
        key = ("http", "h", 80)
        for conn in (a, b, c):
            pool.give(key, conn)
        assert len(pool) == 2 and a.closed  # per host: the oldest went
        other = [Conn(), Conn()]
        for conn in other:
            pool.give(("http", "o", 80), conn)
        assert len(pool) == 3 and b.closed  # in all: the oldest went
        assert pool.take(key) is c  # the newest first
        pool.give(key, c)
        c.peer.close()  # the upstream closed it while parked
        assert pool.take(key) is None and c.closed
        quick = UpstreamPool(max_idle_per_host=2, max_idle=3, idle_timeout=0.01)
        d = Conn()
        quick.give(key, d)
        while len(quick):  # the idle timer closes it (an event on the loop)
            await asyncio.sleep(0.01)
        assert d.closed
        off = UpstreamPool(max_idle_per_host=0, max_idle=3, idle_timeout=30)
        e = Conn()
        off.give(key, e)
        assert e.closed and len(off) == 0
        pool.close()
        assert all(conn.closed for conn in other)

    asyncio.run(scenario())


def test_output_writer_checks_paths(tmp_path):
    from d7y.daemons.proxy.output import OutputPathError, OutputWriter

    allowed = tmp_path / "out"
    allowed.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    content = data / "content"
    content.write_bytes(b"x" * 1000)
    writer = OutputWriter([allowed], data)
    target = writer.check(str(allowed / "a.bin"), force_hard_link=True)
    assert writer.write(content, target, force_hard_link=True) == "hard link"
    assert target.stat().st_ino == content.stat().st_ino
    for path, status in (
        (str(tmp_path / "b.bin"), 403),
        (str(allowed / "a.bin"), 400),  # exists
        (str(allowed / "no" / "c.bin"), 400),  # no such directory
    ):
        with pytest.raises(OutputPathError) as info:
            writer.check(path, force_hard_link=False)
        assert info.value.status == status, path
    with pytest.raises(OutputPathError) as info:
        OutputWriter([], data).check(str(allowed / "d.bin"), force_hard_link=False)
    assert info.value.status == 403 and "proxy.output_dirs" in str(info.value)
