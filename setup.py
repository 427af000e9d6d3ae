"""Build glue: the d7y package mapping and the Cython extensions.

Project metadata lives in pyproject.toml. This file only says where the four code
folders go under the ``d7y`` import namespace and which extensions to build. When no
C compiler is available (or ``D7Y_NO_EXTENSIONS=1`` at build time) the extensions are
skipped and the pure-Python twins are used at run time.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

FOLDERS = {"core": "core", "ext": "ext", "daemons": "daemons", "sim": "sim"}


def packages_under(folder: str, name: str) -> dict[str, str]:
    """Map every package below ``folder`` (a directory with __init__.py) to its d7y name."""
    found = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith((".", "_")))
        if "__init__.py" in files:
            rel = os.path.relpath(root, folder)
            dotted = name if rel == "." else name + "." + rel.replace(os.sep, ".")
            found[dotted] = root
    return found


package_dir = {}
for folder, sub in FOLDERS.items():
    package_dir.update(packages_under(folder, "d7y." + sub))

no_ext = os.environ.get("D7Y_NO_EXTENSIONS", "") not in ("", "0")

EXTENSIONS = {
    "_crc32": dict(
        sources=["ext/_crc32.pyx", "ext/src/crc32_fold.c"],
        include_dirs=["ext/src"],
        depends=["ext/src/crc32_fold.h"],
    ),
    "_bitmap": dict(sources=["ext/_bitmap.pyx"]),
    "_transfer": dict(sources=["ext/_transfer.pyx"]),
    # The simulator's network model (its twin is sim/_network_py.py). Its results must be
    # the twin's bit for bit: no fused multiply-add (GCC contracts a*b+c by default where
    # the target has FMA), no fast-math reassociation.
    "sim._network": dict(
        sources=["sim/_network.pyx"],
        depends=["sim/_network.pxd"],
        extra_compile_args=["-ffp-contract=off", "-fno-fast-math"],
    ),
    # The simulator's own event queue (its twin is sim/_events_py.py).
    "sim._events": dict(sources=["sim/_events.pyx"], depends=["sim/_events.pxd"]),
}
# Python modules compiled as they are, by Cython's pure-Python mode, with the C types of a
# .pxd beside them: <folder>/_<name>_py.py typed by <folder>/_<name>.pxd becomes
# d7y.<package>._<name>. The Python module is the twin and the one source; a build
# compiles a copy (pure_mode_source) that records the digest of what it was built from,
# and at run time d7y.ext.load_backend takes the compiled one only if the digest is
# that of the source beside it (an edit without a rebuild runs the edit, not the build).
PURE_MODE = {
    "core.scheduling._picker": "core/scheduling/_picker_py.py",
    "core.scheduling._download": "core/scheduling/_download_py.py",
    "sim._swarm": "sim/_swarm_py.py",
}
PURE_MODE_BUILD = os.path.join("build", "cython-pure")
# D7Y_EXT_ONLY=_crc32,_bitmap builds a subset (handy while working on one kernel).
only = {n for n in os.environ.get("D7Y_EXT_ONLY", "").split(",") if n}


def source_digest(source: str) -> str:
    """d7y.ext.source_digest, read from ext/__init__.py (the package is not importable
    while it is being built)."""
    import runpy

    return runpy.run_path(os.path.join("ext", "__init__.py"))["source_digest"](source)


def pxd_of(source: str) -> str:
    """The .pxd typing a pure-mode source: _<name>.pxd beside _<name>_py.py."""
    return source.removesuffix("_py.py") + ".pxd"


def write_if_changed(path: str, content: str) -> None:
    """Unchanged files keep their time stamps: no needless rebuild."""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            if f.read() == content:
                return
    with open(path, "w", encoding="utf-8") as f:
        f.write(content)


def pure_mode_source(name: str, source: str) -> str:
    """Write the copy of ``source`` that Cython compiles as d7y.<name>, and its .pxd, under
    build/cython-pure/d7y/...; return the copy's path. The copy imports its compiled
    siblings (so their C types come from their .pxd) and records the source's digest."""
    package, _, module = name.rpartition(".")
    parts = ["d7y", *package.split(".")]
    # Cython names the module after the packages it sits in (their __init__.py)
    for depth in range(1, len(parts) + 1):
        os.makedirs(os.path.join(PURE_MODE_BUILD, *parts[:depth]), exist_ok=True)
        write_if_changed(os.path.join(PURE_MODE_BUILD, *parts[:depth], "__init__.py"), "")
    with open(source, encoding="utf-8") as f:
        text = f.read()
    compiled_imports = []
    for other in PURE_MODE:
        other_package, _, other_module = other.rpartition(".")
        public = f"d7y.{other_package}.{other_module.lstrip('_')}"
        if f"from {public} import" in text:
            text = text.replace(f"from {public} import", f"from d7y.{other} import")
            compiled_imports.append(f"d7y.{other}")
    text += f"\n_D7Y_SOURCE_DIGEST = {source_digest(source)!r}\n"
    # d7y.ext.load_backend takes this build only if these are current builds too
    text += f"_D7Y_COMPILED_IMPORTS = {tuple(compiled_imports)!r}\n"
    target = os.path.join(PURE_MODE_BUILD, *parts, module)
    write_if_changed(target + ".py", text)
    with open(pxd_of(source), encoding="utf-8") as f:
        write_if_changed(target + ".pxd", f.read())
    return target + ".py"


