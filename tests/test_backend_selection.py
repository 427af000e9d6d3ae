"""D7Y_NO_EXTENSIONS=1 selects the pure-Python twins; otherwise the compiled kernels (those
of d7y.ext, the simulator's network model and event queue, and the pure-mode builds of
the piece picker, the download loop and the simulator's driver)."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REQUIRE_EXTENSIONS

# public module (under d7y) whose ``backend`` is _<last part> or _<last part>_py
KERNELS = [
    "ext.crc32",
    "ext.bitmap",
    "ext.transfer",
    "sim.network",
    "sim.events",
    "sim.swarm",
    "core.scheduling.picker",
    "core.scheduling.download",
]


def backend_file(module: str, no_extensions: bool) -> str:
    env = dict(os.environ)
    env.pop("D7Y_NO_EXTENSIONS", None)
    if no_extensions:
        env["D7Y_NO_EXTENSIONS"] = "1"
    code = f"import d7y.{module} as k; print(k.backend.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.mark.parametrize("kernel", KERNELS)
def test_no_extensions_selects_the_twin(kernel):
    name = kernel.rsplit(".", 1)[1]
    assert backend_file(kernel, no_extensions=True).endswith(f"_{name}_py.py")


@pytest.mark.parametrize("kernel", KERNELS)
def test_compiled_kernel_is_used_by_default(kernel):
    path = backend_file(kernel, no_extensions=False)
    name = kernel.rsplit(".", 1)[1]
    if not REQUIRE_EXTENSIONS and path.endswith(".py"):
        pytest.skip(f"d7y.{kernel}'s compiled backend is not built here")
    assert path.endswith(".so") and f"_{name}." in os.path.basename(path)
