"""Encode + decode throughput of the hottest message, PieceFinished (a piece report).

Run:  .venv/bin/python -m pytest bench/test_bench_protocol.py --benchmark-only -s

Every benchmark handles a batch of BATCH reports with realistic IDs and reports
reports per second. Anchors measured in the same run:

* ``json``: stdlib json.dumps + json.loads of the same fields as a dict -- what a naive
  protocol would cost;
* ``msgspec bare``: msgspec msgpack encode + typed decode with no framing -- the floor.

The d7y paths are the fixed-size-read path of a daemon (encode_frame, decode_header,
decode_body) and the batched scheduler path (encode_frame_into one buffer, FrameDecoder
feed + drain). The target is >= 50k reports/s for the full encode+decode path.
"""

import json

import msgspec
import pytest

from d7y.core.messages import PieceFinished
from d7y.core.protocol import (
    HEADER_LENGTH,
    FrameDecoder,
    decode_body,
    decode_header,
    encode_frame,
    encode_frame_into,
)

BATCH = 1000
GROUP = f"PieceFinished encode+decode x{BATCH}"
TARGET = 50_000  # reports/s

REPORTS = [
    PieceFinished(
        peer_id=f"10.0.{i % 200}.{i % 250}-node{i}-3f2b1c9e-8d7a-4e5f-9a0b-{i:012d}",
        task_id=f"{i:064x}",
        number=i,
        parent_id=""
        if i % 10 == 0
        else f"10.1.0.{i % 250}-seed-0b7e3a52-9d1f-4c1e-8a51-2f6b7c8d9e00",
        cost_ns=1_000_000 + i,
        length=4 * 1024 * 1024,
        digest=f"crc32:{(i * 2654435761) & 0xFFFFFFFF}",
    )
    for i in range(BATCH)
]

# name -> median seconds per batch, filled by the benchmarks below.
MEDIANS: dict[str, float] = {}


def measure(benchmark, name: str, fn) -> None:
    benchmark.group = GROUP
    benchmark.extra_info["reports"] = BATCH
    result = benchmark(fn)
    assert result == REPORTS  # every path must really round-trip the batch
    if benchmark.stats is not None:  # None under --benchmark-disable
        MEDIANS[name] = benchmark.stats.stats.median


def rate(name: str) -> float:
    return BATCH / MEDIANS[name]


@pytest.fixture(scope="module", autouse=True)
def comparison(request):
    """After the module: one line comparing every path with the json anchor."""
    yield
    if "json" not in MEDIANS:
        return
    anchor = rate("json")
    parts = [f"json {anchor / 1e3:.0f}k/s (anchor)"]
    for name in MEDIANS:
        if name != "json":
            parts.append(f"{name} {rate(name) / 1e3:.0f}k/s = {rate(name) / anchor:.2f}x")
    line = f"PieceFinished encode+decode: {' | '.join(parts)}"
    slowest = min((rate(n) for n in MEDIANS if n.startswith("d7y")), default=None)
    if slowest is not None:
        verdict = "met" if slowest >= TARGET else "MISSED"
        line += f"  [target >= {TARGET // 1000}k reports/s: {verdict}]"
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(line)
    else:
        print(line)


def test_json_anchor(benchmark):
    fields = PieceFinished.__struct_fields__

    def run():
        out = []
        for report in REPORTS:
            text = json.dumps({name: getattr(report, name) for name in fields})
            out.append(PieceFinished(**json.loads(text)))
        return out

    measure(benchmark, "json", run)


def test_msgspec_bare(benchmark):
    encoder = msgspec.msgpack.Encoder()
    decoder = msgspec.msgpack.Decoder(PieceFinished)

    def run():
        return [decoder.decode(encoder.encode(report)) for report in REPORTS]

    measure(benchmark, "msgspec bare", run)


def test_d7y_frame_by_frame(benchmark):
    # A daemon's fixed-size reads: header, then exactly the body.
    def run():
        out = []
        for report in REPORTS:
            frame = encode_frame(report, 7)
            header = decode_header(frame)
            out.append(decode_body(header, memoryview(frame)[HEADER_LENGTH:]))
        return out

    measure(benchmark, "d7y frame-by-frame", run)


def test_d7y_batched_decoder(benchmark):
    # The scheduler's path: a peer batches reports into one write; the scheduler feeds
    # what arrives to a FrameDecoder and drains it.
    def run():
        buffer = bytearray()
        for report in REPORTS:
            encode_frame_into(buffer, report, 7)
        decoder = FrameDecoder()
        decoder.feed(buffer)
        return [event.message for event in decoder]

    measure(benchmark, "d7y batched", run)
