"""Framing and codec of the d7y daemon protocol, sans-IO (as h11: it never touches a socket).

A frame is a fixed 12-byte header and a msgpack body (the spec is docs/protocol.md)::

    offset  size  field
    0       2     magic b"D7"
    2       1     protocol major version (1)
    3       1     message type code (d7y.core.messages.REGISTRY)
    4       4     stream id, uint32 big-endian (0 = the connection itself)
    8       4     body length, uint32 big-endian

A :class:`~d7y.core.messages.Piece` frame is followed by exactly ``Piece.length`` raw
payload bytes that are not part of the body, so a sender can ``sendfile(2)`` them from
the content file and a receiver can ``recv_into`` a reused buffer.

Reading a connection: :class:`FrameDecoder` -- receive into its buffer (or ``feed()``
what arrived), then take events (:class:`Frame`, :class:`PiecePayload`) until ``None``.
The daemons' frame reader (d7y.daemons.framing) is a thin loop around it; a Piece's
payload can go straight into the caller's buffer (``take_payload``, ``skip_payload``).
:func:`decode_header` and :func:`decode_body` decode one header or body on their own.

Every failure is a :class:`ProtocolError` (a ValueError) carrying an ``error_code`` to
send back in an :class:`~d7y.core.messages.Error` and ``fatal``: whether the framing is
lost and the connection must close (otherwise the bad frame was consumed whole and the
next frame can be read).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import ClassVar, NamedTuple, NoReturn, TypeAlias

import msgspec

from d7y.core.messages import CODES, REGISTRY, Error, ErrorCode, Message

#: What the decoding functions accept (collections.abc.Buffer needs Python 3.12).
Buffer: TypeAlias = bytes | bytearray | memoryview

MAGIC = b"D7"
#: The major version in every header. A change here is wire-incompatible.
PROTOCOL_VERSION = 1
#: The minor revision sent in Hello: additions that old peers can ignore.
PROTOCOL_MINOR_VERSION = 1
HEADER_LENGTH = 12
#: Default cap on a frame body. Piece payloads do not count: they are bounded by
#: ``Piece.length``'s own limit (1 GiB, the largest piece a user may choose).
DEFAULT_MAX_BODY_LENGTH = 1024 * 1024
MAX_STREAM_ID = 0xFFFFFFFF
#: Largest body the header can describe.
MAX_BODY_LENGTH_LIMIT = 0xFFFFFFFF

_HEADER = struct.Struct(">2sBBII")
_HEADER_PLACEHOLDER = bytes(HEADER_LENGTH)

# One encoder for everything and one typed decoder per message class, built once: msgspec
# compiles the type's schema when a Decoder is made, which is the expensive part.
_ENCODER = msgspec.msgpack.Encoder()
_DECODERS: dict[int, msgspec.msgpack.Decoder] = {
    code: msgspec.msgpack.Decoder(cls) for code, cls in REGISTRY.items()
}


# --- errors ---------------------------------------------------------------------------


def _on_stream(stream_id: int | None) -> str:
    return "" if stream_id is None else f" on stream {stream_id}"


class ProtocolError(ValueError):
    """A peer broke the protocol.

    ``error_code`` is the :class:`~d7y.core.messages.ErrorCode` to report; ``stream_id`` the
    stream of the bad frame when the header got that far (else None); ``fatal`` tells
    whether the byte stream is no longer framed (send the Error on stream 0, close).
    """

    error_code: ClassVar[ErrorCode] = ErrorCode.PROTOCOL_ERROR

    def __init__(self, message: str, *, stream_id: int | None = None, fatal: bool = True):
        super().__init__(message)
        self.stream_id = stream_id
        self.fatal = fatal

    def to_message(self) -> Error:
        """The Error message to send to the peer about this failure."""
        return Error(code=self.error_code.value, message=str(self)[:8192])


class TruncatedFrame(ProtocolError):
    """Fewer bytes than a header, or the connection ended in the middle of a frame."""


class BadMagic(ProtocolError):
    """The first two bytes are not b"D7": the peer does not speak this protocol."""


class UnsupportedVersion(ProtocolError):
    """The header's major version is not :data:`PROTOCOL_VERSION`."""

    error_code = ErrorCode.UNSUPPORTED_VERSION


