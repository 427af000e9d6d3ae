"""d7y.ext: hot-path kernels, each a Cython extension with a pure-Python twin.

Every public module here (``crc32``, ``bitmap``, ``transfer``) loads its compiled
implementation (``_crc32``, ``_bitmap``, ``_transfer``) unless the environment variable
``D7Y_NO_EXTENSIONS`` is set to a non-empty value other than ``0``, or the extension was
not built; then it loads the twin (``_crc32_py``, ...). Each public module exposes the
chosen implementation as ``backend`` so callers and tests can tell which one runs.

The same loader serves the modules compiled from their Python source by Cython's pure
mode (setup.py ``PURE_MODE``: the piece picker, the download loop and the simulator's
driver): there the twin is the source, and a compiled module is taken only if it was
built from the source beside it (:func:`source_digest`) and so were the compiled modules
it imports; one built from another version is passed over with a warning, so an edit
without a rebuild runs the edit.
"""

import hashlib
import importlib
import importlib.util
import os
import warnings
from pathlib import Path
from types import ModuleType

NO_EXTENSIONS = os.environ.get("D7Y_NO_EXTENSIONS", "") not in ("", "0")


def source_digest(source: str) -> str:
    """The digest a pure-mode build records: of the Python source and of the .pxd that
    types it (``_<name>_py.py`` and ``_<name>.pxd`` beside it; a missing .pxd counts as
    empty)."""
    path = Path(source)
    pxd = path.with_name(path.name.removesuffix("_py.py") + ".pxd")
    digest = hashlib.sha256(path.read_bytes())
    digest.update(b"\0")
    if pxd.exists():
        digest.update(pxd.read_bytes())
    return digest.hexdigest()


def load_backend(name: str, package: str = "d7y.ext") -> ModuleType:
    """Import ``<package>._<name>`` (compiled) or, failing that or when disabled, its
    twin ``<package>._<name>_py`` (the simulator's network model lives in d7y.sim)."""
    twin = f"{package}._{name}_py"
    if not NO_EXTENSIONS:
        try:
            compiled = importlib.import_module(f"{package}._{name}")
        except ImportError:
            pass
        else:
            stale = _stale_build(compiled)
            if stale is None:
                return compiled
            warnings.warn(
                f"{compiled.__name__} ({compiled.__file__}) was built from another version "
                f"of {stale}: running the Python module; rebuild with "
                "`pip install -e .` to run the compiled one",
                RuntimeWarning,
                stacklevel=2,
            )
    return importlib.import_module(twin)


def _stale_build(compiled: ModuleType) -> str | None:
    """None if ``compiled`` is a .pyx kernel or a pure-mode build of the source beside it
    whose compiled imports (the other pure-mode builds it calls in C) are current too;
    else the source it does not match."""
    built_from = getattr(compiled, "_D7Y_SOURCE_DIGEST", None)
    if built_from is None:
        return None  # a .pyx kernel: its own source
    package, _, name = compiled.__name__.rpartition(".")
    source = importlib.util.find_spec(f"{package}.{name}_py").origin
    if built_from != source_digest(source):
        return source
    for dependency in getattr(compiled, "_D7Y_COMPILED_IMPORTS", ()):
        stale = _stale_build(importlib.import_module(dependency))
        if stale is not None:
            return stale
    return None
