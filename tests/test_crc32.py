"""d7y.ext.crc32: bit-identical to zlib.crc32 on every backend and every kernel path.

Most tests take the ``crc32_impl`` fixture and run against the compiled module and the
pure-Python twin. The kernel-path tests force each C kernel (table, pclmulqdq and, where
the CPU has it, vpclmulqdq) through the private ``_crc32_with`` hook. The folding
constants are re-derived here from the polynomial, and a Python model of both folding
layouts checks the algebra, including the VPCLMULQDQ layout on CPUs that cannot run it.
"""

import array
import importlib
import itertools
import json
import mmap
import os
import random
import subprocess
import sys
import threading
import tracemalloc
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from d7y.ext import crc32 as facade
from tests.conftest import REQUIRE_EXTENSIONS

ALL_PATHS = ("table", "pclmulqdq", "vpclmulqdq")
MAX_U32 = 0xFFFFFFFF
# The C kernels switch strategy at these sizes: 16-byte blocks, the 64-byte pclmul stride,
# the 256-byte vpclmul stride, and the GIL release threshold.
BOUNDARIES = (16, 64, 128, 256, 512, 1024, 4096, 65536)
BOUNDARY_LENGTHS = sorted(
    {n + d for n in BOUNDARIES for d in (-17, -16, -15, -1, 0, 1, 15, 16, 17, 63, 64, 255)}
)

# Fixtures are stateless modules, so sharing them across hypothesis examples is safe.
fixture_ok = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])


def randbytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


@pytest.fixture(scope="module")
def compiled():
    """The compiled module, for the tests of its private kernel hooks."""
    try:
        return importlib.import_module("d7y.ext._crc32")
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            raise AssertionError(f"d7y.ext._crc32 is not built: {exc}") from exc
        pytest.skip(f"d7y.ext._crc32 not built: {exc}")


def require_path(module, path: str) -> None:
    if path not in module._paths():
        pytest.skip(f"this CPU cannot run the {path} kernel (it has {module._paths()})")


# --------------------------------------------------------------------------------------
# Known values and zlib agreement


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", 0),
        (b"a", 0xE8B7BE43),
        (b"abc", 0x352441C2),
        (b"123456789", 0xCBF43926),
        (b"The quick brown fox jumps over the lazy dog", 0x414FA339),
    ],
)
def test_known_vectors(crc32_impl, data, expected):
    assert crc32_impl.crc32(data) == expected
    assert zlib.crc32(data) == expected


def test_empty_input_returns_value_unchanged(crc32_impl):
    for value in (0, 1, 0xCBF43926, MAX_U32):
        assert crc32_impl.crc32(b"", value) == value


def test_value_extremes(crc32_impl):
    data = randbytes(1000)
    for value in (0, 1, 0x80000000, MAX_U32):
        assert crc32_impl.crc32(data, value) == zlib.crc32(data, value)
        assert crc32_impl.crc32(data, value=value) == zlib.crc32(data, value)


def test_lengths_0_to_300_at_every_alignment(crc32_impl):
    buf = randbytes(300 + 16, seed=1)
    rng = random.Random(2)
    for offset in range(16):
        view = memoryview(buf)[offset:]
        for n in range(301):
            value = rng.getrandbits(32)
            assert crc32_impl.crc32(view[:n], value) == zlib.crc32(view[:n], value), (offset, n)


def test_lengths_around_block_boundaries(crc32_impl):
    buf = randbytes(max(BOUNDARY_LENGTHS) + 7, seed=3)
    for n in BOUNDARY_LENGTHS:
        for offset in (0, 7):
            chunk = memoryview(buf)[offset : offset + n]
            assert crc32_impl.crc32(chunk, 0x12345678) == zlib.crc32(chunk, 0x12345678), n


def test_large_buffer_whole_and_incremental(crc32_impl):
    data = randbytes(8 << 20, seed=4)
    expected = zlib.crc32(data)
    assert crc32_impl.crc32(data) == expected
    view = memoryview(data)
    crc = 0
    for start in range(0, len(data), 1 << 20):
        crc = crc32_impl.crc32(view[start : start + (1 << 20)], crc)
    assert crc == expected


def test_incremental_equals_whole(crc32_impl):
    a, b = b"hello, ", b"world"
    assert crc32_impl.crc32(b, crc32_impl.crc32(a)) == crc32_impl.crc32(a + b)


