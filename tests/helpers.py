"""Shared test helpers: a capture hook that keeps exact copies of outputs (the oracle's input)."""

from __future__ import annotations

import numpy as np
import torch


class Capture:
    """Keeps a clone of a module's output for each forward, tagged with the phase given by the test."""

    def __init__(self, module: torch.nn.Module):
        self.phase = "train"
        self.values: dict[str, list[torch.Tensor]] = {}
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, out):
        self.values.setdefault(self.phase, []).append(out.detach().clone())

    def all(self, phase: str) -> torch.Tensor:
        return torch.cat([v.reshape(-1) for v in self.values[phase]])


def numpy_slots(values: torch.Tensor, edges: np.ndarray) -> tuple[np.ndarray, int, int, int]:
    v = values.float().numpy().astype(np.float64).ravel()
    finite = np.isfinite(v)
    counts, _ = np.histogram(v[finite], bins=edges)
    return counts, int((v[finite] < edges[0]).sum()), int((v[finite] > edges[-1]).sum()), int((~finite).sum())


def assert_hist_equals(h, values: torch.Tensor) -> None:
    counts, under, over, nonfinite = numpy_slots(values, h.edges)
    np.testing.assert_array_equal(h.counts, counts)
    assert (h.underflow, h.overflow, h.nonfinite) == (under, over, nonfinite)
    assert h.total == values.numel()
