"""What exact binning of mid-sized outputs would cost: the default threshold against 64k.

Run ``python bench/exact_below.py``. A small tabular MLP (batch 120, 4 x width 512:
61,440 elements per layer output, 13 leaf modules, a step of a few ms) is timed like
``bench/overhead.py`` does (interleaved variants, medians of per-round paired ratios,
torch on 1 thread) with no telemetry, twinpeaks' default (outputs above
``EXACT_BELOW`` = 16,384 elements sampled) and the same with every output up to
65,536 elements binned exactly.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402

from twinpeaks.recording import engine  # noqa: E402


class Threshold(overhead.Twinpeaks):
    """twinpeaks' default, with ``EXACT_BELOW`` set while this variant's plans are made (its first step)."""

    def __init__(self, model: nn.Module, exact_below: int):
        self.exact_below = exact_below
        super().__init__(model)

    def attach(self) -> None:
        engine.EXACT_BELOW = self.exact_below
        super().attach()


def variants(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[dict[str, Any], dict[str, str]]:
    return {"none": overhead.NoTelemetry(),
            f"default (exact up to {engine.EXACT_BELOW:,})": Threshold(model, engine.EXACT_BELOW),
            "exact up to 65,536": Threshold(model, 1 << 16)}, {}


def main() -> int:
    torch.set_num_threads(1)
    overhead.variants = variants
    g = torch.Generator().manual_seed(0)
    model = overhead.mlp(64, 512, 4, 10)
    x, y = torch.randn(120, 64, generator=g), torch.randint(0, 10, (120,), generator=g)
    result = overhead.measure("small mlp (batch 120, width 512)", model, x, y, rounds=16, steps=5)
    print(overhead.table([result]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
