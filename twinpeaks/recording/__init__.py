"""The parts behind :class:`twinpeaks.recorder.ActivationsHistogram`, one job each.

Imports run one way, top to bottom (see ``docs/architecture.md``):

* :mod:`.selection`: which modules are hooked, their layer names; the hook handles.
* :mod:`.probe`: during the first step, the modules whose children never run through their own
  forward (attention), recorded as layers; its hooks are removed after that step.
* :mod:`.clock`: phase, step, window (rows on the device) and epoch counters.
* :mod:`.engine`: binning plans, the device buffers (with their declared reductions),
  the C-kernel and torch paths, per-class and truth counts.
* :mod:`.epoch_writer`: host column stores, the flush of a window and the epoch summaries.
* :mod:`.ops`: the ``torch.library`` custom ops through which compiled graphs call the hooks.

None of them imports the facade, the distributed sync or the charts.
"""