# --------------------------------------------------------------------------------------
# Buffer types


def buffer_cases() -> list:
    payload = randbytes(4099, seed=5)
    words = array.array("I", range(1000))
    floats = array.array("d", [0.5 * i for i in range(300)])
    square = memoryview(bytes(range(100))).cast("B", (10, 10))
    return [
        pytest.param(lambda: (payload, payload), id="bytes"),
        pytest.param(lambda: (bytearray(payload), payload), id="bytearray"),
        pytest.param(lambda: (memoryview(payload), payload), id="memoryview"),
        pytest.param(lambda: (memoryview(payload)[3:-5], payload[3:-5]), id="mv-slice"),
        pytest.param(
            lambda: (memoryview(bytearray(payload)).toreadonly(), payload), id="mv-readonly"
        ),
        pytest.param(lambda: (words, words.tobytes()), id="array-I"),
        pytest.param(lambda: (floats, floats.tobytes()), id="array-d"),
        pytest.param(lambda: (square, square.tobytes()), id="mv-2d"),
        pytest.param(lambda: (memoryview(payload)[::1], payload), id="mv-step-1"),
        pytest.param(lambda: (memoryview(payload)[5:5], b""), id="mv-empty"),
    ]


@pytest.mark.parametrize("make", buffer_cases())
def test_buffer_types(crc32_impl, make):
    data, raw = make()
    assert crc32_impl.crc32(data) == zlib.crc32(raw)
    assert crc32_impl.crc32(data, 99) == zlib.crc32(raw, 99)


def test_mmap_is_read_in_place_and_released(crc32_impl):
    payload = randbytes(200_000, seed=6)  # above the GIL threshold
    with mmap.mmap(-1, len(payload)) as m:
        m.write(payload)
        assert crc32_impl.crc32(m) == zlib.crc32(payload)
        assert crc32_impl.crc32(memoryview(m)[1:]) == zlib.crc32(payload[1:])
    # Leaving the with-block closed the map: that raises BufferError if a view leaked.
    assert m.closed


def test_buffer_export_is_released_after_success_and_error(crc32_impl):
    ba = bytearray(b"x" * 100)
    crc32_impl.crc32(ba)
    ba.extend(b"y")  # BufferError if the kernel still held an export
    strided = memoryview(ba)[::2]
    with pytest.raises(ValueError):
        crc32_impl.crc32(strided)
    strided.release()  # BufferError if the failed call leaked an export
    ba.extend(b"z")
    assert crc32_impl.crc32(ba) == zlib.crc32(bytes(ba))


def test_data_is_not_copied(crc32_impl):
    data = bytearray(randbytes(4 << 20, seed=7))
    view = memoryview(data)[1:]
    crc32_impl.crc32(view)  # warm up: first-call allocations are not copies
    tracemalloc.start()
    try:
        crc32_impl.crc32(view)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"crc32 allocated {peak} bytes for a 4 MiB view"


