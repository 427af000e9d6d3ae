"""d7y.ext.transfer: sendfile out, recv_into in, on uvloop and the stock asyncio loop.

Every test runs against both backends (``transfer_impl``: compiled and twin) and both
event loops (``run``). Loop registrations are checked at the kernel level: the helper
``epoll_watch`` reads /proc/self/fdinfo of every epoll instance of the process, which
sees what asyncio's selector and libuv have registered alike.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import mmap
import os
import random
import select
import socket
import struct
import sys
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvloop  # a hard dependency on Linux: a broken install must fail, not skip

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="uses sendfile(2) and /proc (Linux)"
)

MiB = 1 << 20
BIG = 64 * MiB
PIECE = 4 * MiB


# -- fixtures and helpers -------------------------------------------------------------------

LOOP_FACTORIES: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {
    "asyncio": asyncio.SelectorEventLoop,
    "uvloop": uvloop.new_event_loop,
}


@pytest.fixture(params=sorted(LOOP_FACTORIES))
def run(request) -> Iterator[Callable[[Any], Any]]:
    """Run a coroutine to completion on a fresh loop of the parametrized kind."""
    with asyncio.Runner(loop_factory=LOOP_FACTORIES[request.param]) as runner:
        yield runner.run


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[str, bytes]:
    """A 64 MiB file of reproducible pseudo-random bytes, and those bytes."""
    data = random.Random(0x5EED).randbytes(BIG)
    path = tmp_path_factory.mktemp("transfer") / "big.bin"
    path.write_bytes(data)
    return str(path), data


@pytest.fixture
def small(tmp_path) -> tuple[str, bytes]:
    data = random.Random(7).randbytes(300_000)
    path = tmp_path / "small.bin"
    path.write_bytes(data)
    return str(path), data


@contextlib.contextmanager
def tcp_pair(sndbuf: int | None = None, rcvbuf: int | None = None):
    """A connected loopback TCP pair (client, server), both non-blocking."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        if rcvbuf is not None:  # set before accept so the window starts small
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        listener.listen(1)
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    if sndbuf is not None:
        client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    for s in (client, server):
        s.setblocking(False)
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def epoll_watch(fd: int) -> int:
    """OR of the event masks with which any epoll instance of this process watches fd."""
    mask = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/self/fdinfo/{name}") as info:
                lines = info.read().splitlines()
        except OSError:
            continue  # an fd that closed while we looked
        for line in lines:
            # "tfd:        7 events:       19 data: ..."
            fields = line.split()
            if fields[:1] == ["tfd:"] and int(fields[1]) == fd:
                mask |= int(fields[3], 16)
    return mask


async def wait_for_watch(fd: int, event: int, present: bool = True) -> None:
    """Let the loop run until fd's epoll registration for event is (or is not) there."""
    for _ in range(500):
        await asyncio.sleep(0.01)
        if bool(epoll_watch(fd) & event) is present:
            return
    raise AssertionError(f"fd {fd}: event {event:#x} registered={not present} after 5 s")


async def recv_all(impl, sock: socket.socket, n: int, buf: bytearray) -> tuple[bytes, int]:
    crc = await impl.recv_into_exact(sock, buf, n)
    return bytes(buf[:n]), crc


# -- the 64 MiB transfer --------------------------------------------------------------------


def test_64mib_byte_exact_over_loopback(transfer_impl, run, big):
    """send_file moves the whole file; recv_into_exact takes it in 4 MiB pieces."""
    path, data = big

    async def main():
        buf = bytearray(PIECE)
        with open(path, "rb") as f, tcp_pair() as (client, server):

            async def receive() -> list[int]:
                crcs = []
                for start in range(0, BIG, PIECE):
                    crc = await transfer_impl.recv_into_exact(server, buf, PIECE)
                    # byte-exact, not only checksum-equal
                    assert buf == data[start : start + PIECE], f"piece at {start} differs"
                    crcs.append(crc)
                return crcs

            receiver = asyncio.create_task(receive())
            sent = await transfer_impl.send_file(client, f, 0, BIG)
            crcs = await receiver
        assert sent == BIG
        assert crcs == [zlib.crc32(data[i : i + PIECE]) for i in range(0, BIG, PIECE)]

    run(main())


# -- partial ranges, both send paths ---------------------------------------------------------

RANGES = [(0, 1), (1, 4095), (4093, 70_001), (299_995, 5), (12_345, 200_000), (0, 300_000)]