class FrameTooLarge(ProtocolError):
    """The body length is above the receiver's limit (checked before reading the body)."""

    error_code = ErrorCode.FRAME_TOO_LARGE


class UnknownMessageType(ProtocolError):
    """No message is registered for the type code.

    Not fatal: only Piece carries a payload, so the frame ends after ``body_length``
    bytes and a reader can skip it (new types are only sent to peers that announced the
    matching feature in Hello, so this is a peer bug, reported with an Error).
    """

    error_code = ErrorCode.UNKNOWN_MESSAGE_TYPE

    def __init__(
        self, type_code: int, *, stream_id: int | None = None, body_length: int | None = None
    ) -> None:
        super().__init__(
            f"unknown message type 0x{type_code:02x}{_on_stream(stream_id)}: this daemon "
            f"speaks protocol {PROTOCOL_VERSION}.{PROTOCOL_MINOR_VERSION}; "
            f"is the peer newer or misbehaving?",
            stream_id=stream_id,
            fatal=False,
        )
        self.type_code = type_code
        self.body_length = body_length


class MalformedFrame(ProtocolError):
    """The body is not valid msgpack, or does not validate against its message type.

    Fatal only for a message with a payload (Piece): without a valid ``length`` nobody
    knows where the next frame starts.
    """

    error_code = ErrorCode.BAD_REQUEST

    def __init__(self, message_type: type[Message], problem: str, *, stream_id: int | None):
        super().__init__(
            f"malformed {message_type.__name__} frame (type 0x{message_type.type_code:02x}"
            f"{_on_stream(stream_id)}): {problem}",
            stream_id=stream_id,
            fatal=message_type.has_payload,
        )
        self.message_type = message_type


# --- header ---------------------------------------------------------------------------


class FrameHeader(NamedTuple):
    """A decoded frame header. ``type`` is the message type code."""

    type: int
    stream_id: int
    body_length: int

    @property
    def message_class(self) -> type[Message] | None:
        return REGISTRY.get(self.type)


def _unpack_header(buf: Buffer, offset: int, max_body_length: int) -> FrameHeader:
    """Decode the header at ``offset`` without checking the type code."""
    magic, version, type_code, stream_id, body_length = _HEADER.unpack_from(buf, offset)
    if magic != MAGIC:
        raise BadMagic(
            f"bad magic {magic!r} at the start of a frame, expected {MAGIC!r}: the peer "
            f"does not speak the d7y protocol, or the stream lost its framing"
        )
    if version != PROTOCOL_VERSION:
        raise UnsupportedVersion(
            f"unsupported protocol version {version} (stream {stream_id}), this daemon "
            f"speaks {PROTOCOL_VERSION}: upgrade the older side",
            stream_id=stream_id,
        )
    if body_length > max_body_length:
        raise FrameTooLarge(
            f"frame body of {body_length} bytes (type 0x{type_code:02x}, stream "
            f"{stream_id}) is above the limit of {max_body_length} bytes: if the peer is "
            f"legitimate, raise max_body_length on both sides",
            stream_id=stream_id,
        )
    return FrameHeader(type_code, stream_id, body_length)


def _check_limit(max_body_length: int) -> None:
    if (
        isinstance(max_body_length, bool)
        or not isinstance(max_body_length, int)
        or not 0 <= max_body_length <= MAX_BODY_LENGTH_LIMIT
    ):
        raise ValueError(
            f"max_body_length must be an int in 0..{MAX_BODY_LENGTH_LIMIT}, got {max_body_length!r}"
        )


