"""Mutual TLS between services (issue 13): the stream layer's TLS form, the CA made by
``d7y certs``, refusal of certificates from another CA, and host IDs bound to the
certificate's identity. The stream tests run in process; the rest against real
``d7y scheduler`` and ``dfdaemon`` processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import subprocess
import sys
import zlib
from pathlib import Path

import psutil
import pytest

from d7y.core.messages import AnnounceHost, Error, GetPiece, Hello, Piece, Ping, Pong
from d7y.core.protocol import encode_frame
from d7y.daemons import certs
from d7y.daemons.framing import FramedStream
from d7y.daemons.listener import Listener
from d7y.daemons.tls import TLSConfig, certificate_identity, client_context, server_context
from tests import frames
from tests.peer_harness import PeerProcess, SchedulerProcess, peer_config, wait_for

ALICE = "127.0.0.1-alice"
BOB = "127.0.0.1-bob"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Path:
    """The cluster's CA with a scheduler and two peers, and a rogue CA that issued a
    certificate with alice's very identity."""
    root = tmp_path_factory.mktemp("pki")
    result = subprocess.run(
        [sys.executable, "-m", "d7y.daemons.cli", "certs", "init", str(root / "cluster"),
         "--scheduler", "scheduler", "--peer", ALICE, "--peer", BOB],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    rogue = certs.create_ca(root / "rogue")
    certs.issue(root / "rogue", ALICE, "peer", rogue)
    return root


def tls_config(pki: Path, name: str, ca: str = "cluster") -> TLSConfig:
    """``name``'s certificate from ``ca``, trusting the cluster's CA."""
    return TLSConfig(
        enabled=True,
        ca_cert=pki / "cluster" / "ca.crt",
        cert=pki / ca / f"{name}.crt",
        key=pki / ca / f"{name}.key",
    )


def security(pki: Path, name: str, ca: str = "cluster") -> dict:
    cfg = tls_config(pki, name, ca)
    return {"tls": {"enabled": True, "ca_cert": str(cfg.ca_cert), "cert": str(cfg.cert),
                    "key": str(cfg.key)}}  # fmt: skip


def test_certs_init_writes_a_ca_and_certificates_named_for_their_hosts(pki):
    cluster = pki / "cluster"
    assert certificate_identity(cluster / f"{ALICE}.crt") == (ALICE, "peer")
    assert certificate_identity(cluster / "scheduler.crt") == ("scheduler", "scheduler")
    assert (cluster / "ca.key").stat().st_mode & 0o077 == 0  # private keys: owner only
    assert (cluster / f"{BOB}.key").stat().st_mode & 0o077 == 0
    again = subprocess.run(
        [sys.executable, "-m", "d7y.daemons.cli", "certs", "init", str(cluster)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert again.returncode == 2 and "d7y certs issue" in again.stderr  # never overwrites a CA


# --- the stream layer, in process -------------------------------------------------------


def test_a_tls_stream_carries_frames_and_piece_payloads(pki, tmp_path):
    """Frames both ways and a multi-chunk piece sent from a file by the TLS copy path;
    the payload arrives intact and the server sees the client's certificate identity."""
    content = os.urandom(5 * 1024 * 1024 + 3)
    path = tmp_path / "content"
    path.write_bytes(content)
    seen = []

    async def serve(stream, _address):
        seen.append(stream.peer_identity)
        framed = FramedStream(stream)
        try:
            while True:
                stream_id, message = await framed.read()
                if isinstance(message, Ping):
                    await framed.send(Pong(nonce=message.nonce), stream_id)
                    continue
                header = Piece(task_id="t" * 64, number=0, offset=0, length=len(content),
                               digest=f"crc32:{zlib.crc32(content)}")  # fmt: skip
                await framed.send(header, stream_id)
                fd = os.open(path, os.O_RDONLY)
                try:
                    await stream.send_file(fd, 0, len(content))
                finally:
                    os.close(fd)
        except EOFError:
            pass
        finally:
            framed.close()

    async def main():
        listener = Listener(serve, tls=server_context(tls_config(pki, "scheduler")))
        await listener.start("127.0.0.1", 0)
        client = await FramedStream.connect(
            "127.0.0.1", listener.port, tls=client_context(tls_config(pki, ALICE))
        )
        assert client.stream.tls
        for nonce in range(3):
            await client.send(Ping(nonce=nonce), 1)
            assert await client.read() == (1, Pong(nonce=nonce))
        await client.send(GetPiece(task_id="t" * 64, number=0), 3)
        stream_id, piece = await client.read()
        into = bytearray(piece.length)
        crc = await client.read_payload(into, piece.length)
        assert (stream_id, crc, bytes(into)) == (3, zlib.crc32(content), content)
        await client.send(Ping(nonce=9), 5)  # the stream is still framed after it
        assert await client.read() == (5, Pong(nonce=9))
        client.close()
        await listener.stop()

    asyncio.run(main())
    assert [(i.name, i.role) for i in seen] == [(ALICE, "peer")]


def test_stop_accepting_closes_the_port_and_the_open_connections_go_on():
    """A drain: once a listener stops accepting, a new connection is refused by the
    kernel (the listening socket is closed, not just no longer accepted from), while a
    connection already open is still answered."""

    async def serve(stream, _address):
        framed = FramedStream(stream)
        while True:
            stream_id, ping = await framed.read()
            await framed.send(Pong(nonce=ping.nonce), stream_id)

    async def main():
        listener = Listener(serve)
        await listener.start("127.0.0.1", 0)
        client = await FramedStream.connect("127.0.0.1", listener.port)
        await client.send(Ping(nonce=1), 1)
        assert (await client.read())[1] == Pong(nonce=1)
        await listener.stop_accepting()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", listener.port), timeout=5).close()
        await client.send(Ping(nonce=2), 3)
        assert (await client.read())[1] == Pong(nonce=2)
        client.close()
        await listener.stop()

    asyncio.run(main())


def sockets_to(port: int) -> list:
    """This process's open TCP sockets connected to ``port`` on loopback."""
    me = psutil.Process()
    connections = getattr(me, "net_connections", None) or me.connections  # psutil < 6
    return [c for c in connections("tcp") if c.raddr and c.raddr.port == port]


def test_a_certificate_from_another_ca_is_refused_in_the_handshake(pki):
    """Server side: a client with the rogue CA's certificate (same name as a member)
    does not get a single frame answered; client side: a server with one is not
    trusted. A plain TCP client is refused too."""

    async def serve(stream, _address):
        framed = FramedStream(stream)
        stream_id, _ = await framed.read()
        await framed.send(Pong(nonce=1), stream_id)
        framed.close()

    async def main():
        listener = Listener(serve, tls=server_context(tls_config(pki, "scheduler")))
        await listener.start("127.0.0.1", 0)
        with pytest.raises((ssl.SSLError, EOFError, ConnectionError)):
            # TLS 1.3: the client may finish its side before the server checks its
            # certificate; the refusal then arrives on the first read.
            client = await FramedStream.connect(
                "127.0.0.1", listener.port, tls=client_context(tls_config(pki, ALICE, "rogue"))
            )
            await client.send(Ping(nonce=1), 1)
            await client.read()
        plain = await FramedStream.connect("127.0.0.1", listener.port)
        await plain.send(Ping(nonce=1), 1)
        with pytest.raises((EOFError, ConnectionError)):
            await plain.read()
        plain.close()
        assert listener.handshakes_failed == 2
        await listener.stop()

        rogue_server = Listener(serve, tls=server_context(tls_config(pki, ALICE, "rogue")))
        await rogue_server.start("127.0.0.1", 0)
        with pytest.raises(ssl.SSLCertVerificationError) as refused:
            await FramedStream.connect(
                "127.0.0.1", rogue_server.port, tls=client_context(tls_config(pki, BOB))
            )
        # The refused connection's socket is closed then and there, not left to the
        # garbage collector (the traceback held here keeps the socket object alive).
        assert not sockets_to(rogue_server.port), sockets_to(rogue_server.port)
        del refused
        await rogue_server.stop()

    asyncio.run(main())


# --- real processes ---------------------------------------------------------------------


@contextlib.contextmanager
def tls_connection(pki: Path, port: int, name: str, ca: str = "cluster"):
    """A blocking TLS connection (the standard library's TLS, not ours) presenting
    ``name``'s certificate from ``ca`` and trusting the cluster's CA."""
    context = ssl.create_default_context(cafile=str(pki / "cluster" / "ca.crt"))
    context.check_hostname = False
    context.load_cert_chain(str(pki / ca / f"{name}.crt"), str(pki / ca / f"{name}.key"))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=15) as raw,
        context.wrap_socket(raw) as sock,
    ):
        yield sock


def announce(host_id: str, host_type: str = "normal") -> bytes:
    hostname = host_id.split("-", 1)[1]
    message = AnnounceHost(
        host_id=host_id, ip="127.0.0.1", hostname=hostname, port=1, download_port=2,
        host_type=host_type,
    )  # fmt: skip
    return encode_frame(message)


def read_frame(sock) -> tuple[int, object]:
    header, message = frames.read_frame(sock)
    return header.stream_id, message


def tls_peer(tmp_path: Path, scheduler, pki: Path, name: str, ca: str = "cluster"):
    host_id = f"127.0.0.1-{name}"
    config = peer_config(scheduler, name, security=security(pki, host_id, ca))
    return PeerProcess(tmp_path, name, **config)


def test_the_scheduler_refuses_another_cas_peer_and_binds_hosts_to_certificates(pki, tmp_path):
    """Against a real mTLS scheduler: a dfdaemon whose certificate comes from another CA
    never gets its host announced; one from the cluster's CA does, and its piece port
    refuses the rogue certificate too. A member cannot announce another member's host
    ID (host-ID squatting), nor a seed host without a seed certificate."""
    with SchedulerProcess(tmp_path, security=security(pki, "scheduler")) as scheduler:
        with tls_peer(tmp_path, scheduler, pki, "alice", "rogue"):
            wait_for(lambda: "TLS handshake refused" in scheduler.log(), "the rogue handshake")
        with tls_peer(tmp_path, scheduler, pki, "bob") as bob:
            wait_for(lambda: f"host announced host={BOB}" in scheduler.log(), "bob announced")
            assert f"host announced host={ALICE}" not in scheduler.log()

            # bob's piece port: a member gets answers, the rogue certificate does not.
            with tls_connection(pki, bob.piece_port, ALICE) as member:
                member.sendall(encode_frame(Hello(minor_version=0, role="peer"), 1))
                stream_id, hello = read_frame(member)
                assert stream_id == 1 and isinstance(hello, Hello) and hello.host_id == BOB
            with (
                pytest.raises((ssl.SSLError, EOFError, ConnectionError)),
                tls_connection(pki, bob.piece_port, ALICE, "rogue") as stranger,
            ):
                stranger.sendall(encode_frame(Ping(nonce=1), 1))
                read_frame(stranger)

        # Host-ID squatting: alice's valid certificate, bob's host ID.
        with tls_connection(pki, scheduler.port, ALICE) as squatter:
            squatter.sendall(announce(BOB))
            _, refusal = read_frame(squatter)
            assert isinstance(refusal, Error) and refusal.code == "forbidden"
            assert f"certificate is for {ALICE!r}, not host {BOB!r}" in refusal.message
            with pytest.raises((EOFError, ConnectionError)):
                read_frame(squatter)  # and the connection is closed
        with tls_connection(pki, scheduler.port, ALICE) as alice:
            alice.sendall(announce(ALICE, "seed"))
            _, refusal = read_frame(alice)
            assert isinstance(refusal, Error) and "seed certificate" in refusal.message
        with tls_connection(pki, scheduler.port, ALICE) as alice:
            alice.sendall(announce(ALICE) + encode_frame(Ping(nonce=7)))
            assert read_frame(alice) == (0, Pong(nonce=7))  # no refusal before the Pong
            wait_for(lambda: f"host announced host={ALICE}" in scheduler.log(), "alice's own ID")


def test_a_peer_with_a_certificate_for_another_host_does_not_start(pki, tmp_path):
    peer = PeerProcess(tmp_path, "carol", **peer_config(None, "carol", security=security(pki, BOB)))
    with pytest.raises(RuntimeError, match=r"is for peer '127\.0\.0\.1-bob'"):
        peer.start()
    assert peer.proc.wait(10) == 2 and "Traceback" not in peer.log()  # a clear error


def test_cluster_demo_runs_p2p_over_mutual_tls(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "d7y.daemons.cli", "cluster", "demo", "--tls", "--peers", "2",
         "--size", "24MiB", "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "mutual TLS" in proc.stdout
    assert "all outputs match the origin's SHA-256" in proc.stdout
    assert (tmp_path / "certs" / "ca.crt").exists()
    # Every peer announced itself through the TLS handshake, none was refused.
    log = (tmp_path / "scheduler.log").read_text()
    assert "TLS handshake refused" not in log
    assert log.count("host announced") == 3


def test_tls_config_names_the_missing_or_wrong_file(pki, tmp_path):
    from d7y.daemons.config import ConfigError
    from d7y.daemons.peer.config import load_peer_config
    from d7y.daemons.scheduler.config import load_scheduler_config

    with pytest.raises(ConfigError, match=r"'security\.tls\.ca_cert' is needed.*d7y certs init"):
        load_scheduler_config(env={}, overrides={"security": {"tls": {"enabled": True}}})
    missing = security(pki, ALICE)
    missing["tls"]["key"] = str(tmp_path / "nope.key")
    with pytest.raises(ConfigError, match=r"'security\.tls\.key': no such file .*nope\.key"):
        load_peer_config(env={}, overrides={"security": missing})
    mismatched = security(pki, ALICE)
    mismatched["tls"]["key"] = str(pki / "cluster" / f"{BOB}.key")  # another cert's key
    with pytest.raises(ConfigError, match=r"cannot load the CA, certificate and key"):
        load_peer_config(env={}, overrides={"security": mismatched})
