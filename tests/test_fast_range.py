"""The origin fast path's body-to-sink transfer (FastRangeFetcher.fetch_to, and the
http source's fetch_range_to over it) against the real test origin: bytes in order in
cache-sized chunks, every fault handed back as FastPathUnavailable (and the source's
general client taking over), a cancelled transfer over before the caller goes on."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from d7y.daemons.sources.fast_range import BODY_CHUNK, FastPathUnavailable, FastRangeFetcher
from d7y.daemons.sources.http import HttpSource
from tests.origin_server import OriginServer

DATA = os.urandom(3 * BODY_CHUNK + 12345)


class RecordingSink:
    """Keeps what it is given; optionally blocks inside the first write until released."""

    def __init__(self, block: bool = False) -> None:
        self.chunks: list[bytes] = []
        self.entered = threading.Event()
        self.release = threading.Event()
        self.block = block
        self.writing = False

    def restart(self) -> None:
        self.chunks.clear()

    def write(self, data: memoryview) -> None:
        self.writing = True
        try:
            self.entered.set()
            if self.block:
                self.release.wait()
            self.chunks.append(bytes(data))
        finally:
            self.writing = False


def test_fetch_to_moves_the_range_in_order_in_chunks_and_reuses_the_connection() -> None:
    async def main() -> None:
        async with OriginServer() as origin:
            url = origin.add_file("blob.bin", DATA)
            fetcher = FastRangeFetcher()
            try:
                offset, length = 777, len(DATA) - 1000
                sink = RecordingSink()
                await fetcher.fetch_to(url, {}, offset, length, sink)
                assert b"".join(sink.chunks) == DATA[offset : offset + length]
                assert max(len(c) for c in sink.chunks) <= BODY_CHUNK
                again = RecordingSink()
                await fetcher.fetch_to(url, {}, 0, 10, again)
                assert b"".join(again.chunks) == DATA[:10]
                assert fetcher.bytes_received == length + 10
            finally:
                fetcher.close()
            stats = origin.stats("/blob.bin")
            assert stats["ranges"] == [f"bytes={offset}-{offset + length - 1}", "bytes=0-9"]

    asyncio.run(main())


def test_a_response_head_of_several_kilobytes_is_read_whole() -> None:
    # Origins behind CDNs answer with many long headers (cookies, tracing, policies): a
    # head of 8 KiB is still well within the fast path's limit and must not push the
    # fetch off it.
    async def main() -> None:
        async with OriginServer() as origin:
            url = origin.add_file("padded.bin", DATA)
            origin.set_faults("/padded.bin", headers={"X-Padding": "p" * 8000})
            fetcher = FastRangeFetcher()
            try:
                sink = RecordingSink()
                await fetcher.fetch_to(url, {}, 5, 1000, sink)
                assert b"".join(sink.chunks) == DATA[5:1005]
            finally:
                fetcher.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    "fault",
    [{"close_after": {"bytes": BODY_CHUNK + 10}}, {"truncate": {"missing": 5}}],
    ids=["closed", "truncated"],
)
def test_a_body_cut_short_is_handed_back_and_the_next_fetch_works(fault) -> None:
    async def main() -> None:
        async with OriginServer() as origin:
            url = origin.add_file("cut.bin", DATA)
            origin.set_faults("/cut.bin", **fault)
            fetcher = FastRangeFetcher()
            try:
                with pytest.raises(FastPathUnavailable, match="cut short"):
                    await fetcher.fetch_to(url, {}, 0, len(DATA), RecordingSink())
                sink = RecordingSink()
                await fetcher.fetch_to(url, {}, 0, len(DATA), sink)
                assert b"".join(sink.chunks) == DATA
            finally:
                fetcher.close()

    asyncio.run(main())


def test_a_silent_origin_gives_up_the_fast_path_after_the_read_timeout() -> None:
    async def main() -> None:
        async with OriginServer() as origin:
            url = origin.add_file("slow.bin", DATA)
            origin.set_faults("/slow.bin", stall={"after": 1000, "seconds": 60})
            fetcher = FastRangeFetcher(read_timeout=0.2)
            try:
                with pytest.raises(FastPathUnavailable, match=r"silent for 0\.2 s"):
                    await fetcher.fetch_to(url, {}, 0, len(DATA), RecordingSink())
            finally:
                fetcher.close()

    asyncio.run(main())


def test_a_cancelled_transfer_ends_its_thread_before_the_caller_goes_on() -> None:
    """The sink writes the caller's file: after the cancellation reaches the caller, no
    thread may still be writing (the caller closes the file next)."""

    async def main() -> None:
        async with OriginServer() as origin:
            url = origin.add_file("held.bin", DATA)
            fetcher = FastRangeFetcher()
            sink = RecordingSink(block=True)
            try:
                fetch = asyncio.ensure_future(fetcher.fetch_to(url, {}, 0, len(DATA), sink))
                await asyncio.get_running_loop().run_in_executor(None, sink.entered.wait)
                fetch.cancel()
                for _ in range(20):  # the loop turns; the thread still sits in write()
                    await asyncio.sleep(0)
                assert not fetch.done()
                sink.release.set()
                with pytest.raises(asyncio.CancelledError):
                    await fetch
                assert not sink.writing
                written = len(sink.chunks)
                # The connection was cut, not pooled: the next fetch opens a new one.
                fresh = RecordingSink()
                await fetcher.fetch_to(url, {}, 0, 100, fresh)
                assert b"".join(fresh.chunks) == DATA[:100]
                assert len(sink.chunks) == written  # and nothing wrote after the cancel
            finally:
                sink.release.set()
                fetcher.close()

    asyncio.run(main())


def test_the_http_source_finishes_a_range_the_fast_path_broke_off() -> None:
    """The body is cut mid-way on the fast path: the sink is restarted and gets the
    whole range from the general client, once."""

    async def main() -> None:
        async with OriginServer() as origin:
            url = origin.add_file("flaky.bin", DATA)
            origin.set_faults("/flaky.bin", close_after={"bytes": BODY_CHUNK + 10})
            source = HttpSource()
            try:
                sink = RecordingSink()
                await source.fetch_range_to(url, {}, 5, len(DATA) - 5, sink)
                assert b"".join(sink.chunks) == DATA[5:]
            finally:
                await source.close()
            assert len(origin.stats("/flaky.bin")["ranges"]) == 2

    asyncio.run(main())