ext_modules = []
if not no_ext:
    from Cython.Build import cythonize

    def extension(name: str, spec: dict) -> Extension:
        # a bare name is a kernel of d7y.ext; "sim._network" is d7y.sim._network
        spec = dict(spec)
        args = ["-O3", *spec.pop("extra_compile_args", [])]
        full = f"d7y.{name}" if "." in name else f"d7y.ext.{name}"
        return Extension(full, extra_compile_args=args, **spec)

    wanted = [
        extension(name, spec)
        for name, spec in EXTENSIONS.items()
        if (not only or name in only) and all(os.path.exists(p) for p in spec["sources"])
    ]
    # Cython finds a module's own .pxd, and resolves `cimport d7y.ext.X`, through the
    # package layout d7y/ext/X.pxd, which this tree lacks (ext/ is mapped to d7y.ext,
    # sim/ to d7y.sim). Give it that layout: build/cython-include/d7y/ext -> ext/,
    # and d7y/sim -> sim/.
    cy_include = os.path.join("build", "cython-include")
    for folder in ("ext", "sim"):
        link = os.path.join(cy_include, "d7y", folder)
        if os.path.realpath(link) != os.path.realpath(folder):  # missing or stale
            os.makedirs(os.path.dirname(link), exist_ok=True)
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(os.path.abspath(folder), link)
    if wanted:
        ext_modules = cythonize(
            wanted,
            include_path=[cy_include],
            compiler_directives={"language_level": "3", "embedsignature": True},
        )
    pure = [
        Extension(
            f"d7y.{name}",
            sources=[pure_mode_source(name, source)],
            depends=[source, pxd_of(source)],
            # the same results as the Python module bit for bit: no fused multiply-add,
            # no fast-math reassociation
            extra_compile_args=["-O3", "-ffp-contract=off", "-fno-fast-math"],
        )
        for name, source in PURE_MODE.items()
        if not only or name in only
    ]
    if pure:
        ext_modules += cythonize(
            pure,
            # their own .pxd (the copies') first, then the kernels' (d7y.ext._bitmap)
            include_path=[PURE_MODE_BUILD, cy_include],
            compiler_directives={
                "language_level": "3",
                # the .pxd gives the C types; the annotations stay documentation (a
                # parameter annotated ``int`` takes any int, as in Python)
                "annotation_typing": False,
            },
        )


class OptionalBuildExt(build_ext):
    """Build the extensions, but let a machine without a compiler still install."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler: the twins take over at run time
            print(
                f"d7y: building the C extensions failed ({exc}); using the pure-Python twins",
                file=sys.stderr,
            )

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(
                f"d7y: building {ext.name} failed ({exc}); its pure-Python twin will be used",
                file=sys.stderr,
            )


setup(
    packages=sorted(package_dir),
    package_dir=package_dir,
    package_data={
        "d7y.ext": ["*.pxd", "*.pyx"],
        "d7y.sim": ["*.pxd", "*.pyx", "scenarios/*.yaml"],
        # the .pxd typing a pure-mode module: part of the digest load_backend checks
        "d7y.core.scheduling": ["*.pxd"],
        # the manager's console: its Jinja2 templates and stylesheet
        "d7y.daemons.manager.console": ["templates/*.html", "static/*"],
    },
    ext_modules=ext_modules,
    cmdclass={"build_ext": OptionalBuildExt},
)
