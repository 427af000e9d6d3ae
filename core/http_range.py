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


def parse_range(header: str, content_length: int) -> ByteRange:
    """Parse a Range header value against ``content_length``.

    Returns the selected byte range (an end past the content is clamped, as RFC 9110
    says). Raises :class:`RangeError` for multiple ranges, other units, malformed specs,
    and (``unsatisfiable=True``) ranges that select nothing.
    """
    if not isinstance(header, str):
        raise TypeError(f"Range header must be a str, got {type(header).__name__}: {header!r}")
    if isinstance(content_length, bool) or not isinstance(content_length, int):
        raise TypeError(f"content_length must be an int, got {content_length!r}")
    if content_length < 0:
        raise ValueError(f"content_length must be >= 0, got {content_length}")

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

    if first_text == "":  # suffix range: the last n bytes
        suffix = int(last_text)
        if suffix == 0 or content_length == 0:
            raise RangeError(
                f"Range {header!r} selects no bytes of a {content_length}-byte content",
                unsatisfiable=True,
            )
        length = min(suffix, content_length)
        return ByteRange(content_length - length, length)

    first = int(first_text)
    if last_text != "":
        last = int(last_text)
        if last < first:
            raise RangeError(f"Range {header!r} is malformed: last byte {last} < first {first}")
    else:
        last = content_length - 1
    if first >= content_length:
        raise RangeError(
            f"Range {header!r} starts at {first}, past the end of a {content_length}-byte content",
            unsatisfiable=True,
        )
    last = min(last, content_length - 1)
    return ByteRange(first, last - first + 1)
