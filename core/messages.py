"""The messages of the d7y daemon protocol and the registry of their type codes.

Every message is a :class:`msgspec.Struct` with typed, constrained fields and a fixed
one-byte type code (``type_code``). On the wire a message is the body of one frame
(see :mod:`d7y.core.protocol` and docs/protocol.md); its fields travel as a msgpack map
keyed by field name, so a receiver ignores fields it does not know and fills in the
defaults of fields the sender left out. Fields equal to their default are not sent at
all: a default is part of the protocol and never changes within a major version.

Constructing a message does not check the ``Meta`` constraints (msgspec checks them on
decode); cross-field rules live in ``__post_init__`` and are checked both ways.

Type codes are grouped by purpose:

* ``0x01-0x0F`` connection control (either side),
* ``0x10-0x2F`` piece transfer (a child asks a parent's upload server),
* ``0x30-0x5F`` peer -> scheduler requests and reports,
* ``0x60-0x7F`` scheduler -> peer answers and commands.

:data:`REGISTRY` maps code -> class; :func:`register` refuses a second class for a code,
so a clash fails at import rather than misrouting frames at run time.
"""

from __future__ import annotations

import enum
from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta

from d7y.core.pieces import MAX_USER_PIECE_LENGTH, TINY_TASK_MAX_LENGTH
from d7y.core.states import PeerState, TaskState

# --- field types ----------------------------------------------------------------------
# Limits are generous for honest peers and small enough that one message cannot make
# the receiver build huge objects beyond what the frame length limit already bounds.

#: Task, peer and host IDs: non-empty; task IDs are 64 hex digits today, peer IDs
#: ``ip-hostname-uuid[-seed]``, so 512 characters is ample.
Id = Annotated[str, Meta(min_length=1, max_length=512)]
#: A peer or host ID where "" means "none" (the origin, in a report's parent_id).
OptionalId = Annotated[str, Meta(max_length=512)]
PieceNumber = Annotated[int, Meta(ge=0, le=0xFFFFFFFF)]
NonNegative = Annotated[int, Meta(ge=0)]
#: Content length or piece count: -1 while unknown (an origin without Content-Length).
MaybeUnknown = Annotated[int, Meta(ge=-1)]
#: Bytes in one piece payload: at least 1, at most the largest piece a user may choose.
PieceSize = Annotated[int, Meta(ge=1, le=MAX_USER_PIECE_LENGTH)]
Port = Annotated[int, Meta(ge=1, le=65535)]
#: A piece digest, CRC-32 IEEE in decimal (``crc32:<0..4294967295>``).
PieceDigest = Annotated[str, Meta(pattern=r"^crc32:[0-9]{1,10}$")]
#: Free text for people (reasons, error messages, URLs, header values).
Text = Annotated[str, Meta(max_length=8192)]
Name = Annotated[str, Meta(max_length=256)]
Feature = Annotated[str, Meta(min_length=1, max_length=64)]
#: Piece bitmap: bit ``n`` is ``byte[n // 8] & (0x80 >> n % 8)`` (MSB first).
Bitmap = bytes
PieceDigests = dict[PieceNumber, PieceDigest]

MAX_FEATURES = 64
MAX_PARENTS = 64
MAX_BAD_PARENTS = 1024
MAX_FILTERED_PARAMS = 256
MAX_HEADERS = 256

Role = Literal["peer", "seed", "scheduler", "client"]
HostType = Literal["normal", "seed"]


class ErrorCode(enum.StrEnum):
    """The ``code`` values of :class:`Error`.

    The field itself is a plain string so that a code added by a newer peer still
    decodes; a receiver treats a code it does not know like ``internal``.
    """

    BAD_REQUEST = "bad_request"  # the message broke a rule; do not retry it unchanged
    NOT_FOUND = "not_found"  # no such task or piece here; ask another parent
    BUSY = "busy"  # upload limit reached; retry later or elsewhere
    UNAVAILABLE = "unavailable"  # the daemon is draining or stopping
    PIECE_CORRUPT = "piece_corrupt"  # the sender's own copy failed its digest
    INTERNAL = "internal"  # a bug or an unexpected failure on the sender
    PROTOCOL_ERROR = "protocol_error"  # framing is lost (bad magic, truncated frame)
    UNSUPPORTED_VERSION = "unsupported_version"  # frame or Hello version not spoken here
    UNKNOWN_MESSAGE_TYPE = "unknown_message_type"  # a type code not defined here
    FRAME_TOO_LARGE = "frame_too_large"  # body above the receiver's limit
    FORBIDDEN = "forbidden"  # names a host or peer bound to another connection