def decode_header(buf: Buffer, max_body_length: int = DEFAULT_MAX_BODY_LENGTH) -> FrameHeader:
    """Decode and check the frame header in the first 12 bytes of ``buf``.

    Raises TruncatedFrame (fewer than 12 bytes), BadMagic, UnsupportedVersion,
    FrameTooLarge (body above ``max_body_length``) or UnknownMessageType, in that order
    of precedence: a fatal problem wins over the recoverable unknown type.
    """
    try:
        header = _unpack_header(buf, 0, max_body_length)
    except struct.error:
        raise TruncatedFrame(
            f"truncated frame header: {len(buf)} bytes, a header is {HEADER_LENGTH}: "
            f"read the whole header before decoding it"
        ) from None
    if header.type not in REGISTRY:
        raise UnknownMessageType(
            header.type, stream_id=header.stream_id, body_length=header.body_length
        )
    return header


# --- body -----------------------------------------------------------------------------


def _decode(code: int, body: Buffer, stream_id: int | None) -> Message:
    decoder = _DECODERS.get(code)
    if decoder is None:
        raise UnknownMessageType(code, stream_id=stream_id, body_length=len(body))
    try:
        return decoder.decode(body)
    except (msgspec.MsgspecError, UnicodeDecodeError) as exc:
        # DecodeError: not msgpack; ValidationError: wrong type, missing field, broken
        # constraint or __post_init__ rule; UnicodeDecodeError: a str that is not UTF-8.
        raise MalformedFrame(REGISTRY[code], str(exc), stream_id=stream_id) from exc
    except RecursionError:
        # An unknown field may hold arbitrarily nested msgpack; msgspec stops at its
        # depth limit by raising RecursionError, which is still just a bad frame.
        raise MalformedFrame(REGISTRY[code], "nested too deeply", stream_id=stream_id) from None


def decode_body(header: FrameHeader | int | type[Message], body: Buffer) -> Message:
    """Decode a frame body into its message.

    ``header`` is the frame's :class:`FrameHeader` (then ``body`` must be exactly
    ``body_length`` bytes), a type code, or a message class. Invalid msgpack, a wrong
    field type, a missing required field or a broken constraint raise MalformedFrame
    naming the message type and the field.
    """
    if type(header) is FrameHeader:
        size = len(body)
        if size != header.body_length:
            raise ValueError(
                f"body is {size} bytes but the header announced {header.body_length}: "
                f"read exactly body_length bytes after the header"
            )
        return _decode(header.type, body, header.stream_id)
    if isinstance(header, type) and issubclass(header, Message):
        code = CODES.get(header)
        if code is None:
            raise TypeError(f"{header.__name__} is not a registered message type")
        return _decode(code, body, None)
    if isinstance(header, int) and not isinstance(header, bool):
        return _decode(header, body, None)
    raise TypeError(
        f"decode_body() takes a FrameHeader, a type code or a message class, got {header!r}"
    )


def payload_length(message: Message) -> int:
    """Raw bytes that follow ``message``'s frame on the wire: ``length`` for Piece, else 0."""
    if not isinstance(message, Message):
        raise TypeError(f"expected a protocol message, got {type(message).__name__}")
    return message.length if message.has_payload else 0  # type: ignore[attr-defined]


# --- encoding -------------------------------------------------------------------------


def _unregistered(message: object) -> TypeError:
    return TypeError(
        f"cannot encode {type(message).__name__}: not a registered message type "
        f"(see d7y.core.messages.REGISTRY)"
    )


def _stream_error(stream_id: object) -> ValueError:
    return ValueError(f"stream_id must be an int in 0..{MAX_STREAM_ID}, got {stream_id!r}")


def encode_frame_into(
    buffer: bytearray,
    message: Message,
    stream_id: int = 0,
    *,
    max_body_length: int = DEFAULT_MAX_BODY_LENGTH,
) -> int:
    """Append the frame of ``message`` to ``buffer``; return the bytes appended.

    Lets a sender batch many frames (e.g. piece reports) into one write without an
    intermediate bytes object per frame. Raises as :func:`encode_frame`; on error
    ``buffer`` is left as it was.
    A Piece's payload is not included: write ``payload_length(message)`` bytes next.
    """
    code = CODES.get(type(message))
    if code is None:
        raise _unregistered(message)
    if type(stream_id) is not int or not 0 <= stream_id <= MAX_STREAM_ID:
        raise _stream_error(stream_id)
    start = len(buffer)
    buffer += _HEADER_PLACEHOLDER
    try:
        _ENCODER.encode_into(message, buffer, start + HEADER_LENGTH)
    except BaseException:
        del buffer[start:]
        raise
    body_length = len(buffer) - start - HEADER_LENGTH
    if body_length > max_body_length:
        del buffer[start:]
        raise FrameTooLarge(
            f"{type(message).__name__} encodes to {body_length} bytes, above the body "
            f"limit of {max_body_length}: split it or raise the limit on both sides",
            stream_id=stream_id,
        )
    _HEADER.pack_into(buffer, start, MAGIC, PROTOCOL_VERSION, code, stream_id, body_length)
    return len(buffer) - start


