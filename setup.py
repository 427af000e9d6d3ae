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
}
# D7Y_EXT_ONLY=_crc32,_bitmap builds a subset (handy while working on one kernel).
only = {n for n in os.environ.get("D7Y_EXT_ONLY", "").split(",") if n}

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
    if wanted:
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
        ext_modules = cythonize(
            wanted,
            include_path=[cy_include],
            compiler_directives={"language_level": "3", "embedsignature": True},
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
        # the manager's console: its Jinja2 templates and stylesheet
        "d7y.daemons.manager.console": ["templates/*.html", "static/*"],
    },
    ext_modules=ext_modules,
    cmdclass={"build_ext": OptionalBuildExt},
)
