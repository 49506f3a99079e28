"""Fixtures of the recording tests."""

from __future__ import annotations

import pytest
from kernel_paths import PATHS, using_simd


@pytest.fixture(params=PATHS, ids=lambda simd: "sse2" if simd else "portable")
def c_path(request):
    """Runs a test on each code path of the C kernel."""
    with using_simd(request.param) as simd:
        yield simd
