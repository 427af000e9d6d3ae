# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled zero-copy piece transfer: sendfile(2), pread(2) and recv(2) from C.

The public documentation lives in ``d7y.ext.transfer``; ``d7y.ext._transfer_py`` is the
pure-Python twin with the same semantics. Every system call here runs with the GIL
released and its errno checked: EAGAIN/EWOULDBLOCK parks the coroutine on the event
loop (add_writer/add_reader, a future resolved by the callback), EINTR runs the Python
signal handlers and retries, anything else raises OSError with that errno (which Python
maps to the matching subclass, e.g. ConnectionResetError).
"""

import asyncio
import operator
import socket
import sys

from cpython.exc cimport PyErr_CheckSignals
from libc.errno cimport EAGAIN, EINTR, EINVAL, ENOSYS, EOPNOTSUPP, errno
from libc.limits cimport INT_MAX
from libc.string cimport strerror
from posix.types cimport off_t
from posix.unistd cimport pread

# The C declarations live here rather than in a _transfer.pxd: ext/ is installed as
# d7y.ext, and Cython would look for that .pxd as d7y/ext/_transfer.pxd, which the
# source tree does not have. sendfile(2) with this signature is Linux's; elsewhere the
# build fails and the pure-Python twin is used.


cdef extern from "sys/sendfile.h" nogil:
    ssize_t sendfile(int out_fd, int in_fd, off_t *offset, size_t count)


cdef extern from "sys/socket.h" nogil:
    ssize_t recv(int sockfd, void *buf, size_t length, int flags)


cdef extern from "errno.h" nogil:
    # Not in Cython's libc.errno. Equal to EAGAIN / EOPNOTSUPP on Linux, distinct on
    # some other systems, so both are checked; declared as ints (not enum constants) so
    # Cython does not fold the comparisons into a switch with duplicate case labels.
    const int EWOULDBLOCK
    const int ENOTSUP


# One exception class for both backends, so `except ShortFileError` never depends on
# which one was built (the twin defines it; it has no other side effects on import).
from d7y.ext._transfer_py import ShortFileError

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

# Linux sendfile(2) moves at most this many bytes per call.
cdef enum:
    _SENDFILE_MAX = 0x7FFFF000

# The largest file offset: off_t is 64-bit signed on every platform we build for.
cdef object _OFF_MAX = (1 << 63) - 1

_IncompleteReadError = asyncio.IncompleteReadError
_get_running_loop = asyncio.get_running_loop
_SOCKET = socket.socket
_SOCK_STREAM = socket.SOCK_STREAM


cdef inline bint _would_block(int err) noexcept nogil:
    return err == EAGAIN or err == EWOULDBLOCK


cdef inline bint _no_sendfile(int err) noexcept nogil:
    # errnos of a *first* sendfile call meaning "this fd/socket pair cannot sendfile"
    # (no splice support in the file system, no syscall, socket family refuses it).
    return err == EINVAL or err == ENOSYS or err == EOPNOTSUPP or err == ENOTSUP


cdef object _os_error(int err):
    # OSError(errno, msg) instantiates the errno's subclass (BrokenPipeError, ...).
    return OSError(err, strerror(err).decode("utf-8", "replace"))


# -- argument checks (same checks and messages as the twin) ---------------------------------


cdef object _check_int(str name, object value):
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool {value!r}")
    try:
        number = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if number < 0:
        raise ValueError(f"{name} must be >= 0, got {number}")
    return number


cdef int _sock_fd(object sock) except -1:
    """Return the fd of a usable socket: stream, open, non-blocking, not TLS."""
    if not isinstance(sock, _SOCKET):
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
    if sock.type != _SOCK_STREAM:
        raise ValueError(f"sock must be a SOCK_STREAM socket, got {sock.type!r}")
    if sock.gettimeout() != 0:
        raise ValueError(
            "sock must be non-blocking for use on an event loop: call sock.setblocking(False)"
        )
    return fd


cdef int _file_fd(object fd) except -1:
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
    if number < 0 or number > INT_MAX:
        raise ValueError(f"fd must be an open file descriptor (0..{INT_MAX}), got {number}")
    return number


cdef tuple _check_range(object offset, object count):
    off = _check_int("offset", offset)
    cnt = _check_int("count", count)
    if off + cnt > _OFF_MAX:
        raise ValueError(
            f"offset + count = {off + cnt} is past the largest file offset {_OFF_MAX}"
        )
    return off, cnt


cdef object _writable_bytes(object buf):
    """A flat unsigned-byte memoryview of ``buf`` (no copy), or TypeError naming the fault."""
    try:
        view = memoryview(buf)
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


# -- readiness wait -------------------------------------------------------------------------


cdef class _Waiter:
    """The add_writer/add_reader callback of one transfer.

    Registered once, when the first system call would block, and kept until the
    transfer ends (removed in ``finally``), so each wait costs no extra
    register/unregister system calls. ``fut`` is the future the coroutine awaits.
    """

    cdef object fut

    def wake(self):
        fut = self.fut
        if fut is not None and not fut.done():
            fut.set_result(None)


# -- public API -----------------------------------------------------------------------------


async def send_file(sock, fd, offset, count, *, loop=None, bint fallback=True):
    """send_file(sock, fd, offset, count, *, loop=None, fallback=True) -> int

    Send exactly ``count`` bytes of ``fd`` from ``offset`` to ``sock`` with sendfile(2).
    See ``d7y.ext.transfer.send_file``.
    """
    cdef int sockfd = _sock_fd(sock)
    cdef int filefd = _file_fd(fd)
    cdef off_t start, total, sent = 0, pos
    cdef size_t want
    cdef ssize_t n
    cdef int err = 0
    cdef _Waiter waiter = None

    py_offset, py_count = _check_range(offset, count)
    start = py_offset
    total = py_count
    if loop is None:
        loop = _get_running_loop()
    if total == 0:
        return 0
    try:
        while sent < total:
            want = <size_t>min(total - sent, <off_t>_SENDFILE_MAX)
            # sendfile advances its own copy of the offset; the file position of fd is
            # never touched, so the caller may share the fd between transfers.
            pos = start + sent
            with nogil:
                n = sendfile(sockfd, filefd, &pos, want)
                if n < 0:
                    err = errno
            if n > 0:
                sent += n
            elif n == 0:
                raise ShortFileError(py_offset, py_count, sent)
            elif _would_block(err):
                # The socket buffer is full: wait for the loop to report writability.
                if waiter is None:
                    waiter = _Waiter()
                    loop.add_writer(sockfd, waiter.wake)
                waiter.fut = loop.create_future()
                await waiter.fut
            elif err == EINTR:
                PyErr_CheckSignals()  # a handler may raise (KeyboardInterrupt); else retry
            elif sent == 0 and fallback and _no_sendfile(err):
                break  # this fd pair cannot sendfile: copy instead (below)
            else:
                raise _os_error(err)
    finally:
        if waiter is not None:
            waiter.fut = None
            loop.remove_writer(sockfd)
    if sent < total:
        return await _fallback_send(loop, sock, filefd, start, total, None)
    return sent


async def send_file_fallback(sock, fd, offset, count, buf, *, loop=None):
    """send_file_fallback(sock, fd, offset, count, buf, *, loop=None) -> int

    Send ``count`` bytes of ``fd`` from ``offset`` by pread(2) into ``buf`` and
    ``loop.sock_sendall``. See ``d7y.ext.transfer.send_file_fallback``.
    """
    _sock_fd(sock)
    cdef int filefd = _file_fd(fd)
    py_offset, py_count = _check_range(offset, count)
    view = _writable_bytes(buf)
    if view.nbytes == 0:
        raise ValueError("buf is empty; pass a buffer of at least 1 byte (e.g. 1 MiB)")
    if loop is None:
        loop = _get_running_loop()
    if py_count == 0:
        return 0
    return await _fallback_send(loop, sock, filefd, py_offset, py_count, view)


async def _fallback_send(loop, sock, int filefd, off_t start, off_t total, pyview):
    cdef unsigned char[::1] view
    cdef unsigned char *base
    cdef size_t chunk, want
    cdef off_t sent = 0
    cdef ssize_t got
    cdef int err = 0

    if pyview is None:
        pyview = memoryview(bytearray(<Py_ssize_t>min(total, <off_t>FALLBACK_CHUNK)))
    # The typed view holds the buffer export for the whole coroutine, so the caller's
    # bytearray cannot be resized (and `base` cannot dangle) while we use it.
    view = pyview
    base = &view[0]
    chunk = <size_t>view.shape[0]
    while sent < total:
        want = <size_t>min(<off_t>chunk, total - sent)
        with nogil:
            got = pread(filefd, base, want, start + sent)
            if got < 0:
                err = errno
        if got > 0:
            await loop.sock_sendall(sock, pyview[:got])
            sent += got
        elif got == 0:
            raise ShortFileError(start, total, sent)
        elif err == EINTR:
            PyErr_CheckSignals()
        else:
            raise _os_error(err)
    return sent


async def recv_into_exact(sock, buf, n, *, loop=None):
    """recv_into_exact(sock, buf, n, *, loop=None) -> int

    Read exactly ``n`` bytes from ``sock`` into ``buf[:n]`` with recv(2) and return
    their CRC-32 (the value of zlib.crc32). See ``d7y.ext.transfer.recv_into_exact``.
    """
    cdef int sockfd = _sock_fd(sock)
    cdef unsigned char[::1] view
    cdef unsigned char *base
    cdef Py_ssize_t want, got = 0
    cdef ssize_t k
    cdef int err = 0
    cdef _Waiter waiter = None

    pyview = _writable_bytes(buf)
    py_n = _check_int("n", n)
    if py_n > pyview.nbytes:
        raise ValueError(
            f"buf holds {pyview.nbytes} bytes but n is {py_n}; pass a buffer of at least n bytes"
        )
    want = py_n
    if loop is None:
        loop = _get_running_loop()
    if want == 0:
        return 0  # CRC-32 of no bytes
    # The typed view holds the buffer export across the awaits below (see _fallback_send).
    view = pyview
    base = &view[0]
    crc = 0
    try:
        while got < want:
            with nogil:
                k = recv(sockfd, base + got, <size_t>(want - got), 0)
                if k < 0:
                    err = errno
            if k > 0:
                # Checksum each chunk as it lands, while it is still in cache.
                crc = _crc32(pyview[got : got + k], crc)
                got += k
            elif k == 0:
                raise _IncompleteReadError(bytes(pyview[:got]), py_n)
            elif _would_block(err):
                if waiter is None:
                    waiter = _Waiter()
                    loop.add_reader(sockfd, waiter.wake)
                waiter.fut = loop.create_future()
                await waiter.fut
            elif err == EINTR:
                PyErr_CheckSignals()
            else:
                raise _os_error(err)
    finally:
        if waiter is not None:
            waiter.fut = None
            loop.remove_reader(sockfd)
    return crc
