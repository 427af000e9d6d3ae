"""D7Y_NO_EXTENSIONS=1 selects the pure-Python twins; otherwise the compiled kernels."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REQUIRE_EXTENSIONS

KERNELS = ["crc32", "bitmap", "transfer"]


def backend_file(kernel: str, no_extensions: bool) -> str:
    env = dict(os.environ)
    env.pop("D7Y_NO_EXTENSIONS", None)
    if no_extensions:
        env["D7Y_NO_EXTENSIONS"] = "1"
    code = f"import d7y.ext.{kernel} as k; print(k.backend.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


@pytest.mark.parametrize("kernel", KERNELS)
def test_no_extensions_selects_the_twin(kernel):
    assert backend_file(kernel, no_extensions=True).endswith(f"_{kernel}_py.py")


@pytest.mark.parametrize("kernel", KERNELS)
def test_compiled_kernel_is_used_by_default(kernel):
    path = backend_file(kernel, no_extensions=False)
    if not REQUIRE_EXTENSIONS and path.endswith(".py"):
        pytest.skip(f"d7y.ext._{kernel} not built here")
    assert path.endswith(".so") and f"_{kernel}." in os.path.basename(path)
