"""Generated and mutated inputs for the daemons' ports, and a driver that throws them at
a real port (issue 13, "Fuzzing and load").

Each input is the whole of one client connection: some bytes, then end-of-file. What a
daemon must do with any of them: answer or not, then close; never hang, never flood the
client, never log a traceback (an unexpected exception means a decoder or handler let
hostile input through), never lose its other clients.

The inputs are deterministic in their seed (``random.Random``), so a failure is
reproduced by its seed and index. Generators know the protocol from the message
registry itself (``msgspec.inspect``), so a new message type or field is fuzzed with no
change here: values are drawn at and just past each field's declared bounds, of the
wrong type, or absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import struct
from collections.abc import Callable

import msgspec

from d7y.core.messages import REGISTRY, Piece
from d7y.core.protocol import MAGIC, PROTOCOL_VERSION, encode_frame

_HEADER = struct.Struct(">2sBBII")

# --- values ---------------------------------------------------------------------------

_HOSTILE_STRINGS = (
    "",
    "\x00",
    "../../../../etc/passwd",
    "http://127.0.0.1:1/x",
    "http://169.254.169.254/latest/meta-data/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_FLUSHALL",
    "\u202e\ufeff\U0001f600",
    "%00%2e%2e/",
    "a" * 70_000,
)
_HOSTILE_INTS = (0, 1, -1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**63 - 1, -(2**63), 2**64 - 1)


def _any_value(rng: random.Random, depth: int = 0) -> object:
    """A value of any msgpack type: what a field of the wrong type receives."""
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice(_HOSTILE_INTS)
    if kind == 1:
        return rng.choice((0.0, -0.0, float("nan"), float("inf"), 1e308, -1.5))
    if kind == 2:
        return rng.choice(_HOSTILE_STRINGS)
    if kind == 3:
        return rng.randbytes(rng.choice((0, 1, 7, 64, 4096)))
    if kind == 4:
        return rng.choice((True, False, None))
    if kind == 5:
        return rng.getrandbits(rng.choice((8, 31, 32, 63)))
    if kind == 6:
        return [_any_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 7:
        return {str(_any_value(rng, depth + 1))[:32]: _any_value(rng, depth + 1) for _ in range(3)}
    return _nested(rng.choice((10, 100)))


def _nested(depth: int) -> object:
    value: object = 0
    for _ in range(depth):
        value = [value]
    return value


def _bounded_int(rng: random.Random, info: msgspec.inspect.IntType) -> int:
    low = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else None)
    high = info.le if info.le is not None else (info.lt - 1 if info.lt is not None else None)
    choices = list(_HOSTILE_INTS)
    for bound in (low, high):
        if bound is not None:
            choices += [bound - 1, bound, bound + 1]
    if low is not None and high is not None and low <= high:
        choices.append(rng.randint(low, high))
    value = rng.choice(choices)
    # msgpack holds -2**63 .. 2**64-1; outside that the encoder itself refuses.
    return max(-(2**63), min(value, 2**64 - 1))


def _sized(rng: random.Random, min_length: int | None, max_length: int | None) -> int:
    choices = [0, 1, 16, 300]
    for bound in (min_length, max_length):
        if bound is not None:
            choices += [max(bound - 1, 0), bound, bound + 1]
    return min(rng.choice(choices), 100_000)


def _typed_value(rng: random.Random, info: msgspec.inspect.Type, depth: int = 0) -> object:
    """A value of the field's own type, drawn at and past its declared bounds."""
    ins = msgspec.inspect
    if isinstance(info, ins.IntType):
        return _bounded_int(rng, info)
    if isinstance(info, ins.StrType):
        if rng.random() < 0.4:
            return rng.choice(_HOSTILE_STRINGS)
        return "x" * _sized(rng, info.min_length, info.max_length)
    if isinstance(info, ins.BytesType):
        return rng.randbytes(_sized(rng, info.min_length, info.max_length))
    if isinstance(info, ins.BoolType):
        return rng.random() < 0.5
    if isinstance(info, ins.FloatType):
        return rng.choice((0.0, -1.0, float("nan"), float("inf"), 1e18))
    if isinstance(info, (ins.ListType, ins.SetType, ins.FrozenSetType, ins.VarTupleType)):
        if depth > 2:
            return []
        n = min(_sized(rng, info.min_length, info.max_length), 2000)
        item = _typed_value(rng, info.item_type, depth + 1)  # one value repeated: cheap
        return [item] * n
    if isinstance(info, ins.DictType):
        if depth > 2:
            return {}
        n = min(_sized(rng, info.min_length, info.max_length), 2000)
        return {
            _typed_key(rng, info.key_type, i): _typed_value(rng, info.value_type, depth + 1)
            for i in range(n)
        }
    if isinstance(info, ins.UnionType):
        return _typed_value(rng, rng.choice(info.types), depth)
    if isinstance(info, ins.StructType):
        return _struct_body(rng, info, depth + 1)
    if isinstance(info, ins.NoneType):
        return None
    return _any_value(rng, depth)


