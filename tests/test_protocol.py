"""Tests of the daemon protocol: framing, codec, messages and the incremental decoder.

The per-message tests are generated from the registry: a message type without a sample
in SAMPLES fails ``test_samples_cover_the_registry``, and every sample is round-tripped
and mutated into malformed inputs.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d7y.core import messages as m
from d7y.core.protocol import (
    DEFAULT_MAX_BODY_LENGTH,
    HEADER_LENGTH,
    MAGIC,
    MAX_STREAM_ID,
    PROTOCOL_VERSION,
    BadMagic,
    Frame,
    FrameDecoder,
    FrameHeader,
    FrameTooLarge,
    MalformedFrame,
    PiecePayload,
    ProtocolError,
    TruncatedFrame,
    UnknownMessageType,
    UnsupportedVersion,
    decode_body,
    decode_header,
    encode_frame,
    encode_frame_into,
    payload_length,
)
from d7y.core.states import PeerState, TaskState

TASK = "a3" * 32
PEER = "10.0.0.1-node1-6f1c1a4e-5c53-4bb8-9f0e-3f0a4d2c9b11"
PARENT = "10.0.0.2-node2-0b7e3a52-9d1f-4c1e-8a51-2f6b7c8d9e00"
HOST = "10.0.0.1-node1"

PARENT_INFO = m.ParentInfo(
    peer_id=PARENT,
    host_id="10.0.0.2-node2",
    ip="10.0.0.2",
    port=4005,
    download_port=4000,
    bitmap=b"\xf0",
    state=PeerState.RUNNING,
    tx_bandwidth_bps=10**9,
    max_tx_bandwidth_bps=10 * 10**9,
)

# Per message type: a minimal sample (required fields only) and a full one where every
# optional field differs from its default, so both the omitted and the sent encodings
# of every field are exercised (checked by test_samples_set_every_field).
SAMPLES: dict[type[m.Message], list[m.Message]] = {
    m.Hello: [
        m.Hello(minor_version=0, role="client"),
        m.Hello(
            minor_version=3,
            peer_id=PEER,
            host_id=HOST,
            role="seed",
            features=["subscribe", "tls"],
            agent="d7y/0.1.0",
        ),
    ],
    m.Error: [
        m.Error(code="internal"),
        m.Error(code="not_found", message="no such piece", task_id=TASK, piece_number=7),
    ],
    m.Ping: [m.Ping(nonce=0), m.Ping(nonce=2**64 - 1)],
    m.Pong: [m.Pong(nonce=0), m.Pong(nonce=123456789)],
    m.GetTaskInfo: [m.GetTaskInfo(task_id=TASK)],
    m.TaskInfo: [
        m.TaskInfo(
            task_id=TASK, content_length=-1, piece_length=0, piece_count=-1, state=TaskState.PENDING
        ),
        m.TaskInfo(
            task_id=TASK,
            content_length=10 * 4 * 2**20 + 5,
            piece_length=4 * 2**20,
            piece_count=11,
            bitmap=b"\xa5\x40",  # pieces 0, 2, 5, 7, 9
            digests={0: "crc32:1", 2: "crc32:4294967295", 10: "crc32:42"},
            state=TaskState.RUNNING,
            receiving=[1, 10],
        ),
    ],
    m.GetPiece: [m.GetPiece(task_id=TASK, number=0), m.GetPiece(task_id=TASK, number=2**32 - 1)],
    m.Piece: [
        m.Piece(task_id=TASK, number=0, offset=0, length=1, digest="crc32:3904355907"),
        m.Piece(task_id=TASK, number=3, offset=3 * 16, length=16, digest="crc32:0"),
        m.Piece(task_id=TASK, number=4, offset=4 * 16, length=16, digest="crc32:7", receiving=True),
    ],
    m.CancelPiece: [m.CancelPiece(task_id=TASK, number=9)],
    m.Subscribe: [m.Subscribe(task_id=TASK)],
    m.Unsubscribe: [m.Unsubscribe(task_id=TASK)],
    m.HavePieces: [
        m.HavePieces(task_id=TASK, numbers=[]),
        m.HavePieces(
            task_id=TASK,
            numbers=[3, 1, 4],
            digests={3: "crc32:3", 1: "crc32:1", 4: "crc32:4"},
            content_length=100,
            piece_count=5,
        ),
        m.HavePieces(task_id=TASK, numbers=[], receiving=[0, 2], not_receiving=[3]),
    ],
    m.AnnounceHost: [
        m.AnnounceHost(
            host_id=HOST, ip="10.0.0.1", hostname="node1", port=4005, download_port=4000
        ),
        m.AnnounceHost(
            host_id=HOST + "-seed",
            ip="fd00::1",
            hostname="seed1",
            port=65535,
            download_port=1,
            idc="idc-a",
            location="cn|zhejiang|hangzhou",
            host_type="seed",
            upload_limit_bps=8 * 10**9,
            max_tx_bandwidth_bps=10 * 10**9,
            tx_bandwidth_bps=3 * 10**9,
            concurrent_upload_limit=50,
            concurrent_upload_count=7,
            upload_content_length=2**40,
            upload_count=1234,
            upload_failed_count=5,
            agent="d7y/0.1.0",
            download_limit_bps=8_000_000_000,
        ),
    ],
    m.RegisterPeer: [
        m.RegisterPeer(peer_id=PEER, task_id=TASK, host_id=HOST, url="https://example.com/f"),
        m.RegisterPeer(
            peer_id=PEER,
            task_id=TASK,
            host_id=HOST,
            url="s3://bucket/key?versionId=3",
            tag="v1",
            application="trainer",
            filtered_query_params=["X-Amz-Signature"],
            headers={"Authorization": "Bearer t", "X-Empty": ""},
            piece_length=8 * 2**20,
            range="bytes=0-1023",
            priority=3,
            need_back_to_source=True,
        ),
    ],
    m.DownloadStarted: [
        m.DownloadStarted(peer_id=PEER, task_id=TASK),
        m.DownloadStarted(peer_id=PEER, task_id=TASK, back_to_source=True),
        m.DownloadStarted(
            peer_id=PEER,
            task_id=TASK,
            back_to_source=True,
            content_length=10 * 2**20,
            piece_length=4 * 2**20,
        ),
    ],
    m.PieceFinished: [
        m.PieceFinished(
            peer_id=PEER, task_id=TASK, number=0, cost_ns=0, length=1, digest="crc32:0"
        ),
        m.PieceFinished(
            peer_id=PEER,
            task_id=TASK,
            number=17,
            parent_id=PARENT,
            cost_ns=12_345_678,
            length=4 * 2**20,
            digest="crc32:3735928559",
        ),
    ],
    m.PieceFailed: [
        m.PieceFailed(peer_id=PEER, task_id=TASK, number=1),
        m.PieceFailed(
            peer_id=PEER,
            task_id=TASK,
            number=2,
            parent_id=PARENT,
            reason="digest mismatch",
            temporary=True,
        ),
    ],
    m.DownloadFinished: [
        m.DownloadFinished(peer_id=PEER, task_id=TASK, content_length=0, piece_count=0),
        m.DownloadFinished(peer_id=PEER, task_id=TASK, content_length=2**40, piece_count=16384),
        m.DownloadFinished(
            peer_id=PEER, task_id=TASK, content_length=100, piece_count=1, content=bytes(100)
        ),
    ],
    m.DownloadFailed: [
        m.DownloadFailed(peer_id=PEER, task_id=TASK),
        m.DownloadFailed(peer_id=PEER, task_id=TASK, reason="origin returned 403"),
    ],
    m.Reschedule: [
        m.Reschedule(peer_id=PEER, task_id=TASK),
        m.Reschedule(peer_id=PEER, task_id=TASK, bad_parents=[PARENT, "x"], reason="slow"),
    ],
    m.LeavePeer: [m.LeavePeer(peer_id=PEER, task_id=TASK)],
    m.LeaveHost: [m.LeaveHost(host_id=HOST)],
    m.GetTaskDigests: [m.GetTaskDigests(peer_id=PEER, task_id=TASK)],
    m.RestorePeer: [
        m.RestorePeer(
            peer_id=PEER,
            task_id=TASK,
            host_id=HOST,
            url="https://example.com/f",
            content_length=0,
            piece_length=4 * 2**20,
        ),
        m.RestorePeer(
            peer_id=PEER,
            task_id=TASK,
            host_id=HOST,
            url="https://example.com/f",
            content_length=10 * 2**20,
            piece_length=4 * 2**20,
            bitmap=b"\xe0",
            succeeded=True,
            digests={0: "crc32:1", 1: "crc32:2", 2: "crc32:3"},
        ),
    ],
    m.TaskDigests: [
        m.TaskDigests(task_id=TASK, content_length=-1, piece_length=0, piece_count=-1),
        m.TaskDigests(
            task_id=TASK,
            content_length=10 * 2**20,
            piece_length=4 * 2**20,
            piece_count=3,
            digests={0: "crc32:1", 2: "crc32:4294967295"},
        ),
    ],
    m.NormalTaskResponse: [
        m.NormalTaskResponse(
            task_id=TASK,
            candidate_parents=[
                m.ParentInfo(
                    peer_id=PARENT,
                    host_id="h",
                    ip="10.0.0.2",
                    port=1,
                    download_port=2,
                    state=PeerState.SUCCEEDED,
                )
            ],
            content_length=-1,
            piece_length=4 * 2**20,
            piece_count=-1,
        ),
        m.NormalTaskResponse(
            task_id=TASK,
            candidate_parents=[PARENT_INFO, PARENT_INFO],
            content_length=20,
            piece_length=4,
            piece_count=5,
            digests={4: "crc32:99"},
        ),
    ],
    m.NeedBackToSource: [
        m.NeedBackToSource(task_id=TASK),
        m.NeedBackToSource(task_id=TASK, reason="no parent can serve"),
    ],
    m.TinyTaskResponse: [
        m.TinyTaskResponse(task_id=TASK, content=b"\x00"),
        m.TinyTaskResponse(task_id=TASK, content=bytes(range(128))),
    ],
    m.EmptyTaskResponse: [m.EmptyTaskResponse(task_id=TASK)],
    m.SmallTaskResponse: [
        m.SmallTaskResponse(
            task_id=TASK, parent=PARENT_INFO, content_length=129, piece_digest="crc32:12"
        )
    ],
    m.TriggerSeed: [
        m.TriggerSeed(task_id=TASK, url="https://example.com/model.bin"),
        m.TriggerSeed(
            task_id=TASK,
            url="https://example.com/model.bin?X-Amz-Signature=abc",
            tag="t",
            application="a",
            filtered_query_params=[],
            headers={"Range": "bytes=0-"},
            piece_length=4 * 2**20,
            range="bytes=10-20",
        ),
    ],
}

ALL_SAMPLES = [
    pytest.param(sample, id=f"{cls.__name__}-{i}")
    for cls, samples in SAMPLES.items()
    for i, sample in enumerate(samples)
]
ALL_TYPES = [pytest.param(cls, id=cls.__name__) for cls in m.REGISTRY.values()]


def payload_for(message: m.Message) -> bytes:
    return bytes(i % 251 for i in range(payload_length(message)))


def wire(message: m.Message, stream_id: int = 0) -> bytes:
    """A frame plus, for a Piece, its payload."""
    return encode_frame(message, stream_id) + payload_for(message)


def body_map(message: m.Message) -> dict:
    """The message's body as a plain dict (all fields, defaults included)."""
    return {name: getattr(message, name) for name in message.__struct_fields__}


