"""Diagnosis: what an expert would read from a run's charts, in numbers and in words.

``tp.diagnose(run)`` reads a recorded run (never the hooks: it works on any run
file, also one still being written) and returns a :class:`Diagnosis`: health
metrics per epoch (:meth:`Diagnosis.metric`) and :class:`Finding` objects with
a kind, a severity, the layer and epoch concerned, one sentence, and the
numbers behind it.

Finding kinds (stable names):

* ``separation``: how far the YES and NO peaks of the last layer are apart
  (info when they separate, warning when they do not).
* ``overfitting``: the train and valid peaks of the last layer drift apart.
* ``unstable``: layer statistics jump between steps far beyond batch noise, or
  values became NaN/inf.
* ``dead``: a layer's outputs are (almost) all exactly zero, or a single value.
* ``saturated``: a layer's values pile up at the extremes of their span.
* ``out_of_range``: a share of a layer's values fell outside the recorded
  range; says whether the range was wrong from the start or the values grew.
* ``no_twin_peaks`` (info): the last layer is not expected to be bimodal
  (regression), or is not; no separation is claimed then.

Layout: one rule per module in :mod:`twinpeaks.diagnosis.rules`, each
registering its kind, thresholds, metrics and check through
:mod:`twinpeaks.diagnosis.registry`; :mod:`twinpeaks.diagnosis.core` runs
them. The formulas are in :mod:`twinpeaks.diagnosis.metrics`; every
threshold is a field of :class:`Thresholds`.
"""

from __future__ import annotations

from .core import KINDS, METRICS, SEVERITIES, Context, Diagnosis, Finding, diagnose
from .thresholds import Thresholds

__all__ = ["Context", "Diagnosis", "Finding", "KINDS", "METRICS", "SEVERITIES", "Thresholds", "diagnose"]