@pytest.mark.parametrize(("offset", "count"), RANGES)
@pytest.mark.parametrize("path_kind", ["sendfile", "fallback"])
def test_partial_ranges(transfer_impl, run, small, offset, count, path_kind):
    path, data = small
    sentinel = b"\xa5" * 16

    async def main():
        buf = bytearray(count + len(sentinel))
        buf[count:] = sentinel
        fd = os.open(path, os.O_RDONLY)
        try:
            with tcp_pair() as (client, server):
                receiver = asyncio.create_task(recv_all(transfer_impl, server, count, buf))
                if path_kind == "sendfile":
                    sent = await transfer_impl.send_file(client, fd, offset, count)
                else:  # an odd chunk size, so chunks never line up with the range
                    chunk = bytearray(65_537)
                    sent = await transfer_impl.send_file_fallback(client, fd, offset, count, chunk)
                got, crc = await receiver
            # the fd's own file position is neither used nor moved
            assert os.lseek(fd, 0, os.SEEK_CUR) == 0
        finally:
            os.close(fd)
        assert sent == count
        assert got == data[offset : offset + count]
        assert crc == zlib.crc32(data[offset : offset + count])
        assert buf[count:] == sentinel, "recv_into_exact wrote past n"

    run(main())


def test_fallback_moves_64mib_with_small_reused_buffer(transfer_impl, run, big):
    path, data = big

    async def main():
        inbuf = bytearray(PIECE)
        with open(path, "rb") as f, tcp_pair() as (client, server):

            async def receive() -> list[int]:
                return [
                    await transfer_impl.recv_into_exact(server, inbuf, PIECE)
                    for _ in range(BIG // PIECE)
                ]

            receiver = asyncio.create_task(receive())
            sent = await transfer_impl.send_file_fallback(client, f, 0, BIG, bytearray(MiB))
            crcs = await receiver
        assert sent == BIG
        assert crcs == [zlib.crc32(data[i : i + PIECE]) for i in range(0, BIG, PIECE)]

    run(main())


def test_unix_stream_socket(transfer_impl, run, small):
    path, data = small

    async def main():
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with a, b, open(path, "rb") as f:
            a.setblocking(False)
            b.setblocking(False)
            receiver = asyncio.create_task(recv_all(transfer_impl, b, len(data), bytearray(MiB)))
            assert await transfer_impl.send_file(a, f, 0, len(data)) == len(data)
            got, crc = await receiver
        assert got == data
        assert crc == zlib.crc32(data)

    run(main())


def test_both_directions_at_once_on_one_socket(transfer_impl, run, big):
    """Each end sends with send_file while it receives with recv_into_exact.

    Both ends block in both directions at times, so each socket has a writer and a
    reader registered together; ending one must not disturb the other.
    """
    path, data = big
    size = 16 * MiB

    async def main():
        with open(path, "rb") as f, tcp_pair(sndbuf=128 * 1024) as (client, server):

            async def end(sock: socket.socket, offset: int) -> tuple[int, int]:
                buf = bytearray(PIECE)

                async def receive() -> list[int]:
                    return [
                        await transfer_impl.recv_into_exact(sock, buf, PIECE)
                        for _ in range(size // PIECE)
                    ]

                receiving = asyncio.create_task(receive())
                sent = await transfer_impl.send_file(sock, f, offset, size)
                return sent, await receiving

            (sent_c, crcs_c), (sent_s, crcs_s) = await asyncio.gather(
                end(client, 0), end(server, size)
            )
            for s in (client, server):
                assert not epoll_watch(s.fileno()) & (select.EPOLLIN | select.EPOLLOUT)
        assert sent_c == sent_s == size

        def expect(base: int) -> list[int]:
            return [zlib.crc32(data[base + i : base + i + PIECE]) for i in range(0, size, PIECE)]

        assert crcs_s == expect(0)  # the server received what the client sent
        assert crcs_c == expect(size)

    run(main())


def test_zero_counts_return_zero(transfer_impl, run, small):
    path, _ = small

    async def main():
        with open(path, "rb") as f, tcp_pair() as (client, server):
            assert await transfer_impl.send_file(client, f, 10, 0) == 0
            assert await transfer_impl.send_file_fallback(client, f, 10, 0, bytearray(1)) == 0
            assert await transfer_impl.recv_into_exact(server, bytearray(0), 0) == 0

    run(main())


@pytest.mark.parametrize(
    "make_buf",
    [
        pytest.param(lambda n: memoryview(bytearray(n + 8))[8:], id="memoryview-slice"),
        pytest.param(lambda n: array.array("I", bytes(n)), id="array-I"),
        pytest.param(lambda n: mmap.mmap(-1, n), id="mmap"),
        pytest.param(lambda n: memoryview(bytearray(n)).cast("B", (n // 4, 4)), id="2d"),
    ],
)
def test_recv_into_other_writable_buffers(transfer_impl, run, make_buf):
    payload = random.Random(3).randbytes(4096)

    async def main():
        buf = make_buf(len(payload))
        with tcp_pair() as (client, server):
            await asyncio.get_running_loop().sock_sendall(client, payload)
            crc = await transfer_impl.recv_into_exact(server, buf, len(payload))
        assert crc == zlib.crc32(payload)
        assert memoryview(buf).cast("B")[: len(payload)] == payload

    run(main())


# -- automatic fallback when the kernel refuses sendfile -------------------------------------


def sendfile_refuses(path: str) -> bool:
    """True when this kernel answers sendfile from ``path`` with EINVAL (no splice)."""
    a, b = socket.socketpair()
    fd = os.open(path, os.O_RDONLY)
    try:
        os.sendfile(a.fileno(), fd, 0, 1)
    except OSError as exc:
        return exc.errno == errno.EINVAL
    finally:
        os.close(fd)
        a.close()
        b.close()
    return False


PROC_STATUS = "/proc/self/status"  # seq_file without splice_read on current kernels


@pytest.mark.skipif(not sendfile_refuses(PROC_STATUS), reason="this kernel can sendfile from /proc")
def test_send_file_falls_back_when_kernel_refuses_sendfile(transfer_impl, run):
    count = 64  # "Name:\tpython...\nUmask:..." stays the same for the whole test

    async def main():
        fd = os.open(PROC_STATUS, os.O_RDONLY)
        try:
            expected = os.pread(fd, count, 0)
            with tcp_pair() as (client, server):
                with pytest.raises(OSError) as info:
                    await transfer_impl.send_file(client, fd, 0, count, fallback=False)
                assert info.value.errno == errno.EINVAL
                receiver = asyncio.create_task(
                    recv_all(transfer_impl, server, count, bytearray(count))
                )
                sent = await transfer_impl.send_file(client, fd, 0, count)
                got, crc = await receiver
        finally:
            os.close(fd)
        assert sent == count
        assert got == expected
        assert got.startswith(b"Name:")
        assert crc == zlib.crc32(expected)

    run(main())


@pytest.mark.parametrize("err", [errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP])
def test_twin_falls_back_on_refusing_errnos(run, small, monkeypatch, err):
    """The twin's decision table, forced: the first sendfile fails with ``err``."""
    from d7y.ext import _transfer_py

    calls = []

    def refusing_sendfile(*args):
        calls.append(args)
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(_transfer_py, "_sendfile", refusing_sendfile)
    path, data = small

    async def main():
        with open(path, "rb") as f, tcp_pair() as (client, server):
            receiver = asyncio.create_task(
                recv_all(_transfer_py, server, len(data), bytearray(len(data)))
            )
            assert await _transfer_py.send_file(client, f, 0, len(data)) == len(data)
            got, _ = await receiver
            with pytest.raises(OSError) as info:
                await _transfer_py.send_file(client, f, 0, 1, fallback=False)
            assert info.value.errno == err
        assert got == data
        assert len(calls) == 2

    run(main())


def test_twin_without_os_sendfile_uses_copy_path(run, small, monkeypatch):
    from d7y.ext import _transfer_py

    monkeypatch.setattr(_transfer_py, "_sendfile", None)
    path, data = small

    async def main():
        with open(path, "rb") as f, tcp_pair() as (client, server):
            receiver = asyncio.create_task(recv_all(_transfer_py, server, 1000, bytearray(1000)))
            assert await _transfer_py.send_file(client, f, 5, 1000) == 1000
            got, _ = await receiver
            with pytest.raises(OSError) as info:
                await _transfer_py.send_file(client, f, 0, 1, fallback=False)
            assert info.value.errno == errno.ENOSYS
        assert got == data[5:1005]

    run(main())


# -- errors at send time ---------------------------------------------------------------------


@pytest.mark.parametrize("path_kind", ["sendfile", "fallback"])
@pytest.mark.parametrize(
    ("offset", "count", "sent"), [(0, 1000, 700), (500, 300, 200), (900, 5, 0)]
)
def test_short_file(transfer_impl, run, tmp_path, path_kind, offset, count, sent):
    path = tmp_path / "short.bin"
    path.write_bytes(bytes(700))

    async def main():
        with open(path, "rb") as f, tcp_pair() as (client, server):
            with pytest.raises(transfer_impl.ShortFileError) as info:
                if path_kind == "sendfile":
                    await transfer_impl.send_file(client, f, offset, count)
                else:
                    await transfer_impl.send_file_fallback(client, f, offset, count, bytearray(64))
            # what did reach the peer is exactly the bytes the error reports as sent
            received = 0
            if sent:
                received = len(await asyncio.get_running_loop().sock_recv(server, 4096))
        err = info.value
        assert isinstance(err, EOFError)
        assert (err.offset, err.count, err.sent) == (offset, count, sent)
        assert received == sent
        message = str(err)
        assert f"{count} bytes" in message
        assert f"offset {offset}" in message
        assert f"after {sent} bytes" in message

    run(main())


def test_send_to_closed_peer_raises_connection_error(transfer_impl, run, big):
    path, _ = big

    async def main():
        with open(path, "rb") as f, tcp_pair() as (client, server):
            server.close()
            with pytest.raises(ConnectionError):
                await transfer_impl.send_file(client, f, 0, BIG)

    run(main())


@pytest.mark.parametrize("sent_first", [0, 100])
def test_recv_peer_closes_early(transfer_impl, run, sent_first):
    payload = random.Random(5).randbytes(sent_first)

    async def main():
        with tcp_pair() as (client, server):
            loop = asyncio.get_running_loop()
            if payload:
                await loop.sock_sendall(client, payload)
            client.shutdown(socket.SHUT_WR)
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await transfer_impl.recv_into_exact(server, bytearray(1000), 1000)
            assert not epoll_watch(server.fileno()) & select.EPOLLIN
        assert info.value.partial == payload
        assert info.value.expected == 1000

    run(main())


def test_recv_connection_reset_raises_connection_error(transfer_impl, run):
    async def main():
        with tcp_pair() as (client, server):
            # SO_LINGER 0: close() sends RST instead of FIN
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()
            with pytest.raises(ConnectionResetError):
                await transfer_impl.recv_into_exact(server, bytearray(10), 10)

    run(main())


# -- cancellation leaves nothing behind ------------------------------------------------------


def test_epoll_watch_sees_loop_registrations(run):
    """The check the cancellation tests rely on can fail: it sees a live writer."""

    async def main():
        loop = asyncio.get_running_loop()
        with tcp_pair() as (client, _server):
            fd = client.fileno()
            assert not epoll_watch(fd) & select.EPOLLOUT
            loop.add_writer(fd, lambda: None)
            await wait_for_watch(fd, select.EPOLLOUT, present=True)
            loop.remove_writer(fd)
            await wait_for_watch(fd, select.EPOLLOUT, present=False)

    run(main())


@pytest.mark.parametrize("path_kind", ["sendfile", "fallback"])
def test_cancel_mid_send_removes_writer_and_leaks_no_fd(transfer_impl, run, big, path_kind):
    path, _ = big

    async def main():
        loop = asyncio.get_running_loop()
        # small buffers and a receiver that never reads: the sender must block
        with open(path, "rb") as f, tcp_pair(sndbuf=64 * 1024, rcvbuf=64 * 1024) as pair:
            client, _server = pair
            fd = client.fileno()
            fds_before = open_fds()
            if path_kind == "sendfile":
                coro = transfer_impl.send_file(client, f, 0, BIG)
            else:
                coro = transfer_impl.send_file_fallback(client, f, 0, BIG, bytearray(MiB))
            sender = asyncio.create_task(coro)
            await wait_for_watch(fd, select.EPOLLOUT, present=True)
            assert not sender.done(), "sender finished although the receiver never read"
            sender.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sender
            await asyncio.sleep(0)  # let libuv apply pending poll changes
            assert not epoll_watch(fd) & select.EPOLLOUT, "a writer is still registered"
            if isinstance(loop, asyncio.SelectorEventLoop):
                assert loop.remove_writer(fd) is False
            assert open_fds() == fds_before
            assert not f.closed  # the caller owns the file

    run(main())


def test_cancel_mid_recv_removes_reader(transfer_impl, run):
    async def main():
        loop = asyncio.get_running_loop()
        with tcp_pair() as (client, server):
            await loop.sock_sendall(client, b"x" * 100)  # some, not all, of n
            fd = server.fileno()
            fds_before = open_fds()
            receiver = asyncio.create_task(
                transfer_impl.recv_into_exact(server, bytearray(1000), 1000)
            )
            await wait_for_watch(fd, select.EPOLLIN, present=True)
            receiver.cancel()
            with pytest.raises(asyncio.CancelledError):
                await receiver
            await asyncio.sleep(0)
            assert not epoll_watch(fd) & select.EPOLLIN, "a reader is still registered"
            if isinstance(loop, asyncio.SelectorEventLoop):
                assert loop.remove_reader(fd) is False
            assert open_fds() == fds_before

    run(main())


# -- argument validation ---------------------------------------------------------------------


def test_closed_socket_is_rejected(transfer_impl, run, small):
    path, _ = small

    async def main():
        with open(path, "rb") as f, tcp_pair() as (client, server):
            client.close()
            server.close()
            with pytest.raises(ValueError, match=r"sock is closed"):
                await transfer_impl.send_file(client, f, 0, 10)
            with pytest.raises(ValueError, match=r"sock is closed"):
                await transfer_impl.send_file_fallback(client, f, 0, 10, bytearray(10))
            with pytest.raises(ValueError, match=r"sock is closed"):
                await transfer_impl.recv_into_exact(server, bytearray(10), 10)

    run(main())


def test_blocking_socket_is_rejected(transfer_impl, run, small):
    path, _ = small

    async def main():
        with open(path, "rb") as f, tcp_pair() as (client, server):
            for s in (client, server):
                s.setblocking(True)
            hint = r"non-blocking.*setblocking\(False\)"
            with pytest.raises(ValueError, match=hint):
                await transfer_impl.send_file(client, f, 0, 10)
            with pytest.raises(ValueError, match=hint):
                await transfer_impl.send_file_fallback(client, f, 0, 10, bytearray(10))
            with pytest.raises(ValueError, match=hint):
                await transfer_impl.recv_into_exact(server, bytearray(10), 10)
            client.settimeout(1.0)  # a timeout socket is not an event-loop socket either
            with pytest.raises(ValueError, match=hint):
                await transfer_impl.send_file(client, f, 0, 10)

    run(main())


def test_wrong_socket_kinds_are_rejected(transfer_impl, run, small):
    path, _ = small

    async def main():
        with open(path, "rb") as f:
            with pytest.raises(TypeError, match=r"socket\.socket"):
                await transfer_impl.send_file(f.fileno(), f, 0, 10)
            with pytest.raises(TypeError, match=r"socket\.socket"):
                await transfer_impl.recv_into_exact(None, bytearray(1), 1)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                udp.setblocking(False)
                with pytest.raises(ValueError, match=r"SOCK_STREAM"):
                    await transfer_impl.send_file(udp, f, 0, 10)
                with pytest.raises(ValueError, match=r"SOCK_STREAM"):
                    await transfer_impl.recv_into_exact(udp, bytearray(1), 1)

    run(main())


def test_ssl_socket_is_rejected(transfer_impl, run, small):
    import ssl

    path, _ = small

    async def main():
        ctx = ssl.create_default_context()
        with open(path, "rb") as f, tcp_pair() as (client, _server):
            wrapped = ctx.wrap_socket(
                socket.socket(fileno=os.dup(client.fileno())),
                server_hostname="localhost",
                do_handshake_on_connect=False,
            )
            with wrapped:
                with pytest.raises(TypeError, match=r"SSLSocket.*bypass TLS"):
                    await transfer_impl.send_file(wrapped, f, 0, 10)
                with pytest.raises(TypeError, match=r"SSLSocket"):
                    await transfer_impl.recv_into_exact(wrapped, bytearray(1), 1)

    run(main())


class NoFileno:
    pass


class BadFileno:
    def fileno(self) -> str:
        return "3"


SEND_BAD_ARGS = [
    # (fd, offset, count, exception, message pattern)
    ("file", -1, 10, ValueError, r"offset must be >= 0, got -1"),
    ("file", 0, -5, ValueError, r"count must be >= 0, got -5"),
    ("file", 1.5, 10, TypeError, r"offset must be an int, got float"),
    ("file", 0, "10", TypeError, r"count must be an int, got str"),
    ("file", True, 10, TypeError, r"offset must be an int, got bool"),
    ("file", 2**62, 2**62, ValueError, r"past the largest file offset"),
    (-1, 0, 10, ValueError, r"fd must be an open file descriptor"),
    (2**40, 0, 10, ValueError, r"fd must be an open file descriptor"),
    ("path", 0, 10, TypeError, r"fd must be an int file descriptor or have fileno\(\), got str"),
    (None, 0, 10, TypeError, r"got NoneType"),
    (False, 0, 10, TypeError, r"got bool"),
    (NoFileno(), 0, 10, TypeError, r"got NoFileno"),
    (BadFileno(), 0, 10, TypeError, r"fileno\(\) must return an int"),
    ("closed", 0, 10, ValueError, r"is closed"),
]


@pytest.mark.parametrize(("fd", "offset", "count", "exc", "pattern"), SEND_BAD_ARGS)
@pytest.mark.parametrize("path_kind", ["sendfile", "fallback"])
def test_send_bad_arguments(transfer_impl, run, small, fd, offset, count, exc, pattern, path_kind):
    path, _ = small

    async def main():
        with open(path, "rb") as f, tcp_pair() as (client, server):
            closed = open(path, "rb")  # noqa: SIM115 - closed on purpose
            closed.close()
            actual_fd = {"file": f, "closed": closed, "path": path}.get(fd, fd)
            with pytest.raises(exc, match=pattern):
                if path_kind == "sendfile":
                    await transfer_impl.send_file(client, actual_fd, offset, count)
                else:
                    await transfer_impl.send_file_fallback(
                        client, actual_fd, offset, count, bytearray(16)
                    )
            # nothing was sent
            with pytest.raises(BlockingIOError):
                server.recv(1)

    run(main())


BUF_BAD_ARGS = [
    # (buf, n, exception, message pattern)
    (b"x" * 16, 4, TypeError, r"writable.*bytes"),
    ("text", 4, TypeError, r"writable bytes-like object.*got str"),
    (None, 4, TypeError, r"got NoneType"),
    (memoryview(bytearray(32))[::2], 4, TypeError, r"C-contiguous"),
    (bytearray(8), 9, ValueError, r"buf holds 8 bytes but n is 9"),
    (bytearray(8), -1, ValueError, r"n must be >= 0"),
    (bytearray(8), 2.0, TypeError, r"n must be an int"),
]


@pytest.mark.parametrize(("buf", "n", "exc", "pattern"), BUF_BAD_ARGS)
def test_recv_bad_arguments(transfer_impl, run, buf, n, exc, pattern):
    async def main():
        with tcp_pair() as (client, server):
            await asyncio.get_running_loop().sock_sendall(client, b"z" * 16)
            with pytest.raises(exc, match=pattern):
                await transfer_impl.recv_into_exact(server, buf, n)
            # nothing was consumed from the socket
            assert server.recv(100) == b"z" * 16

    run(main())


@pytest.mark.parametrize(
    ("buf", "exc", "pattern"),
    [
        (b"x" * 16, TypeError, r"writable"),
        (bytearray(0), ValueError, r"buf is empty"),
        (array.array("d", [0.0, 1.0]), None, None),  # fine: viewed as 16 bytes
    ],
)
def test_fallback_buffer_checks(transfer_impl, run, small, buf, exc, pattern):
    path, data = small

    async def main():
        with open(path, "rb") as f, tcp_pair() as (client, server):
            if exc is None:
                receiver = asyncio.create_task(recv_all(transfer_impl, server, 100, bytearray(100)))
                assert await transfer_impl.send_file_fallback(client, f, 3, 100, buf) == 100
                assert (await receiver)[0] == data[3:103]
            else:
                with pytest.raises(exc, match=pattern):
                    await transfer_impl.send_file_fallback(client, f, 0, 10, buf)

    run(main())


# -- the facade ------------------------------------------------------------------------------


def test_facade_reexports_the_backend():
    from d7y.ext import transfer

    assert transfer.backend.__name__ in ("d7y.ext._transfer", "d7y.ext._transfer_py")
    for name in ("send_file", "send_file_fallback", "recv_into_exact", "ShortFileError"):
        assert getattr(transfer, name) is getattr(transfer.backend, name)
    assert issubclass(transfer.ShortFileError, EOFError)


def test_short_file_error_is_shared_and_picklable(transfer_impl):
    import pickle

    from d7y.ext import _transfer_py

    assert transfer_impl.ShortFileError is _transfer_py.ShortFileError
    err = pickle.loads(pickle.dumps(transfer_impl.ShortFileError(10, 20, 5)))
    assert (err.offset, err.count, err.sent) == (10, 20, 5)
