"""twinpeaks for fastai v2: one callback, two lines.

Example:
    >>> from twinpeaks.fastai import ActivationsHistogram               # doctest: +SKIP
    >>> learn = tabular_learner(dls, cbs=ActivationsHistogram(path="runs/a.tp"))  # doctest: +SKIP
    >>> learn.fit_one_cycle(3); learn.activations_histogram.plot_twin_peaks()      # doctest: +SKIP

Design constraints: each fit's training pass attaches the hooks (``before_train``:
``validate()``, ``get_preds()`` and ``lr_find()`` also send ``before_fit``, and
are not training); they are removed in ``after_fit``. One batch is one step, in
the phase given by ``learn.training``; ``after_epoch`` closes the epoch (after
its validation). Evaluation outside ``fit`` is recorded only when asked:
``with learn.activations_histogram.phase("test"): learn.get_preds(dl=test_dl)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ._adapter import Recording, class_targets, require

_callback = require("fastai.callback.core", "fastai")


class ActivationsHistogram(Recording, _callback.Callback):  # type: ignore[name-defined]  # imported lazily
    """fastai callback recording every layer's activation histograms (available as ``learn.activations_histogram``).

    Args:
        path: run file to create; the other options are those of :class:`twinpeaks.ActivationsHistogram`
            (``modules, bins, range, per_class, sample, classes, ...``). Class names default to ``dls.vocab``.

    Example:
        >>> learn = Learner(dls, model, cbs=ActivationsHistogram(path="runs/a.tp"))  # doctest: +SKIP
    """

    order = 5  # after TrainEvalCallback (-10) set train/eval mode, before MixedPrecision (10) casts
    _stateattrs = ("_hist",)  # learn.export() pickles callbacks: leave the recorder (hooks, open file) out

    def _init_state(self) -> None:
        self._hist = None  # after unpickling: the exported learner records nothing until a new fit

    def __init__(self, path: Any = None, **options: Any):
        super().__init__()
        self._init_recording({"path": path, **options})
        self._enabled = True
        self._phase: str | None = None  # recording phase, None: not recording
        self._trained = False  # a training pass ran since the last closed epoch
        self._asked = False  # inside phase(): evaluation outside fit is recorded

    # fastai reads and writes ``run`` as its on/off switch of a callback; a Run is truthy.
    @property
    def run(self) -> Any:  # type: ignore[override]
        """The run recorded so far (also fastai's on/off switch: False while the callback is switched off)."""
        if not self._enabled or self._hist is None:
            return self._enabled
        return self._hist.run

    @run.setter
    def run(self, value: bool) -> None:
        self._enabled = bool(value)

    def _start(self, phase: str) -> None:
        vocab = getattr(getattr(self.learn, "dls", None), "vocab", None)
        if vocab is not None and len(vocab) and isinstance(vocab[-1], (list, tuple, _callback.L)):
            vocab = vocab[-1]  # text: [tokens, classes]
        classes = [str(c) for c in vocab] if vocab is not None else None
        self._recorder(self.learn.model, classes=classes).attach()
        self._phase = phase

    def _stop(self) -> None:
        if self._hist is not None:
            self._hist.detach()
        self._phase = None

    def before_train(self) -> None:
        if hasattr(self.learn, "lr_finder") or hasattr(self.learn, "gather_preds"):
            return
        self._start("train")
        self._trained = True

    def before_validate(self) -> None:
        if self._trained:
            self._phase = "valid"

    def before_batch(self) -> None:
        if self._phase is None:
            return
        hist = self.recorder
        hist.begin_step("train" if self.learn.training else self._phase)
        yb: Any = getattr(self.learn, "yb", ())
        y = class_targets(yb[0]) if len(yb) else None
        if y is not None:
            hist.targets(y)

    def after_epoch(self) -> None:
        if self._trained:
            self.recorder.end_epoch()
            self._trained = False

    def after_fit(self) -> None:
        if self._trained:  # a fit cancelled inside its epoch
            self.recorder.flush()
            self._trained = False
        if not self._asked:
            self._stop()

    @contextlib.contextmanager
    def phase(self, name: str = "test") -> Iterator[None]:
        """Record the evaluation passes inside the block (``get_preds``, ``validate``) as phase ``name``.

        Example:
            >>> with learn.activations_histogram.phase("test"):  # doctest: +SKIP
            ...     preds, targs = learn.get_preds(dl=test_dl)
        """
        self._start(name)
        self._asked = True
        try:
            yield
        finally:
            self._asked = False
            self._stop()
            self.recorder.flush()