# --- base classes ---------------------------------------------------------------------


class Body(
    msgspec.Struct,
    kw_only=True,
    frozen=True,
    omit_defaults=True,
    forbid_unknown_fields=False,
    gc=False,
):
    """Common msgspec configuration of everything that travels in a frame body.

    ``frozen``: a decoded message is a value, safe to fan out to several consumers.
    ``gc=False``: messages hold no cycles; untracked objects keep the collector quiet
    at tens of thousands of reports per second. ``kw_only``: field order is irrelevant
    on the wire (maps), so constructors take keywords only (no mixing up two positional
    IDs) and defaults may go anywhere. msgspec applies ``kw_only`` to the fields of the
    class that declares it, so every message class repeats it.
    """


class Message(Body, kw_only=True):
    """A top-level message: a Body with a frame type code."""

    type_code: ClassVar[int] = 0
    #: True only for messages followed on the wire by raw payload bytes (Piece).
    has_payload: ClassVar[bool] = False


#: type code -> message class. Filled by :func:`register`; read-only by convention.
REGISTRY: dict[int, type[Message]] = {}
#: message class -> type code (the inverse of REGISTRY).
CODES: dict[type[Message], int] = {}


def register(cls: type[Message]) -> type[Message]:
    """Class decorator: enter ``cls`` in the registry under ``cls.type_code``."""
    code = cls.__dict__.get("type_code")
    if not isinstance(code, int) or isinstance(code, bool) or not 1 <= code <= 0xFF:
        raise TypeError(f"{cls.__name__}.type_code must be an int in 1..255, got {code!r}")
    other = REGISTRY.get(code)
    if other is not None and other is not cls:
        raise ValueError(
            f"type code 0x{code:02x} of {cls.__name__} is already used by {other.__name__}: "
            f"pick an unused code in the message's group"
        )
    REGISTRY[code] = cls
    CODES[cls] = code
    return cls


def _check_bitmap(owner: str, bitmap: bytes, piece_count: int) -> None:
    # With a known piece count the bitmap is exactly long enough and its padding is
    # clear, so two peers never disagree about which pieces exist.
    if piece_count < 0:
        return
    want = (piece_count + 7) // 8
    if len(bitmap) != want:
        raise ValueError(
            f"{owner}.bitmap is {len(bitmap)} bytes but piece_count {piece_count} needs {want}"
        )
    spare = want * 8 - piece_count
    if spare and bitmap[-1] & ((1 << spare) - 1):
        raise ValueError(f"{owner}.bitmap sets padding bits beyond piece {piece_count - 1}")


def _check_digest_keys(owner: str, digests: dict[int, str], piece_count: int) -> None:
    if piece_count >= 0 and digests and max(digests) >= piece_count:
        raise ValueError(
            f"{owner}.digests names piece {max(digests)} but the task has {piece_count} pieces"
        )


