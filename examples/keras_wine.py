"""Keras 3 on the torch backend: an MLP on scikit-learn's wine data, recorded by twinpeaks every step.

Run: python examples/keras_wine.py [RUN_FILE_OR_FOLDER/]  (default: a new run in runs/keras/)
(With KERAS_BACKEND=jax the callback needs probe=(x, y) and records a probe instead.)
"""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")  # before keras is imported

import keras  # noqa: E402
import numpy as np  # noqa: E402
from _common import fresh_run, report  # noqa: E402
from sklearn.datasets import load_wine  # noqa: E402

from twinpeaks.keras import ActivationsHistogram  # noqa: E402

path = fresh_run("keras")
d = load_wine()
x = ((d.data - d.data.mean(0)) / d.data.std(0)).astype("float32")
order = np.random.default_rng(0).permutation(len(x))
x, y = x[order], d.target[order]
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((13,)), keras.layers.Dense(32, activation="relu"),
                          keras.layers.Dense(32, activation="relu"), keras.layers.Dense(3)])
model.compile(optimizer=keras.optimizers.Adam(3e-3), metrics=["accuracy"],
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

# the two lines
options = {"probe": (x[:140], y[:140]), "probe_valid": (x[140:], y[140:])} if keras.backend.backend() == "jax" else {}
cb = ActivationsHistogram(path=path, classes=list(d.target_names), **options)
model.fit(x[:140], y[:140], batch_size=16, epochs=5, validation_data=(x[140:], y[140:]), verbose=2, callbacks=[cb])

report(cb, path)
