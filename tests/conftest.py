"""Shared test fixtures.

Kernels in d7y.ext are tested against both implementations, the compiled extension and
its pure-Python twin (aiohttp's pattern). ``kernel_backends("crc32")`` gives pytest
params for both; the compiled one is skipped when it was not built, unless
``D7Y_REQUIRE_EXTENSIONS=1`` (set by .ci/run), where a missing build is a failure.
"""

import importlib
import os

import pytest

REQUIRE_EXTENSIONS = os.environ.get("D7Y_REQUIRE_EXTENSIONS", "") not in ("", "0")


def import_built(module: str):
    """Import a compiled module (a kernel, a pure-mode build); a test without it is
    skipped, or fails under ``D7Y_REQUIRE_EXTENSIONS=1``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if REQUIRE_EXTENSIONS:
            raise AssertionError(
                f"{module} is not built but D7Y_REQUIRE_EXTENSIONS is set: {exc}"
            ) from exc
        pytest.skip(f"{module} not built: {exc}")


def _compiled(name: str):
    return import_built(f"d7y.ext._{name}")


def kernel_backends(name: str) -> list:
    """pytest params yielding the compiled module and the twin for kernel ``name``."""
    return [
        pytest.param(lambda: _compiled(name), id="c"),
        pytest.param(lambda: importlib.import_module(f"d7y.ext._{name}_py"), id="py"),
    ]


def make_backend_fixture(name: str):
    """Build a fixture ``<name>_impl`` parametrized over both implementations."""

    @pytest.fixture(params=kernel_backends(name))
    def _fixture(request):
        return request.param()

    return _fixture


crc32_impl = make_backend_fixture("crc32")
bitmap_impl = make_backend_fixture("bitmap")
transfer_impl = make_backend_fixture("transfer")


def loop_backends(param: str, monkeypatch) -> tuple:
    """The download loop and piece picker as they run, with the bitmaps they run on:
    ``"c"`` the pure-mode builds on the compiled kernel (its fields are typed as the
    kernel's Bitmap), ``"py"`` the Python modules on the Python twin. Returns (bitmaps,
    picker module, download module). The Python loop is made to build Python pickers
    (it builds whichever d7y.core.scheduling.picker chose)."""
    from d7y.core.scheduling import _download_py, _picker_py

    if param == "py":
        monkeypatch.setattr(_download_py, "PiecePicker", _picker_py.PiecePicker)
        return importlib.import_module("d7y.ext._bitmap_py"), _picker_py, _download_py
    built = ("d7y.ext._bitmap", "d7y.core.scheduling._picker", "d7y.core.scheduling._download")
    return tuple(import_built(name) for name in built)


def use_loop_backend(namespace: dict, module, monkeypatch) -> None:
    """Point a test module's imported names (``namespace``: its globals()) that ``module``
    exports (its ``__all__``) at ``module``'s objects, for one test."""
    for name in module.__all__:
        if name in namespace:
            monkeypatch.setitem(namespace, name, getattr(module, name))


def loop_fixture(which: str):
    """A ``bitmap_impl`` fixture for the tests of the piece picker (``which="picker"``) or
    the download loop (``"download"``): each test runs on both pairs that run
    (:func:`loop_backends`), the module's imported picker or loop names pointing at the
    pair's, and gets the pair's bitmaps."""

    @pytest.fixture(params=["c", "py"])
    def bitmap_impl(request, monkeypatch):
        bitmaps, picker, download = loop_backends(request.param, monkeypatch)
        chosen = picker if which == "picker" else download
        use_loop_backend(vars(request.module), chosen, monkeypatch)
        return bitmaps

    return bitmap_impl


# --- one daemon for a module ---------------------------------------------------------
# For modules whose tests share one real dfdaemon and one origin (module scope); such a
# module also marks its tests with ``pytest.mark.usefixtures("clean_origin")``. A module
# that needs its own origin or peer defines the fixture itself, which takes precedence.


@pytest.fixture(scope="module")
def origin():
    from tests.origin_server import ThreadedOriginServer

    with ThreadedOriginServer() as server:
        yield server


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    from tests.peer_harness import PeerProcess

    with PeerProcess(tmp_path_factory.mktemp("peer")) as process:
        yield process


@pytest.fixture
def clean_origin(origin):
    origin.reset()
    yield


# --- PostgreSQL for the manager's tests ----------------------------------------------
# One real server for the whole session (initdb takes a second or two); each test module
# makes its own database in it. scripts/test.sh installs Debian's postgresql; where it is
# missing the PostgreSQL half of the manager tests is skipped, unless
# D7Y_REQUIRE_TOOLS=1 (set by .ci/run), where that is a failure.
REQUIRE_POSTGRES = os.environ.get("D7Y_REQUIRE_TOOLS", "") not in ("", "0")


@pytest.fixture(scope="session")
def postgres():
    from tests.postgres_server import PostgresServer, bin_dir

    if bin_dir() is None:
        if REQUIRE_POSTGRES:
            raise AssertionError("PostgreSQL is not installed but D7Y_REQUIRE_TOOLS is set")
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql)")
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """One real redis-server for the session (the manager's Redis job queue); each user
    takes its own key prefix. Skipped where redis-server is missing, unless
    D7Y_REQUIRE_TOOLS=1 (scripts/test.sh installs it)."""
    from tests.redis_server import RedisServer, installed

    if not installed():
        if REQUIRE_POSTGRES:
            raise AssertionError("redis-server is not installed but D7Y_REQUIRE_TOOLS is set")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def mount_tmpfs(tmp_path):
    """``mount_tmpfs(name, size)``: a real tmpfs of ``size`` (e.g. "24m") mounted at
    ``tmp_path/name``, for a data or output dir that can fill up; unmounted after the
    test. Skips where mounting is not allowed."""
    import subprocess

    mounts = []

    def mount(name: str, size: str):
        path = tmp_path / name
        path.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)
