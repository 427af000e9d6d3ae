"""Pure-Python twin of ``d7y.ext._transfer``: zero-copy piece transfer on an event loop.

Same API, semantics, error types and messages as the compiled module; see
``d7y.ext.transfer`` for the documentation of every public name. This twin drives
``os.sendfile`` / ``os.preadv`` / ``loop.sock_recv_into`` / ``loop.sock_sendall``; the
compiled module makes the same system calls from C with the GIL released.

``ShortFileError`` is defined here and imported by the compiled module, so one class
is raised whichever backend runs (``except ShortFileError`` never depends on the build).
"""

from __future__ import annotations

import asyncio
import errno
import operator
import os
import socket
import sys
from typing import Any

# Piece digests are CRC-32 IEEE (zlib's value); d7y.ext.crc32 computes it in place.
from d7y.ext.crc32 import crc32 as _crc32

__all__ = [
    "FALLBACK_CHUNK",
    "ShortFileError",
    "recv_into_exact",
    "send_file",
    "send_file_fallback",
]

# Buffer size send_file allocates (once per call, never per chunk) when it has to fall
# back to pread + sock_sendall because the kernel refused sendfile for this fd pair.
FALLBACK_CHUNK = 1 << 20

# Linux sendfile(2) moves at most this many bytes per call; asking for more is harmless
# but we clamp so the count always fits the kernel's int-sized limit on every platform.
_SENDFILE_MAX = 0x7FFFF000

# The largest file offset (off_t is 64-bit signed on every platform we build for).
_OFF_MAX = (1 << 63) - 1

# errnos of a *first* sendfile call that mean "this fd/socket pair cannot be used with
# sendfile" rather than "the transfer failed": the file system has no splice support
# (EINVAL, e.g. /proc files), the kernel or libc lacks the call (ENOSYS), or the
# socket family refuses it (EOPNOTSUPP/ENOTSUP). Any other errno is a real error.
_NO_SENDFILE = frozenset(
    {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)}
)

# File descriptors are C ints.
_INT_MAX = (1 << 31) - 1

_sendfile = getattr(os, "sendfile", None)
_preadv = getattr(os, "preadv", None)


