"""Bitmap kernel benchmarks: the compiled module against its pure-Python twin (the anchor).

Run:  .venv/bin/python -m pytest bench/test_bench_bitmap.py --benchmark-only -s

Workload (the piece picker's inner step): two 100 000-piece bitmaps, each about half
full at random; ``mine.and_not(parent)`` (what the parent has that I lack) and then
``first_clear`` on the result. Target: the compiled module >= 10x the twin. For
information: ``RarityCounter.rarest`` over 100 000 pieces counted from 50 parents, and
the word-scanning worst case of ``first_clear`` (a full bitmap but for its last piece).
The module prints one comparison line per workload when it finishes.
"""

from __future__ import annotations

import contextlib
import importlib
import random
from types import ModuleType

import pytest

PIECES = 100_000  # a multiple of 8
PARENTS = 50
SEED = 20240613

TWIN = importlib.import_module("d7y.ext._bitmap_py")
try:
    COMPILED: ModuleType | None = importlib.import_module("d7y.ext._bitmap")
except ImportError:  # not built: the compiled rows are skipped, the anchor still runs
    COMPILED = None

BACKENDS = [
    pytest.param(COMPILED, id="c", marks=pytest.mark.skipif(COMPILED is None, reason="not built")),
    pytest.param(TWIN, id="py"),
]

# workload -> backend id -> median seconds, filled in as the benchmarks run.
RESULTS: dict[str, dict[str, float]] = {}


def random_bitfield(rng: random.Random, fill: float) -> bytes:
    """A PIECES-piece BitTorrent bitfield with each piece present with probability fill."""
    bits = 0
    for i in range(PIECES):
        if rng.random() < fill:
            bits |= 1 << (PIECES - 1 - i)
    # Piece i at bit PIECES - 1 - i, written big-endian: piece 0 is the high bit of byte
    # 0 (BitTorrent order); PIECES % 8 == 0, so there are no pad bits.
    return bits.to_bytes(PIECES // 8, "big")


MINE = random_bitfield(random.Random(SEED), 0.5)
PARENT = random_bitfield(random.Random(SEED + 1), 0.5)
SWARM = [random_bitfield(random.Random(SEED + 2 + k), 0.5) for k in range(PARENTS)]


def _expected_first_clear() -> int:
    """Index of the first piece that is not (in PARENT and not in MINE), spelled out."""
    mine, parent = (int.from_bytes(d, "big") for d in (MINE, PARENT))
    for i in range(PIECES):
        bit = PIECES - 1 - i  # big-endian: piece 0 is the top bit
        if not ((parent >> bit) & 1 and not (mine >> bit) & 1):
            return i
    return -1


EXPECTED_FIRST_CLEAR = _expected_first_clear()


def record(benchmark, workload: str, backend: ModuleType) -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is not None:  # None under --benchmark-disable
        key = "c" if backend is COMPILED else "py"
        RESULTS.setdefault(workload, {})[key] = stats.stats.median


@pytest.mark.parametrize("impl", BACKENDS)
def test_and_not_first_clear(benchmark, impl):
    benchmark.group = "bitmap and_not+first_clear, 100k pieces"
    mine = impl.Bitmap.from_bytes(MINE, PIECES)
    parent = impl.Bitmap.from_bytes(PARENT, PIECES)

    def step() -> int:
        return mine.and_not(parent).first_clear()

    assert benchmark(step) == EXPECTED_FIRST_CLEAR
    record(benchmark, "and_not+first_clear (target >= 10x)", impl)


@pytest.mark.parametrize("impl", BACKENDS)
def test_first_clear_worst_case(benchmark, impl):
    benchmark.group = "bitmap first_clear, full but the last piece, 100k pieces"
    bm = impl.Bitmap.from_bytes(b"\xff" * (PIECES // 8 - 1) + b"\xfe", PIECES)
    assert benchmark(bm.first_clear) == PIECES - 1
    record(benchmark, "first_clear scanning 100k pieces (info)", impl)


@pytest.mark.parametrize("impl", BACKENDS)
def test_rarest_50_parents(benchmark, impl):
    benchmark.group = "RarityCounter.rarest, 100k pieces, 50 parents"
    counter = impl.RarityCounter(PIECES)
    for data in SWARM:
        counter.add(impl.Bitmap.from_bytes(data, PIECES))
    mine = impl.Bitmap.from_bytes(MINE, PIECES)
    everyone = impl.Bitmap(PIECES)
    for data in SWARM:
        everyone.update(impl.Bitmap.from_bytes(data, PIECES))
    candidates = mine.and_not(everyone)
    starts = iter(random.Random(SEED).randrange(PIECES) for _ in range(10**7))

    def pick() -> int:
        return counter.rarest(candidates, next(starts))

    assert benchmark(pick) >= 0
    record(benchmark, "rarest, 50 parents (info)", impl)


@pytest.fixture(scope="module", autouse=True)
def _print_comparison(request):
    yield
    lines = []
    for workload, by_backend in RESULTS.items():
        py, c = by_backend.get("py"), by_backend.get("c")
        if py is None or c is None:
            continue
        lines.append(
            f"bitmap {workload}: compiled {c * 1e6:.2f} us, twin {py * 1e6:.2f} us "
            f"(median) -> compiled is {py / c:.1f}x the twin"
        )
    if not lines:
        return
    # Print past pytest's output capture (as capsys.disabled() does), so the comparison
    # shows with or without -s.
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    uncaptured = capman.global_and_fixture_disabled() if capman else contextlib.nullcontext()
    with uncaptured:
        print()
        for line in lines:
            print(line)
