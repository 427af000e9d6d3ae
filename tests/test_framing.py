"""FramedStream, the daemons' frame reader: bad frames are consumed, buffers stay small
while idle, and servers' timeouts tell an idle connection from a stalled frame."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from d7y.core.messages import Error, GetTaskInfo, Ping
from d7y.core.protocol import MAGIC, MalformedFrame, UnknownMessageType, encode_frame
from d7y.daemons.framing import (
    MAX_BAD_FRAMES,
    FramedStream,
    IdleTimeout,
    ReadTimeout,
    TooManyBadFrames,
)
from d7y.daemons.stream import PlainStream

UNKNOWN = struct.pack(">2sBBII", MAGIC, 1, 0xEE, 1, 4) + b"\x00\x01\x02\x03"


def run(coro):
    return asyncio.run(coro)


async def pair() -> tuple[FramedStream, socket.socket]:
    ours, theirs = socket.socketpair()
    theirs.setblocking(True)
    return FramedStream(PlainStream(ours)), theirs


def test_an_unknown_type_is_skipped_whole_and_the_next_frame_read():
    async def main():
        framed, other = await pair()
        other.sendall(UNKNOWN + encode_frame(Ping(nonce=5), 3))
        with pytest.raises(UnknownMessageType) as caught:
            await framed.read()
        assert caught.value.stream_id == 1 and not caught.value.fatal
        stream_id, message = await framed.read()
        assert (stream_id, message) == (3, Ping(nonce=5))
        framed.close()
        other.close()

    run(main())


def test_a_connection_is_cut_off_after_too_many_bad_frames():
    async def main():
        framed, other = await pair()
        malformed = struct.pack(">2sBBII", MAGIC, 1, 0x10, 1, 1) + b"\xc1"  # not msgpack
        other.sendall((UNKNOWN + malformed) * MAX_BAD_FRAMES)
        for i in range(MAX_BAD_FRAMES):
            expected = UnknownMessageType if i % 2 == 0 else MalformedFrame
            with pytest.raises(expected):
                await framed.read()
        other.sendall(UNKNOWN)
        with pytest.raises(TooManyBadFrames) as caught:
            await framed.read()
        assert caught.value.fatal
        framed.close()
        other.close()

    run(main())


def test_the_buffer_is_small_while_idle_grows_for_bursts_and_shrinks_back():
    async def main():
        framed, other = await pair()
        assert framed.buffer_size == 0  # nothing allocated before the first byte
        other.sendall(encode_frame(Ping(nonce=1)))
        await framed.read()
        assert framed.buffer_size == FramedStream.IDLE_SIZE
        # A burst bigger than the idle buffer, and a frame bigger than the burst size.
        burst = b"".join(encode_frame(Ping(nonce=n)) for n in range(20_000))
        big = encode_frame(GetTaskInfo(task_id="a" * 400), 1)
        frames = 20_001
        writer = asyncio.get_running_loop().run_in_executor(None, other.sendall, burst + big)
        largest = 0
        for _ in range(frames):
            await framed.read()
            largest = max(largest, framed.buffer_size)
        await writer
        assert FramedStream.IDLE_SIZE < largest <= FramedStream.RECV_SIZE
        # The next read has to wait: the buffer goes back to the idle size.
        reader = asyncio.ensure_future(framed.read())
        await asyncio.sleep(0)
        assert framed.buffer_size == FramedStream.IDLE_SIZE
        other.sendall(encode_frame(Ping(nonce=2)))
        assert (await reader)[1] == Ping(nonce=2)
        framed.close()
        other.close()

    run(main())


def test_a_frame_larger_than_the_idle_buffer_is_read_and_the_buffer_released():
    async def main():
        ours, theirs = socket.socketpair()
        framed = FramedStream(PlainStream(ours), max_body_length=4 * 1024 * 1024)
        body_message = Error(code="internal", message="x" * 8000)
        frame = encode_frame(body_message, 1)
        writer = asyncio.get_running_loop().run_in_executor(None, theirs.sendall, frame)
        assert (await framed.read())[1] == body_message
        await writer
        reader = asyncio.ensure_future(framed.read())
        await asyncio.sleep(0)
        assert framed.buffer_size == FramedStream.IDLE_SIZE
        reader.cancel()
        framed.close()
        theirs.close()

    run(main())


def test_idle_and_stalled_reads_time_out_differently():
    async def main():
        framed, other = await pair()
        with pytest.raises(IdleTimeout):
            await framed.read(idle_timeout=0.05, frame_timeout=10)
        # Idle is a clean state: the next frame is still read.
        other.sendall(encode_frame(Ping(nonce=1)))
        assert (await framed.read(idle_timeout=10, frame_timeout=10))[1] == Ping(nonce=1)
        other.sendall(encode_frame(Ping(nonce=2))[:5])  # half a header, then nothing
        with pytest.raises(ReadTimeout) as caught:
            await framed.read(idle_timeout=10, frame_timeout=0.05)
        assert not isinstance(caught.value, IdleTimeout)
        assert "middle of a frame" in str(caught.value)
        framed.close()
        other.close()

    run(main())
