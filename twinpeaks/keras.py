"""twinpeaks for Keras 3: one callback, two lines, on the torch backend.

Example:
    >>> import os; os.environ["KERAS_BACKEND"] = "torch"     # before keras is imported   # doctest: +SKIP
    >>> from twinpeaks.keras import ActivationsHistogram                                   # doctest: +SKIP
    >>> model.fit(x, y, validation_data=(xv, yv), callbacks=[ActivationsHistogram(path="runs/d.tp")])  # doctest: +SKIP

Design constraints: on the torch backend a Keras layer is a ``torch.nn.Module``
whose call goes through torch's module call, so the recorder's torch hooks on
the Keras layers see every step, exactly as in plain PyTorch. The layers are
not torch children of the model, so the recorder gets them in a container of
its own. Hooks go on in ``on_train_begin``: the extra call with which ``fit``
builds the model comes before it and is never recorded. Each train/test batch
event starts a step (``train``; ``valid`` inside ``fit``; ``test`` in
``evaluate(..., callbacks=[cb])``), ``on_epoch_end`` (after validation) closes
the epoch. Keras gives callbacks no batch data: targets for the YES/NO split
come from the model's ``compute_loss(x, y, ...)``, wrapped while recording.
Other backends (JAX, TensorFlow) compile the step, so no hook sees it: they
raise an error naming the torch backend.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ._adapter import Recording, class_targets, require

keras = require("keras", "keras")


class KerasLayers(nn.Module):
    """The leaf Keras layers of a model as torch children, for the recorder (never called itself)."""

    def __init__(self, model: Any):
        super().__init__()
        for layer in keras_leaves(model):
            self.add_module(layer.name, layer)


def keras_leaves(model: Any) -> list[Any]:
    """Layers of ``model`` in order, nested models flattened, input layers left out."""
    leaves = []
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        leaves.extend(keras_leaves(layer) if isinstance(layer, keras.Model) else [layer])
    return leaves


def _targets(y: Any) -> Any:
    t = class_targets(y)
    if t is None and getattr(y, "ndim", 0) == 2 and y.shape[-1] > 1:
        return y  # one-hot or multi-label
    return t


class ActivationsHistogram(Recording, keras.callbacks.Callback):
    """Keras callback recording every layer's activation histograms, every step (torch backend).

    Args:
        path: run file to create; the other options are those of :class:`twinpeaks.ActivationsHistogram`
            (``modules`` by Keras layer name or index, ``bins, range, per_class, sample, classes, ...``).

    Raises:
        RuntimeError: when Keras does not run on the torch backend.

    Example:
        >>> cb = ActivationsHistogram(path="runs/d.tp")                                  # doctest: +SKIP
        >>> model.fit(x, y, epochs=3, validation_data=(xv, yv), callbacks=[cb]); cb.plot_twin_peaks()  # doctest: +SKIP
    """

    def __init__(self, path: Any = None, **options: Any):
        backend = keras.backend.backend()
        if backend != "torch":
            raise RuntimeError(
                f"twinpeaks.keras records Keras on the torch backend only; this Keras runs on {backend!r}: "
                "set the environment variable KERAS_BACKEND=torch before keras is imported"
            )
        super().__init__()
        self._init_recording({"path": path, **options})
        self._fitting = False

    def _start(self) -> None:
        if self._hist is None:
            layers = KerasLayers(self.model)
            names = [name for name, _ in layers.named_children()]
            modules = self._options.get("modules")
            if modules is not None:  # Keras layer names or indices into the layer list
                modules = [names[m] if isinstance(m, int) and not isinstance(m, bool) else m for m in modules]
            self._options = {**self._options, "modules": modules or names}
            self._recorder(layers)
        self.recorder.attach()
        model, compute_loss = self.model, self.model.compute_loss

        def with_targets(x: Any = None, y: Any = None, *args: Any, **kwargs: Any) -> Any:
            t = _targets(y)
            if t is not None:
                self.recorder.targets(t)
            return compute_loss(x, y, *args, **kwargs)

        object.__setattr__(model, "compute_loss", with_targets)

    def _stop(self) -> None:
        vars(self.model).pop("compute_loss", None)
        self.recorder.detach()
        self.recorder.flush()  # an unfinished epoch; an evaluate() after fit joins the last epoch

    def on_train_begin(self, logs: Any = None) -> None:
        self._start()
        self._fitting = True

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.recorder.begin_step("train")

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.recorder.end_epoch()

    def on_train_end(self, logs: Any = None) -> None:
        self._fitting = False
        self._stop()

    def on_test_begin(self, logs: Any = None) -> None:
        if not self._fitting:
            self._start()

    def on_test_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.recorder.begin_step("valid" if self._fitting else "test")

    def on_test_end(self, logs: Any = None) -> None:
        if not self._fitting:
            self._stop()