def _typed_key(rng: random.Random, info: msgspec.inspect.Type, index: int) -> object:
    if isinstance(info, msgspec.inspect.IntType):
        return index if rng.random() < 0.7 else _bounded_int(rng, info)
    return f"k{index}"


def _struct_body(rng: random.Random, info: msgspec.inspect.StructType, depth: int = 0) -> dict:
    body: dict = {}
    for field in info.fields:
        roll = rng.random()
        if roll < 0.08:
            continue  # absent (a required field missing)
        if roll < 0.2:
            body[field.encode_name] = _any_value(rng, depth)  # the wrong type
        else:
            body[field.encode_name] = _typed_value(rng, field.type, depth)
    if rng.random() < 0.1:
        body[rng.choice(_HOSTILE_STRINGS)[:64]] = _any_value(rng, depth)  # an unknown field
    return body


_STRUCTS = {code: msgspec.inspect.type_info(cls) for code, cls in REGISTRY.items()}


# --- framed protocol inputs -----------------------------------------------------------


def _frame(code: int, body: bytes, stream_id: int, *, length: int | None = None) -> bytes:
    n = len(body) if length is None else length
    return _HEADER.pack(MAGIC, PROTOCOL_VERSION, code, stream_id, n) + body


def _stream_id(rng: random.Random) -> int:
    return rng.choice((0, 1, 2, 3, 7, 2**31, 2**32 - 1, rng.getrandbits(32)))


def hostile_message_frame(rng: random.Random) -> bytes:
    """A well-framed message of a registered type whose fields are hostile."""
    code = rng.choice(list(_STRUCTS))
    try:
        body = msgspec.msgpack.encode(_struct_body(rng, _STRUCTS[code]))
    except (OverflowError, TypeError, ValueError):
        body = b"\x80"  # an empty map: every required field missing
    return _frame(code, body, _stream_id(rng))


def plausible_frame(rng: random.Random) -> bytes:
    """A frame that decodes: the daemon does real work on it (lookups, registrations)."""
    for _ in range(20):
        code = rng.choice(list(_STRUCTS))
        cls = REGISTRY[code]
        body = _struct_body(rng, _STRUCTS[code])
        try:
            message = msgspec.convert(body, cls)
            return encode_frame(message, _stream_id(rng) or 1)
        except (msgspec.ValidationError, OverflowError, TypeError, ValueError):
            continue
    return hostile_message_frame(rng)


