"""twinpeaks for the Hugging Face ``Trainer``: one callback, two lines.

Example:
    >>> from twinpeaks.transformers import ActivationsHistogram                              # doctest: +SKIP
    >>> trainer = Trainer(model=model, args=args, callbacks=[ActivationsHistogram(path="runs/c.tp")])  # doctest: +SKIP

Design constraints: the ``Trainer`` sends no event before an evaluation or
prediction loop, so the hooks go on when the ``Trainer`` is made (``on_init_end``)
and every forward of the model is one step: train mode is ``train``, eval mode
``valid``, or ``test`` inside ``trainer.predict()`` (told apart, once per loop,
by the ``Trainer`` method on the call stack). With gradient accumulation a step
is a micro-batch. The model's own output is recorded last, as ``output``: the
``logits`` of a ``ModelOutput`` (``per_class`` and the YES/NO split apply to it,
targets from the ``labels`` input). The epoch closes after the evaluation that
follows ``on_epoch_end``; ``evaluate()``/``predict()`` after training join the
last epoch. Class names come from ``model.config.id2label``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from types import FrameType
from typing import Any

from ._adapter import Recording, class_targets, require
from .recording.selection import CopySafe

_tr = require("transformers", "transformers")


def logits(out: Any) -> Any:
    """The ``logits`` of a model output (``ModelOutput`` or dict), else the output itself."""
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    return getattr(out, "logits", out)


def _in_predict() -> bool:
    """Whether the innermost ``Trainer.evaluate``/``Trainer.predict`` on the stack is ``predict``."""
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name in ("predict", "evaluate") and isinstance(frame.f_locals.get("self"), _tr.Trainer):
            return frame.f_code.co_name == "predict"
        frame = frame.f_back
    return False


class ActivationsHistogram(Recording, _tr.TrainerCallback):  # type: ignore[name-defined]  # imported lazily
    """``TrainerCallback`` recording every layer's activation histograms, the logits last.

    Args:
        path: run file to create; the other options are those of :class:`twinpeaks.ActivationsHistogram`
            (``modules, bins, range, per_class, sample, classes, ...``).

    Example:
        >>> cb = ActivationsHistogram(path="runs/c.tp")                      # doctest: +SKIP
        >>> Trainer(model=model, args=args, callbacks=[cb]).train(); cb.plot_twin_peaks()  # doctest: +SKIP
    """

    def __init__(self, path: Any = None, **options: Any):
        self._init_recording({"path": path, **options})
        self._in_train = False
        self._epoch_done = False  # the epoch ended; its evaluation may still come
        self._eval_phase: str | None = None  # phase of the running evaluation loop
        self._handle: Any = None

    def _attach(self, model: Any) -> None:
        id2label = getattr(getattr(model, "config", None), "id2label", None) or {}
        classes = [str(id2label[i]) for i in sorted(id2label)] or None
        hist = self._recorder(model, classes=classes, output=logits)
        if self._handle is None:
            hist.attach()
            self._handle = model.register_forward_pre_hook(CopySafe(self._before_forward), with_kwargs=True,
                                                           prepend=True)  # a copy of the model is not recorded

    def _before_forward(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        hist = self.recorder
        if module.training:
            hist.set_phase(None)
        else:
            if self._eval_phase is None:
                self._eval_phase = "test" if _in_predict() else "valid"
            hist.set_phase(self._eval_phase)
        y = class_targets(kwargs.get("labels"))
        if y is not None:
            hist.targets(y)

    def _end_eval(self) -> None:
        self._eval_phase = None
        if self._in_train:
            if self._epoch_done:
                self._close_epoch()
        elif self._hist is not None:
            self._hist.flush()  # joins the last epoch

    def _close_epoch(self) -> None:
        self._epoch_done = False
        self.recorder.end_epoch()

    def on_init_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        if model is not None:
            self._attach(model)

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        self._attach(model)
        self._in_train = True

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._epoch_done:  # no evaluation after the previous epoch
            self._close_epoch()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._epoch_done = True

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._end_eval()

    def on_predict(self, args: Any, state: Any, control: Any, metrics: Any = None, **kwargs: Any) -> None:
        self._end_eval()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self._epoch_done:
            self._close_epoch()
        self._in_train = False
        self.recorder.flush()  # an epoch cut short (max_steps)

    def close(self) -> None:
        """Remove the hooks and close the run file."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        super().close()