def raw_frame(code: int, body: bytes, stream_id: int = 1, *, version=PROTOCOL_VERSION) -> bytes:
    header = MAGIC + bytes([version, code]) + stream_id.to_bytes(4, "big")
    return header + len(body).to_bytes(4, "big") + body


def drain(decoder: FrameDecoder) -> list:
    return list(decoder)


def merge_payloads(events: list) -> list:
    """Join PiecePayload chunks so event lists compare independent of chunking."""
    merged: list = []
    for event in events:
        if isinstance(event, PiecePayload) and merged and isinstance(merged[-1], PiecePayload):
            assert not merged[-1].last
            prev = merged.pop()
            event = PiecePayload(event.stream_id, prev.data + event.data, event.last)
        merged.append(event)
    return merged


# --- registry -------------------------------------------------------------------------


def test_samples_cover_the_registry():
    missing = [cls.__name__ for cls in m.REGISTRY.values() if not SAMPLES.get(cls)]
    assert not missing, f"add samples to SAMPLES for new message types: {missing}"
    assert set(SAMPLES) == set(m.REGISTRY.values())


@pytest.mark.parametrize("cls", ALL_TYPES)
def test_samples_set_every_field(cls):
    # Each optional field takes a non-default value in at least one sample.
    info = msgspec.inspect.type_info(cls)
    for field in info.fields:
        if field.required:
            continue
        default = field.default if field.default is not msgspec.NODEFAULT else None
        if field.default_factory is not msgspec.NODEFAULT:
            default = field.default_factory()
        values = [getattr(s, field.name) for s in SAMPLES[cls]]
        assert any(v != default for v in values), f"{cls.__name__}.{field.name} never set"


