"""Zero-copy piece transfer on an event loop (uvloop or asyncio): sendfile out, recv_into in.

uvloop has no ``loop.sendfile``, so piece payloads (DESIGN.md section 5) are moved with
these coroutines on a raw, connected, non-blocking ``socket.socket`` (the daemons use the
loop's ``sock_*`` API, not a transport, for the payload). Each call tries the system call
first and only when the kernel would block (EAGAIN) parks on the loop with
``add_writer``/``add_reader`` and a future the callback resolves; the callback is
removed in ``finally``, so a cancelled transfer leaves nothing registered on the loop.
No function opens or closes a file descriptor: the caller owns the file and the socket.

``send_file(sock, fd, offset, count, *, loop=None, fallback=True) -> int``
    Send exactly ``count`` bytes of the file ``fd`` (an int fd or an object with
    ``fileno()``) starting at ``offset`` to ``sock`` with sendfile(2); returns ``count``.
    The file position of ``fd`` is not used or moved. Resumes after partial sends.
    Automatic fallback: when the *first* sendfile call fails with EINVAL, ENOSYS,
    EOPNOTSUPP or ENOTSUP before any byte was sent (the file system cannot splice, e.g.
    some /proc files, or the platform has no sendfile), the same transfer is done by
    ``send_file_fallback`` with a buffer of ``min(count, FALLBACK_CHUNK)`` bytes
    allocated once for the call; ``fallback=False`` raises that OSError instead. Any
    later error is raised as OSError (its errno subclass, e.g. BrokenPipeError).

``send_file_fallback(sock, fd, offset, count, buf, *, loop=None) -> int``
    The copy path: ``os.preadv``/pread(2) into the caller's reused writable buffer
    ``buf`` (chunks of ``len(buf)`` bytes, sliced with memoryview, nothing allocated per
    chunk) then ``loop.sock_sendall``. Same validation and errors as ``send_file``.

``recv_into_exact(sock, buf, n, *, loop=None) -> int``
    Read exactly ``n`` bytes into ``buf[:n]`` (a writable, C-contiguous buffer of at
    least ``n`` bytes, reused by the caller; bytes past ``n`` are left untouched) and
    return the CRC-32 of those bytes, equal to ``zlib.crc32(buf[:n])`` (computed chunk by
    chunk as data lands). If the peer closes first, raises
    ``asyncio.IncompleteReadError`` (an EOFError) with ``.partial`` the bytes received and
    ``.expected == n``; a reset connection raises ConnectionResetError.

``ShortFileError(EOFError)``
    Raised by both send paths when the file ends before ``offset + count`` (sendfile or
    pread returned 0 early: it is detected at send time, the size is not checked up
    front). An EOFError rather than a ValueError because the arguments were well-formed;
    the file is shorter than the caller believed (truncated, or a wrong size). Has
    ``offset``, ``count`` and ``sent``; ``sent`` bytes already reached the peer, so the
    stream no longer matches the protocol framing: close the connection.

Validation (all functions; nothing is sent or read when it fails):
    ``sock`` not a ``socket.socket``, or an ``ssl.SSLSocket`` (sendfile would bypass TLS)
    -> TypeError; closed socket (``fileno() == -1``), not SOCK_STREAM, or not
    non-blocking (``sock.gettimeout() != 0``: call ``sock.setblocking(False)``) ->
    ValueError. ``fd``/``offset``/``count``/``n`` not ints -> TypeError; negative, a
    closed file object, or ``offset + count`` past 2**63-1 -> ValueError. ``buf`` not a
    writable contiguous buffer -> TypeError; too small for ``n``, or empty for the
    fallback -> ValueError. ``count == 0`` / ``n == 0`` return 0 at once.

Cancellation: cancelling the awaiting task removes the writer/reader the call added and
raises CancelledError; some bytes may already have been sent or received, so the caller
must close (or otherwise resynchronise) the connection. One transfer per socket
direction at a time: a concurrent ``add_writer`` on the same socket would replace ours.

Backends: ``d7y.ext._transfer`` (Cython; sendfile/pread/recv from C with the GIL
released; Linux) or the pure-Python twin ``d7y.ext._transfer_py`` (``os.sendfile``,
``os.preadv``, ``loop.sock_recv_into``); ``backend`` says which one runs. CRC-32 comes
from ``d7y.ext.crc32``.
"""

from d7y.ext import load_backend

backend = load_backend("transfer")

FALLBACK_CHUNK: int = backend.FALLBACK_CHUNK
ShortFileError = backend.ShortFileError
recv_into_exact = backend.recv_into_exact
send_file = backend.send_file
send_file_fallback = backend.send_file_fallback

__all__ = [
    "FALLBACK_CHUNK",
    "ShortFileError",
    "backend",
    "recv_into_exact",
    "send_file",
    "send_file_fallback",
]