class ShortFileError(EOFError):
    """The file ended before ``count`` bytes from ``offset`` could be sent.

    A subclass of ``EOFError`` (like ``asyncio.IncompleteReadError``): the arguments were
    well-formed, the file is just shorter than ``offset + count`` at send time (it may
    have been truncated, or the caller's size is wrong). ``sent`` bytes have already gone
    to the peer, so the stream is out of step with the protocol framing: close the
    connection. Attributes: ``offset``, ``count``, ``sent``.
    """

    def __init__(self, offset: int, count: int, sent: int) -> None:
        self.offset = offset
        self.count = count
        self.sent = sent
        super().__init__(
            f"file ended early: asked to send {count} bytes from offset {offset}, but the "
            f"file has no data at offset {offset + sent} after {sent} bytes were sent; "
            f"check the file size (it must be at least offset + count = {offset + count})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.offset, self.count, self.sent))


# -- argument checks (the compiled module performs the same checks with the same messages)


def _check_int(name: str, value: object) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {number}")
    return number


def _sock_fd(sock: object) -> int:
    """Return the fd of a usable socket: connected-stream, open, non-blocking, not TLS."""
    if not isinstance(sock, socket.socket):
        raise TypeError(f"sock must be a socket.socket, got {type(sock).__name__}")
    ssl = sys.modules.get("ssl")  # an SSLSocket can only exist once ssl was imported
    if ssl is not None and isinstance(sock, ssl.SSLSocket):
        raise TypeError(
            "sock is an ssl.SSLSocket: sendfile and raw recv would bypass TLS; "
            "pass a plain socket.socket"
        )
    fd = sock.fileno()
    if fd < 0:
        raise ValueError("sock is closed (fileno() is -1); pass an open, connected socket")
    if sock.type != socket.SOCK_STREAM:
        raise ValueError(f"sock must be a SOCK_STREAM socket, got {sock.type!r}")
    if sock.gettimeout() != 0:
        raise ValueError(
            "sock must be non-blocking for use on an event loop: call sock.setblocking(False)"
        )
    return fd


def _file_fd(fd: object) -> int:
    """Accept an int fd or an object with fileno(); the caller keeps ownership."""
    if isinstance(fd, bool):
        raise TypeError(f"fd must be an int file descriptor or have fileno(), got bool {fd!r}")
    if isinstance(fd, int):
        number = fd
    else:
        fileno = getattr(fd, "fileno", None)
        if fileno is None:
            raise TypeError(
                f"fd must be an int file descriptor or have fileno(), got {type(fd).__name__}"
            )
        try:
            number = fileno()
        except ValueError as exc:  # io objects raise ValueError once closed
            raise ValueError(f"fd {fd!r} is closed ({exc}); pass an open file") from None
        if isinstance(number, bool) or not isinstance(number, int):
            raise TypeError(f"fd.fileno() must return an int, got {type(number).__name__}")
    if number < 0 or number > _INT_MAX:
        raise ValueError(f"fd must be an open file descriptor (0..{_INT_MAX}), got {number}")
    return number


def _check_range(offset: object, count: object) -> tuple[int, int]:
    off = _check_int("offset", offset)
    cnt = _check_int("count", count)
    if off + cnt > _OFF_MAX:
        raise ValueError(f"offset + count = {off + cnt} is past the largest file offset {_OFF_MAX}")
    return off, cnt


def _writable_bytes(buf: object) -> memoryview:
    """A flat unsigned-byte view of ``buf`` (no copy), or TypeError naming what is wrong."""
    try:
        view = memoryview(buf)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(
            "buf must be a writable bytes-like object (bytearray, memoryview, array, mmap), "
            f"got {type(buf).__name__}"
        ) from None
    if view.readonly:
        raise TypeError(
            f"buf must be writable, got a read-only {type(buf).__name__}; "
            "pass a bytearray or a writable memoryview"
        )
    if not view.c_contiguous:
        raise TypeError("buf must be C-contiguous; pass a contiguous buffer")
    if view.ndim != 1 or view.format != "B":
        view = view.cast("B")
    return view


# -- writability wait -----------------------------------------------------------------------


class _Waiter:
    """The writer callback of one transfer: resolves the future the coroutine awaits.

    Registered once with ``loop.add_writer`` when the first send would block and kept
    until the transfer ends (removed in ``finally``), so each wait costs no extra
    register/unregister system calls.
    """

    __slots__ = ("fut",)

    def __init__(self) -> None:
        self.fut: asyncio.Future[None] | None = None

    def wake(self) -> None:
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_result(None)


# -- public API -----------------------------------------------------------------------------


async def send_file(
    sock: socket.socket,
    fd: Any,
    offset: int,
    count: int,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
    fallback: bool = True,
) -> int:
    """Send exactly ``count`` bytes of ``fd`` from ``offset`` to ``sock`` with sendfile(2)."""
    sockfd = _sock_fd(sock)
    filefd = _file_fd(fd)
    offset, count = _check_range(offset, count)
    if loop is None:
        loop = asyncio.get_running_loop()
    if count == 0:
        return 0
    if _sendfile is None:  # platform without os.sendfile: the copy path is the only path
        if not fallback:
            raise OSError(errno.ENOSYS, "sendfile is not available on this platform")
        return await _fallback_send(loop, sock, filefd, offset, count, None)

    sent = 0
    waiter: _Waiter | None = None
    try:
        while sent < count:
            try:
                n = _sendfile(sockfd, filefd, offset + sent, min(count - sent, _SENDFILE_MAX))
            except BlockingIOError:
                # The socket buffer is full: wait for the loop to report writability.
                if waiter is None:
                    waiter = _Waiter()
                    loop.add_writer(sockfd, waiter.wake)
                waiter.fut = loop.create_future()
                await waiter.fut
                continue
            except OSError as exc:
                if sent == 0 and fallback and exc.errno in _NO_SENDFILE:
                    break  # this fd pair cannot sendfile: copy instead (below)
                raise
            if n == 0:
                raise ShortFileError(offset, count, sent)
            sent += n
    finally:
        if waiter is not None:
            waiter.fut = None
            loop.remove_writer(sockfd)
    if sent < count:
        return await _fallback_send(loop, sock, filefd, offset, count, None)
    return sent


async def send_file_fallback(
    sock: socket.socket,
    fd: Any,
    offset: int,
    count: int,
    buf: Any,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
) -> int:
    """Send ``count`` bytes of ``fd`` from ``offset`` by pread into ``buf`` + sock_sendall."""
    _sock_fd(sock)
    filefd = _file_fd(fd)
    offset, count = _check_range(offset, count)
    view = _writable_bytes(buf)
    if view.nbytes == 0:
        raise ValueError("buf is empty; pass a buffer of at least 1 byte (e.g. 1 MiB)")
    if loop is None:
        loop = asyncio.get_running_loop()
    if count == 0:
        return 0
    return await _fallback_send(loop, sock, filefd, offset, count, view)


async def _fallback_send(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    filefd: int,
    offset: int,
    count: int,
    view: memoryview | None,
) -> int:
    if view is None:
        view = memoryview(bytearray(min(count, FALLBACK_CHUNK)))
    chunk = view.nbytes
    sent = 0
    while sent < count:
        want = min(chunk, count - sent)
        if _preadv is not None:
            got = _preadv(filefd, [view[:want]], offset + sent)
        else:  # no preadv (e.g. macOS < 11): pread allocates, but stays correct
            data = os.pread(filefd, want, offset + sent)
            got = len(data)
            view[:got] = data
        if got == 0:
            raise ShortFileError(offset, count, sent)
        await loop.sock_sendall(sock, view[:got])
        sent += got
    return sent


async def recv_into_exact(
    sock: socket.socket,
    buf: Any,
    n: int,
    *,
    loop: asyncio.AbstractEventLoop | None = None,
) -> int:
    """Read exactly ``n`` bytes into ``buf[:n]``; return their CRC-32 (zlib's value)."""
    _sock_fd(sock)
    view = _writable_bytes(buf)
    n = _check_int("n", n)
    if n > view.nbytes:
        raise ValueError(
            f"buf holds {view.nbytes} bytes but n is {n}; pass a buffer of at least n bytes"
        )
    if loop is None:
        loop = asyncio.get_running_loop()
    crc = 0
    got = 0
    while got < n:
        k = await loop.sock_recv_into(sock, view[got:n])
        if k == 0:
            raise asyncio.IncompleteReadError(bytes(view[:got]), n)
        # Checksum each chunk as it lands, while it is still in cache.
        crc = _crc32(view[got : got + k], crc)
        got += k
    return crc