def test_registry_is_consistent():
    assert len(m.REGISTRY) == len(m.CODES)
    for code, cls in m.REGISTRY.items():
        assert m.CODES[cls] == code == cls.type_code
        assert m.message_class(code) is cls
        assert 1 <= code <= 0xFF
    assert m.message_class(0xEE) is None
    # Only Piece is followed by a payload.
    assert [cls for cls in m.REGISTRY.values() if cls.has_payload] == [m.Piece]


def test_register_rejects_a_duplicate_code():
    class Clash(m.Message, kw_only=True):
        type_code = m.Hello.type_code
        x: int = 0

    with pytest.raises(ValueError, match=r"0x01 of Clash is already used by Hello"):
        m.register(Clash)
    assert m.REGISTRY[0x01] is m.Hello


@pytest.mark.parametrize("code", [0, 256, -1, "1", True])
def test_register_rejects_bad_codes(code):
    class Bad(m.Message, kw_only=True):
        type_code = code

    with pytest.raises(TypeError, match=r"type_code must be an int in 1\.\.255"):
        m.register(Bad)


def test_register_is_idempotent_for_the_same_class():
    assert m.register(m.Ping) is m.Ping
    assert m.REGISTRY[m.Ping.type_code] is m.Ping


def test_type_code_is_not_a_field():
    assert "type_code" not in m.Hello.__struct_fields__
    assert b"type_code" not in encode_frame(SAMPLES[m.Hello][1])


SPEC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


@pytest.mark.parametrize("cls", [*ALL_TYPES, pytest.param(m.ParentInfo, id="ParentInfo")])
def test_spec_documents_every_message_and_field(cls):
    # docs/protocol.md is the spec: a message or field missing from it fails here.
    text = SPEC.read_text()
    name = cls.__name__
    code = getattr(cls, "type_code", None)
    if code:
        assert f"| `0x{code:02x}` | {name} " in text, f"{name} missing from the code table"
    heading = re.search(rf"^#### .*\b{name}\b.*$", text, re.MULTILINE)
    assert heading, f"no '#### {name}' section in {SPEC}"
    section = text[heading.end() :].split("\n###", 1)[0]
    for field in cls.__struct_fields__:
        assert f"`{field}`" in section, f"{name}.{field} is not documented"


# --- round trips, generated from SAMPLES ------------------------------------------------


@pytest.mark.parametrize("sample", ALL_SAMPLES)
def test_round_trip(sample):
    frame = encode_frame(sample, stream_id=5)
    header = decode_header(frame)
    assert header == FrameHeader(type(sample).type_code, 5, len(frame) - HEADER_LENGTH)
    assert header.message_class is type(sample)
    decoded = decode_body(header, frame[HEADER_LENGTH:])
    assert decoded == sample
    assert type(decoded) is type(sample)
    # The other ways to name the type, and a memoryview body.
    assert decode_body(header.type, memoryview(frame)[HEADER_LENGTH:]) == sample
    assert decode_body(type(sample), bytearray(frame[HEADER_LENGTH:])) == sample


@pytest.mark.parametrize("sample", ALL_SAMPLES)
def test_round_trip_through_decoder_one_byte_at_a_time(sample):
    data = wire(sample, stream_id=9) + encode_frame(m.Ping(nonce=1), 0)
    decoder = FrameDecoder()
    events: list = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        events.extend(decoder)
    expected: list = [Frame(9, sample)]
    if payload_length(sample):
        expected.append(PiecePayload(9, payload_for(sample), True))
    expected.append(Frame(0, m.Ping(nonce=1)))
    assert merge_payloads(events) == expected
    assert decoder.buffered == 0
    decoder.feed_eof()
    assert decoder.next_event() is None


@pytest.mark.parametrize("sample", ALL_SAMPLES)
def test_encode_frame_into_appends_the_same_bytes(sample):
    buffer = bytearray(b"prefix")
    written = encode_frame_into(buffer, sample, 3)
    assert bytes(buffer) == b"prefix" + encode_frame(sample, 3)
    assert written == len(buffer) - len(b"prefix")


@pytest.mark.parametrize("sample", ALL_SAMPLES)
def test_defaults_are_not_sent_and_unknown_fields_are_ignored(sample):
    cls = type(sample)
    body = msgspec.msgpack.encode(sample)
    sent = msgspec.msgpack.decode(body)
    for field in msgspec.inspect.type_info(cls).fields:
        has_default = not field.required and field.default is not msgspec.NODEFAULT
        if has_default and getattr(sample, field.name) == field.default:
            assert field.name not in sent
    # A newer peer's extra field (even a nested one) is ignored: minor versioning.
    extended = dict(sent, zz_added_in_1_9={"nested": [1, 2, {"x": b"y"}]})
    assert decode_body(cls, msgspec.msgpack.encode(extended)) == sample


# --- malformed input, generated per message type ---------------------------------------

_STRING_LIKE = (msgspec.inspect.StrType, msgspec.inspect.LiteralType, msgspec.inspect.EnumType)


def _wrong_value(field_type: msgspec.inspect.Type) -> object:
    """A value no decoder for ``field_type`` accepts."""
    if isinstance(field_type, msgspec.inspect.UnionType):  # X | None
        field_type = next(
            t for t in field_type.types if not isinstance(t, msgspec.inspect.NoneType)
        )
    if isinstance(field_type, msgspec.inspect.Metadata):
        field_type = field_type.type
    return 12345 if isinstance(field_type, _STRING_LIKE) else "wrong type"


