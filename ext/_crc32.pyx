# cython: boundscheck=False, wraparound=False
"""Compiled CRC-32 IEEE kernel (d7y.ext._crc32); use it through d7y.ext.crc32.

The C code (ext/src/crc32_fold.c) folds with PCLMULQDQ, or VPCLMULQDQ on AVX-512 CPUs
that have it, chosen at import by CPU feature detection, and falls back to a portable
slicing-by-16 table. Results are bit-identical to zlib.crc32. Buffers are read in place
through the buffer protocol, and the GIL is released for buffers of 64 KiB or more.

``D7Y_CRC32_HIDE_KERNELS=vpclmulqdq[,pclmulqdq]`` at import makes this module behave as
on a CPU without those kernels (the portable table cannot be hidden), so the tests can
run the paths of older CPUs on any machine.
"""

import os

from cpython.buffer cimport (
    PyBUF_FULL_RO,
    PyBuffer_IsContiguous,
    PyBuffer_Release,
    PyObject_CheckBuffer,
    PyObject_GetBuffer,
)
from cpython.number cimport PyNumber_Index
from libc.stdint cimport uint32_t, uint64_t


# The C kernels (ext/src/crc32_fold.h documents the contracts). Declared here rather than
# in _crc32.pxd: setup.py names the module d7y.ext._crc32 while the source sits in ext/,
# so Cython would not find a same-named .pxd and would silently ignore it.
cdef extern from "crc32_fold.h" nogil:
    ctypedef enum d7y_crc32_path:
        D7Y_CRC32_TABLE
        D7Y_CRC32_PCLMUL
        D7Y_CRC32_VPCLMUL

    ctypedef struct d7y_crc32_constant:
        const char *name
        uint64_t value

    const d7y_crc32_constant d7y_crc32_constants[]

    void d7y_crc32_init()
    int d7y_crc32_path_supported(d7y_crc32_path path)
    d7y_crc32_path d7y_crc32_best_path()
    const char *d7y_crc32_path_name(d7y_crc32_path path)
    uint32_t d7y_crc32_with(d7y_crc32_path path, uint32_t value, const unsigned char *buf,
                            size_t length)

# Below this size a call is a few microseconds at most, less than dropping and
# re-taking the GIL is worth; above it other threads keep running while we checksum.
cdef enum:
    NOGIL_THRESHOLD = 65536
_NOGIL_THRESHOLD = NOGIL_THRESHOLD

d7y_crc32_init()

cdef dict _PATH_BY_NAME = {
    d7y_crc32_path_name(p).decode("ascii"): p
    for p in (D7Y_CRC32_TABLE, D7Y_CRC32_PCLMUL, D7Y_CRC32_VPCLMUL)
}
cdef frozenset _HIDDEN = frozenset(
    name.strip() for name in os.environ.get("D7Y_CRC32_HIDE_KERNELS", "").split(",")
) - {"", "table"}
cdef tuple _SUPPORTED = tuple(
    name for name, p in _PATH_BY_NAME.items()
    if d7y_crc32_path_supported(p) and name not in _HIDDEN
)
# The fastest kernel left: the C code's own choice unless the test hook hid it.
# (No negative index: the module is compiled with wraparound=False.)
cdef str _BEST_NAME = _SUPPORTED[len(_SUPPORTED) - 1]
cdef d7y_crc32_path _BEST = _PATH_BY_NAME[_BEST_NAME]


cdef uint32_t _check_value(object value) except? 0xFFFFFFFF:
    """The running CRC ``value`` as a C integer, or TypeError/ValueError naming it."""
    cdef object v
    if type(value) is int:
        v = value
    else:
        try:
            v = PyNumber_Index(value)
        except TypeError:
            raise TypeError(
                f"crc32() value must be an int (a CRC-32 from an earlier call, 0 to start), "
                f"not {type(value).__name__}: {value!r:.80}"
            ) from None
    if v < 0 or v > 0xFFFFFFFF:
        shown = v if v.bit_length() <= 128 else f"an int of {v.bit_length()} bits"
        raise ValueError(
            f"crc32() value must be in [0, 2**32) (a CRC-32 from an earlier call, "
            f"0 to start), got {shown}"
        )
    return <uint32_t>v


