"""CRC-32 IEEE piece digests (the value of zlib.crc32), computed fast and without copies.

API
---
``crc32(data, value=0) -> int``
    CRC-32 IEEE (polynomial 0xEDB88320, as zlib) of ``data``, continuing from ``value``.
    ``data`` is any C-contiguous buffer: bytes, bytearray, memoryview (slices included),
    mmap, array.array, ... It is read in place, never copied; for buffers of 64 KiB or
    more the compiled kernel releases the GIL. ``value`` is an int in [0, 2**32), the CRC
    of the bytes before ``data``, so ``crc32(b, crc32(a)) == crc32(a + b)`` and a piece can
    be checked as it arrives. The result is an int in [0, 2**32), bit-identical to
    ``zlib.crc32(data, value)``.
    Errors: TypeError for str data (encode it first), other non-buffer data, or a non-int
    ``value``; ValueError for ``value`` outside [0, 2**32) or a non-contiguous buffer.

``implementation() -> str``
    The kernel in use: "vpclmulqdq" (AVX-512 carry-less multiply), "pclmulqdq" (SSE
    carry-less multiply), "table" (portable slicing-by-16) or "python" (the twin, which
    delegates to zlib.crc32). The compiled kernel picks the fastest one the CPU supports.

``backend``
    The module doing the work: d7y.ext._crc32 (compiled) or d7y.ext._crc32_py (twin, used
    when D7Y_NO_EXTENSIONS=1 or the extension is not built).
"""

from d7y.ext import load_backend

backend = load_backend("crc32")

crc32 = backend.crc32
implementation = backend.implementation

__all__ = ["backend", "crc32", "implementation"]