def _int_bounds(field_type: msgspec.inspect.Type) -> int | None:
    if isinstance(field_type, msgspec.inspect.IntType) and field_type.ge is not None:
        return field_type.ge
    return None


def malformed_cases():
    """(class, body, field name) for: each required field missing, each field of the
    wrong type, each lower-bounded int field below its bound."""
    for cls, samples in SAMPLES.items():
        full = body_map(samples[-1])
        for field in msgspec.inspect.type_info(cls).fields:
            name = field.name
            if field.required:
                body = {k: v for k, v in full.items() if k != name}
                yield pytest.param(cls, body, name, id=f"{cls.__name__}-missing-{name}")
            body = dict(full, **{name: _wrong_value(field.type)})
            yield pytest.param(cls, body, name, id=f"{cls.__name__}-type-{name}")
            bound = _int_bounds(field.type)
            if bound is not None:
                body = dict(full, **{name: bound - 1})
                yield pytest.param(cls, body, name, id=f"{cls.__name__}-below-{name}")


@pytest.mark.parametrize(("cls", "body", "field"), list(malformed_cases()))
def test_malformed_body(cls, body, field):
    encoded = msgspec.msgpack.encode(body)
    with pytest.raises(MalformedFrame) as info:
        decode_body(cls, encoded)
    error = info.value
    assert cls.__name__ in str(error)
    assert field in str(error)
    assert error.message_type is cls
    assert error.error_code == m.ErrorCode.BAD_REQUEST
    assert error.fatal is cls.has_payload
    # Same verdict through the incremental decoder, with the stream named.
    decoder = FrameDecoder()
    decoder.feed(raw_frame(cls.type_code, encoded, stream_id=77))
    with pytest.raises(MalformedFrame, match=f"{cls.__name__}.*stream 77"):
        decoder.next_event()


@pytest.mark.parametrize("cls", ALL_TYPES)
@pytest.mark.parametrize(
    "body",
    [b"", b"\xc1", b"\x93\x01\x02\x03", b"\xa3abc", b"\x81\xa1a", b"\x80\x80", b"\xc0"],
    ids=["empty", "reserved-byte", "array", "string", "truncated-map", "trailing", "nil"],
)
def test_garbage_body(cls, body):
    with pytest.raises(MalformedFrame, match=cls.__name__):
        decode_body(cls, body)


def test_deeply_nested_unknown_field_is_malformed_not_a_crash():
    body = b"\x82\xa7task_id\xa1t\xa2zz" + b"\x91" * 100_000 + b"\xc0"
    with pytest.raises(MalformedFrame, match="GetTaskInfo"):
        decode_body(m.GetTaskInfo, body)


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (
            dict(
                task_id=TASK,
                content_length=10,
                piece_length=4,
                piece_count=3,
                state="Running",
                bitmap=b"\xe0\x00",
            ),
            "bitmap is 2 bytes but piece_count 3 needs 1",
        ),
        (
            dict(
                task_id=TASK,
                content_length=10,
                piece_length=4,
                piece_count=3,
                state="Running",
                bitmap=b"\xf0",
            ),
            "padding bits beyond piece 2",
        ),
        (
            dict(
                task_id=TASK,
                content_length=10,
                piece_length=4,
                piece_count=4,
                state="Running",
                bitmap=b"\x00",
            ),
            "piece_count 4 does not match",
        ),
        (
            dict(
                task_id=TASK,
                content_length=10,
                piece_length=4,
                piece_count=3,
                state="Running",
                bitmap=b"\x00",
                digests={3: "crc32:1"},
            ),
            "digests names piece 3",
        ),
        (
            dict(
                task_id=TASK,
                content_length=10,
                piece_length=4,
                piece_count=3,
                state="Bogus",
                bitmap=b"\x00",
            ),
            "Invalid enum value 'Bogus'",
        ),
    ],
)
def test_task_info_cross_field_rules(message, match):
    with pytest.raises(MalformedFrame, match=match):
        decode_body(m.TaskInfo, msgspec.msgpack.encode(message))
    # Checked on construction too, so a daemon cannot build a message peers reject.
    if message["state"] != "Bogus":
        with pytest.raises(ValueError, match=match):
            m.TaskInfo(**{**message, "state": TaskState.RUNNING})


@pytest.mark.parametrize(
    ("cls", "changes", "match"),
    [
        (m.Piece, {"digest": "sha256:ab"}, "digest"),
        (m.Piece, {"digest": "crc32:12345678901"}, "digest"),
        (m.Piece, {"digest": "crc32:"}, "digest"),
        (m.Piece, {"length": 0}, "length"),
        (m.Piece, {"length": 2**30 + 1}, "length"),
        (m.PieceFinished, {"peer_id": ""}, "peer_id"),
        (m.PieceFinished, {"number": 2**32}, "number"),
        (m.AnnounceHost, {"port": 0}, "port"),
        (m.AnnounceHost, {"port": 65536}, "port"),
        (m.AnnounceHost, {"host_type": "super"}, "host_type"),
        (m.Hello, {"role": "admin"}, "role"),
        (m.Hello, {"features": ["x"] * (m.MAX_FEATURES + 1)}, "features"),
        (m.Hello, {"features": [""]}, "features"),
        (m.Reschedule, {"bad_parents": ["p"] * (m.MAX_BAD_PARENTS + 1)}, "bad_parents"),
        (m.Reschedule, {"bad_parents": [""]}, "bad_parents"),
        (m.RegisterPeer, {"priority": 7}, "priority"),
        (m.RegisterPeer, {"headers": {"a": 1}}, "headers"),
        (m.RegisterPeer, {"url": ""}, "url"),
        (m.NormalTaskResponse, {"candidate_parents": []}, "candidate_parents"),
        (m.NormalTaskResponse, {"digests": {"1": "crc32:1"}}, "digests"),
        (m.NormalTaskResponse, {"digests": {-1: "crc32:1"}}, "digests"),
        (m.TinyTaskResponse, {"content": bytes(129)}, "content"),
        (m.TinyTaskResponse, {"content": b""}, "content"),
        (m.DownloadFinished, {"content": bytes(129), "content_length": 129}, "content"),
        (m.DownloadFinished, {"content": b""}, "content"),
        (m.DownloadFinished, {"content": bytes(99)}, "content"),  # != content_length
        (m.Error, {"code": ""}, "code"),
        (m.Error, {"piece_number": -2}, "piece_number"),
        (m.HavePieces, {"numbers": [1, -1]}, "numbers"),
    ],
)
def test_constraints(cls, changes, match):
    body = {**body_map(SAMPLES[cls][-1]), **changes}
    if cls is m.NormalTaskResponse:
        body["candidate_parents"] = [
            body_map(p) if isinstance(p, m.ParentInfo) else p for p in body["candidate_parents"]
        ]
    with pytest.raises(MalformedFrame, match=rf"{cls.__name__}.*{match}"):
        decode_body(cls, msgspec.msgpack.encode(body))