cdef uint32_t _checksum(d7y_crc32_path path, object data, uint32_t value) except? 0:
    """CRC-32 of ``data``'s bytes through ``path``, continuing from ``value``."""
    cdef Py_buffer view
    cdef const unsigned char *buf
    cdef size_t length
    cdef uint32_t crc

    if isinstance(data, str):
        raise TypeError(
            "crc32() needs bytes-like data, not str; encode it first, "
            "e.g. crc32(text.encode('utf-8'))"
        )
    if not PyObject_CheckBuffer(data):
        raise TypeError(
            f"crc32() needs a bytes-like object (bytes, bytearray, memoryview, mmap, "
            f"array.array, ...), not {type(data).__name__}"
        )
    # FULL_RO accepts every readable exporter, so the layout check below (not the
    # exporter) decides, and can say what is wrong.
    PyObject_GetBuffer(data, &view, PyBUF_FULL_RO)
    try:
        if not PyBuffer_IsContiguous(&view, b'C'):
            raise ValueError(
                f"crc32() needs a C-contiguous buffer, got a non-contiguous "
                f"{type(data).__name__} (e.g. a strided memoryview slice); "
                f"pass a contiguous copy such as bytes(data)"
            )
        buf = <const unsigned char *>view.buf
        length = <size_t>view.len
        # The view keeps the exporter from resizing or freeing the memory while the GIL
        # is released (bytearray and mmap refuse with BufferError while exported).
        if view.len >= NOGIL_THRESHOLD:
            with nogil:
                crc = d7y_crc32_with(path, value, buf, length)
        else:
            crc = d7y_crc32_with(path, value, buf, length)
    finally:
        PyBuffer_Release(&view)
    return crc


def crc32(data, value=0):
    """CRC-32 IEEE of ``data``, continuing from ``value``; equal to zlib.crc32(data, value).

    ``data`` is any C-contiguous buffer (bytes, bytearray, memoryview, mmap, array.array,
    ...), read in place. ``value`` is an int in [0, 2**32), the CRC of the bytes before
    ``data`` (so ``crc32(b, crc32(a)) == crc32(a + b)``). Returns an int in [0, 2**32).
    Raises TypeError for str or non-buffer data or a non-int value, ValueError for a value
    out of range or a non-contiguous buffer.
    """
    return _checksum(_BEST, data, _check_value(value))


def implementation():
    """Name of the kernel crc32() uses here: "vpclmulqdq", "pclmulqdq" or "table"."""
    return _BEST_NAME


def _paths():
    """Test hook: the kernel names this CPU can run, slowest first."""
    return _SUPPORTED


def _crc32_with(path, data, value=0):
    """Test hook: crc32(data, value) through the kernel named ``path`` (see _paths())."""
    cdef uint32_t v = _check_value(value)
    if path not in _PATH_BY_NAME:
        raise ValueError(
            f"unknown crc32 kernel {path!r:.80}; expected one of {tuple(_PATH_BY_NAME)}"
        )
    if path not in _SUPPORTED:
        raise ValueError(
            f"crc32 kernel {path!r} cannot run on this CPU; it supports {_SUPPORTED}"
        )
    return _checksum(<d7y_crc32_path>_PATH_BY_NAME[path], data, v)


def _fold_constants():
    """Test hook: the C kernels' folding and reduction constants, by name."""
    cdef size_t i = 0
    cdef dict out = {}
    while d7y_crc32_constants[i].name != NULL:
        out[d7y_crc32_constants[i].name.decode("ascii")] = d7y_crc32_constants[i].value
        i += 1
    return out
