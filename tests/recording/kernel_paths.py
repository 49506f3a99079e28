"""The C kernel's code paths (AVX-512, AVX2, SSE2 where this build and CPU have them, and portable), switched
for a while: the kernel tests run on each."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from twinpeaks import binning

#: the paths here, widest first: every one this build and CPU have (the portable path always)
PATHS: list[str] = list(binning._cbin.PATHS) if binning._cbin is not None else ["portable"]


@contextlib.contextmanager
def using_path(path: str) -> Iterator[str]:
    """The C kernel's code path ``path`` for a while."""
    was = binning._cbin.simd(path)
    try:
        yield path
    finally:
        binning._cbin.simd(was)


def c_paths() -> Iterator[str]:
    """Each code path of the C kernel in turn, restored afterwards."""
    for path in PATHS:
        with using_path(path):
            yield path
