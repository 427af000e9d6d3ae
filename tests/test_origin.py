"""OriginClient against the real test origin (tests/origin_server.py) on loopback.

Each test runs one event loop (``asyncio.run``) holding an origin and a client; retries
use millisecond backoff so fault tests stay fast. The origin's stats are the witness for
what went over the wire: how many requests, which Range headers, which request headers.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from d7y.daemons.sources import SourceSettings, check_url, open_source
from d7y.daemons.sources.base import (
    ContentChanged,
    RetryPolicy,
    ShortRead,
    SourceError,
    SourceInfo,
)
from d7y.daemons.sources.http import OriginClient
from tests.origin_server import (
    OriginServer,
    ThreadedOriginServer,
    generated_bytes,
    generated_chunks,
)

FAST = RetryPolicy(attempts=5, base_delay=0.001, max_delay=0.004, max_retry_after=0.01)
MiB = 1 << 20
REPO = Path(__file__).resolve().parent.parent

Scenario = Callable[[OriginServer, OriginClient], Awaitable[Any]]


def run(scenario: Scenario, **client_options: Any) -> Any:
    """Run ``scenario(origin, client)`` in a fresh loop with a fresh origin and client."""
    client_options.setdefault("retry", FAST)
    client_options.setdefault("rng", random.Random(1))

    async def main() -> Any:
        async with OriginServer() as origin, OriginClient(**client_options) as client:
            return await scenario(origin, client)

    return asyncio.run(main())


def expect_error(excinfo: pytest.ExceptionInfo[SourceError]) -> SourceError:
    error = excinfo.value
    assert "\n" not in str(error), "messages must be one line for dfget"
    return error


# -- probe ---------------------------------------------------------------------------


def test_probe_with_range_support() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=3 * MiB + 5, seed=1)
        info = await client.probe(url)
        assert info.content_length == 3 * MiB + 5
        assert info.supports_range is True
        assert info.etag == '"g-1-3145733"'
        assert info.last_modified == "Mon, 01 Jan 2024 00:00:00 GMT"
        assert info.final_url == url and info.url == url
        assert info.if_range == info.etag
        assert origin.stats("a.bin")["ranges"] == ["bytes=0-0"]
        assert client.bytes_received == 1  # the one byte of the probe, nothing more

    run(scenario)


def test_probe_without_range_support_does_not_read_the_body() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        size = 64 * MiB
        url = origin.add_file("big.bin", size=size, seed=2)
        origin.set_faults("big.bin", range=False)
        info = await client.probe(url)
        assert (info.content_length, info.supports_range) == (size, False)
        assert client.bytes_received == 0
        await origin.wait_idle()  # the origin noticed the closed connection and stopped
        assert origin.stats("big.bin")["bytes_sent"] < size

    run(scenario)


def test_probe_unknown_length() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("chunked.bin", size=1000, seed=3)
        origin.set_faults("chunked.bin", range=False, content_length=False)
        info = await client.probe(url)
        assert info.content_length is None
        assert info.supports_range is False

    run(scenario)


def test_probe_ranged_chunked_answer_gives_length_from_content_range() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("c.bin", size=5000, seed=3)
        origin.set_faults("c.bin", content_length=False)
        info = await client.probe(url)
        assert (info.content_length, info.supports_range) == (5000, True)

    run(scenario)


def test_probe_empty_file() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("empty", b"")
        info = await client.probe(url)
        assert info.content_length == 0
        assert info.supports_range is True
        assert origin.stats("empty")["statuses"] == [416]

    run(scenario)


def test_probe_validators_weak_etag_falls_back_to_last_modified() -> None:
    info = SourceInfo(
        url="http://x/",
        final_url="http://x/",
        content_length=1,
        supports_range=True,
        etag='W/"abc"',
        last_modified="Tue, 02 Jan 2024 00:00:00 GMT",
    )
    assert info.if_range == "Tue, 02 Jan 2024 00:00:00 GMT"


# -- fetch_range ---------------------------------------------------------------------


def test_fetch_range_reads_exact_bytes_into_the_buffer() -> None:
    size = 2 * MiB + 123
    expected = generated_bytes(size, 4)

    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=size, seed=4)
        info = await client.probe(url)
        spans = [(0, 1), (0, MiB), (MiB, MiB), (2 * MiB, 123), (MiB - 10, 20), (size - 1, 1)]
        for offset, length in spans:
            buffer = bytearray(b"\xee" * (length + 7))  # larger than needed: tail untouched
            await client.fetch_range(url, None, offset, length, memoryview(buffer), info=info)
            assert buffer[:length] == expected[offset : offset + length]
            assert buffer[length:] == b"\xee" * 7
        stats = origin.stats("a.bin")
        assert stats["ranges"][1:] == [f"bytes={o}-{o + n - 1}" for o, n in spans]
        assert all(h["If-Range"] == info.etag for h in stats["headers"][1:])
        assert client.bytes_received == 1 + sum(n for _, n in spans)

    run(scenario)


def test_concurrent_pieces_one_request_each() -> None:
    size, piece = 4 * MiB + 1000, 256 * 1024
    expected = generated_bytes(size, 5)

    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("p.bin", size=size, seed=5)
        info = await client.probe(url)
        target = bytearray(size)
        view = memoryview(target)
        offsets = range(0, size, piece)

        async def fetch(offset: int) -> None:
            length = min(piece, size - offset)
            await client.fetch_range(
                url, None, offset, length, view[offset : offset + length], info=info
            )

        await asyncio.gather(*(fetch(o) for o in offsets))
        assert target == expected
        ranges = origin.stats("p.bin")["ranges"][1:]
        assert sorted(ranges) == sorted(f"bytes={o}-{min(o + piece, size) - 1}" for o in offsets)

    run(scenario)


def test_fetch_range_404_is_final_with_status_in_message() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.url("missing.bin")
        with pytest.raises(SourceError) as excinfo:
            await client.fetch_range(url, None, 0, 10, bytearray(10))
        error = expect_error(excinfo)
        assert (error.status, error.retryable, error.url) == (404, False, url)
        assert str(error) == f"origin returned 404 Not Found for {url}"
        assert origin.stats("missing.bin")["requests"] == 1
        with pytest.raises(SourceError, match="404 Not Found"):
            await client.probe(url)

    run(scenario)


def test_500_then_200_is_retried_and_succeeds() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=1000, seed=6)
        origin.set_faults("a.bin", fail={"status": 500, "count": 1})
        buffer = bytearray(1000)
        await client.fetch_range(url, None, 0, 1000, buffer)
        assert buffer == generated_bytes(1000, 6)
        stats = origin.stats("a.bin")
        assert stats["requests"] == 2
        assert stats["statuses"] == [500, 206]

    run(scenario)


def test_probe_is_retried_too() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=10, seed=6)
        origin.set_faults("a.bin", fail={"status": 502, "count": 2})
        info = await client.probe(url)
        assert info.content_length == 10
        assert origin.stats("a.bin")["statuses"] == [502, 502, 206]

    run(scenario)


def test_persistent_5xx_gives_up_after_the_configured_attempts() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=10, seed=6)
        origin.set_faults("a.bin", fail={"status": 503, "count": -1})
        with pytest.raises(SourceError) as excinfo:
            await client.fetch_range(url, None, 0, 10, bytearray(10))
        error = expect_error(excinfo)
        assert error.status == 503
        assert error.attempts == 5
        assert str(error) == f"origin returned 503 Service Unavailable for {url} (after 5 attempts)"
        assert origin.stats("a.bin")["requests"] == 5

    run(scenario)


@pytest.mark.parametrize("status", [403, 410, 400])
def test_other_4xx_are_not_retried(status: int) -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=10, seed=6)
        origin.set_faults("a.bin", fail={"status": status, "count": -1})
        with pytest.raises(SourceError) as excinfo:
            await client.fetch_range(url, None, 0, 10, bytearray(10))
        assert (excinfo.value.status, excinfo.value.retryable) == (status, False)
        assert origin.stats("a.bin")["requests"] == 1

    run(scenario)


@pytest.mark.parametrize("status", [408, 429])
def test_408_and_429_are_retried(status: int) -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=10, seed=6)
        origin.set_faults("a.bin", fail={"status": status, "count": 1})
        await client.fetch_range(url, None, 0, 10, bytearray(10))
        assert origin.stats("a.bin")["statuses"] == [status, 206]

    run(scenario)


def test_backoff_is_exponential_with_jitter_and_honours_retry_after() -> None:
    waits: list[float] = []

    async def record(seconds: float) -> None:
        waits.append(seconds)

    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=10, seed=6)
        origin.set_faults("a.bin", fail={"status": 500, "count": 4})
        await client.fetch_range(url, None, 0, 10, bytearray(10))
        assert len(waits) == 4
        for failure, wait in enumerate(waits, start=1):
            ceiling = 0.1 * 2 ** (failure - 1)
            assert ceiling / 2 <= wait <= ceiling
        waits.clear()
        origin.set_faults("a.bin", fail={"status": 429, "count": 1, "retry_after": 3})
        await client.fetch_range(url, None, 0, 10, bytearray(10))
        assert waits == [3.0]
        waits.clear()
        origin.set_faults("a.bin", fail={"status": 503, "count": 1, "retry_after": 3600})
        await client.fetch_range(url, None, 0, 10, bytearray(10))
        assert waits == [30.0]  # capped by max_retry_after

    run(scenario, retry=RetryPolicy(), sleep=record)


def test_backoff_is_capped() -> None:
    policy = RetryPolicy(base_delay=0.1, max_delay=5.0)
    rng = random.Random(3)
    assert all(2.5 <= policy.delay(n, rng) <= 5.0 for n in range(7, 40))


def test_connection_closed_mid_piece_is_retried_for_the_missing_tail() -> None:
    size = 3 * MiB

    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=size, seed=7)
        info = await client.probe(url)
        origin.set_faults("a.bin", close_after={"bytes": 1000, "count": 1})
        buffer = bytearray(2 * MiB)
        await client.fetch_range(url, None, MiB, 2 * MiB, buffer, info=info)
        assert buffer == generated_bytes(size, 7, MiB, 2 * MiB)
        ranges = origin.stats("a.bin")["ranges"]
        assert ranges == [
            "bytes=0-0",
            f"bytes={MiB}-{3 * MiB - 1}",
            f"bytes={MiB + 1000}-{3 * MiB - 1}",
        ]

    run(scenario)


def test_connection_closed_mid_piece_chunked() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=MiB, seed=7)
        origin.set_faults("a.bin", content_length=False, close_after={"bytes": 5000})
        buffer = bytearray(MiB)
        await client.fetch_range(url, None, 0, MiB, buffer)
        assert buffer == generated_bytes(MiB, 7)
        assert origin.stats("a.bin")["requests"] == 2

    run(scenario)


def test_persistently_truncated_body_fails_with_byte_counts() -> None:
    size = MiB

    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=size, seed=8)
        origin.set_faults("a.bin", truncate={"missing": 100, "count": -1})
        with pytest.raises(ShortRead) as excinfo:
            await client.fetch_range(url, None, 0, size, bytearray(size))
        error = expect_error(excinfo)
        assert error.retryable is True
        assert (error.received, error.expected) == (size - 100, size)
        assert str(error) == (
            f"origin closed the connection after {size - 100} of {size} bytes of "
            f"bytes=0-{size - 1} from {url} (after 5 attempts)"
        )
        assert origin.stats("a.bin")["requests"] == 5

    run(scenario)


def test_truncated_body_once_is_recovered() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=MiB, seed=8)
        origin.set_faults("a.bin", truncate={"missing": 1})
        buffer = bytearray(MiB)
        await client.fetch_range(url, None, 0, MiB, buffer)
        assert buffer == generated_bytes(MiB, 8)
        assert origin.stats("a.bin")["ranges"] == [
            f"bytes=0-{MiB - 1}",
            f"bytes={MiB - 1}-{MiB - 1}",
        ]

    run(scenario)


@pytest.mark.parametrize("validator", ["etag", "last_modified"])
def test_content_changed_between_probe_and_fetch_is_final(validator: str) -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=1000, seed=9)
        if validator == "last_modified":
            origin.set_faults("a.bin", etag=False)
        info = await client.probe(url)
        assert info.if_range is not None
        if validator == "etag":
            origin.set_faults("a.bin", etag="v2")
        else:
            origin.set_faults("a.bin", last_modified="Wed, 03 Jan 2024 00:00:00 GMT")
        with pytest.raises(SourceError) as excinfo:
            await client.fetch_range(url, None, 0, 100, bytearray(100), info=info)
        error = expect_error(excinfo)
        assert error.retryable is False
        assert str(error).startswith(f"content changed at {url}")
        stats = origin.stats("a.bin")
        assert stats["requests"] == 2 and stats["statuses"] == [206, 200]

    run(scenario)


def test_content_changed_detected_even_when_origin_ignores_if_range() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=1000, seed=9)
        info = await client.probe(url)
        origin.set_faults("a.bin", if_range=False, etag="v2")
        with pytest.raises(ContentChanged, match=r'ETag was "g-9-1000", is now "v2"'):
            await client.fetch_range(url, None, 0, 100, bytearray(100), info=info)
        origin.set_faults("a.bin", etag=False, last_modified="Wed, 03 Jan 2024 00:00:00 GMT")
        with pytest.raises(ContentChanged, match=r"Last-Modified was .*, is now Wed, 03 Jan"):
            await client.fetch_range(url, None, 0, 100, bytearray(100), info=info)
        origin.add_file("a.bin", size=2000, seed=9)  # the length changes too
        origin.set_faults("a.bin", last_modified=False)
        with pytest.raises(ContentChanged, match="length was 1000 bytes, is now 2000") as excinfo:
            await client.fetch_range(url, None, 0, 100, bytearray(100), info=info)
        assert excinfo.value.retryable is False
        assert excinfo.value.validator == "length"

    run(scenario)


def test_origin_ignoring_range_on_a_fetch_is_an_error() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=1000, seed=9)
        origin.set_faults("a.bin", range=False, etag=False, last_modified=False)
        with pytest.raises(SourceError, match="ignored Range bytes=10-19") as excinfo:
            await client.fetch_range(url, None, 10, 10, bytearray(10))
        assert excinfo.value.retryable is False
        whole = bytearray(1000)  # asking for all of it is answered by a plain 200
        await client.fetch_range(url, None, 0, 1000, whole)
        assert whole == generated_bytes(1000, 9)

    run(scenario)


def test_redirects_are_followed() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        origin.add_file("a.bin", size=5000, seed=10)
        url = origin.url("redirect/redirect/a.bin")
        info = await client.probe(url)
        assert info.final_url == origin.url("a.bin")
        assert info.content_length == 5000
        buffer = bytearray(100)
        await client.fetch_range(url, None, 4900, 100, buffer, info=info)
        assert buffer == generated_bytes(5000, 10, 4900, 100)
        assert origin.stats("a.bin")["ranges"] == ["bytes=0-0", "bytes=4900-4999"]
        assert origin.stats("redirect/a.bin")["requests"] == 2
        with pytest.raises(SourceError, match="redirected too many times") as excinfo:
            await client.probe(origin.url("redirect-loop"))
        assert excinfo.value.retryable is False
        assert origin.stats("redirect-loop")["requests"] == 11  # the first + 10 redirects

    run(scenario)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:1/a.bin", "file:///etc/passwd", "a.bin"])
def test_unsupported_scheme_fails_before_any_io(url: str) -> None:
    async def main() -> None:
        async with OriginClient(retry=FAST) as client:
            for call in (
                lambda: client.probe(url),
                lambda: client.fetch_range(url, None, 0, 1, bytearray(1)),
            ):
                with pytest.raises(SourceError) as excinfo:
                    await call()
                error = expect_error(excinfo)
                assert "only http and https are supported" in str(error)
                assert (error.status, error.retryable) == (None, False)
            with pytest.raises(SourceError, match="only http and https are supported"):
                client.stream(url)
            assert client.requests == 0
            assert client._session is None  # no session, so certainly no socket

    asyncio.run(main())
    assert "'ftp'" in _error_text("ftp://h/x")


@pytest.mark.parametrize(
    ("url", "problem"),
    [("ftp://h/x", "unsupported URL scheme 'ftp' in ftp://h/x"), ("a.bin", "has no scheme")],
)
def test_a_url_no_source_serves_is_refused_naming_every_scheme_there_is(
    url: str, problem: str
) -> None:
    with pytest.raises(SourceError) as excinfo:
        check_url(url)
    error = expect_error(excinfo)
    assert problem in str(error) and "use http, https, s3 or oci" in str(error), str(error)
    assert error.bad_input


def _error_text(url: str) -> str:
    async def main() -> str:
        async with OriginClient() as client:
            try:
                await client.probe(url)
            except SourceError as exc:
                return str(exc)
            return ""

    return asyncio.run(main())


def test_connection_refused_is_retried_then_reported() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.url("a.bin")
        await origin.stop()
        with pytest.raises(SourceError) as excinfo:
            await client.probe(url)
        error = expect_error(excinfo)
        assert (
            str(error) == f"cannot connect to origin {url}: Connection refused (after 5 attempts)"
        )
        assert (error.status, error.retryable, client.requests) == (None, True, 5)

    run(scenario)


def test_request_timeout_is_retried_and_reported() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=10, seed=1)
        origin.set_faults("a.bin", delay={"seconds": 0.5, "count": 1})
        await client.fetch_range(url, None, 0, 10, bytearray(10))  # 2nd attempt is quick
        origin.set_faults("a.bin", delay={"seconds": 0.5, "count": -1})
        with pytest.raises(
            SourceError, match=r"origin timed out: waiting for .* \(after 2 attempts\)"
        ):
            await client.fetch_range(url, None, 0, 10, bytearray(10))

    run(scenario, request_timeout=0.15, retry=RetryPolicy(attempts=2, base_delay=0.001))


def test_stall_mid_body_hits_the_read_timeout_and_resumes() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=MiB, seed=11)
        origin.set_faults("a.bin", stall={"after": 300_000, "seconds": 1.0})
        buffer = bytearray(MiB)
        await client.fetch_range(url, None, 0, MiB, buffer)
        assert buffer == generated_bytes(MiB, 11)
        ranges = origin.stats("a.bin")["ranges"]
        assert ranges == [f"bytes=0-{MiB - 1}", f"bytes=300000-{MiB - 1}"]  # then the tail
        origin.set_faults("a.bin", stall={"after": 10, "seconds": 1.0, "count": -1})
        with pytest.raises(ShortRead) as excinfo:
            await client.fetch_range(url, None, 0, 100, buffer)
        assert str(excinfo.value) == (
            f"origin stopped sending (timed out) after 50 of 100 bytes of bytes=0-99 from "
            f"{url} (after 5 attempts)"
        )

    run(scenario, read_timeout=0.15)


def test_cancelled_fetch_releases_its_connection() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=MiB, seed=12)
        origin.set_faults("a.bin", stall={"after": 1000, "seconds": 5.0})
        buffer = bytearray(MiB)
        task = asyncio.create_task(client.fetch_range(url, None, 0, MiB, buffer))
        while client.bytes_received < 1000:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        connector = client._session.connector  # type: ignore[union-attr]
        assert not connector._acquired  # type: ignore[union-attr]
        await client.fetch_range(url, None, 0, MiB, buffer)  # the client still works
        assert buffer == generated_bytes(MiB, 12)

    run(scenario)


def test_fetch_range_argument_errors_make_no_request() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("a.bin", size=10, seed=1)
        with pytest.raises(ValueError, match="length must be >= 1"):
            await client.fetch_range(url, None, 0, 0, bytearray(1))
        with pytest.raises(ValueError, match="offset must be >= 0"):
            await client.fetch_range(url, None, -1, 1, bytearray(1))
        with pytest.raises(ValueError, match="too small for length 10"):
            await client.fetch_range(url, None, 0, 10, bytearray(9))
        with pytest.raises(TypeError, match="writable"):
            await client.fetch_range(url, None, 0, 1, b"x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="line breaks"):
            await client.fetch_range(url, {"X-A": "1\r\nX-B: 2"}, 0, 1, bytearray(1))
        assert client.requests == 0

    run(scenario)


def test_misbehaving_origin_answers_are_rejected() -> None:
    """Origins whose 206 answers do not match the request: wrong Content-Range, or a
    chunked body longer than the range."""

    async def wrong_range(request: web.Request) -> web.Response:
        return web.Response(status=206, body=b"x" * 10, headers={"Content-Range": "bytes 0-9/100"})

    async def too_long(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=206, headers={"Content-Range": "bytes 0-9/100"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b"y" * 20)
        await response.write_eof()
        return response

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/wrong", wrong_range)
        app.router.add_get("/long", too_long)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        try:
            async with OriginClient(retry=FAST) as client:
                with pytest.raises(
                    SourceError, match="answered Content-Range 'bytes 0-9/100' to bytes=5-14"
                ):
                    await client.fetch_range(base + "/wrong", None, 5, 10, bytearray(10))
                with pytest.raises(SourceError, match="sent more than the 10 bytes") as excinfo:
                    await client.fetch_range(base + "/long", None, 0, 10, bytearray(10))
                assert excinfo.value.retryable is False
        finally:
            await runner.cleanup()

    asyncio.run(main())


# -- stream --------------------------------------------------------------------------


@pytest.mark.parametrize("content_length", [True, False])
def test_stream_reads_the_whole_object(content_length: bool) -> None:
    size = 3 * MiB + 17

    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("s.bin", size=size, seed=13)
        origin.set_faults("s.bin", range=False, content_length=content_length)
        received = bytearray()
        async with client.stream(url) as body:
            assert body.content_length == (size if content_length else None)
            async for chunk in body:
                assert isinstance(chunk, memoryview)
                received += chunk
        assert received == generated_bytes(size, 13)
        assert body.received == size == client.bytes_received
        assert origin.stats("s.bin")["ranges"] == [None]

    run(scenario)


def test_stream_of_empty_object() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("e", b"")
        async with client.stream(url) as body:
            assert [bytes(c) async for c in body] == []
        assert body.content_length == 0

    run(scenario)


def test_stream_open_is_retried_but_a_broken_body_is_final() -> None:
    size = 2 * MiB

    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("s.bin", size=size, seed=14)
        origin.set_faults("s.bin", range=False, fail={"status": 500}, close_after={"bytes": 70_000})
        received = 0
        with pytest.raises(SourceError) as excinfo:
            async with client.stream(url) as body:
                async for chunk in body:
                    received += len(chunk)
        error = expect_error(excinfo)
        assert error.retryable is False
        assert received == 70_000
        assert f"after 70000 of {size} bytes of {url}" in str(error)
        assert "cannot resume" in str(error)
        assert origin.stats("s.bin")["statuses"] == [500, 200]

    run(scenario)


def test_stream_cut_without_content_length_reports_bytes_received() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("s.bin", size=MiB, seed=14)
        origin.set_faults("s.bin", range=False, content_length=False, close_after={"bytes": 4096})
        with pytest.raises(SourceError, match=f"after 4096 bytes of {url}"):
            async with client.stream(url) as body:
                async for _ in body:
                    pass

    run(scenario)


def test_stream_abandoned_early_releases_the_connection() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("s.bin", size=8 * MiB, seed=15)
        async with client.stream(url) as body:
            async for _ in body:
                break
        connector = client._session.connector  # type: ignore[union-attr]
        assert not connector._acquired  # type: ignore[union-attr]

    run(scenario)


# -- headers -------------------------------------------------------------------------


def test_request_headers_are_passed_through_except_hop_by_hop_and_ours() -> None:
    headers = [
        ("Authorization", "Bearer secret"),
        ("X-Custom", "1"),
        ("X-Dup", "a"),
        ("X-Dup", "b"),
        ("Connection", "X-Hop"),
        ("X-Hop", "dropped: named in Connection"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Range", "bytes=5-9"),
        ("If-None-Match", "*"),
        ("User-Agent", "my-agent/1"),
    ]

    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        url = origin.add_file("h.bin", size=100, seed=16)
        await client.probe(url, headers)
        await client.fetch_range(url, dict(headers), 10, 10, bytearray(10))
        async with client.stream(url, headers) as body:
            async for _ in body:
                pass
        seen = origin.stats("h.bin")["headers"]
        ours = ["bytes=0-0", "bytes=10-19", None]
        for request_headers, our_range in zip(seen, ours, strict=True):
            assert request_headers["Authorization"] == "Bearer secret"
            assert request_headers["X-Custom"] == "1"
            assert request_headers["User-Agent"] == "my-agent/1"
            assert request_headers["Accept-Encoding"] == "identity"
            assert request_headers.get("Range") == our_range
            for dropped in ("X-Hop", "Keep-Alive", "Transfer-Encoding", "If-None-Match"):
                assert dropped not in request_headers
        assert seen[0]["X-Dup"] == "a, b"  # repeated -H survive as pairs

    run(scenario)


def test_user_accept_encoding_wins_and_bytes_are_not_decoded() -> None:
    async def scenario(origin: OriginServer, client: OriginClient) -> None:
        import gzip

        packed = gzip.compress(b"hello " * 100)
        url = origin.add_file("z.gz", packed)
        origin.set_faults("z.gz", headers={"Content-Encoding": "gzip"})
        buffer = bytearray(len(packed))
        await client.fetch_range(url, {"Accept-Encoding": "gzip"}, 0, len(packed), buffer)
        assert bytes(buffer) == packed
        assert origin.stats("z.gz")["headers"][0]["Accept-Encoding"] == "gzip"

    run(scenario)


# -- https ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_https_origin(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    trusting = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        async with OriginServer(ssl_context=server_context) as origin:
            url = origin.add_file("t.bin", size=300_000, seed=17)
            assert url.startswith("https://")
            async with OriginClient(retry=FAST, ssl=trusting) as client:
                info = await client.probe(url)
                buffer = bytearray(300_000)
                await client.fetch_range(url, None, 0, 300_000, buffer, info=info)
                assert buffer == generated_bytes(300_000, 17)
            async with OriginClient(retry=FAST) as untrusting:
                with pytest.raises(SourceError, match="TLS error") as excinfo:
                    await untrusting.probe(url)
                assert excinfo.value.retryable is False
            # A daemon's source settings verify certificates unless told otherwise: the
            # default trusts the system's CAs only, so this self-signed origin is refused.
            source = open_source(url, settings=SourceSettings(retry=FAST))
            try:
                with pytest.raises(SourceError, match="TLS error"):
                    await source.probe(url, {})
            finally:
                await source.close()
            source = open_source(url, settings=SourceSettings(retry=FAST, ssl=trusting))
            try:
                assert (await source.probe(url, {})).content_length == 300_000
            finally:
                await source.close()

    asyncio.run(main())


# -- the test origin itself ----------------------------------------------------------


def test_generated_content_is_deterministic_and_random_access() -> None:
    whole = generated_bytes(3 * MiB, 21)
    assert len(whole) == 3 * MiB
    assert generated_bytes(3 * MiB, 21, MiB - 5, 10) == whole[MiB - 5 : MiB + 5]
    assert whole != generated_bytes(3 * MiB, 22)
    assert whole[:MiB] != whole[MiB : 2 * MiB]  # blocks differ: misplaced pieces show
    assert sum(len(c) for c in generated_chunks(3 * MiB, 21, 7)) == 3 * MiB - 7


def test_threaded_origin_control_api_over_http(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.txt").write_bytes(b"0123456789")
    with ThreadedOriginServer(tmp_path) as origin:
        base = origin.base_url

        def call(method: str, path: str, body: dict[str, Any] | None = None) -> Any:
            data = json.dumps(body).encode() if body is not None else None
            request = urllib.request.Request(base + path, data=data, method=method)
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.headers, response.read()

        status, _, body = call("GET", "sub/f.txt")
        assert (status, body) == (200, b"0123456789")
        request = urllib.request.Request(base + "sub/f.txt", headers={"Range": "bytes=-3"})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 206
            assert response.headers["Content-Range"] == "bytes 7-9/10"
            assert response.read() == b"789"
        request = urllib.request.Request(base + "sub/f.txt", headers={"Range": "bytes=10-"})
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            urllib.request.urlopen(request, timeout=10)
        assert excinfo.value.code == 416
        assert excinfo.value.headers["Content-Range"] == "bytes */10"
        stale = urllib.request.Request(
            base + "sub/f.txt", headers={"Range": "bytes=0-1", "If-Range": '"stale"'}
        )
        with urllib.request.urlopen(stale, timeout=10) as response:
            assert response.status == 200 and response.read() == b"0123456789"
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            call("GET", "../etc/passwd")
        assert excinfo.value.code == 404

        call("POST", "_control/faults", {"path": "sub/f.txt", "fail": {"status": 503}})
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            call("GET", "sub/f.txt")
        assert excinfo.value.code == 503
        with pytest.raises(urllib.error.HTTPError) as excinfo:
            call("POST", "_control/faults", {"fail": {"count": 1}})
        assert excinfo.value.code == 400 and b"fail needs 'status'" in excinfo.value.read()

        _, _, raw = call("GET", "_control/stats")
        stats = json.loads(raw)["/sub/f.txt"]
        assert stats["requests"] == 5
        assert stats["ranges"] == [None, "bytes=-3", "bytes=10-", "bytes=0-1", None]
        assert stats["statuses"] == [200, 206, 416, 200, 503]
        assert stats["bytes_sent"] == 23
        assert origin.stats("sub/f.txt") == stats

        call("POST", "_control/files", {"name": "gen.bin", "size": 1000, "seed": 5})
        assert call("GET", "gen.bin")[2] == generated_bytes(1000, 5)
        call("POST", "_control/reset")
        assert origin.stats() == {}


def test_origin_server_as_a_process() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.origin_server", "--file", "p.bin=5000:3", "--no-range"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        base = process.stdout.readline().strip()
        assert base.startswith("http://127.0.0.1:")

        async def main() -> SourceInfo:
            async with OriginClient(retry=FAST) as client:
                return await client.probe(base + "p.bin")

        info = asyncio.run(main())
        assert (info.content_length, info.supports_range) == (5000, False)
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
        if process.stdout is not None:
            process.stdout.close()


def test_given_session_is_used_raw_and_left_open() -> None:
    import gzip

    packed = gzip.compress(b"abc" * 1000)

    async def main() -> None:
        async with OriginServer() as origin:
            url = origin.add_file("z.gz", packed)
            origin.set_faults("z.gz", range=False, headers={"Content-Encoding": "gzip"})
            async with aiohttp.ClientSession() as session:  # decompresses by default
                client = OriginClient(session=session, retry=FAST)
                async with client.stream(url, {"Accept-Encoding": "gzip"}) as body:
                    received = b"".join([bytes(c) async for c in body])
                assert received == packed  # the origin's bytes, not decoded ones
                await client.close()
                assert not session.closed
                with pytest.raises(RuntimeError, match="closed"):
                    await client.probe(url)

    asyncio.run(main())
