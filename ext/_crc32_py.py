"""Pure-Python twin of d7y.ext._crc32: the same API and errors, computed by zlib.crc32.

This is the honest twin: CRC-32 IEEE in interpreted Python would run at a few MB/s, so
the arithmetic is delegated to the standard library's zlib.crc32 (same polynomial, same
running-``value`` semantics). What this module adds is the argument validation and the
buffer handling of the compiled kernel, so that both backends accept and reject exactly
the same inputs with the same exception types.
"""

import operator
import zlib
from typing import Any

__all__ = ["crc32", "implementation"]

_PATHS = ("python",)


def _check_value(value: Any) -> int:
    """The running CRC ``value`` as an int in [0, 2**32), or TypeError/ValueError."""
    if type(value) is not int:
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(
                f"crc32() value must be an int (a CRC-32 from an earlier call, 0 to start), "
                f"not {type(value).__name__}: {value!r:.80}"
            ) from None
    if not 0 <= value <= 0xFFFFFFFF:
        shown = value if value.bit_length() <= 128 else f"an int of {value.bit_length()} bits"
        raise ValueError(
            f"crc32() value must be in [0, 2**32) (a CRC-32 from an earlier call, "
            f"0 to start), got {shown}"
        )
    return value


def _checksum(data: Any, value: int) -> int:
    """CRC-32 of ``data``'s bytes, read in place, continuing from ``value``."""
    if isinstance(data, str):
        raise TypeError(
            "crc32() needs bytes-like data, not str; encode it first, "
            "e.g. crc32(text.encode('utf-8'))"
        )
    try:
        view = memoryview(data)
    except TypeError:
        raise TypeError(
            f"crc32() needs a bytes-like object (bytes, bytearray, memoryview, mmap, "
            f"array.array, ...), not {type(data).__name__}"
        ) from None
    # The context manager releases the export at once, so a bytearray can be resized
    # again as soon as we return (the compiled kernel releases its view the same way).
    with view:
        if not view.c_contiguous:
            raise ValueError(
                f"crc32() needs a C-contiguous buffer, got a non-contiguous "
                f"{type(data).__name__} (e.g. a strided memoryview slice); "
                f"pass a contiguous copy such as bytes(data)"
            )
        return zlib.crc32(view, value)


def crc32(data: Any, value: int = 0) -> int:
    """CRC-32 IEEE of ``data``, continuing from ``value``; equal to zlib.crc32(data, value).

    ``data`` is any C-contiguous buffer (bytes, bytearray, memoryview, mmap, array.array,
    ...), read in place. ``value`` is an int in [0, 2**32), the CRC of the bytes before
    ``data`` (so ``crc32(b, crc32(a)) == crc32(a + b)``). Returns an int in [0, 2**32).
    Raises TypeError for str or non-buffer data or a non-int value, ValueError for a value
    out of range or a non-contiguous buffer.
    """
    return _checksum(data, _check_value(value))


def implementation() -> str:
    """Name of the kernel crc32() uses: always "python" for the twin."""
    return "python"


def _paths() -> tuple[str, ...]:
    """Test hook: the kernel names this backend can run."""
    return _PATHS


def _crc32_with(path: str, data: Any, value: int = 0) -> int:
    """Test hook: crc32(data, value) through the kernel named ``path`` (see _paths())."""
    checked = _check_value(value)
    if path not in _PATHS:
        raise ValueError(f"unknown crc32 kernel {path!r:.80}; expected one of {_PATHS}")
    return _checksum(data, checked)
