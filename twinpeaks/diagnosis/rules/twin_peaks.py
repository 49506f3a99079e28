"""``no_twin_peaks`` (info) for a regression: one output and no class names, so twin peaks do not apply.

Unlabeled classifiers without twin peaks get ``no_twin_peaks`` from
:mod:`.separation`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import declare_kind, rule

if TYPE_CHECKING:
    from ..core import Context

declare_kind("no_twin_peaks", 70, "the last layer is not expected to show twin peaks (regression), or does not")


@rule("no_twin_peaks", 70, tasks=("regression",))
def check_twin_peaks(ctx: Context) -> None:
    """Regression: twin peaks do not apply."""
    ctx.add("no_twin_peaks", "info", ctx.last.name, None,
            f"the last layer {ctx.last.name!r} has one output and no class names were recorded: a "
            "regression, whose outputs form one peak, so twin peaks do not apply (a one-output binary "
            "classifier gets them with classes=[...])",
            {"outputs": 1.0})
