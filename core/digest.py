"""Content digests written ``algorithm:value``, as Dragonfly does.

* ``crc32:<decimal>``: CRC-32 IEEE (the value of ``zlib.crc32``), used for every piece
  and accepted for whole small files.
* ``sha256:<hex>`` and ``sha512:<hex>``: whole-content digests (lower-case hex).

Verification is incremental: feed chunks to a :class:`Hasher` as they arrive (pieces
from peers, a stream from the origin) and compare at the end, so no file is read twice.
Core reads nothing itself; give :func:`digest_of_chunks` any iterable of buffers (for
example a file read in blocks by the caller).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import NamedTuple

from d7y.ext.crc32 import crc32

ALGORITHMS = ("crc32", "sha256", "sha512")
_HEX_LENGTH = {"sha256": 64, "sha512": 128}
_HEX = re.compile(r"^[0-9a-f]+$")


class DigestMismatch(ValueError):
    """Content does not match its expected digest."""

    def __init__(self, expected: Digest, actual: Digest, what: str = "content") -> None:
        super().__init__(f"{what} digest mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class Digest(NamedTuple):
    """A parsed digest: ``algorithm`` is one of :data:`ALGORITHMS`; ``value`` is the
    canonical text (decimal for crc32, lower-case hex otherwise)."""

    algorithm: str
    value: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.value}"

    @classmethod
    def parse(cls, text: str) -> Digest:
        """Parse ``algorithm:value``; ValueError names the bad part and the fix."""
        if not isinstance(text, str):
            raise TypeError(f"digest must be a str like 'sha256:<hex>', got {text!r}")
        algorithm, sep, value = text.partition(":")
        algorithm = algorithm.strip().lower()
        if not sep:
            raise ValueError(
                f"digest {text!r} has no algorithm: write it as algorithm:value, "
                f"e.g. sha256:<64 hex digits> (algorithms: {', '.join(ALGORITHMS)})"
            )
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"digest {text!r} uses unknown algorithm {algorithm!r}: "
                f"use one of {', '.join(ALGORITHMS)}"
            )
        value = value.strip()
        if algorithm == "crc32":
            if not value.isascii() or not value.isdigit() or int(value) > 0xFFFFFFFF:
                raise ValueError(
                    f"digest {text!r}: a crc32 value is a decimal number in 0..4294967295"
                )
            return cls(algorithm, str(int(value)))
        value = value.lower()
        if len(value) != _HEX_LENGTH[algorithm] or not _HEX.match(value):
            raise ValueError(
                f"digest {text!r}: a {algorithm} value is {_HEX_LENGTH[algorithm]} hex digits"
            )
        return cls(algorithm, value)

    @classmethod
    def crc32_of(cls, value: int) -> Digest:
        """The digest for a CRC-32 value computed elsewhere (a piece kernel)."""
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0xFFFFFFFF:
            raise ValueError(f"crc32 value must be an int in 0..4294967295, got {value!r}")
        return cls("crc32", str(value))

    def hasher(self) -> Hasher:
        """A fresh incremental hasher of this digest's algorithm."""
        return Hasher(self.algorithm)

    def verify(self, actual: Digest, what: str = "content") -> None:
        """Raise :class:`DigestMismatch` unless ``actual`` equals this digest."""
        if actual != self:
            raise DigestMismatch(self, actual, what)


class Hasher:
    """Incremental digest computation: ``update()`` with buffers, then ``digest()``."""

    __slots__ = ("_algorithm", "_crc", "_hash")

    def __init__(self, algorithm: str) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown digest algorithm {algorithm!r}: use one of {ALGORITHMS}")
        self._algorithm = algorithm
        self._crc = 0
        self._hash = None if algorithm == "crc32" else hashlib.new(algorithm)

    @property
    def algorithm(self) -> str:
        return self._algorithm

    def update(self, data) -> None:
        """Add a buffer (bytes, bytearray, memoryview, ...) to the digest."""
        if self._hash is None:
            self._crc = crc32(data, self._crc)
        else:
            self._hash.update(data)

    def digest(self) -> Digest:
        """The digest of everything fed so far (the hasher may keep being updated)."""
        if self._hash is None:
            return Digest("crc32", str(self._crc))
        return Digest(self._algorithm, self._hash.hexdigest())


def digest_of_chunks(algorithm: str, chunks: Iterable) -> Digest:
    """The digest of the concatenation of ``chunks`` (any iterable of buffers)."""
    hasher = Hasher(algorithm)
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.digest()


def verify_chunks(expected: Digest | str, chunks: Iterable, what: str = "content") -> Digest:
    """Hash ``chunks`` and raise :class:`DigestMismatch` unless they match ``expected``."""
    if isinstance(expected, str):
        expected = Digest.parse(expected)
    actual = digest_of_chunks(expected.algorithm, chunks)
    expected.verify(actual, what)
    return actual
