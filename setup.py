"""Adds the compiled hot path to the package that setup.cfg declares.

The sans-IO codecs every forwarded RTP-MIDI packet runs through
(``gateway.build.HOT_MODULES``) are compiled with Cython. Their .py files stay
the only code: the .pxd file beside each declares, for the compiler alone,
which classes become extension types and the C types of a few locals (README,
"Speed"). Every extension is optional. Without a C compiler or the Python
headers, on an interpreter other than CPython, or with NETGATEWAY_PURE_PYTHON=1,
the package installs as pure Python and behaves the same. NETGATEWAY_COMPILE
chooses another set of modules, to measure it (gateway/build.py).

Cython and the C compiler run on every core, and without debugging
information (-g0: a fifth less compile time, a sixth of the size).
"""

import importlib.machinery
import os
import platform
import runpy

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = runpy.run_path(os.path.join(HERE, "gateway", "build.py"))


PURE_PYTHON = (platform.python_implementation() != "CPython"
               or bool(os.environ.get("NETGATEWAY_PURE_PYTHON")))


def extensions():
    if PURE_PYTHON:
        return []
    from Cython.Build import cythonize
    modules = cythonize([name.replace(".", "/") + ".py"
                         for name in BUILD["compile_set"](os.environ.get("NETGATEWAY_COMPILE"))],
                        build_dir="build/cython", quiet=True, nthreads=os.cpu_count() or 1,
                        compiler_directives={"language_level": "3"})
    for module in modules:
        # A machine without a compiler gets the pure-Python package, not a failed install.
        module.optional = True
        if os.name == "posix":
            module.extra_compile_args.append("-g0")
    return modules


class BuildPy(build_py):
    """Leaves in the build tree no extension module that this build does not make.

    pip builds in the source tree, and build/lib keeps what an earlier build
    put there: a module since dropped from the compiled set, or any module
    before a NETGATEWAY_PURE_PYTHON build, would otherwise ship compiled from
    old source and be imported instead of its .py file.
    """

    def run(self):
        super().run()
        built = {module.name for module in self.distribution.ext_modules or ()}
        suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
        for root, _, files in os.walk(os.path.join(self.build_lib, "gateway")):
            for name in files:
                if not name.endswith(suffixes):
                    continue
                path = os.path.join(root, name)
                module = os.path.relpath(path, self.build_lib).split(".")[0]
                if module.replace(os.sep, ".") not in built:
                    os.remove(path)


class BuildExt(build_ext):
    """Compiles on every core; an extension that fails leaves no older build of it behind."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception:
            path = self.get_ext_fullpath(ext.name)
            if os.path.exists(path):
                os.remove(path)
            raise


setup(ext_modules=extensions(), cmdclass={"build_py": BuildPy, "build_ext": BuildExt},
      # A pure-Python build keeps out of the compiled one's tree, whose
      # unchanged modules then need not be compiled again.
      options={"build": {"build_base": "build/pure"}} if PURE_PYTHON else {})
