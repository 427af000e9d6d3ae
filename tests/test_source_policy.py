"""The outbound fetch policy (issue 13 defect 2: SSRF through the seed peer).

Anyone who reaches the scheduler port can register a download for any URL, and the
scheduler makes a seed peer fetch it. Such a download was caused by a remote party, so
the seed must refuse internal addresses (loopback, private, link-local, cloud metadata)
unless ``source.allow`` lets them through; a download asked for on the machine itself
(dfget over the local socket) is the user's own and is not restricted.
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid

import pytest

from d7y.core.ids import task_id
from d7y.core.messages import AnnounceHost, RegisterPeer
from d7y.core.protocol import HEADER_LENGTH, decode_body, decode_header, encode_frame
from d7y.daemons.sources import RetryPolicy
from d7y.daemons.sources.fast_range import FastRangeFetcher
from d7y.daemons.sources.http import OriginClient
from d7y.daemons.sources.policy import SourcePolicy, SourceRefused
from tests.origin_server import OriginServer, ThreadedOriginServer
from tests.peer_harness import PeerProcess, SchedulerProcess, peer_config

SECRET = b"internal secret " * 4096  # 64 KiB: a normal task, not answered inline

# -- the policy itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "cloud metadata"),
        ("fd00:ec2::254", "cloud metadata"),
        ("100.100.100.200", "cloud metadata"),
        ("169.254.1.1", "link-local"),
        ("fe80::1", "link-local"),
        ("0.0.0.0", "not a public"),
        ("100.64.0.1", "not a public"),
        ("224.0.0.1", "not a public"),
    ],
)
def test_internal_addresses_are_refused_by_default(address: str, reason: str) -> None:
    with pytest.raises(SourceRefused) as refused:
        SourcePolicy().check_address("origin.example", address, "http://origin.example/f")
    message = str(refused.value)
    assert reason in message and address in message and "source.allow" in message


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1::1", "8.8.8.8"])
def test_public_addresses_pass(address: str) -> None:
    SourcePolicy().check_address("origin.example", address, "http://origin.example/f")


def test_allow_opens_exactly_what_it_names() -> None:
    policy = SourcePolicy(allow=["127.0.0.0/8", "10.1.0.0/16", "::1"])
    for address in ("127.0.0.1", "10.1.255.255", "::1"):
        policy.check_address("h", address, "http://h/")
    for address in ("10.2.0.1", "169.254.169.254", "192.168.0.1"):
        with pytest.raises(SourceRefused):
            policy.check_address("h", address, "http://h/")


def test_deny_wins_over_allow_and_over_public() -> None:
    policy = SourcePolicy(allow=["127.0.0.0/8"], deny=["127.0.0.2", "8.8.8.0/24", "*.bad.example"])
    policy.check_address("h", "127.0.0.1", "http://h/")
    for host, address in (("h", "127.0.0.2"), ("h", "8.8.8.8"), ("x.bad.example", "1.1.1.1")):
        with pytest.raises(SourceRefused, match=r"source\.deny"):
            policy.check_address(host, address, f"http://{host}/")


def test_a_refusal_names_the_host_and_the_address_it_resolved_to() -> None:
    policy = SourcePolicy(deny=["*.bad.example"])
    for host in ("0.bad.example", "z.bad.example"):
        with pytest.raises(SourceRefused, match=rf"{host} \(1\.1\.1\.1\) is denied"):
            policy.check_address(host, "1.1.1.1", f"http://{host}/")
    with pytest.raises(SourceRefused, match=r"remote party: 10\.0\.0\.1 is a private"):
        SourcePolicy().check_address("10.0.0.1", "10.0.0.1", "http://10.0.0.1/")


def test_host_patterns_match_names_not_addresses() -> None:
    policy = SourcePolicy(allow=["origin.internal", "*.corp.example"])
    policy.check_address("origin.internal", "10.0.0.5", "http://origin.internal/")
    policy.check_address("a.b.corp.example", "10.0.0.6", "http://a.b.corp.example/")
    policy.check_address("ORIGIN.INTERNAL.", "10.0.0.5", "http://ORIGIN.INTERNAL./")
    for host in (
        "corp.example",
        "evilcorp.example",  # ends with "corp.example" but is not below it
        "evilorigin.internal",
        "origin.internal.evil.example",
    ):
        with pytest.raises(SourceRefused):
            policy.check_address(host, "10.0.0.5", f"http://{host}/")


@pytest.mark.parametrize(
    "entry", ["10.0.0.0/33", "", "http://x/", "a b", "*", "1.2.3.4/8/9", "*.", "::1/129"]
)
def test_bad_entries_are_config_errors_naming_them(entry: str) -> None:
    with pytest.raises(ValueError) as error:
        SourcePolicy(deny=[entry])
    assert repr(entry) in str(error.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://localhost:9/f",  # a name that resolves to loopback (/etc/hosts)
        "http://127.0.0.1:9/f",
        "http://2130706433:9/f",  # 127.0.0.1 as one decimal number
        "http://127.1:9/f",  # the short form
        "http://[::1]:9/f",
        "http://[::ffff:127.0.0.1]:9/f",
    ],
)
def test_every_spelling_of_loopback_is_resolved_and_refused(url: str) -> None:
    with pytest.raises(SourceRefused, match="loopback"):
        asyncio.run(SourcePolicy().check_url(url))


def test_a_name_allowed_by_pattern_may_resolve_to_internal_addresses() -> None:
    asyncio.run(SourcePolicy(allow=["localhost"]).check_url("http://localhost:9/f"))


# -- the clients that enforce it ----------------------------------------------------------


def test_origin_client_refuses_before_connecting_and_rechecks_redirects() -> None:
    async def main() -> None:
        async with OriginServer() as origin:
            origin.add_file("secret.bin", SECRET)
            port = origin.base_url.rsplit(":", 1)[1].strip("/")
            policy = SourcePolicy(allow=["127.0.0.1/32"])
            async with OriginClient(policy=policy, retry=RetryPolicy(attempts=1)) as client:
                # Allowed: 127.0.0.1 itself, and a redirect that stays there.
                info = await client.probe(origin.url("redirect/secret.bin"))
                assert info.content_length == len(SECRET)
                # A redirect to another loopback address is checked again: refused
                # before any connection (nothing listens on 127.0.0.2 anyway).
                target = f"http://127.0.0.2:{port}/secret.bin"
                with pytest.raises(SourceRefused, match=r"127\.0\.0\.2"):
                    await client.probe(origin.url(f"redirect-to?url={target}"))
            async with OriginClient(policy=SourcePolicy()) as strict:
                with pytest.raises(SourceRefused, match="loopback"):
                    await strict.probe(origin.url("secret.bin"))
                with pytest.raises(SourceRefused, match="loopback"):
                    await strict.probe(f"http://localhost:{port}/secret.bin")
            stats = origin.stats()
            # Only the allowed redirect reached the file; the refused ones asked nothing.
            assert stats["/secret.bin"]["requests"] == 1
            assert stats["/redirect-to"]["requests"] == 1

    asyncio.run(main())


def test_fast_range_path_refuses_too() -> None:
    async def main() -> None:
        async with OriginServer() as origin:
            url = origin.add_file("secret.bin", SECRET)
            fetcher = FastRangeFetcher(policy=SourcePolicy())
            try:
                with pytest.raises(SourceRefused, match="loopback"):
                    await fetcher.fetch(url, {}, 0, 100, memoryview(bytearray(100)))
            finally:
                fetcher.close()
            assert origin.stats("/secret.bin")["requests"] == 0

    asyncio.run(main())


# -- end to end: a stranger on the scheduler port ----------------------------------------------


def _frame(sock: socket.socket):
    def exact(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    header = decode_header(exact(HEADER_LENGTH))
    return decode_body(header, exact(header.body_length))


def wait_for(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def make_the_seed_fetch(scheduler: SchedulerProcess, url: str) -> None:
    """Speak the scheduler protocol as an outsider: announce a host, register a download
    of ``url``; repeat until the scheduler has triggered its seed peer (the seed may not
    have announced itself yet when we first ask)."""
    with socket.create_connection(("127.0.0.1", scheduler.port), timeout=15) as s:
        announce = AnnounceHost(
            host_id="attacker", ip="127.0.0.1", hostname="attacker", port=1, download_port=2
        )
        s.sendall(encode_frame(announce))
        stream = 1
        while "trigger seed" not in scheduler.log():
            register = RegisterPeer(
                peer_id=f"attacker-{uuid.uuid4()}",
                task_id=task_id(url),
                host_id="attacker",
                url=url,
                headers={"X-Forwarded": "yes"},
            )
            s.sendall(encode_frame(register, stream))
            _frame(s)  # the scheduler's answer: it has triggered the seed, or not yet
            stream += 2
            assert stream < 200, scheduler.log()[-3000:]


@pytest.fixture
def origin():
    with ThreadedOriginServer() as server:
        yield server


@pytest.mark.parametrize("loopback_allowed", [False, True], ids=["default", "allowed"])
def test_scheduler_cannot_make_the_seed_fetch_loopback_unless_allowed(
    tmp_path, origin, loopback_allowed
):
    url = origin.add_file("secret.bin", SECRET)
    tid = task_id(url)
    allow = ["127.0.0.0/8"] if loopback_allowed else []
    with SchedulerProcess(tmp_path) as scheduler:
        seed_config = peer_config(scheduler, "seed", seed=True, source={"allow": allow})
        with PeerProcess(tmp_path, "seed", **seed_config) as seed:
            wait_for(lambda: "connected to scheduler" in seed.log(), "the seed to connect")
            make_the_seed_fetch(scheduler, url)
            if loopback_allowed:
                wait_for(lambda: seed.http_get(tid)[0] == 200, "the seed to hold the task")
                assert seed.http_get(tid) == (200, SECRET)
                assert origin.stats("/secret.bin")["requests"] > 0
                return
            wait_for(lambda: "refused" in seed.log(), "the seed to refuse")
            assert "127.0.0.1 is a loopback address" in seed.log()
            assert origin.stats("/secret.bin")["requests"] == 0
            assert seed.http_get(tid)[0] == 404
            # The same URL asked for on the seed's own machine is its user's business.
            result = seed.dfget(url, tmp_path / "mine", "--no-progress")
            assert result.returncode == 0, result.stderr.decode()
            assert (tmp_path / "mine").read_bytes() == SECRET