def _header_mutation(rng: random.Random) -> bytes:
    body = msgspec.msgpack.encode(_any_value(rng))
    kind = rng.randrange(6)
    if kind == 0:  # a type code nobody registered (or any code at all)
        return _frame(rng.randrange(256), body, _stream_id(rng))
    if kind == 1:  # bad magic
        return struct.pack(">2sBBII", rng.randbytes(2), 1, 1, 0, len(body)) + body
    if kind == 2:  # another protocol version
        return struct.pack(">2sBBII", MAGIC, rng.randrange(256), 1, 0, len(body)) + body
    if kind == 3:  # a body length longer than what follows: truncated at end of file
        return _frame(rng.choice(list(_STRUCTS)), body, 1, length=len(body) + rng.randrange(1, 9))
    if kind == 4:  # an oversized body length
        return _frame(rng.choice(list(_STRUCTS)), b"", 1, length=rng.choice((2**20 + 1, 2**32 - 1)))
    # a Piece claiming a payload that never comes (or a huge one)
    piece = {"task_id": "t" * 64, "number": 0, "offset": 0, "length": rng.choice((1, 2**30))}
    piece["digest"] = "crc32c:00000000"
    return _frame(Piece.type_code, msgspec.msgpack.encode(piece), 1)


def _byte_mutation(rng: random.Random, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not buf:
            break
        op = rng.randrange(5)
        at = rng.randrange(len(buf))
        if op == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[at] = rng.randrange(256)
        elif op == 2:
            del buf[at : at + rng.randint(1, 8)]
        elif op == 3:
            buf[at:at] = rng.randbytes(rng.randint(1, 8))
        else:
            del buf[at:]
    return bytes(buf)


def framed_input(rng: random.Random) -> bytes:
    """One connection's bytes for a framed port (scheduler or piece port)."""
    parts = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        kind = rng.randrange(10)
        if kind < 3:
            parts.append(hostile_message_frame(rng))
        elif kind < 5:
            parts.append(plausible_frame(rng))
        elif kind < 7:
            parts.append(_header_mutation(rng))
        elif kind < 9:
            parts.append(_byte_mutation(rng, plausible_frame(rng)))
        elif rng.random() < 0.8:
            parts.append(rng.randbytes(rng.choice((1, 11, 12, 13, 100, 5000))))
        else:  # a body nested deeper than any encoder here would write (msgpack fixarray)
            body = b"\x91" * rng.choice((1000, 100_000)) + b"\xc0"
            parts.append(_frame(rng.choice(list(_STRUCTS)), body, 1))
    return b"".join(parts)


# --- HTTP inputs ----------------------------------------------------------------------

_METHODS = (b"GET", b"HEAD", b"POST", b"DELETE", b"PUT", b"OPTIONS", b"CONNECT", b"G\x00T", b"")
_HEADERS = (
    b"Range: bytes=0-0",
    b"Range: bytes=-1",
    b"Range: bytes=18446744073709551615-",
    b"Range: bytes=5-1",
    b"Range: bytes=0-1,2-3,4-5",
    b"Range: items=0-1",
    b"Range: bytes=" + b"9" * 400 + b"-",
    b"Content-Length: 5",
    b"Content-Length: -1",
    b"Content-Length: 99999999999999999999",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Content-Type: application/json",
    b"Host: " + b"h" * 9000,
    b"X-" + b"a" * 100 + b": " + b"b" * 60_000,
    b"Connection: keep-alive",
    b"Expect: 100-continue",
    b"\x00: \x00",
    b"NoColonHere",
)
_BODIES = (
    b"",
    b"{}",
    b'{"url": 1}',
    b'{"url": "file:///etc/passwd"}',
    b'{"url": "http://127.0.0.1:1/x", "output": "/etc/passwd"}',
    b'{"url": "http://169.254.169.254/", "headers": {"a": ["b"]}}',
    b"[" * 5000,
    b"5\r\nhello\r\n0\r\n\r\n",
    b"zz\r\n",
    b"\xff\xfe\xfd",
)


def http_input(
    rng: random.Random, paths: tuple[bytes, ...], extra_headers: tuple[bytes, ...] = ()
) -> bytes:
    """One connection's bytes for an HTTP port: requests built from hostile parts,
    sometimes pipelined, sometimes cut short, sometimes byte-mutated. ``extra_headers``
    join the pool of headers (a port's own, e.g. the proxy's X-Dragonfly-*)."""
    requests = []
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        method = rng.choice(_METHODS)
        path = rng.choice(paths) + rng.choice((b"", b"?a=b", b"/../..", b"%00", b"#x", b"x" * 9000))
        version = rng.choice((b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/9", b""))
        head = [method + b" " + path + b" " + version]
        head += rng.sample(_HEADERS + extra_headers, rng.randrange(4))
        body = rng.choice(_BODIES)
        if body and not any(h.startswith(b"Content-Length") for h in head):
            head.append(b"Content-Length: %d" % len(body))
        requests.append(b"\r\n".join(head) + b"\r\n\r\n" + body)
    data = b"".join(requests)
    roll = rng.random()
    if roll < 0.15:
        data = _byte_mutation(rng, data)
    elif roll < 0.2:
        data = data[: rng.randrange(len(data) + 1)]
    elif roll < 0.25:
        data = rng.randbytes(rng.choice((1, 64, 5000)))
    return data


# --- the driver -----------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    """What a port did with the inputs thrown at it."""

    inputs: int = 0
    answered: int = 0
    bytes_back: int = 0
    #: (index, first bytes) of inputs after which the daemon did not close the
    #: connection within the hang limit.
    hangs: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)
    #: (index, bytes sent back) of inputs that drew more than the flood limit.
    floods: list[tuple[int, int]] = dataclasses.field(default_factory=list)
    #: (index, error) of inputs whose connection could not even be opened.
    refused: list[tuple[int, str]] = dataclasses.field(default_factory=list)


async def throw(
    open_connection: Callable[[], object],
    make_input: Callable[[random.Random], bytes],
    count: int,
    *,
    seed: int = 0,
    concurrency: int = 8,
    hang_after: float = 15.0,
    flood_limit: int = 4 * 1024 * 1024,
    linger: float = 0.0,
) -> Outcome:
    """Throw ``count`` inputs, one connection each, ``concurrency`` at a time.

    Input ``i`` is ``make_input(random.Random(f"{seed}:{i}"))``, so any one can be
    regenerated alone. After sending, the client half-closes and reads until the
    daemon closes; more than ``flood_limit`` bytes back, or no close within
    ``hang_after`` seconds, is recorded against the input. ``linger``: how long to
    wait for the first bytes of an answer before half-closing (HTTP ports).
    """
    outcome = Outcome()
    next_index = 0

    async def one(index: int) -> None:
        data = make_input(random.Random(f"{seed}:{index}"))
        try:
            reader, writer = await asyncio.wait_for(open_connection(), hang_after)
        except (OSError, TimeoutError) as exc:
            outcome.refused.append((index, repr(exc)))
            return
        received = 0
        try:
            first = b""
            try:
                writer.write(data)
                await writer.drain()
                if linger:
                    # Give the daemon a moment to answer before the end of file: aiohttp
                    # abandons a request whose client half-closes before the answer.
                    with contextlib.suppress(TimeoutError):
                        first = await asyncio.wait_for(reader.read(65536), linger)
                if writer.can_write_eof():
                    writer.write_eof()
            except (ConnectionError, OSError):
                pass  # the daemon closed first: a fine answer to garbage
            received += len(first)
            async with asyncio.timeout(hang_after):
                while chunk := await reader.read(65536):
                    received += len(chunk)
                    if received > flood_limit:
                        outcome.floods.append((index, received))
                        break
        except TimeoutError:
            outcome.hangs.append((index, data[:64]))
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            outcome.inputs += 1
            outcome.answered += received > 0
            outcome.bytes_back += received

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await one(index)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcome


# --- the ports of a scheduler and a dfdaemon -------------------------------------------


def tcp(port: int):
    return lambda: asyncio.open_connection("127.0.0.1", port)


#: How long an HTTP input waits for an answer before its end of file.
HTTP_LINGER = 0.05

#: The ports fuzzed, by name (the keys of :func:`targets`).
PORTS = (
    "scheduler",
    "scheduler-metrics",
    "piece",
    "upload-http",
    "local-api",
    "peer-metrics",
    "proxy",
)

#: Request targets for the proxy: registry-mirror paths (the P2P rule's blobs among
#: them), forward-proxy URLs and CONNECT authorities, on closed loopback ports and on
#: addresses outside the loopback allowlist the fuzzed peer must be given
#: (``proxy.upstream_allow``, :data:`PROXY_ALLOW`): those are refused, never reached.
PROXY_PATHS = (
    b"/v2/",
    b"/v2/lib/app/blobs/sha256:" + b"a" * 64,
    b"/v2/lib/app/manifests/latest?ns=127.0.0.1:1",
    b"http://127.0.0.1:1/x",
    b"http://127.0.0.1:1/v2/lib/app/blobs/sha256:" + b"b" * 64,
    b"https://127.0.0.1:1/x",
    b"http://169.254.169.254/latest/meta-data/",
    b"http://10.0.0.1/x",
    b"http://internal.example/x",
    b"ftp://127.0.0.1:1/x",
    b"127.0.0.1:1",
    b"169.254.169.254:443",
    b"[::1]:1",
)
PROXY_HEADERS = (
    b"X-Dragonfly-Registry: http://169.254.169.254",
    b"X-Dragonfly-Registry: ::::",
    b"X-Dragonfly-Use-P2P: true",
    b"X-Dragonfly-Use-P2P: maybe",
    b"X-Dragonfly-Piece-Length: 1",
    b"X-Dragonfly-Priority: " + b"9" * 50,
    b"X-Dragonfly-Prefetch: true",
    b"X-Dragonfly-Output-Path: /etc/passwd",
    b"X-Dragonfly-Output-Path: ../../x",
    b"X-Dragonfly-Force-Hard-Link: true",
    b"X-Dragonfly-Content-For-Calculating-Task-ID: x",
    b"Proxy-Authorization: Basic Og==",
)
#: proxy.upstream_allow of a fuzzed peer: loopback only.
PROXY_ALLOW = ["127.0.0.0/8", "::1/128"]


def targets(scheduler, peer) -> dict:
    """name -> (daemon, connection opener, input generator, linger) for every port of a
    tests.peer_harness SchedulerProcess and PeerProcess."""
    upload_paths = (b"/download/", b"/download/" + b"0" * 64, b"/", b"/metrics", b"*")
    api_paths = (b"/v1/tasks", b"/v1/tasks/" + b"0" * 64, b"/v1/healthy", b"/v1/tasks/..")
    metrics_paths = (b"/metrics", b"/healthy", b"/", b"/metrics/../healthy")
    return {
        "scheduler": (scheduler, tcp(scheduler.port), framed_input, 0.0),
        "scheduler-metrics": (
            scheduler,
            tcp(scheduler.metrics_port),
            lambda rng: http_input(rng, metrics_paths),
            HTTP_LINGER,
        ),
        "piece": (peer, tcp(peer.piece_port), framed_input, 0.0),
        "upload-http": (
            peer,
            tcp(peer.upload_port),
            lambda rng: http_input(rng, upload_paths),
            HTTP_LINGER,
        ),
        "local-api": (
            peer,
            lambda: asyncio.open_unix_connection(str(peer.socket_path)),
            lambda rng: http_input(rng, api_paths),
            HTTP_LINGER,
        ),
        "peer-metrics": (
            peer,
            tcp(peer.metrics_port),
            lambda rng: http_input(rng, metrics_paths),
            HTTP_LINGER,
        ),
        "proxy": (
            peer,
            tcp(peer.proxy_port),
            lambda rng: http_input(rng, PROXY_PATHS, PROXY_HEADERS),
            HTTP_LINGER,
        ),
    }