def test_concurrent_calls_from_threads(crc32_impl):
    # Large buffers run without the GIL in the compiled kernel; results must not mix.
    chunks = [randbytes((1 << 20) + i, seed=10 + i) for i in range(4)]
    expected = [zlib.crc32(c) for c in chunks]
    results: dict[int, list[int]] = {}

    def work(i: int) -> None:
        results[i] = [crc32_impl.crc32(chunks[i]) for _ in range(5)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(chunks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[i] for i in range(len(chunks))] == [[e] * 5 for e in expected]


# --------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("text", ["", "abc", "é"])
def test_str_data_says_to_encode(crc32_impl, text):
    with pytest.raises(TypeError, match="encode"):
        crc32_impl.crc32(text)


@pytest.mark.parametrize("data", [None, 5, 1.5, [1, 2], object()])
def test_non_buffer_data_names_the_type(crc32_impl, data):
    with pytest.raises(TypeError, match=type(data).__name__):
        crc32_impl.crc32(data)


@pytest.mark.parametrize("value", [-1, 2**32, 2**64, -(2**40)])
def test_value_out_of_range_is_named(crc32_impl, value):
    with pytest.raises(ValueError, match=rf"2\*\*32.*got {value}$"):
        crc32_impl.crc32(b"abc", value)


def test_huge_value_message_is_bounded(crc32_impl):
    with pytest.raises(ValueError, match="bits") as info:
        crc32_impl.crc32(b"abc", 10**6000)
    assert len(str(info.value)) < 200


@pytest.mark.parametrize("value", [1.5, "1", b"1", None, [0]])
def test_non_int_value_is_a_type_error(crc32_impl, value):
    with pytest.raises(TypeError, match=type(value).__name__):
        crc32_impl.crc32(b"abc", value)


def test_value_accepts_index_objects(crc32_impl):
    class Index:
        def __index__(self) -> int:
            return 0xDEADBEEF

    assert crc32_impl.crc32(b"abc", Index()) == zlib.crc32(b"abc", 0xDEADBEEF)


def test_non_contiguous_buffer_is_rejected(crc32_impl):
    with pytest.raises(ValueError, match="contiguous"):
        crc32_impl.crc32(memoryview(b"abcdefgh")[::2])
    with pytest.raises(ValueError, match="contiguous"):
        crc32_impl.crc32(memoryview(b"abcdefgh")[::-1], 5)


def test_released_memoryview_is_rejected(crc32_impl):
    view = memoryview(b"abc")
    view.release()
    with pytest.raises(ValueError):
        crc32_impl.crc32(view)


# --------------------------------------------------------------------------------------
# Kernel paths


def test_implementation_names(crc32_impl):
    name = crc32_impl.implementation()
    assert name in (*ALL_PATHS, "python")
    assert name == crc32_impl._paths()[-1]  # the fastest supported path is the one used


def test_facade_reexports_the_backend():
    assert facade.crc32 is facade.backend.crc32
    assert facade.implementation is facade.backend.implementation
    assert facade.crc32(b"123456789") == 0xCBF43926


def test_every_path_of_every_backend_matches_zlib(crc32_impl):
    buf = randbytes(5000, seed=8)
    for path in crc32_impl._paths():
        for n in (0, 1, 15, 16, 63, 64, 65, 255, 256, 257, 1000, 4999):
            chunk = memoryview(buf)[1 : 1 + n]
            assert crc32_impl._crc32_with(path, chunk, 7) == zlib.crc32(chunk, 7), (path, n)


@pytest.mark.parametrize("path", ALL_PATHS)
def test_forced_kernel_matches_zlib(compiled, path):
    require_path(compiled, path)
    buf = randbytes(1200 + 16, seed=9)
    rng = random.Random(path)
    for n in range(1201):
        offset = n % 16
        chunk = memoryview(buf)[offset : offset + n]
        value = rng.getrandbits(32)
        assert compiled._crc32_with(path, chunk, value) == zlib.crc32(chunk, value), n
    for n in BOUNDARY_LENGTHS:
        chunk = memoryview(buf * 60)[3 : 3 + n]
        assert compiled._crc32_with(path, chunk) == zlib.crc32(chunk), n
    big = randbytes(3 << 20, seed=10)
    assert compiled._crc32_with(path, big, 1) == zlib.crc32(big, 1)


def test_paths_on_this_machine(compiled):
    paths = compiled._paths()
    assert paths[0] == "table"
    assert set(paths) <= set(ALL_PATHS)
    assert compiled.implementation() == paths[-1]


def test_forced_kernel_errors(crc32_impl):
    with pytest.raises(ValueError, match="unknown crc32 kernel"):
        crc32_impl._crc32_with("sse9", b"abc")
    with pytest.raises(ValueError, match="2\\*\\*32"):
        crc32_impl._crc32_with(crc32_impl._paths()[0], b"abc", -5)


_ON_AN_OLDER_CPU = """
import json, sys, zlib
import d7y.ext._crc32 as c
data = bytes(range(256)) * 1000
out = {"paths": list(c._paths()), "best": c.implementation(),
       "agrees": c.crc32(data, 7) == zlib.crc32(data, 7)}
try:
    c._crc32_with(sys.argv[1], b"abc")
    out["refused"] = None
except ValueError as exc:
    out["refused"] = str(exc)
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    "hidden", [("vpclmulqdq",), ("vpclmulqdq", "pclmulqdq")], ids=["no-avx512", "no-pclmul"]
)
def test_unsupported_kernel_is_refused_not_run(compiled, hidden):
    """On a CPU without a kernel -- faked with D7Y_CRC32_HIDE_KERNELS, so this runs on
    every machine -- asking for that kernel is an error naming it, and crc32() runs on
    the best kernel left, still equal to zlib."""
    proc = subprocess.run(
        [sys.executable, "-c", _ON_AN_OLDER_CPU, hidden[-1]],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, D7Y_CRC32_HIDE_KERNELS=",".join(hidden)),
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    left = [p for p in compiled._paths() if p not in hidden]
    assert seen["paths"] == left and seen["best"] == left[-1], seen
    assert seen["agrees"]
    assert seen["refused"] is not None, f"the hidden kernel {hidden[-1]} ran"
    assert f"{hidden[-1]!r} cannot run on this CPU" in seen["refused"]


# --------------------------------------------------------------------------------------
# Property tests


@fixture_ok
@given(data=st.binary(max_size=3000), value=st.integers(0, MAX_U32))
def test_property_agrees_with_zlib(crc32_impl, data, value):
    assert crc32_impl.crc32(data, value) == zlib.crc32(data, value)


@fixture_ok
@given(data=st.binary(max_size=3000), split=st.integers(0, 3000), value=st.integers(0, MAX_U32))
def test_property_incremental_split(crc32_impl, data, split, value):
    split = min(split, len(data))
    view = memoryview(data)
    first = crc32_impl.crc32(view[:split], value)
    assert crc32_impl.crc32(view[split:], first) == zlib.crc32(data, value)


@settings(fixture_ok, max_examples=40, deadline=None)
@given(
    size=st.integers(0, 300_000),
    seed=st.integers(0, 2**32),
    cuts=st.lists(st.integers(0, 300_000), max_size=4),
    offset=st.integers(0, 63),
)
def test_property_large_random_splits(crc32_impl, size, seed, cuts, offset):
    data = randbytes(size + offset, seed)
    view = memoryview(data)[offset:]
    points = sorted({0, size, *(min(c, size) for c in cuts)})
    crc = 0
    for start, stop in itertools.pairwise(points):
        crc = crc32_impl.crc32(view[start:stop], crc)
    assert crc == zlib.crc32(view)


@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=2000), split=st.integers(0, 2000), value=st.integers(0, MAX_U32))
def test_property_all_kernels_agree(compiled, data, split, value):
    split = min(split, len(data))
    expected = zlib.crc32(data, value)
    for path in compiled._paths():
        first = compiled._crc32_with(path, data[:split], value)
        assert compiled._crc32_with(path, data[split:], first) == expected, path


# --------------------------------------------------------------------------------------
# The folding constants and the algebra, derived independently of the C code.

POLY = 1 << 32 | 0x04C11DB7  # normal order: bit i is the coefficient of x^i
M64 = (1 << 64) - 1


def xpow_mod(n: int) -> int:
    """x^n mod P."""
    r = 1
    for _ in range(n):
        r <<= 1
        if r >> 32:
            r ^= POLY
    return r


def reflect(v: int, width: int) -> int:
    return int(f"{v:0{width}b}"[::-1], 2)


def poly_quotient(a: int, b: int) -> int:
    q = 0
    while a.bit_length() >= b.bit_length():
        shift = a.bit_length() - b.bit_length()
        q |= 1 << shift
        a ^= b << shift
    return q


def clmul(a: int, b: int) -> int:
    r = 0
    while b:
        if b & 1:
            r ^= a
        a <<= 1
        b >>= 1
    return r


def fold_pair(distance: int) -> tuple[int, int]:
    return reflect(xpow_mod(distance + 63), 64), reflect(xpow_mod(distance - 1), 64)


def expected_constants() -> dict[str, int]:
    out = {}
    for distance in (128, 256, 384, 512, 1024, 1536, 2048):
        out[f"fold{distance}.lo"], out[f"fold{distance}.hi"] = fold_pair(distance)
    out["reduce.x95"] = reflect(xpow_mod(95), 64)
    out["reduce.x63"] = reflect(xpow_mod(63), 64)
    out["barrett.mu"] = reflect(poly_quotient(1 << 64, POLY), 33)
    out["barrett.poly"] = reflect(POLY, 33)
    return out


def test_derived_constants_are_sane():
    consts = expected_constants()
    assert consts["barrett.poly"] == 0xEDB88320 << 1 | 1  # the reflected polynomial
    assert xpow_mod(32) == 0x04C11DB7  # x^32 == P - x^32 (mod P)
    # x^(a+b) == x^a * x^b (mod P): the reduction is a ring homomorphism.
    assert xpow_mod(700) == poly_mod(clmul(xpow_mod(300), xpow_mod(400)))


def poly_mod(a: int) -> int:
    while a.bit_length() > 32:
        a ^= POLY << (a.bit_length() - 33)
    return a


def test_c_constants_match_derivation(compiled):
    assert compiled._fold_constants() == expected_constants()


class FoldModel:
    """Both SIMD layouts of ext/src/crc32_fold.c in Python, on 128-bit ints."""

    def __init__(self) -> None:
        self.k = expected_constants()

    def fold(self, x: int, distance: int, nxt: int) -> int:
        lo, hi = self.k[f"fold{distance}.lo"], self.k[f"fold{distance}.hi"]
        return clmul(x & M64, lo) ^ clmul(x >> 64, hi) ^ nxt

    def reduce(self, x: int) -> int:
        y = clmul(x & M64, self.k["reduce.x95"]) ^ ((x >> 64) << 32)
        z = (clmul(y & M64, self.k["reduce.x63"]) >> 64) ^ (y >> 64)
        q = clmul(z & 0xFFFFFFFF, self.k["barrett.mu"]) & 0xFFFFFFFF
        return ((z ^ clmul(q, self.k["barrett.poly"])) >> 32) & 0xFFFFFFFF

    @staticmethod
    def table(crc: int, data: bytes) -> int:
        for byte in data:
            crc ^= byte
            for _ in range(8):
                crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
        return crc

    def merge4(self, a: list[int]) -> int:
        return self.fold(a[0], 384, 0) ^ self.fold(a[1], 256, 0) ^ self.fold(a[2], 128, 0) ^ a[3]

    def finish(self, acc: int, data: bytes, i: int) -> int:
        while len(data) - i >= 16:
            acc = self.fold(acc, 128, block(data, i))
            i += 16
        return self.table(self.reduce(acc), data[i:])

    def pclmul(self, data: bytes, value: int) -> int:
        crc = value ^ MAX_U32
        if len(data) < 64:
            return self.table(crc, data) ^ MAX_U32
        x = [block(data, 16 * j) for j in range(4)]
        x[0] ^= crc
        i = 64
        while len(data) - i >= 64:
            x = [self.fold(x[j], 512, block(data, i + 16 * j)) for j in range(4)]
            i += 64
        return self.finish(self.merge4(x), data, i) ^ MAX_U32

    def vpclmul(self, data: bytes, value: int) -> int:
        if len(data) < 256:
            return self.pclmul(data, value)

        def zload(i: int) -> list[int]:
            return [block(data, i + 16 * lane) for lane in range(4)]

        def zfold(z: list[int], distance: int, nxt: list[int]) -> list[int]:
            return [self.fold(z[lane], distance, nxt[lane]) for lane in range(4)]

        z = [zload(64 * j) for j in range(4)]
        z[0][0] ^= value ^ MAX_U32
        i = 256
        while len(data) - i >= 256:
            z = [zfold(z[j], 2048, zload(i + 64 * j)) for j in range(4)]
            i += 256
        zero = [0] * 4
        f0, f1, f2 = zfold(z[0], 1536, z[3]), zfold(z[1], 1024, zero), zfold(z[2], 512, zero)
        acc = [f0[lane] ^ f1[lane] ^ f2[lane] for lane in range(4)]
        while len(data) - i >= 64:
            acc = zfold(acc, 512, zload(i))
            i += 64
        return self.finish(self.merge4(acc), data, i) ^ MAX_U32


def block(data: bytes, i: int) -> int:
    return int.from_bytes(data[i : i + 16], "little")


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 200, 255, 256, 257, 511, 512, 600, 1000, 1100])
def test_fold_model_matches_zlib(n):
    # Checks the algebra and constants of both layouts, even where the CPU lacks them.
    model = FoldModel()
    data = randbytes(n, seed=n)
    value = random.Random(n).getrandbits(32)
    assert model.pclmul(data, value) == zlib.crc32(data, value)
    assert model.vpclmul(data, value) == zlib.crc32(data, value)


def test_reduction_model_matches_bytewise_crc():
    model = FoldModel()
    rng = random.Random(11)
    for _ in range(300):
        x = rng.getrandbits(127)  # a product of two 64-bit values has at most 127 bits
        assert model.reduce(x) == model.table(0, x.to_bytes(16, "little"))