def _check_lengths(owner: str, content_length: int, piece_length: int, piece_count: int) -> None:
    # -1 means unknown; when both lengths are known the count must follow from them.
    if content_length >= 0 and piece_length > 0 and piece_count >= 0:
        want = -(-content_length // piece_length)
        if piece_count != want:
            raise ValueError(
                f"{owner}.piece_count {piece_count} does not match content_length "
                f"{content_length} / piece_length {piece_length} (= {want} pieces)"
            )


# --- connection control (0x01-0x0F) ---------------------------------------------------


@register
class Hello(Message, kw_only=True):
    """First frame from each side of a connection, on stream 0."""

    type_code: ClassVar[int] = 0x01
    #: Protocol minor revision the sender implements (the major is in every header).
    minor_version: NonNegative
    peer_id: OptionalId = ""
    host_id: OptionalId = ""
    role: Role
    features: Annotated[list[Feature], Meta(max_length=MAX_FEATURES)] = []
    #: Software name and version, for logs only (e.g. "d7y/0.1.0").
    agent: Name = ""


@register
class Error(Message, kw_only=True):
    """A request failed (on its stream) or the connection is about to close (stream 0)."""

    type_code: ClassVar[int] = 0x02
    code: Annotated[str, Meta(min_length=1, max_length=64)]
    message: Text = ""
    task_id: OptionalId = ""
    piece_number: Annotated[int, Meta(ge=-1, le=0xFFFFFFFF)] = -1


@register
class Ping(Message, kw_only=True):
    """Liveness probe; the other side answers Pong with the same nonce."""

    type_code: ClassVar[int] = 0x03
    nonce: NonNegative


@register
class Pong(Message, kw_only=True):
    type_code: ClassVar[int] = 0x04
    nonce: NonNegative


# --- piece transfer (0x10-0x2F) -------------------------------------------------------


@register
class GetTaskInfo(Message, kw_only=True):
    """Child -> parent: which pieces of this task do you hold?"""

    type_code: ClassVar[int] = 0x10
    task_id: Id


@register
class TaskInfo(Message, kw_only=True):
    """Parent -> child: a snapshot of the parent's copy of a task."""

    type_code: ClassVar[int] = 0x11
    task_id: Id
    content_length: MaybeUnknown
    piece_length: NonNegative
    piece_count: MaybeUnknown
    bitmap: Bitmap = b""
    #: Digests the parent knows, by piece number (at least those of held pieces).
    digests: PieceDigests = {}
    state: TaskState
    #: Cut-through relaying (minor 1): pieces the parent is receiving now, not held yet;
    #: it serves them as their bytes arrive.
    receiving: list[PieceNumber] = []

    def __post_init__(self) -> None:
        _check_lengths("TaskInfo", self.content_length, self.piece_length, self.piece_count)
        _check_bitmap("TaskInfo", self.bitmap, self.piece_count)
        _check_digest_keys("TaskInfo", self.digests, self.piece_count)


@register
class GetPiece(Message, kw_only=True):
    """Child -> parent: send me piece ``number``."""

    type_code: ClassVar[int] = 0x12
    task_id: Id
    number: PieceNumber


@register
class Piece(Message, kw_only=True):
    """Parent -> child: piece metadata, followed on the wire by ``length`` raw bytes."""

    type_code: ClassVar[int] = 0x13
    has_payload: ClassVar[bool] = True
    task_id: Id
    number: PieceNumber
    offset: NonNegative
    length: PieceSize
    digest: PieceDigest
    #: Cut-through relaying (minor 1): the parent is still receiving this piece; the
    #: payload follows as its bytes arrive there, and the connection is closed before the
    #: payload ends if the parent's own transfer fails (the piece is lost, not corrupt).
    receiving: bool = False


@register
class CancelPiece(Message, kw_only=True):
    """Child -> parent: I no longer want this piece (endgame loser, download aborted)."""

    type_code: ClassVar[int] = 0x14
    task_id: Id
    number: PieceNumber


@register
class Subscribe(Message, kw_only=True):
    """Child -> parent: send me a TaskInfo now and HavePieces as new pieces land."""

    type_code: ClassVar[int] = 0x15
    task_id: Id


@register
class Unsubscribe(Message, kw_only=True):
    type_code: ClassVar[int] = 0x16
    task_id: Id


@register
class HavePieces(Message, kw_only=True):
    """Parent -> subscribed child: I now hold these pieces.

    ``content_length`` and ``piece_count`` stay -1 unless the parent learned them since
    its last TaskInfo/HavePieces (a task whose origin sent no Content-Length).
    """

    type_code: ClassVar[int] = 0x17
    task_id: Id
    numbers: list[PieceNumber]
    digests: PieceDigests = {}
    content_length: MaybeUnknown = -1
    piece_count: MaybeUnknown = -1
    #: Cut-through relaying (minor 1): pieces the parent started receiving (it serves
    #: them as their bytes arrive) and pieces it announced so that it no longer receives
    #: without having stored them (its transfer failed or was cancelled).
    receiving: list[PieceNumber] = []
    not_receiving: list[PieceNumber] = []


# --- peer -> scheduler (0x30-0x5F) ----------------------------------------------------


@register
class AnnounceHost(Message, kw_only=True):
    """Peer or seed peer -> scheduler: who I am and my current upload load.

    Sent after Hello and again periodically; the load fields feed the parent score.
    Bandwidths are bits per second; 0 for a limit means "no limit configured".
    """

    type_code: ClassVar[int] = 0x30
    host_id: Id
    ip: Annotated[str, Meta(min_length=1, max_length=64)]
    hostname: Annotated[str, Meta(min_length=1, max_length=256)]
    #: Port of this protocol (piece transfer, seed commands).
    port: Port
    #: Port of the read-only HTTP upload endpoint.
    download_port: Port
    idc: Name = ""
    #: '|'-separated, most significant first, e.g. "cn|zhejiang|hangzhou".
    location: Name = ""
    host_type: HostType = "normal"
    upload_limit_bps: NonNegative = 0
    max_tx_bandwidth_bps: NonNegative = 0
    tx_bandwidth_bps: NonNegative = 0
    concurrent_upload_limit: NonNegative = 0
    #: Uploads in progress now.
    concurrent_upload_count: NonNegative = 0
    #: Bytes of piece uploads accepted but not yet sent.
    upload_content_length: NonNegative = 0
    #: Uploads served and failed since the daemon started (upload success ratio).
    upload_count: NonNegative = 0
    upload_failed_count: NonNegative = 0
    agent: Name = ""
    #: What the host can receive, bits/s (0: unknown); the d7y policy gives a parent
    #: about as many children as its upload feeds at their download speed.
    download_limit_bps: NonNegative = 0


@register
class RegisterPeer(Message, kw_only=True):
    """Peer -> scheduler: I want this task. Opens the download stream."""

    type_code: ClassVar[int] = 0x31
    peer_id: Id
    task_id: Id
    host_id: Id
    url: Annotated[str, Meta(min_length=1, max_length=8192)]
    tag: Name = ""
    application: Name = ""
    #: None: the default filter list; []: filter nothing (as d7y.core.ids.task_id).
    filtered_query_params: Annotated[list[Name], Meta(max_length=MAX_FILTERED_PARAMS)] | None = None
    #: Request headers for the origin (may hold credentials: use TLS).
    headers: Annotated[dict[Name, Text], Meta(max_length=MAX_HEADERS)] = {}
    #: 0: derive from the content length; else the user's fixed piece length.
    piece_length: Annotated[int, Meta(ge=0, le=MAX_USER_PIECE_LENGTH)] = 0
    #: HTTP range of the content this peer wants, e.g. "bytes=0-1023"; "" = all.
    range: Name = ""
    #: Dragonfly's priority levels 0 (default) .. 6.
    priority: Annotated[int, Meta(ge=0, le=6)] = 0
    need_back_to_source: bool = False


@register
class DownloadStarted(Message, kw_only=True):
    """Peer -> scheduler: I started downloading (from parents, or from the origin)."""

    type_code: ClassVar[int] = 0x32
    peer_id: Id
    task_id: Id
    back_to_source: bool = False
    #: What the origin told a back-to-source peer, so the scheduler can give children
    #: the task's geometry before the first piece lands (-1 / 0: not known).
    content_length: MaybeUnknown = -1
    piece_length: NonNegative = 0


@register
class PieceFinished(Message, kw_only=True):
    """Peer -> scheduler: one piece downloaded and verified. The hot report."""

    type_code: ClassVar[int] = 0x33
    peer_id: Id
    task_id: Id
    number: PieceNumber
    #: The parent that served it; "" when it came from the origin.
    parent_id: OptionalId = ""
    cost_ns: NonNegative
    length: PieceSize
    digest: PieceDigest

    @property
    def from_origin(self) -> bool:
        return not self.parent_id


@register
class PieceFailed(Message, kw_only=True):
    """Peer -> scheduler: a piece failed (timeout, digest mismatch, parent error)."""

    type_code: ClassVar[int] = 0x34
    peer_id: Id
    task_id: Id
    number: PieceNumber
    parent_id: OptionalId = ""
    reason: Text = ""
    #: True when retrying the same parent later may succeed (busy, timeout).
    temporary: bool = False


@register
class DownloadFinished(Message, kw_only=True):
    type_code: ClassVar[int] = 0x35
    peer_id: Id
    task_id: Id
    content_length: NonNegative
    piece_count: NonNegative
    #: The whole content of a TINY task (1-128 bytes), so the scheduler can answer
    #: later peers inline; None otherwise.
    content: Annotated[bytes, Meta(min_length=1, max_length=TINY_TASK_MAX_LENGTH)] | None = None

    def __post_init__(self) -> None:
        if self.content is not None and len(self.content) != self.content_length:
            raise ValueError(
                f"DownloadFinished.content has {len(self.content)} bytes but content_length "
                f"is {self.content_length}"
            )


@register
class DownloadFailed(Message, kw_only=True):
    type_code: ClassVar[int] = 0x36
    peer_id: Id
    task_id: Id
    reason: Text = ""


@register
class Reschedule(Message, kw_only=True):
    """Peer -> scheduler: give me other parents; these ones are bad."""

    type_code: ClassVar[int] = 0x37
    peer_id: Id
    task_id: Id
    bad_parents: Annotated[list[Id], Meta(max_length=MAX_BAD_PARENTS)] = []
    reason: Text = ""


@register
class LeavePeer(Message, kw_only=True):
    type_code: ClassVar[int] = 0x38
    peer_id: Id
    task_id: Id


@register
class LeaveHost(Message, kw_only=True):
    type_code: ClassVar[int] = 0x39
    host_id: Id


@register
class GetTaskDigests(Message, kw_only=True):
    """Peer -> scheduler: the piece digests recorded so far for a task.

    A child learns from its parents which pieces they hold, but verifies each piece
    against the digest recorded by whoever fetched it from the origin, which only the
    scheduler hands out; it asks again when a parent holds pieces it has no digest for.
    """

    type_code: ClassVar[int] = 0x3A
    peer_id: Id
    task_id: Id


# --- scheduler -> peer (0x60-0x7F) ----------------------------------------------------


class ParentInfo(Body, kw_only=True):
    """A candidate parent in a scheduler answer (not a message by itself)."""

    peer_id: Id
    host_id: Id
    ip: Annotated[str, Meta(min_length=1, max_length=64)]
    port: Port
    download_port: Port
    bitmap: Bitmap = b""
    state: PeerState
    #: The parent host's announced load, for the child's weighted piece picking.
    tx_bandwidth_bps: NonNegative = 0
    max_tx_bandwidth_bps: NonNegative = 0


@register
class NormalTaskResponse(Message, kw_only=True):
    """Scheduler -> peer: download from these parents (may be sent again later)."""

    type_code: ClassVar[int] = 0x60
    task_id: Id
    candidate_parents: Annotated[list[ParentInfo], Meta(min_length=1, max_length=MAX_PARENTS)]
    content_length: MaybeUnknown
    piece_length: NonNegative
    piece_count: MaybeUnknown
    digests: PieceDigests = {}

    def __post_init__(self) -> None:
        _check_lengths(
            "NormalTaskResponse", self.content_length, self.piece_length, self.piece_count
        )
        _check_digest_keys("NormalTaskResponse", self.digests, self.piece_count)


@register
class NeedBackToSource(Message, kw_only=True):
    """Scheduler -> peer: fetch from the origin yourself."""

    type_code: ClassVar[int] = 0x61
    task_id: Id
    reason: Text = ""


@register
class TinyTaskResponse(Message, kw_only=True):
    """Scheduler -> peer: the whole content (at most 128 bytes) inline."""

    type_code: ClassVar[int] = 0x62
    task_id: Id
    content: Annotated[bytes, Meta(min_length=1, max_length=TINY_TASK_MAX_LENGTH)]


@register
class EmptyTaskResponse(Message, kw_only=True):
    """Scheduler -> peer: the content is empty; write an empty file, done."""

    type_code: ClassVar[int] = 0x63
    task_id: Id


@register
class SmallTaskResponse(Message, kw_only=True):
    """Scheduler -> peer: the task is one piece; fetch it from this parent."""

    type_code: ClassVar[int] = 0x64
    task_id: Id
    parent: ParentInfo
    content_length: PieceSize
    piece_digest: PieceDigest


@register
class TriggerSeed(Message, kw_only=True):
    """Scheduler -> seed peer: fetch this task from the origin and serve it.

    The seed peer then registers for the task like any peer (RegisterPeer with
    need_back_to_source) on its own stream and reports its pieces.
    """

    type_code: ClassVar[int] = 0x65
    task_id: Id
    url: Annotated[str, Meta(min_length=1, max_length=8192)]
    tag: Name = ""
    application: Name = ""
    filtered_query_params: Annotated[list[Name], Meta(max_length=MAX_FILTERED_PARAMS)] | None = None
    headers: Annotated[dict[Name, Text], Meta(max_length=MAX_HEADERS)] = {}
    piece_length: Annotated[int, Meta(ge=0, le=MAX_USER_PIECE_LENGTH)] = 0
    range: Name = ""


@register
class TaskDigests(Message, kw_only=True):
    """Scheduler -> peer: the answer to GetTaskDigests, on the same stream."""

    type_code: ClassVar[int] = 0x66
    task_id: Id
    content_length: MaybeUnknown
    piece_length: NonNegative
    piece_count: MaybeUnknown
    digests: PieceDigests = {}

    def __post_init__(self) -> None:
        _check_lengths("TaskDigests", self.content_length, self.piece_length, self.piece_count)
        _check_digest_keys("TaskDigests", self.digests, self.piece_count)


@register
class RestorePeer(Message, kw_only=True):
    """Peer -> scheduler: after (re)connecting, this peer already holds (part of) a task.

    A scheduler keeps its state in memory; a restarted one learns which peers can serve
    which tasks from these. ``digests`` are the digests the peer stored with its pieces
    (each verified against the recorded digest when it arrived); the scheduler keeps the
    first it hears for a piece, so children can verify against it again.
    """

    type_code: ClassVar[int] = 0x3B
    peer_id: Id
    task_id: Id
    host_id: Id
    url: Annotated[str, Meta(min_length=1, max_length=8192)]
    content_length: NonNegative
    piece_length: PieceSize
    bitmap: Bitmap = b""
    succeeded: bool = False
    digests: PieceDigests = {}


def message_class(code: int) -> type[Message] | None:
    """The class registered for ``code``, or None."""
    return REGISTRY.get(code)


__all__ = [
    "CODES",
    "REGISTRY",
    "AnnounceHost",
    "Body",
    "CancelPiece",
    "DownloadFailed",
    "DownloadFinished",
    "DownloadStarted",
    "EmptyTaskResponse",
    "Error",
    "ErrorCode",
    "GetPiece",
    "GetTaskDigests",
    "GetTaskInfo",
    "HavePieces",
    "Hello",
    "LeaveHost",
    "LeavePeer",
    "Message",
    "NeedBackToSource",
    "NormalTaskResponse",
    "ParentInfo",
    "Piece",
    "PieceFailed",
    "PieceFinished",
    "Ping",
    "Pong",
    "RegisterPeer",
    "Reschedule",
    "RestorePeer",
    "SmallTaskResponse",
    "Subscribe",
    "TaskDigests",
    "TaskInfo",
    "TinyTaskResponse",
    "TriggerSeed",
    "Unsubscribe",
    "message_class",
    "register",
]
