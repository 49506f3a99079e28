"""Build of the optional C binning kernel; everything else is in pyproject.toml.

The kernel (``twinpeaks._cbin``) needs only a C compiler and the Python headers,
no torch headers. When it cannot be built, the install still succeeds and
twinpeaks bins with torch operations instead (see ``twinpeaks.binning``). On Linux
it links libdl (``dlopen``: it finds torch's libgomp in the process, never links it).
"""

import sys

from setuptools import Extension, setup

args = [] if sys.platform == "win32" else ["-O3", "-std=c99", "-Wall"]
libs = ["dl"] if sys.platform.startswith("linux") else []
setup(ext_modules=[Extension("twinpeaks._cbin", ["twinpeaks/_cbin.c"], extra_compile_args=args, libraries=libs,
                             optional=True)])
