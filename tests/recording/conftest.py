"""Fixtures of the recording tests."""

from __future__ import annotations

import pytest
from kernel_paths import PATHS, using_path


@pytest.fixture(params=PATHS)
def c_path(request):
    """Runs a test on each code path of the C kernel."""
    with using_path(request.param) as path:
        yield path
