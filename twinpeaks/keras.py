"""twinpeaks for Keras 3: one callback, two lines; every step on torch, a probe on JAX.

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

On the JAX backend the train step is compiled and no hook can see inside it, so
the callback records a *probe*: after every ``probe_every`` train batches it runs
a sub-model returning every top-level layer's output on a batch of
``probe_batch`` rows sampled from ``probe=(x, y)``, in inference mode (dropout
off, batch-norm running statistics), and bins those outputs as one ``train``
step; at each epoch end it runs ``probe_valid=(x, y)`` through as ``valid``
steps. Histograms then describe the model on the probe data, not the exact
training batches. TensorFlow and other backends raise an error naming the two
supported ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
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


class Probe:
    """JAX mode: outputs of the model's layers on sampled batches, replayed into the recorder's torch hooks."""

    def __init__(self, model: Any, layers: list[Any], data: tuple[Any, Any], valid: tuple[Any, Any] | None,
                 batch: int, every: int, seed: int = 0):
        if not getattr(model, "inputs", None):
            raise ValueError("probe: the JAX probe needs a Functional or Sequential model (symbolic inputs)")
        self.submodel = keras.Model(model.inputs, [layer.output for layer in layers])
        self.replay = nn.ModuleDict({layer.name: nn.Identity() for layer in layers})
        self.data, self.valid, self.batch, self.every = data, valid, batch, every
        self.rng = np.random.default_rng(seed)
        self.steps = 0

    def train_step(self, hist: Any, model: Any) -> None:
        self.steps += 1
        if self.steps % self.every == 0:
            model.jax_state_sync()  # during fit the weights live in the compiled step's state
            x, y = self.data
            idx = np.sort(self.rng.choice(len(x), size=min(self.batch, len(x)), replace=False))
            self.record(hist, "train", x[idx], None if y is None else y[idx])

    def valid_pass(self, hist: Any) -> None:
        if self.valid is not None:
            x, y = self.valid
            for i in range(0, len(x), self.batch):
                self.record(hist, "valid", x[i:i + self.batch], None if y is None else y[i:i + self.batch])

    def record(self, hist: Any, phase: str, x: Any, y: Any) -> None:
        outs = self.submodel(x, training=False)
        hist.begin_step(phase)
        t = None if y is None else _targets(torch.as_tensor(np.asarray(y)))
        if t is not None:
            hist.targets(t)
        for ident, out in zip(self.replay.values(), outs if isinstance(outs, (list, tuple)) else [outs]):
            ident(torch.from_numpy(np.array(out)))


def _targets(y: Any) -> Any:
    t = class_targets(y)
    if t is None and getattr(y, "ndim", 0) == 2 and y.shape[-1] > 1:
        return y  # one-hot or multi-label
    return t


class ActivationsHistogram(Recording, keras.callbacks.Callback):  # type: ignore[name-defined]  # imported lazily
    """Keras callback recording every layer's activation histograms, every step (torch backend).

    ``fit`` records ``train`` and ``valid``; ``evaluate`` and ``predict`` outside ``fit`` record ``test``.

    Args:
        path: run file to create; the other options are those of :class:`twinpeaks.ActivationsHistogram`
            (``modules`` by Keras layer name or index, ``bins, range, per_class, sample, classes, ...``).

        probe: JAX backend only (required there): ``(x, y)`` training rows to sample probe batches from
            (``y`` may be None: no YES/NO split).
        probe_valid: JAX backend: ``(x, y)`` run through as the ``valid`` phase at each epoch end.
        probe_batch: rows per probe batch.
        probe_every: probe after every this many train batches (1: the run has as many steps as the fit).

    Raises:
        RuntimeError: when Keras runs on a backend other than torch or JAX.
        ValueError: on JAX without ``probe``.

    Example:
        >>> cb = ActivationsHistogram(path="runs/d.tp")                                  # doctest: +SKIP
        >>> model.fit(x, y, epochs=3, validation_data=(xv, yv), callbacks=[cb]); cb.plot_twin_peaks()  # doctest: +SKIP
    """

    def __init__(self, path: Any = None, *, probe: tuple[Any, Any] | None = None,
                 probe_valid: tuple[Any, Any] | None = None, probe_batch: int = 32, probe_every: int = 1,
                 **options: Any):
        backend = keras.backend.backend()
        if backend not in ("torch", "jax"):
            raise RuntimeError(
                f"twinpeaks.keras records Keras on the torch backend (every step) or the jax backend (a probe); "
                f"this Keras runs on {backend!r}: set KERAS_BACKEND=torch before keras is imported"
            )
        if backend == "jax" and probe is None:
            raise ValueError("on the JAX backend pass probe=(x_train, y_train): the train step is compiled, so "
                             "twinpeaks records a probe of the layers on batches sampled from it")
        if not (isinstance(probe_batch, int) and probe_batch > 0 and isinstance(probe_every, int) and probe_every > 0):
            raise ValueError(f"probe_batch and probe_every must be positive ints, got {probe_batch!r}, {probe_every!r}")
        super().__init__()
        self._init_recording({"path": path, **options})
        self._probe_args: tuple[Any, ...] | None = (
            (probe, probe_valid, probe_batch, probe_every) if backend == "jax" else None)
        self._probe: Probe | None = None
        self._fitting = False

    def _start(self) -> None:
        if self._probe_args is not None:
            if self._probe is None:
                layers = [la for la in self.model.layers if not isinstance(la, keras.layers.InputLayer)]
                self._probe = Probe(self.model, layers, *self._probe_args)
                self._recorder(self._probe.replay)
            self.recorder.attach()
            return
        if self._hist is None:
            wrapped = KerasLayers(self.model)
            names = [name for name, _ in wrapped.named_children()]
            modules = self._options.get("modules")
            if modules is not None:  # Keras layer names or indices into the layer list
                modules = [names[m] if isinstance(m, int) and not isinstance(m, bool) else m for m in modules]
            self._options = {**self._options, "modules": modules or names}
            self._recorder(wrapped)
        self.recorder.attach()
        model, compute_loss = self.model, self.model.compute_loss

        def with_targets(x: Any = None, y: Any = None, *args: Any, **kwargs: Any) -> Any:
            t = _targets(y)
            if t is not None:
                self.recorder.targets(t)
            return compute_loss(x, y, *args, **kwargs)

        object.__setattr__(model, "compute_loss", with_targets)

    def _stop(self) -> None:
        if self._probe is None:
            self.model.__dict__.pop("compute_loss", None)
        self.recorder.detach()
        self.recorder.flush()  # an unfinished epoch; an evaluate() after fit joins the last epoch

    def on_train_begin(self, logs: Any = None) -> None:
        self._start()
        self._fitting = True

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if self._probe is None:
            self.recorder.begin_step("train")

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self._probe is not None:
            self._probe.train_step(self.recorder, self.model)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        if self._probe is not None:
            self._probe.valid_pass(self.recorder)
        self.recorder.end_epoch()

    def on_train_end(self, logs: Any = None) -> None:
        self._fitting = False
        self._stop()

    def on_test_begin(self, logs: Any = None) -> None:
        if not self._fitting and self._probe_args is None:
            self._start()

    def on_test_batch_begin(self, batch: int, logs: Any = None) -> None:
        if self._probe_args is None:
            self.recorder.begin_step("valid" if self._fitting else "test")

    def on_test_end(self, logs: Any = None) -> None:
        if not self._fitting and self._probe_args is None:
            self._stop()

    # predict() is a test pass without targets, as the Hugging Face adapter records it
    def on_predict_begin(self, logs: Any = None) -> None:
        self.on_test_begin(logs)

    def on_predict_batch_begin(self, batch: int, logs: Any = None) -> None:
        if self._probe_args is None:
            self.recorder.begin_step("test")

    def on_predict_end(self, logs: Any = None) -> None:
        self.on_test_end(logs)
