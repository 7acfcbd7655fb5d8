"""Adds the compiled hot path to the package that setup.cfg declares.

The modules every forwarded packet runs through (``gateway.build.HOT_MODULES``)
are compiled with Cython. Their .py files stay the only code: the .pxd file
beside each declares, for the compiler alone, which classes become extension
types and the C types of a few locals. Compiled, the RTP-MIDI door forwards
about twice as many packets per second (README, "Speed"). Every extension is
optional. Without a C compiler or the Python headers, on an interpreter other
than CPython, or with NETGATEWAY_PURE_PYTHON=1, the package installs as pure
Python and behaves the same.
"""

import os
import platform
import runpy

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def extensions():
    if (platform.python_implementation() != "CPython"
            or os.environ.get("NETGATEWAY_PURE_PYTHON")):
        return []
    from Cython.Build import cythonize
    hot_modules = runpy.run_path(os.path.join(HERE, "gateway", "build.py"))["HOT_MODULES"]
    modules = cythonize([name.replace(".", "/") + ".py" for name in hot_modules],
                        build_dir="build/cython", quiet=True,
                        compiler_directives={"language_level": "3"})
    for module in modules:
        # A machine without a compiler gets the pure-Python package, not a failed install.
        module.optional = True
    return modules


setup(ext_modules=extensions())
