"""CRC-32 throughput on 4 MiB buffers (the default piece size), against zlib.crc32.

Run:  .venv/bin/python -m pytest bench/test_bench_crc32.py --benchmark-only -s

The anchor is zlib.crc32 measured in the same run; every kernel is reported as GB/s and
as a ratio to it (target for the default kernel: >= 3x). The comparison line is printed
when the module finishes, before pytest-benchmark's own table.
"""

import importlib
import random
import zlib
from collections.abc import Callable

import pytest

from d7y.ext import crc32 as facade

SIZE = 4 << 20
DATA = random.Random(0).randbytes(SIZE)
EXPECTED = zlib.crc32(DATA)
TARGET_RATIO = 3.0
GROUP = "crc32 4 MiB"

# name -> median seconds per call, filled by the benchmarks below.
MEDIANS: dict[str, float] = {}


def compiled_or_skip():
    try:
        return importlib.import_module("d7y.ext._crc32")
    except ImportError as exc:
        pytest.skip(f"d7y.ext._crc32 not built: {exc}")


def measure(benchmark, name: str, fn: Callable[[bytes], int]) -> None:
    benchmark.group = GROUP
    benchmark.extra_info["bytes"] = SIZE
    assert benchmark(fn, DATA) == EXPECTED
    if benchmark.stats is not None:  # None under --benchmark-disable
        MEDIANS[name] = benchmark.stats.stats.median


def gbps(name: str) -> float:
    return SIZE / MEDIANS[name] / 1e9


@pytest.fixture(scope="module", autouse=True)
def comparison(request):
    """After the module: one line comparing every kernel with the zlib anchor."""
    yield
    if "zlib" not in MEDIANS:
        return
    anchor = gbps("zlib")
    parts = [f"zlib.crc32 {anchor:.2f} GB/s (anchor)"]
    for name in MEDIANS:
        if name != "zlib":
            parts.append(f"{name} {gbps(name):.2f} GB/s = {gbps(name) / anchor:.2f}x")
    line = f"crc32 4 MiB: {' | '.join(parts)}"
    default = f"d7y ({facade.implementation()})"
    if default in MEDIANS:
        ratio = gbps(default) / anchor
        verdict = "met" if ratio >= TARGET_RATIO else "MISSED"
        line += f"  [target >= {TARGET_RATIO:g}x zlib: {verdict}]"
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        reporter.write_line("")
        reporter.write_line(line)
    else:
        print(line)


def test_zlib_anchor(benchmark):
    measure(benchmark, "zlib", zlib.crc32)


def test_d7y_default(benchmark):
    measure(benchmark, f"d7y ({facade.implementation()})", facade.crc32)


@pytest.mark.parametrize("path", ["pclmulqdq", "vpclmulqdq", "table"])
def test_forced_kernel(benchmark, path):
    module = compiled_or_skip()
    if path not in module._paths():
        pytest.skip(f"this CPU cannot run the {path} kernel")
    measure(benchmark, f"kernel {path}", lambda data: module._crc32_with(path, data))


def test_twin(benchmark):
    twin = importlib.import_module("d7y.ext._crc32_py")
    measure(benchmark, "twin (python)", twin.crc32)
