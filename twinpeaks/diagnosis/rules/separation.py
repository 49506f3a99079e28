"""``separation``: how far the YES and NO peaks of the last layer are apart, with targets or without.

With targets (``hist.targets(y)``) the YES and NO histograms are recorded and
the separation is the label-aware one: info when the peaks separate, warning
when they do not. Without targets it is the label-free one (the (K-1):1 mass
split of the last layer): info when twin peaks show, else ``no_twin_peaks``
(info: without labels a run that is not a classifier cannot be told from one
that does not learn).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ..registry import rule

if TYPE_CHECKING:
    from ..core import Context


@rule("separation", 50, tasks=("classification", "unlabeled"), thresholds={
    "separation_weak": (1.0, "last valid separation below this: the peaks do not separate (warning)"),
    "twin_peaks": (1.5, "label-free separation from which the last layer shows twin peaks"),
}, doc="how far the YES and NO peaks of the last layer are apart")
def check_separation(ctx: Context) -> None:
    """One ``separation`` finding: how the last layer's YES and NO peaks separate over the epochs."""
    phase = "valid" if ("separation", "valid", None) in ctx.metrics and np.isfinite(
        ctx.metrics[("separation", "valid", None)]).any() else "train"
    sep = ctx.metrics[("separation", phase, None)]
    ovl = ctx.metrics[("overlap", phase, None)]
    ok = np.flatnonzero(np.isfinite(sep))
    if not len(ok):
        return
    first, last = int(ok[0]), int(ok[-1])
    best = int(ok[np.argmax(sep[ok])])
    oor = ctx.metrics[("out_of_range", phase, ctx.last.name)][last]
    ev = {"first": sep[first], "last": sep[last], "best": sep[best], "best_epoch": best,
          "out_of_range_last": oor}
    caveat = (f" ({oor:.0%} of the outputs fall outside the recorded range, so this is a lower bound)"
              if oor >= 0.5 else "")
    trend = "rose" if sep[last] > sep[first] + 0.1 else "stayed" if abs(sep[last] - sep[first]) <= 0.1 else "fell"
    span = f"from {sep[first]:.2f} (epoch {first}) to {sep[last]:.2f} (epoch {last})" if trend != "stayed" \
        else f"at about {sep[last]:.2f}"
    if ctx.task == "unlabeled":
        shape = ctx.last.out_shape or ()
        yes_share = 1 / max(shape[-1] if len(shape) >= 2 else 1, 2)
        if 0.5 * yes_share <= oor < 0.5:  # the top 1/K (the YES peak) is partly beyond the range
            caveat = (f" ({oor:.0%} of the outputs fall outside the recorded range, so the YES peak's shape is "
                      "guessed: a rough reading)")
        dead = ctx.dead_before(ctx.last)
        if dead is not None:
            ctx.add("no_twin_peaks", "info", ctx.last.name, None,
                    f"layer {dead!r} is dead, so the last layer's outputs do not depend on the input: whatever "
                    "its histogram shows is not twin peaks", ev)
        elif sep[last] >= ctx.t.twin_peaks:
            ctx.add("separation", "info", ctx.last.name, None,
                    f"the last layer shows twin peaks (read without labels, from its (K-1):1 split): {phase} "
                    f"separation {trend} {span}{caveat}", ev)
        else:
            ctx.add("no_twin_peaks", "info", ctx.last.name, None,
                    f"the last layer shows no twin peaks (read without labels): {phase} separation {sep[last]:.2f} "
                    f"at epoch {last}; a classifier that does not (yet) tell its classes apart looks like this, "
                    "and so do multi-label and strongly imbalanced ones (record targets with hist.targets(y) for "
                    "the exact split)", ev)
        return
    ev.update({"overlap_last": ovl[last], "auc_last": ctx.metrics[("auc", phase, None)][last]})
    if sep[last] < ctx.t.separation_weak:
        ctx.add("separation", "warning", ctx.last.name, None,
                f"the YES and NO peaks of the last layer do not separate: {phase} separation "
                f"{sep[last]:.2f} at epoch {last}, {ovl[last]:.0%} of their area shared: the model does "
                f"not tell the classes apart{caveat}", ev,
                cause="the model does not learn (see the other findings) or the targets do not match the outputs",
                remedy="fix what the other findings name; else check that hist.targets(y) gets the batch's labels "
                       "and try a learning rate 10x higher or lower")
        return
    ctx.add("separation", "info", ctx.last.name, None,
            f"the YES and NO peaks of the last layer separate: {phase} separation {trend} {span}, "
            f"{ovl[last]:.0%} of their area shared{caveat}", ev)
