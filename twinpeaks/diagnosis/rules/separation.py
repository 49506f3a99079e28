"""``separation``: how far the YES and NO peaks of the last layer are apart (info, or warning when they do not)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..registry import rule

if TYPE_CHECKING:
    from ..core import Context


@rule("separation", 50, tasks=("classification",),
      thresholds={"separation_weak": (1.0, "last valid separation below this: the peaks do not separate (warning)")},
      doc="how far the YES and NO peaks of the last layer are apart")
def check_separation(ctx: Context) -> None:
    """One ``separation`` finding: how the last layer's YES and NO peaks separate over the epochs."""
    phase = "valid" if ("separation", "valid", None) in ctx.metrics and np.isfinite(
        ctx.metrics[("separation", "valid", None)]).any() else "train"
    sep = ctx.metrics[("separation", phase, None)]
    ovl = ctx.metrics[("overlap", phase, None)]
    ok = np.flatnonzero(np.isfinite(sep))
    first, last = int(ok[0]), int(ok[-1])
    best = int(ok[np.argmax(sep[ok])])
    oor = ctx.metrics[("out_of_range", phase, ctx.last.name)][last]
    ev = {"first": sep[first], "last": sep[last], "best": sep[best], "best_epoch": best,
          "overlap_last": ovl[last], "auc_last": ctx.metrics[("auc", phase, None)][last],
          "out_of_range_last": oor}
    caveat = (f" ({oor:.0%} of the outputs fall outside the recorded range, so this is a lower bound)"
              if oor >= 0.5 else "")
    if sep[last] < ctx.t.separation_weak:
        ctx.add("separation", "warning", ctx.last.name, None,
                f"the YES and NO peaks of the last layer do not separate: {phase} separation "
                f"{sep[last]:.2f} at epoch {last}, {ovl[last]:.0%} of their area shared: the model does "
                f"not tell the classes apart{caveat}", ev)
        return
    trend = "rose" if sep[last] > sep[first] + 0.1 else "stayed" if abs(sep[last] - sep[first]) <= 0.1 else "fell"
    span = f"from {sep[first]:.2f} (epoch {first}) to {sep[last]:.2f} (epoch {last})" if trend != "stayed" \
        else f"at about {sep[last]:.2f}"
    ctx.add("separation", "info", ctx.last.name, None,
            f"the YES and NO peaks of the last layer separate: {phase} separation {trend} {span}, "
            f"{ovl[last]:.0%} of their area shared{caveat}", ev)
