"""Cut-through relaying on the parent side: the receiving record, and a real piece
server streaming a piece from one while it lands (daemons/peer/receiving.py)."""

from __future__ import annotations

import asyncio
import socket
import zlib

import pytest

from d7y.core.messages import Error, GetPiece, Piece, Ping, Pong
from d7y.core.protocol import encode_frame
from d7y.daemons.framing import FramedStream
from d7y.daemons.peer.piece_client import PieceClient, PieceFetchError
from d7y.daemons.peer.piece_server import PieceServer
from d7y.daemons.peer.receiving import ReceivingFailed, ReceivingPieces
from d7y.daemons.peer.storage import Storage
from d7y.daemons.peer.task_manager import TaskManager
from d7y.daemons.peer.task_store import TaskStore
from d7y.daemons.sources import SourcePolicy, Sources

TASK = "a" * 64
GARBAGE = 0xEE


def test_waiters_wake_on_progress_and_never_see_the_last_byte_unverified():
    async def main():
        pieces = ReceivingPieces()
        events: list[tuple[str, int, bool]] = []
        pieces.listeners.append(lambda t, n, started: events.append((t, n, started)))
        record = pieces.start(TASK, 3, 3 * 100, 100, "crc32:1", memoryview(bytearray(128)))
        assert record is not None and events == [(TASK, 3, True)]
        assert pieces.numbers(TASK) == [3]
        # A second fetch of the same piece (the endgame's) gets no record of its own.
        assert pieces.start(TASK, 3, 300, 100, "crc32:1", memoryview(bytearray(100))) is None
        waiter = asyncio.ensure_future(record.wait_beyond(0))
        await asyncio.sleep(0)
        assert not waiter.done()
        record.progress(40)
        assert await waiter == 40
        # Every byte landed, but the digest is not checked yet: the last one waits.
        record.progress(100)
        assert await record.wait_beyond(40) == 99
        last = asyncio.ensure_future(record.wait_beyond(99))
        await asyncio.sleep(0)
        assert not last.done()
        record.verify()
        assert await last == 100
        pieces.end(record, stored=True)
        # Stored: the store announces it; no "not receiving" news.
        assert events == [(TASK, 3, True)] and pieces.numbers(TASK) == []

    asyncio.run(main())


def test_a_failed_transfer_aborts_its_readers_and_is_announced():
    async def main():
        pieces = ReceivingPieces()
        events: list[tuple[str, int, bool]] = []
        pieces.listeners.append(lambda t, n, started: events.append((t, n, started)))
        record = pieces.start(TASK, 0, 0, 100, "crc32:1", memoryview(bytearray(100)))
        record.progress(10)
        waiter = asyncio.ensure_future(record.wait_beyond(10))
        await asyncio.sleep(0)
        pieces.end(record, stored=False, reason="parent gone")
        with pytest.raises(ReceivingFailed, match="parent gone"):
            await waiter
        with pytest.raises(ReceivingFailed):
            await record.wait_beyond(0)  # a late reader fails too, even below landed
        assert events == [(TASK, 0, True), (TASK, 0, False)]
        assert pieces.get(TASK, 0) is None
        # Quiet end: another fetch stored the piece meanwhile.
        again = pieces.start(TASK, 0, 0, 100, "crc32:1", memoryview(bytearray(100)))
        pieces.end(again, stored=False, announce=False)
        assert events[-1] == (TASK, 0, True)

    asyncio.run(main())


async def _serving(tmp_path, body, **server_args):
    storage = Storage(tmp_path / "data")
    store = TaskStore(storage)
    manager = TaskManager(store, Sources(), remote_sources=Sources(policy=_policy()))
    server = PieceServer(manager, **server_args)
    await server.start("127.0.0.1", 0)
    try:
        return await body(store.receiving, server)
    finally:
        await server.stop()
        storage.close()


def _policy() -> SourcePolicy:
    return SourcePolicy()


