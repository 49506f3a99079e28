"""twinpeaks for PyTorch Lightning: one callback, two lines.

Example:
    >>> from twinpeaks.lightning import ActivationsHistogram                       # doctest: +SKIP
    >>> trainer = lightning.Trainer(callbacks=[ActivationsHistogram(path="runs/b.tp")])  # doctest: +SKIP

Design constraints: the hooks are on the ``LightningModule`` from ``on_train_start``
(after the sanity check, which is never recorded) to ``on_train_end``, and for each
``trainer.validate()`` / ``trainer.test()`` outside fitting. Every batch of the
train/validation/test loops is one step of phase ``train``/``valid``/``test``,
whatever ``training_step`` calls; ``on_train_epoch_end`` closes the epoch, so the
validation that Lightning runs at the end of epoch e belongs to epoch e. Targets
for the YES/NO split are taken from a batch ``(x, y, ...)`` or a dict's
``labels``/``label``/``y``/``target``/``targets`` when they hold class indices.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._adapter import Recording, class_targets, require

_pl = require("lightning.pytorch", "lightning")

_TARGET_KEYS = ("labels", "label", "y", "target", "targets")


def batch_targets(batch: Any) -> Any:
    """The class targets inside a batch, or None."""
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return class_targets(batch[1])
    if isinstance(batch, Mapping):
        return next((class_targets(batch[k]) for k in _TARGET_KEYS if k in batch), None)
    return None


class ActivationsHistogram(Recording, _pl.Callback):  # type: ignore[name-defined]  # imported lazily
    """Lightning callback recording every layer's activation histograms of the ``LightningModule``.

    Args:
        path: run file to create; the other options are those of :class:`twinpeaks.ActivationsHistogram`
            (``modules, bins, range, per_class, sample, classes, ...``).

    Example:
        >>> trainer = lightning.Trainer(max_epochs=3, callbacks=[ActivationsHistogram(path="runs/b.tp")])  # doctest: +SKIP
        >>> trainer.fit(model, train_dl, valid_dl); trainer.callbacks[0].plot_twin_peaks()                  # doctest: +SKIP
    """

    def __init__(self, path: Any = None, **options: Any):
        super().__init__()
        self._init_recording({"path": path, **options})
        self._fitting = False

    def _step(self, phase: str, batch: Any) -> None:
        hist = self.recorder
        hist.begin_step(phase)
        y = batch_targets(batch)
        if y is not None:
            hist.targets(y)

    # -- fit ----------------------------------------------------------------------
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._recorder(pl_module).attach()
        self._fitting = True

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._step("train", batch)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.recorder.end_epoch()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._fitting = False
        self.recorder.detach()
        self.recorder.flush()  # an epoch cut short (max_steps, interrupt)

    # -- validation and test ---------------------------------------------------
    def _start_eval(self, pl_module: Any) -> None:
        if not self._fitting:
            self._recorder(pl_module).attach()

    def _end_eval(self) -> None:
        if not self._fitting and self._hist is not None:
            self._hist.detach()
            self._hist.flush()  # joins the last epoch

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._start_eval(pl_module)

    def on_validation_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                                  dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking:
            self._step("valid", batch)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self._end_eval()

    def on_test_start(self, trainer: Any, pl_module: Any) -> None:
        self._start_eval(pl_module)

    def on_test_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int,
                            dataloader_idx: int = 0) -> None:
        self._step("test", batch)

    def on_test_end(self, trainer: Any, pl_module: Any) -> None:
        self._end_eval()
