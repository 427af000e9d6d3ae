"""HTTP byte-range requests (RFC 9110 section 14) against a known content length.

We serve one range per request: ``bytes=a-b``, ``bytes=a-`` and ``bytes=-n``. A list of
ranges would need a multipart/byteranges response, which no download tool we serve
(dfget, container runtimes, curl -r, aria2) asks for, so it is rejected with a clear
error rather than silently answered with the first range.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from d7y.core.pieces import pieces_covering

_SPEC = re.compile(r"^\s*(\d*)\s*-\s*(\d*)\s*$")


class RangeError(ValueError):
    """A Range header we cannot serve.

    ``unsatisfiable`` is true when the header is well-formed but selects no byte of the
    content (answer 416 with ``Content-Range: bytes */length``); false when it is
    malformed or asks for something we do not support.
    """

    def __init__(self, message: str, *, unsatisfiable: bool = False) -> None:
        super().__init__(message)
        self.unsatisfiable = unsatisfiable


class ByteRange(NamedTuple):
    """The bytes [start, start + length) of the content."""

    start: int
    length: int

    @property
    def end(self) -> int:
        """Inclusive last byte, as written in Range and Content-Range headers."""
        return self.start + self.length - 1

    def content_range(self, content_length: int) -> str:
        """The Content-Range header value for a 206 answer with this range."""
        return f"bytes {self.start}-{self.end}/{content_length}"

    def pieces(self, piece_length: int) -> range:
        """Numbers of the pieces that hold this range."""
        return pieces_covering(self.start, self.length, piece_length)


class RangeSpec(NamedTuple):
    """One ``bytes=`` range as the client wrote it, before the content length is known
    (a proxy must decide which pieces to fetch once the length is learnt):
    ``first``-``last`` (``last`` None: to the end), or the last ``suffix`` bytes."""

    first: int | None
    last: int | None
    suffix: int | None = None

    def resolve(self, content_length: int) -> ByteRange:
        """The bytes this range selects of a ``content_length``-byte content; RangeError
        (``unsatisfiable``) when it selects none. An end past the content is clamped."""
        if content_length < 0:
            raise ValueError(f"content_length must be >= 0, got {content_length}")
        if self.suffix is not None:
            if self.suffix == 0 or content_length == 0:
                raise RangeError(
                    f"Range {self.header()!r} selects no bytes of a {content_length}-byte content",
                    unsatisfiable=True,
                )
            length = min(self.suffix, content_length)
            return ByteRange(content_length - length, length)
        assert self.first is not None
        if self.first >= content_length:
            raise RangeError(
                f"Range {self.header()!r} starts at {self.first}, past the end of a "
                f"{content_length}-byte content",
                unsatisfiable=True,
            )
        last = content_length - 1 if self.last is None else min(self.last, content_length - 1)
        return ByteRange(self.first, last - self.first + 1)

    def header(self) -> str:
        """The Range header value for this range."""
        if self.suffix is not None:
            return f"bytes=-{self.suffix}"
        return f"bytes={self.first}-{'' if self.last is None else self.last}"


def parse_range_spec(header: str) -> RangeSpec:
    """Parse a Range header value without knowing the content's length.

    Raises :class:`RangeError` for multiple ranges, other units and malformed specs."""
    if not isinstance(header, str):
        raise TypeError(f"Range header must be a str, got {type(header).__name__}: {header!r}")
    unit, sep, specs = header.partition("=")
    if not sep or unit.strip().lower() != "bytes":
        raise RangeError(f"Range {header!r} is not a byte range: use 'bytes=first-last'")
    if "," in specs:
        raise RangeError(
            f"Range {header!r} asks for several ranges; only one range per request is "
            f"supported: send one request per range"
        )
    match = _SPEC.match(specs)
    if match is None or match.group(1) == match.group(2) == "":
        raise RangeError(f"Range {header!r} is malformed: expected bytes=a-b, bytes=a- or bytes=-n")
    first_text, last_text = match.groups()
    if first_text == "":
        return RangeSpec(None, None, int(last_text))
    first = int(first_text)
    last = int(last_text) if last_text != "" else None
    if last is not None and last < first:
        raise RangeError(f"Range {header!r} is malformed: last byte {last} < first {first}")
    return RangeSpec(first, last)


def parse_range(header: str, content_length: int) -> ByteRange:
    """Parse a Range header value against ``content_length``.

    Returns the selected byte range (an end past the content is clamped, as RFC 9110
    says). Raises :class:`RangeError` for multiple ranges, other units, malformed specs,
    and (``unsatisfiable=True``) ranges that select nothing.
    """
    if isinstance(content_length, bool) or not isinstance(content_length, int):
        raise TypeError(f"content_length must be an int, got {content_length!r}")
    if content_length < 0:
        raise ValueError(f"content_length must be >= 0, got {content_length}")
    return parse_range_spec(header).resolve(content_length)
