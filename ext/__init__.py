"""d7y.ext: hot-path kernels, each a Cython extension with a pure-Python twin.

Every public module here (``crc32``, ``bitmap``, ``transfer``) loads its compiled
implementation (``_crc32``, ``_bitmap``, ``_transfer``) unless the environment variable
``D7Y_NO_EXTENSIONS`` is set to a non-empty value other than ``0``, or the extension was
not built; then it loads the twin (``_crc32_py``, ...). Each public module exposes the
chosen implementation as ``backend`` so callers and tests can tell which one runs.
"""

import importlib
import os
from types import ModuleType

NO_EXTENSIONS = os.environ.get("D7Y_NO_EXTENSIONS", "") not in ("", "0")


def load_backend(name: str, package: str = "d7y.ext") -> ModuleType:
    """Import ``<package>._<name>`` (compiled) or, failing that or when disabled, its
    twin ``<package>._<name>_py`` (the simulator's network model lives in d7y.sim)."""
    if not NO_EXTENSIONS:
        try:
            return importlib.import_module(f"{package}._{name}")
        except ImportError:
            pass
    return importlib.import_module(f"{package}._{name}_py")