def test_nested_parent_info_is_validated():
    parent = {**body_map(PARENT_INFO), "port": -1}
    body = {**body_map(SAMPLES[m.SmallTaskResponse][0]), "parent": parent}
    with pytest.raises(MalformedFrame, match=r"SmallTaskResponse.*\$\.parent\.port"):
        decode_body(m.SmallTaskResponse, msgspec.msgpack.encode(body))


def test_piece_finished_from_origin():
    assert SAMPLES[m.PieceFinished][0].from_origin
    assert not SAMPLES[m.PieceFinished][1].from_origin


# --- header ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 11])
def test_truncated_header(size):
    frame = encode_frame(m.Ping(nonce=1))
    with pytest.raises(TruncatedFrame, match=f"{size} bytes, a header is 12"):
        decode_header(frame[:size])


def test_decode_header_reads_only_the_first_12_bytes():
    frame = encode_frame(m.Ping(nonce=1), 4)
    assert decode_header(frame + b"more") == decode_header(frame[:HEADER_LENGTH])


def test_bad_magic():
    frame = b"HT" + encode_frame(m.Ping(nonce=1))[2:]
    with pytest.raises(BadMagic, match=r"bad magic b'HT'") as info:
        decode_header(frame)
    assert info.value.fatal and info.value.error_code == m.ErrorCode.PROTOCOL_ERROR
    assert info.value.stream_id is None


@pytest.mark.parametrize("version", [0, 2, 255])
def test_unsupported_version(version):
    frame = raw_frame(m.Ping.type_code, b"\x81\xa5nonce\x01", 3, version=version)
    with pytest.raises(UnsupportedVersion, match=f"version {version} .*speaks 1") as info:
        decode_header(frame)
    assert info.value.fatal and info.value.stream_id == 3
    assert info.value.error_code == m.ErrorCode.UNSUPPORTED_VERSION


def test_unknown_type():
    frame = raw_frame(0xEE, b"\x80", 6)
    with pytest.raises(UnknownMessageType, match="0xee on stream 6") as info:
        decode_header(frame)
    error = info.value
    assert (error.type_code, error.stream_id, error.body_length) == (0xEE, 6, 1)
    assert not error.fatal and error.error_code == m.ErrorCode.UNKNOWN_MESSAGE_TYPE
    with pytest.raises(UnknownMessageType, match="0xee"):
        decode_body(0xEE, b"\x80")


def test_oversized_length_is_rejected_from_the_header_alone():
    header = raw_frame(m.Ping.type_code, b"")[:8] + (2**32 - 1).to_bytes(4, "big")
    with pytest.raises(FrameTooLarge, match=r"4294967295 bytes .*limit of 1048576") as info:
        decode_header(header)
    assert info.value.fatal and info.value.error_code == m.ErrorCode.FRAME_TOO_LARGE
    # The incremental decoder needs the 12 header bytes only, not the body.
    decoder = FrameDecoder()
    decoder.feed(header)
    with pytest.raises(FrameTooLarge):
        decoder.next_event()
    # Fatal: the decoder keeps refusing.
    decoder.feed(encode_frame(m.Ping(nonce=1)))
    with pytest.raises(FrameTooLarge):
        decoder.next_event()
    assert isinstance(decoder.error, FrameTooLarge)


def test_body_limit_is_configurable():
    frame = encode_frame(SAMPLES[m.TaskInfo][1])
    body_length = len(frame) - HEADER_LENGTH
    assert decode_header(frame, max_body_length=body_length).body_length == body_length
    with pytest.raises(FrameTooLarge):
        decode_header(frame, max_body_length=body_length - 1)
    decoder = FrameDecoder(max_body_length=body_length - 1)
    assert decoder.max_body_length == body_length - 1
    decoder.feed(frame)
    with pytest.raises(FrameTooLarge):
        decoder.next_event()


def test_fatal_errors_win_over_unknown_type():
    frame = raw_frame(0xEE, b"\x80")
    with pytest.raises(BadMagic):
        decode_header(b"XX" + frame[2:])
    with pytest.raises(FrameTooLarge):
        decode_header(frame, max_body_length=0)


@pytest.mark.parametrize("bad", [-1, 2**32, True, "1"])
def test_decoder_rejects_bad_limits(bad):
    with pytest.raises(ValueError, match="max_body_length must be an int"):
        FrameDecoder(max_body_length=bad)


def test_decode_body_checks_its_arguments():
    frame = encode_frame(m.Ping(nonce=1))
    header = decode_header(frame)
    with pytest.raises(ValueError, match="announced"):
        decode_body(header, frame[HEADER_LENGTH:] + b"\x00")
    with pytest.raises(TypeError, match="FrameHeader, a type code or a message class"):
        decode_body(True, frame[HEADER_LENGTH:])
    with pytest.raises(TypeError, match="not a registered message type"):
        decode_body(m.Message, frame[HEADER_LENGTH:])


# --- encoding -------------------------------------------------------------------------


def test_frame_layout():
    frame = encode_frame(m.Ping(nonce=7), stream_id=0x01020304)
    body = msgspec.msgpack.encode({"nonce": 7})
    assert frame == b"D7\x01\x03\x01\x02\x03\x04" + len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize("stream_id", [0, 1, MAX_STREAM_ID])
def test_stream_ids(stream_id):
    assert decode_header(encode_frame(m.Ping(nonce=1), stream_id)).stream_id == stream_id


