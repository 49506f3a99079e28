"""The C kernel's code paths (SSE2 where built, and portable), switched for a while: tests run both."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from twinpeaks import binning

#: the paths built here: SSE2 and portable where the SSE2 path exists, else portable only
PATHS = [True, False] if binning._cbin is not None and binning._cbin.simd() else [False]


@contextlib.contextmanager
def using_simd(simd: bool) -> Iterator[bool]:
    """The C kernel's SSE2 path on or off for a while."""
    was = binning._cbin.simd(simd)
    try:
        yield simd
    finally:
        binning._cbin.simd(was)


def c_paths() -> Iterator[bool]:
    """Each code path of the C kernel in turn, restored afterwards."""
    for simd in PATHS:
        with using_simd(simd):
            yield simd