def encode_frame(
    message: Message, stream_id: int = 0, *, max_body_length: int = DEFAULT_MAX_BODY_LENGTH
) -> bytes:
    """The frame (header + body) of ``message`` on ``stream_id``.

    A Piece's payload is not included: send ``payload_length(message)`` bytes after it.
    Raises TypeError for an unregistered type or a field value msgpack cannot hold,
    ValueError for a bad stream id and FrameTooLarge when the body exceeds
    ``max_body_length`` (the receiver's limit). Field constraints are not checked here
    (msgspec checks them when decoding): the receiver rejects a message that breaks
    them with a ``bad_request`` Error.
    """
    code = CODES.get(type(message))
    if code is None:
        raise _unregistered(message)
    if type(stream_id) is not int or not 0 <= stream_id <= MAX_STREAM_ID:
        raise _stream_error(stream_id)
    body = _ENCODER.encode(message)
    if len(body) > max_body_length:
        raise FrameTooLarge(
            f"{type(message).__name__} encodes to {len(body)} bytes, above the body "
            f"limit of {max_body_length}: split it or raise the limit on both sides",
            stream_id=stream_id,
        )
    return _HEADER.pack(MAGIC, PROTOCOL_VERSION, code, stream_id, len(body)) + body


# --- incremental decoder --------------------------------------------------------------


class Frame(NamedTuple):
    """Event: a complete message received on ``stream_id``."""

    stream_id: int
    message: Message


class PiecePayload(NamedTuple):
    """Event: the next chunk of the payload after a Piece frame on ``stream_id``.

    Chunks arrive in order and add up to ``Piece.length``; ``last`` marks the final one.
    """

    stream_id: int
    data: bytes
    last: bool