class _Reader:
    """Reads a payload with the framing's progress callback; ``until`` waits for bytes."""

    def __init__(self, conn: FramedStream, length: int) -> None:
        self.view = memoryview(bytearray(length))
        self.got = 0
        self._moved = asyncio.Event()
        self.task = asyncio.ensure_future(conn.read_payload(self.view, length, self._progress))

    def _progress(self, n: int) -> None:
        self.got = n
        self._moved.set()

    async def until(self, n: int) -> None:
        while self.got < n:
            if self.task.done():
                self.task.result()  # raises what ended it
                break
            self._moved.clear()
            waiter = asyncio.ensure_future(self._moved.wait())
            await asyncio.wait([waiter, self.task], return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()


def test_a_piece_is_served_only_as_far_as_it_landed(tmp_path):
    """The buffer starts as garbage and each part is written just before it is reported
    landed: any byte sent early would reach the child as garbage."""
    length = 1 << 20
    data = bytes((i * 7 + 3) & 0xFF for i in range(length))

    async def body(receiving: ReceivingPieces, server: PieceServer):
        buffer = bytearray([GARBAGE]) * length
        record = receiving.start(TASK, 2, 2 * length, length, f"crc32:{zlib.crc32(data)}",
                                 memoryview(buffer))  # fmt: skip
        conn = await FramedStream.connect("127.0.0.1", server.port, timeout=10)
        try:
            await conn.send(GetPiece(task_id=TASK, number=2), 1)
            _, header = await conn.read()
            assert isinstance(header, Piece) and header.receiving
            assert (header.length, header.offset) == (length, 2 * length)
            reader = _Reader(conn, length)
            landed = 0
            for upto in (1000, 300_000, length):
                buffer[landed:upto] = data[landed:upto]
                record.progress(upto)
                landed = upto
                await reader.until(min(upto, length - 1))
            # All landed, not verified: the last byte was garbage until now, held back.
            assert reader.got == length - 1
            assert server.metrics.bytes_uploaded._value.get() == length - 1
            buffer[length - 1] = data[length - 1]
            record.verify()
            crc = await reader.task
            assert bytes(reader.view) == data and crc == zlib.crc32(data)
            receiving.end(record, stored=True)
            assert server.metrics.relayed_pieces._value.get() == 1
        finally:
            conn.close()

    asyncio.run(_serving(tmp_path, body))


def test_a_relay_whose_transfer_fails_is_cut_off_and_the_server_keeps_serving(tmp_path):
    length = 64 * 1024

    async def body(receiving: ReceivingPieces, server: PieceServer):
        buffer = bytearray(length)
        record = receiving.start(TASK, 0, 0, length, "crc32:1", memoryview(buffer))
        conn = await FramedStream.connect("127.0.0.1", server.port, timeout=10)
        try:
            await conn.send(GetPiece(task_id=TASK, number=0), 1)
            _, header = await conn.read()
            assert isinstance(header, Piece) and header.receiving
            record.progress(5000)
            reader = _Reader(conn, length)
            await reader.until(5000)
            receiving.end(record, stored=False, reason="its parent went away")
            # The payload breaks off: the connection closes before its end.
            with pytest.raises(EOFError):
                await reader.task
            assert reader.got == 5000
        finally:
            conn.close()
        assert server.metrics.relays_aborted._value.get() == 1
        # The piece is no longer received: not found; the server still answers.
        conn = await FramedStream.connect("127.0.0.1", server.port, timeout=10)
        try:
            await conn.send(GetPiece(task_id=TASK, number=0), 3)
            _, error = await conn.read()
            assert isinstance(error, Error) and error.code == "not_found"
            await conn.send(Ping(nonce=9), 5)
            assert (await conn.read())[1] == Pong(nonce=9)
        finally:
            conn.close()

    asyncio.run(_serving(tmp_path, body))


def test_a_child_that_never_reads_holds_one_slot_and_blocks_nothing_else(tmp_path):
    """A child asks for a relayed piece and never reads it: its upload stalls, but the
    transfer being relayed ends (stored) without waiting for it, the buffer it reads from
    stays its own (``shared``: not reused), and other children are served meanwhile."""
    length = 8 << 20  # more than the socket buffers hold

    async def body(receiving: ReceivingPieces, server: PieceServer):
        data = bytes(range(256)) * (length // 256)
        record = receiving.start(TASK, 1, length, length, f"crc32:{zlib.crc32(data)}",
                                 memoryview(bytearray(data)))  # fmt: skip
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.setblocking(False)
        await asyncio.get_running_loop().sock_connect(stalled, ("127.0.0.1", server.port))
        try:
            stalled.send(encode_frame(GetPiece(task_id=TASK, number=1), 1))
            while not record.readers:
                await asyncio.sleep(0.01)
            record.progress(length)
            record.verify()
            receiving.end(record, stored=True)  # returns at once: nobody waits for readers
            assert record.shared and record.readers == 1
            # Another child is served in full while the first one stalls.
            other = receiving.start(TASK, 2, 2 * length, 1000, f"crc32:{zlib.crc32(data[:1000])}",
                                    memoryview(bytearray(data[:1000])))  # fmt: skip
            other.verify()
            conn = await FramedStream.connect("127.0.0.1", server.port, timeout=10)
            try:
                await conn.send(GetPiece(task_id=TASK, number=2), 1)
                _, header = await conn.read()
                assert isinstance(header, Piece) and header.length == 1000
                view = bytearray(1000)
                assert await conn.read_payload(view, 1000) == zlib.crc32(data[:1000])
            finally:
                conn.close()
            assert server.metrics.active_relays._value.get() == 1  # the stalled one
        finally:
            stalled.close()

    asyncio.run(_serving(tmp_path, body))


def test_the_child_takes_a_broken_off_relay_for_a_lost_piece_not_a_bad_parent(tmp_path):
    """PieceClient.fetch of a piece its parent relays: if the relay breaks off, the
    error is ``lost`` (ask again, not the parent's fault), not ``connection`` (which
    drops the parent); and the relay's own progress callback sees every landed byte."""
    length = 256 * 1024

    async def body(receiving: ReceivingPieces, server: PieceServer):
        record = receiving.start(TASK, 0, 0, length, "crc32:1", memoryview(bytearray(length)))
        client = PieceClient(timeout=30)
        seen: list[int] = []

        def relay(header: Piece):
            assert header.receiving and header.length == length
            return seen.append

        async def break_off() -> None:
            while not seen:  # the child's first bytes are in: cut the relay off
                await asyncio.sleep(0.01)
            receiving.end(record, stored=False, reason="its parent went away")

        record.progress(1000)
        breaker = asyncio.ensure_future(break_off())
        try:
            with pytest.raises(PieceFetchError) as info:
                await client.fetch(
                    ("127.0.0.1", server.port), TASK, 0, memoryview(bytearray(length)), relay=relay
                )
        finally:
            await breaker
            client.close()
        assert info.value.kind == "lost", info.value
        assert seen and seen[-1] == 1000

    asyncio.run(_serving(tmp_path, body))


def test_a_lying_relay_is_caught_by_the_child_as_corrupt(tmp_path):
    """testing.corrupt_uploads flips a byte of relayed pieces too: the child's digest
    check catches it (``corrupt``: the relay is blocklisted)."""
    length = 64 * 1024
    data = bytes(range(256)) * (length // 256)

    async def body(receiving: ReceivingPieces, server: PieceServer):
        digest = f"crc32:{zlib.crc32(data)}"
        record = receiving.start(TASK, 0, 0, length, digest, memoryview(bytearray(data)))
        record.verify()
        client = PieceClient(timeout=30)
        try:
            with pytest.raises(PieceFetchError) as info:
                await client.fetch(
                    ("127.0.0.1", server.port), TASK, 0, memoryview(bytearray(length)), {0: digest}
                )
        finally:
            client.close()
        assert info.value.kind == "corrupt", info.value

    asyncio.run(_serving(tmp_path, body, corrupt=True))