@pytest.mark.parametrize("stream_id", [-1, MAX_STREAM_ID + 1, 1.0, None, True])
def test_bad_stream_id(stream_id):
    with pytest.raises(ValueError, match="stream_id must be an int"):
        encode_frame(m.Ping(nonce=1), stream_id)
    buffer = bytearray(b"x")
    with pytest.raises(ValueError, match="stream_id must be an int"):
        encode_frame_into(buffer, m.Ping(nonce=1), stream_id)
    assert buffer == b"x"


@pytest.mark.parametrize("thing", [PARENT_INFO, {"nonce": 1}, None])
def test_encoding_an_unregistered_type(thing):
    with pytest.raises(TypeError, match="not a registered message type"):
        encode_frame(thing)


def test_encoding_an_unencodable_value_leaves_the_buffer_alone():
    message = m.Error(code="internal", message=object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        encode_frame(message)
    buffer = bytearray(b"keep")
    with pytest.raises(TypeError):
        encode_frame_into(buffer, message)
    assert buffer == b"keep"


def test_encoding_above_the_limit():
    message = m.Error(code="internal", message="x" * 2000)
    with pytest.raises(FrameTooLarge, match="Error encodes to"):
        encode_frame(message, max_body_length=1000)
    buffer = bytearray(b"keep")
    with pytest.raises(FrameTooLarge):
        encode_frame_into(buffer, message, max_body_length=1000)
    assert buffer == b"keep"
    assert decode_header(encode_frame(message, max_body_length=3000))


def test_batch_of_frames_in_one_buffer():
    buffer = bytearray()
    reports = SAMPLES[m.PieceFinished] * 50
    for i, report in enumerate(reports):
        encode_frame_into(buffer, report, i + 1)
    decoder = FrameDecoder()
    decoder.feed(buffer)
    assert drain(decoder) == [Frame(i + 1, r) for i, r in enumerate(reports)]


def test_payload_length():
    piece = SAMPLES[m.Piece][1]
    assert payload_length(piece) == piece.length == 16
    for cls, samples in SAMPLES.items():
        if cls is not m.Piece:
            assert payload_length(samples[0]) == 0
    with pytest.raises(TypeError, match="expected a protocol message"):
        payload_length(PARENT_INFO)


def test_protocol_error_to_message():
    error = FrameTooLarge("too big", stream_id=3)
    reply = error.to_message()
    assert reply == m.Error(code="frame_too_large", message="too big")
    assert decode_body(m.Error, encode_frame(reply)[HEADER_LENGTH:]) == reply
    assert isinstance(error, ValueError)
    long = ProtocolError("x" * 10_000).to_message()
    assert len(long.message) == 8192
    assert long.code == "protocol_error"


# --- incremental decoder --------------------------------------------------------------


def test_piece_payload_split_across_feeds():
    piece = m.Piece(task_id=TASK, number=1, offset=100, length=100, digest="crc32:5")
    payload = bytes(range(100))
    after = encode_frame(m.HavePieces(task_id=TASK, numbers=[1]), 4)
    frame = encode_frame(piece, 4)
    decoder = FrameDecoder()
    decoder.feed(frame + payload[:10])
    assert decoder.next_event() == Frame(4, piece)
    assert decoder.in_payload
    assert decoder.next_event() == PiecePayload(4, payload[:10], False)
    assert decoder.next_event() is None
    decoder.feed(payload[10:60])
    decoder.feed(payload[60:99])
    assert decoder.next_event() == PiecePayload(4, payload[10:99], False)
    # The last payload byte and the next frame arrive together.
    decoder.feed(payload[99:] + after)
    assert decoder.next_event() == PiecePayload(4, payload[99:], True)
    assert not decoder.in_payload
    assert decoder.next_event() == Frame(4, m.HavePieces(task_id=TASK, numbers=[1]))
    assert decoder.next_event() is None
    assert decoder.buffered == 0


def test_payload_bytes_are_not_parsed_as_frames():
    # A payload that looks like a frame is still just payload.
    inner = encode_frame(m.Ping(nonce=5))
    piece = m.Piece(task_id=TASK, number=0, offset=0, length=len(inner), digest="crc32:1")
    decoder = FrameDecoder()
    decoder.feed(encode_frame(piece) + inner)
    assert drain(decoder) == [Frame(0, piece), PiecePayload(0, inner, True)]


@given(cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_any_chunking_gives_the_same_events(cuts):
    stream = b"".join(
        wire(sample, stream_id=i) for i, sample in enumerate(s[-1] for s in SAMPLES.values())
    )
    bounds = sorted({0, len(stream), *(c * len(stream) // 400 for c in cuts)})
    decoder = FrameDecoder()
    events: list = []
    for lo, hi in itertools.pairwise(bounds):
        decoder.feed(stream[lo:hi])
        events.extend(decoder)
    whole = FrameDecoder()
    whole.feed(stream)
    assert merge_payloads(events) == merge_payloads(drain(whole))
    assert len([e for e in events if isinstance(e, Frame)]) == len(SAMPLES)


def test_partial_frames_wait_for_data():
    frame = encode_frame(SAMPLES[m.RegisterPeer][1], 2)
    decoder = FrameDecoder()
    decoder.feed(frame[:5])
    assert decoder.next_event() is None
    decoder.feed(frame[5:20])
    assert decoder.next_event() is None
    assert decoder.buffered == 20 - HEADER_LENGTH  # the header was consumed
    decoder.feed(frame[20:])
    assert decoder.next_event() == Frame(2, SAMPLES[m.RegisterPeer][1])


@pytest.mark.parametrize(
    ("cut", "match"),
    [(5, "a 12-byte header, got 5"), (20, "body of a"), (-3, "3 more piece payload bytes")],
)
def test_eof_in_the_middle_of_a_frame(cut, match):
    data = wire(SAMPLES[m.Piece][1])
    decoder = FrameDecoder()
    decoder.feed(data[:cut])
    drain(decoder)
    decoder.feed_eof()
    with pytest.raises(TruncatedFrame, match=match):
        decoder.next_event()
    with pytest.raises(TruncatedFrame):
        decoder.next_event()


def test_clean_eof_and_feed_after_eof():
    decoder = FrameDecoder()
    decoder.feed(encode_frame(m.Ping(nonce=1)))
    decoder.feed_eof()
    assert drain(decoder) == [Frame(0, m.Ping(nonce=1))]
    assert decoder.next_event() is None
    with pytest.raises(RuntimeError, match="after feed_eof"):
        decoder.feed(b"x")


def test_decoder_recovers_after_non_fatal_errors():
    bad_body = msgspec.msgpack.encode({"nonce": -1})
    data = (
        raw_frame(0xEE, b"\x81\xa1a\x01", stream_id=3)
        + raw_frame(m.Ping.type_code, bad_body, stream_id=5)
        + encode_frame(m.Pong(nonce=2), 7)
    )
    decoder = FrameDecoder()
    decoder.feed(data)
    with pytest.raises(UnknownMessageType) as unknown:
        decoder.next_event()
    assert unknown.value.stream_id == 3
    with pytest.raises(MalformedFrame, match=r"Ping.*stream 5.*nonce") as malformed:
        decoder.next_event()
    assert malformed.value.stream_id == 5 and not malformed.value.fatal
    assert decoder.next_event() == Frame(7, m.Pong(nonce=2))
    assert decoder.error is None


def test_malformed_piece_is_fatal():
    body = msgspec.msgpack.encode({**body_map(SAMPLES[m.Piece][1]), "length": -1})
    decoder = FrameDecoder()
    decoder.feed(raw_frame(m.Piece.type_code, body) + b"payload?")
    with pytest.raises(MalformedFrame) as info:
        decoder.next_event()
    assert info.value.fatal
    with pytest.raises(MalformedFrame):
        decoder.next_event()
    assert decoder.error is info.value


def test_bad_magic_in_the_decoder_is_fatal():
    decoder = FrameDecoder()
    decoder.feed(encode_frame(m.Ping(nonce=1)) + b"GET / HTTP/1.1\r\n")
    assert decoder.next_event() == Frame(0, m.Ping(nonce=1))
    with pytest.raises(BadMagic, match="b'GE'"):
        decoder.next_event()
    with pytest.raises(BadMagic):
        decoder.next_event()


# --- fuzzing --------------------------------------------------------------------------

FUZZ_LIMIT = 512
_SAMPLE_WIRES = [wire(s, i) for i, s in enumerate(x for v in SAMPLES.values() for x in v)]


def _run_decoder(chunks: list[bytes], limit: int) -> None:
    """Feed ``chunks``; only ProtocolError may escape, and memory stays bounded."""
    decoder = FrameDecoder(max_body_length=limit)
    steps = 0
    for chunk in chunks:
        decoder.feed(chunk)
        while True:
            steps += 1
            # Every event or non-fatal error consumes at least one byte.
            assert steps <= sum(map(len, chunks)) + len(chunks) + 1
            try:
                event = decoder.next_event()
            except ProtocolError as exc:
                assert isinstance(exc.error_code, m.ErrorCode)
                if exc.fatal:
                    assert decoder.error is exc
                    return
                continue
            if event is None:
                break
            assert isinstance(event, Frame | PiecePayload)
            if isinstance(event, Frame):
                assert type(event.message) in m.CODES
        # Between feeds the decoder holds at most one incomplete header + body.
        assert decoder.buffered < HEADER_LENGTH + limit


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_arbitrary_bytes(chunks):
    _run_decoder(chunks, FUZZ_LIMIT)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(st.sampled_from(_SAMPLE_WIRES), min_size=1, max_size=4),
    flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), max_size=4),
    cut=st.integers(min_value=1, max_value=64),
)
def test_fuzz_mutated_frames(frames, flips, cut):
    # Valid frames with a few bytes overwritten reach the deeper paths (valid header,
    # broken body; a Piece whose length is changed; ...).
    data = bytearray(b"".join(frames))
    for position, value in flips:
        data[position % len(data)] = value
    chunks = [bytes(data[i : i + cut]) for i in range(0, len(data), cut)]
    _run_decoder(chunks, DEFAULT_MAX_BODY_LENGTH)


@given(st.binary(min_size=HEADER_LENGTH, max_size=HEADER_LENGTH))
def test_fuzz_headers(header):
    try:
        result = decode_header(header, max_body_length=FUZZ_LIMIT)
    except ProtocolError:
        return
    assert result.body_length <= FUZZ_LIMIT
    assert result.type in m.REGISTRY


# -- the documented limits and defaults (docs/protocol.md), as literal numbers -----------


def _accepts(cls: type[m.Message], sample: m.Message, **changes) -> bool:
    body = msgspec.msgpack.encode({**body_map(sample), **changes})
    try:
        decode_body(cls, body)
    except MalformedFrame:
        return False
    return True


@pytest.mark.parametrize(
    ("cls", "field", "at_limit", "over"),
    [
        (m.Error, "task_id", "t" * 512, "t" * 513),  # optional id: 0..512
        (m.Error, "message", "x" * 8192, "x" * 8193),  # text: at most 8192
        (m.Hello, "features", ["f"] * 64, ["f"] * 65),  # at most 64 features
        (m.Hello, "features", ["f" * 64], ["f" * 65]),  # each 1..64 characters
        (m.Hello, "features", ["f"], [""]),
        (m.Reschedule, "bad_parents", ["p"] * 1024, ["p"] * 1025),
        (m.RegisterPeer, "headers", {f"h{i}": "v" for i in range(256)},
         {f"h{i}": "v" for i in range(257)}),
        (m.RegisterPeer, "priority", 6, 7),
        (m.RegisterPeer, "priority", 0, -1),
    ],
)  # fmt: skip
def test_documented_limits_hold_exactly_at_the_edge(cls, field, at_limit, over):
    sample = SAMPLES[cls][0]
    assert _accepts(cls, sample, **{field: at_limit})
    assert not _accepts(cls, sample, **{field: over})


def test_documented_defaults():
    task = "a" * 64
    assert m.Error(code="x").piece_number == -1
    assert m.HavePieces(task_id=task, numbers=[]).content_length == -1
    assert m.DownloadStarted(peer_id="p", task_id=task).content_length == -1
    host = m.AnnounceHost(host_id="h", ip="1.2.3.4", hostname="h", port=1, download_port=2)
    assert (
        host.max_tx_bandwidth_bps,
        host.concurrent_upload_count,
        host.upload_content_length,
    ) == (0, 0, 0)
    assert m.RegisterPeer(peer_id="p", task_id=task, host_id="h", url="u").priority == 0
    assert m.TriggerSeed(task_id=task, url="u").piece_length == 0
    parent = m.ParentInfo(
        peer_id="p", host_id="h", ip="1.2.3.4", port=1, download_port=2, state="Running"
    )
    assert parent.tx_bandwidth_bps == 0


@pytest.mark.parametrize(
    ("lengths", "bitmap"),
    [
        ((-1, 4, 3), b"\xe0"),  # content length unknown: the count is not derived
        ((10, 0, 3), b"\xe0"),  # piece length unknown
        ((10, 4, -1), b""),  # piece count unknown: no bitmap length to check
        ((72, 8, 9), b"\xff\x80"),  # 9 pieces: 2 bytes, 7 padding bits clear
        ((64, 8, 8), b"\xff"),  # a whole byte, no padding
    ],
)
def test_task_info_accepts_what_is_consistent(lengths, bitmap):
    content_length, piece_length, piece_count = lengths
    info = m.TaskInfo(
        task_id="a" * 64,
        content_length=content_length,
        piece_length=piece_length,
        piece_count=piece_count,
        bitmap=bitmap,
        state=TaskState.RUNNING,
    )
    assert info.bitmap == bitmap


@pytest.mark.parametrize(
    ("lengths", "bitmap", "match"),
    [
        ((10, 4, 3), b"\xe2", "padding bits"),  # a low padding bit set
        ((0, 4, 0), b"\x00", "needs 0"),  # no pieces: no bitmap bytes
        ((64, 8, 8), b"", "needs 1"),  # too short
    ],
)
def test_task_info_refuses_a_bitmap_that_does_not_fit(lengths, bitmap, match):
    content_length, piece_length, piece_count = lengths
    with pytest.raises(ValueError, match=match):
        m.TaskInfo(
            task_id="a" * 64,
            content_length=content_length,
            piece_length=piece_length,
            piece_count=piece_count,
            bitmap=bitmap,
            state=TaskState.RUNNING,
        )


def test_register_accepts_the_last_type_code():
    class Last(m.Message, kw_only=True):
        type_code = 0xFF

    try:
        assert m.register(Last) is Last and m.REGISTRY[0xFF] is Last
    finally:
        m.REGISTRY.pop(0xFF, None)
        m.CODES.pop(Last, None)


def test_a_body_exactly_at_the_limit_passes():
    message = m.Ping(nonce=7)
    size = len(encode_frame(message)) - HEADER_LENGTH
    assert decode_header(encode_frame(message, max_body_length=size), size).body_length == size
    buffer = bytearray()
    encode_frame_into(buffer, message, max_body_length=size)
    assert bytes(buffer) == encode_frame(message)
    with pytest.raises(FrameTooLarge):
        encode_frame(message, max_body_length=size - 1)
    with pytest.raises(FrameTooLarge):
        encode_frame_into(bytearray(), message, max_body_length=size - 1)


def test_the_largest_body_limit_the_header_can_describe():
    FrameDecoder(max_body_length=0xFFFFFFFF)
    with pytest.raises(ValueError, match=r"max_body_length must be an int in 0\.\.4294967295"):
        FrameDecoder(max_body_length=0x100000000)


# --- receiving into the decoder's buffer ------------------------------------------------


def test_bytes_received_into_the_buffer_decode_like_fed_ones():
    """get_buffer/buffer_updated (the I/O layer receives in place) gives the events
    feed() gives, whatever the receive sizes, and the buffer grows only as asked."""
    data = b"".join(wire(s, i) for i, s in enumerate(x for v in SAMPLES.values() for x in v))
    fed = FrameDecoder()
    fed.feed(data)
    expected = merge_payloads(drain(fed))
    for size in (1, 7, 64, 4096):
        decoder = FrameDecoder()
        events: list = []
        offset = 0
        while offset < len(data):
            view = decoder.get_buffer(size)
            assert len(view) >= size
            n = min(len(view), len(data) - offset)
            view[:n] = data[offset : offset + n]
            del view  # valid until the next call only
            decoder.buffer_updated(n)
            offset += n
            events.extend(decoder)
            # Only unread bytes are kept: the buffer never needs more than them + size.
            assert decoder.capacity <= max(decoder.buffered + size, HEADER_LENGTH + 2 * size, 1024)
        assert merge_payloads(events) == expected, size


def test_a_piece_payload_goes_into_the_callers_buffer():
    """take_payload hands out what is buffered, skip_payload accounts the rest read past
    the decoder, and the next frame decodes after it."""
    piece = m.Piece(task_id=TASK, number=0, offset=0, length=100, digest="crc32:1")
    payload = bytes(range(100))
    decoder = FrameDecoder()
    decoder.feed(encode_frame(piece, 3) + payload[:30])
    assert decoder.next_event() == Frame(3, piece)
    into = memoryview(bytearray(100))
    assert decoder.take_payload(into) == 30
    assert decoder.payload_left == 70 and decoder.buffered == 0
    with pytest.raises(ValueError, match="take_payload"):
        decoder.skip_payload(71)
    into[30:] = payload[30:]  # as if received straight from the connection
    decoder.skip_payload(70)
    assert bytes(into) == payload and not decoder.in_payload
    decoder.feed(encode_frame(m.Ping(nonce=4), 3))
    assert decoder.next_event() == Frame(3, m.Ping(nonce=4))


def test_shrink_keeps_unread_bytes_and_frees_an_empty_buffer():
    decoder = FrameDecoder()
    assert decoder.capacity == 0
    frame = encode_frame(m.Ping(nonce=1))
    decoder.feed(frame[:5])
    decoder.shrink(0)  # unread bytes: kept
    assert decoder.buffered == 5 and not decoder.between_frames
    assert decoder.missing == HEADER_LENGTH - 5
    decoder.feed(frame[5:])
    assert decoder.next_event() == Frame(0, m.Ping(nonce=1))
    assert decoder.between_frames
    decoder.shrink(4096)
    assert decoder.capacity == 4096
