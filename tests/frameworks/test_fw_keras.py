"""Keras 3 adapter on the torch backend: a real 2-epoch fit on scikit-learn's wine data.

KERAS_BACKEND must be set before keras is imported; this module sets it for its own
import only and restores the environment, so other tests and their subprocesses see
what they saw before.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

if "keras" not in sys.modules:
    _saved = os.environ.get("KERAS_BACKEND")
    os.environ["KERAS_BACKEND"] = "torch"
    try:
        keras = pytest.importorskip("keras")
    finally:
        if _saved is None:
            del os.environ["KERAS_BACKEND"]
        else:
            os.environ["KERAS_BACKEND"] = _saved
import keras  # noqa: E402

if keras.backend.backend() != "torch":
    pytest.skip("keras was imported with another backend before this module", allow_module_level=True)


from twinpeaks.keras import ActivationsHistogram  # noqa: E402

BS = 32
N_TRAIN, N_VALID = 128, 50  # 4 train batches, 2 valid batches (32 + 18)


def _data():
    from sklearn.datasets import load_wine

    d = load_wine()
    x = ((d.data - d.data.mean(0)) / d.data.std(0)).astype("float32")
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], d.target[order]
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:N_TRAIN + N_VALID], y[N_TRAIN:N_TRAIN + N_VALID])


def _model():
    keras.utils.set_random_seed(0)
    inp = keras.Input((13,))
    h = keras.layers.Dense(16, activation="relu", name="hidden")(inp)
    out = keras.layers.Dense(3, name="logits")(keras.layers.Dropout(0.1, name="drop")(h))
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


@pytest.fixture(scope="module")
def fitted(outputs, tmp_path_factory):
    (x, y), (xv, yv) = _data()
    model = _model()
    last = outputs(model.get_layer("logits"))  # a Keras layer is a torch module: hooks fire
    model(x[:2])  # a call outside fit, before the callback: not recorded
    cb = ActivationsHistogram(path=tmp_path_factory.mktemp("keras") / "d.tp", classes=["a", "b", "c"])
    model.fit(x, y, batch_size=BS, epochs=2, validation_data=(xv, yv), verbose=0, callbacks=[cb])
    model.evaluate(xv, yv, batch_size=BS, verbose=0, callbacks=[cb])
    last.remove()
    return cb, model, last


def test_fit_two_epochs(check_run, check_truth_split, fitted):
    cb, model, last = fitted
    run = cb.run
    assert [layer.name for layer in run.layers] == ["hidden", "drop", "logits"]
    check_run(run, train_steps=4, valid_steps=2, last_train_total=N_TRAIN * 3, last_valid_total=N_VALID * 3,
              classes=["a", "b", "c"])
    assert run.n_steps("train") == int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 8
    check_truth_split(run)
    check_truth_split(run, "train")


def test_every_step_through_torch_hooks(assert_hist_equals, fitted):
    """Calls of the last layer: ours, fit's build call, then per epoch 4 train + 2 valid, then 2 evaluate."""
    cb, model, last = fitted
    calls = [t for _, t in last.calls]
    assert [len(t) for t in calls] == [2, BS] + [BS] * 4 + [BS, 18] + [BS] * 4 + [BS, 18] + [BS, 18]
    run = cb.run
    for e, first in enumerate((2, 8)):
        assert_hist_equals(run.histogram(-1, "train", epoch=e), torch.cat(calls[first:first + 4]))
        assert_hist_equals(run.histogram(-1, "valid", epoch=e), torch.cat(calls[first + 4:first + 6]))
    assert run.phases == ["train", "valid", "test"]
    assert_hist_equals(run.histogram(-1, "test", epoch=1), torch.cat(calls[-2:]))


def test_predict_is_recorded_as_test(assert_hist_equals, outputs, tmp_path):
    (x, y), (xv, _) = _data()
    model = _model()
    cb = ActivationsHistogram(path=tmp_path / "p.tp")
    model.fit(x, y, batch_size=BS, epochs=1, verbose=0, callbacks=[cb])
    last = outputs(model.get_layer("logits"))
    model.predict(xv, batch_size=BS, verbose=0, callbacks=[cb])
    last.remove()
    run = cb.run
    assert run.epochs == 1 and run.phases == ["train", "test"] and run.n_steps("test") == 2
    assert_hist_equals(run.histogram(-1, "test", epoch=0), torch.cat([t for _, t in last.calls]))


def test_modules_by_keras_name_or_index(tmp_path):
    (x, y), (xv, yv) = _data()
    model = _model()
    cb = ActivationsHistogram(path=None, modules=[0, "logits"], bins=10)
    model.fit(x, y, batch_size=BS, epochs=1, verbose=0, callbacks=[cb])
    assert [layer.name for layer in cb.run.layers] == ["hidden", "logits"]
    assert cb.run.epochs == 1 and cb.run.phases == ["train"]


def test_charts(check_charts, fitted, tmp_path):
    check_charts(fitted[0], tmp_path)


JAX_SCRIPT = r"""
import json, sys
import keras, numpy as np
from sklearn.datasets import load_wine
from twinpeaks.keras import ActivationsHistogram

assert keras.backend.backend() == "jax"
d = load_wine()
x = ((d.data - d.data.mean(0)) / d.data.std(0)).astype("float32")
order = np.random.default_rng(0).permutation(len(x))
x, y = x[order], d.target[order]
(x, y), (xv, yv) = (x[:128], y[:128]), (x[128:178], y[128:178])
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((13,)), keras.layers.Dense(16, activation="relu", name="hidden"),
                          keras.layers.Dense(3, name="logits")])
model.compile(optimizer=keras.optimizers.Adam(1e-2),
              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
cb = ActivationsHistogram(path=sys.argv[1], probe=(x, y), probe_valid=(xv, yv), probe_batch=16)
model.fit(x, y, batch_size=32, epochs=2, validation_data=(xv, yv), verbose=0, callbacks=[cb])
cb.close()
np.save(sys.argv[2], np.asarray(model(xv, training=False)))
print(json.dumps({"iterations": int(model.optimizer.iterations.numpy())}))
"""


def test_jax_backend_records_a_probe(assert_hist_equals, check_run, check_truth_split, tmp_path):
    """In a subprocess: the backend is fixed when keras is imported."""
    import json
    import subprocess

    pytest.importorskip("jax")
    import twinpeaks as tp

    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    path, logits = tmp_path / "j.tp", tmp_path / "logits.npy"
    out = subprocess.run([sys.executable, "-c", JAX_SCRIPT, str(path), str(logits)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    iterations = json.loads(out.stdout.splitlines()[-1])["iterations"]
    with tp.open_run(path) as run:
        assert [layer.name for layer in run.layers] == ["hidden", "logits"]
        check_run(run, train_steps=4, valid_steps=4, last_train_total=4 * 16 * 3, last_valid_total=N_VALID * 3)
        assert run.n_steps("train") == iterations == 8  # probe_every=1: one probe per train step
        check_truth_split(run)
        assert_hist_equals(run.histogram(-1, "valid", epoch=-1), torch.from_numpy(np.load(logits)))


def test_other_backends_are_refused():
    import subprocess

    code = "from twinpeaks.keras import ActivationsHistogram\nActivationsHistogram()"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "KERAS_BACKEND": "numpy"},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "torch backend (every step) or the jax backend (a probe); this Keras runs on 'numpy'" in out.stderr