class FrameDecoder:
    """Buffering decoder for bytes that arrive in arbitrary chunks: the one frame reader
    (the daemons' :class:`~d7y.daemons.framing.FramedStream` drives it on a connection).

    Bytes come in two ways: ``feed()`` copies what arrived; or, without a copy, the I/O
    layer receives straight into the decoder's buffer (asyncio's BufferedProtocol
    pattern): ``get_buffer(n)`` gives free space of at least ``n`` bytes, ``buffer_updated(k)``
    says ``k`` bytes landed there. Then call ``next_event()`` (or iterate) until it returns
    None, which means "more bytes, please" (``missing`` says at least how many). Events
    are :class:`Frame` and, after a Piece frame, :class:`PiecePayload` chunks; a caller
    that wants the payload in its own buffer takes the buffered part with
    ``take_payload(into)`` and reports the rest, read past the decoder, with
    ``skip_payload(n)``. ``feed_eof()`` when the peer closed: a frame cut short then
    raises TruncatedFrame.

    Memory: only the unread bytes are kept (at most a header plus ``max_body_length``,
    plus whatever a receive brought in beyond); the buffer's size is the caller's choice
    (``get_buffer``, ``shrink``), so a connection between frames can hold a small one.
    After a fatal error the decoder raises that error again on every call; after a
    non-fatal one (see :class:`ProtocolError`) the bad frame is gone and decoding goes on.
    """

    __slots__ = (
        "_body_length",
        "_buf",
        "_code",
        "_end",
        "_eof",
        "_error",
        "_max",
        "_payload_left",
        "_pos",
        "_stream",
    )

    def __init__(self, max_body_length: int = DEFAULT_MAX_BODY_LENGTH) -> None:
        _check_limit(max_body_length)
        self._max = max_body_length
        # Received bytes are _buf[_pos:_end]; bodies are decoded straight from a view of
        # it (no copy). _buf is never resized in place, only replaced (get_buffer,
        # shrink), so a view handed out can never block a resize. No view is kept
        # between calls: an idle connection holds the bytearray and nothing else.
        self._buf = bytearray()
        self._pos = 0
        self._end = 0
        # Header of the frame whose body is awaited (_code -1: none), kept as plain
        # ints so the per-frame path builds no header object.
        self._code = -1
        self._stream = 0
        self._body_length = 0
        self._payload_left = 0
        self._eof = False
        self._error: ProtocolError | None = None

    @property
    def max_body_length(self) -> int:
        return self._max

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out as events."""
        return self._end - self._pos

    @property
    def capacity(self) -> int:
        """Size of the receive buffer (what the decoder holds in memory)."""
        return len(self._buf)

    @property
    def error(self) -> ProtocolError | None:
        """The fatal error that stopped this decoder, if any."""
        return self._error

    @property
    def in_payload(self) -> bool:
        """True between a Piece frame and the last chunk of its payload."""
        return self._payload_left > 0

    @property
    def payload_left(self) -> int:
        """Payload bytes of the current Piece not handed out yet (0 outside a payload)."""
        return self._payload_left

    @property
    def between_frames(self) -> bool:
        """Nothing of a frame has arrived: no partial header, body or payload."""
        return self._end == self._pos and self._code < 0 and not self._payload_left

    @property
    def missing(self) -> int:
        """Bytes that must still arrive before the next event (0: one may be ready)."""
        available = self._end - self._pos
        if self._payload_left:
            return 0 if available else 1
        if self._code < 0:
            return max(HEADER_LENGTH - available, 0)
        return max(self._body_length - available, 0)

    # -- input -------------------------------------------------------------------------

    def get_buffer(self, size: int) -> memoryview | bytearray:
        """Free space of at least ``size`` (>= 1) bytes after the unread bytes, to
        receive into; call :meth:`buffer_updated` with the count written. The unread
        bytes move to the front when that makes the room, else the buffer is replaced
        by one of exactly unread + ``size`` bytes. Valid until the next call. (When
        nothing is buffered that is the whole buffer, given as it is: no view object.)"""
        if self._eof:
            raise RuntimeError("get_buffer() after feed_eof(): the connection is closed")
        pos, end = self._pos, self._end
        unread = end - pos
        if len(self._buf) - end < size:
            if len(self._buf) - unread >= size:
                if unread:
                    with memoryview(self._buf) as view:
                        view[:unread] = view[pos:end]
            else:
                bigger = bytearray(unread + size)
                bigger[:unread] = memoryview(self._buf)[pos:end]
                self._buf = bigger
            self._pos, self._end = 0, unread
        if self._end == 0:
            return self._buf
        return memoryview(self._buf)[self._end :]

    def buffer_updated(self, n: int) -> None:
        """``n`` bytes were written at the start of the view :meth:`get_buffer` gave."""
        if not 0 <= n <= len(self._buf) - self._end:
            raise ValueError(
                f"buffer_updated({n}): the free space is {len(self._buf) - self._end} bytes"
            )
        self._end += n

    def shrink(self, capacity: int) -> None:
        """Replace an empty buffer by one of ``capacity`` bytes (an idle connection
        should hold little). A no-op while bytes are unread or at that size already."""
        if self._end == self._pos and len(self._buf) != capacity:
            self._buf = bytearray(capacity)
            self._pos = self._end = 0

    def feed(self, data: Buffer) -> None:
        """Add received bytes (any bytes-like object; it is copied)."""
        if self._eof:
            raise RuntimeError("feed() after feed_eof(): the connection is already closed")
        with memoryview(data) as incoming:
            size = incoming.nbytes
            if size:
                self.get_buffer(size)[:size] = incoming.cast("B")
                self._end += size

    def feed_eof(self) -> None:
        """The peer closed the connection; no more data will come."""
        self._eof = True

    # -- payload into the caller's buffer ----------------------------------------------

    def take_payload(self, into: memoryview) -> int:
        """Copy buffered payload bytes of the current Piece into ``into`` (at most its
        length); returns how many."""
        size = min(self._end - self._pos, self._payload_left, len(into))
        if size:
            into[:size] = memoryview(self._buf)[self._pos : self._pos + size]
            self._pos += size
            self._payload_left -= size
        return size

    def skip_payload(self, n: int) -> None:
        """``n`` payload bytes of the current Piece were read past the decoder (straight
        from the connection into the caller's buffer); only valid once the buffered
        ones were taken."""
        if self._end != self._pos or not 0 <= n <= self._payload_left:
            raise ValueError(
                f"skip_payload({n}) with {self.buffered} bytes buffered and "
                f"{self._payload_left} payload bytes left: take_payload() first"
            )
        self._payload_left -= n

    # -- events ------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Frame | PiecePayload]:
        while (event := self.next_event()) is not None:
            yield event

    def next_event(self) -> Frame | PiecePayload | None:
        """The next event, or None when more bytes are needed."""
        if self._error is not None:
            raise self._error.with_traceback(None)
        if self._payload_left:
            return self._next_chunk()
        pos = self._pos
        available = self._end - pos
        code = self._code
        if code < 0:
            if available < HEADER_LENGTH:
                return self._need_data()
            magic, version, code, stream_id, body_length = _HEADER.unpack_from(self._buf, pos)
            if magic != MAGIC or version != PROTOCOL_VERSION or body_length > self._max:
                self._fail_header()
            pos += HEADER_LENGTH
            available -= HEADER_LENGTH
            self._pos = pos
            self._code, self._stream, self._body_length = code, stream_id, body_length
        else:
            stream_id, body_length = self._stream, self._body_length
        if available < body_length:
            return self._need_data()

        # The frame is complete: consume it whatever the outcome, so that a non-fatal
        # error leaves the decoder at the next frame boundary.
        self._code = -1
        self._pos = end = pos + body_length
        body = memoryview(self._buf)[pos:end]
        try:
            message = _decode(code, body, stream_id)
        except ProtocolError as exc:
            if exc.fatal:
                self._error = exc
            raise
        finally:
            body.release()
        if message.has_payload:
            self._payload_left = message.length  # type: ignore[attr-defined]
            self._stream = stream_id
        return Frame(stream_id, message)

    def _next_chunk(self) -> PiecePayload | None:
        pos = self._pos
        size = min(self._end - pos, self._payload_left)
        if not size:
            return self._need_data()
        self._pos = pos + size
        self._payload_left -= size
        return PiecePayload(
            self._stream, bytes(memoryview(self._buf)[pos : pos + size]), not self._payload_left
        )

    def _fail_header(self) -> NoReturn:
        try:
            _unpack_header(self._buf, self._pos, self._max)
        except ProtocolError as exc:
            self._error = exc
            raise
        raise AssertionError("_fail_header called for a valid header")  # pragma: no cover

    def _need_data(self) -> None:
        if self._eof and (self.buffered or self._code >= 0 or self._payload_left):
            if self._payload_left:
                what = f"{self._payload_left} more piece payload bytes"
            elif self._code >= 0:
                what = f"the body of a {self._body_length}-byte frame, got {self.buffered}"
            else:
                what = f"a {HEADER_LENGTH}-byte header, got {self.buffered}"
            self._error = TruncatedFrame(
                f"connection closed in the middle of a frame: expected {what}"
            )
            raise self._error
        return None


__all__ = [
    "DEFAULT_MAX_BODY_LENGTH",
    "HEADER_LENGTH",
    "MAGIC",
    "MAX_STREAM_ID",
    "PROTOCOL_MINOR_VERSION",
    "PROTOCOL_VERSION",
    "BadMagic",
    "Frame",
    "FrameDecoder",
    "FrameHeader",
    "FrameTooLarge",
    "MalformedFrame",
    "PiecePayload",
    "ProtocolError",
    "TruncatedFrame",
    "UnknownMessageType",
    "UnsupportedVersion",
    "decode_body",
    "decode_header",
    "encode_frame",
    "encode_frame_into",
    "payload_length",
]
