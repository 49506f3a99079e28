"""Hugging Face Trainer adapter: a tiny BERT built from a config (no download), trained 2 epochs on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from twinpeaks.transformers import ActivationsHistogram  # noqa: E402

BS = 32
N_TRAIN, N_VALID, N_TEST = 192, 64, 40


class Digits(torch.utils.data.Dataset):
    """scikit-learn digits 3 vs 7 as sequences of 64 tokens (pixel intensities 0..16)."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.y[i]}


def _datasets():
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = (d.target == 3) | (d.target == 7)
    x = torch.tensor(d.data[keep], dtype=torch.long)
    y = torch.tensor((d.target[keep] == 7).astype(np.int64))
    cuts = np.cumsum([N_TRAIN, N_VALID, N_TEST])
    return [Digits(x[a:b], y[a:b]) for a, b in zip([0, *cuts[:-1]], cuts)]


def _model():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=17, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=64, num_labels=2,
                                     id2label={0: "three", 1: "seven"}, label2id={"three": 0, "seven": 1})
    return transformers.BertForSequenceClassification(config)


def _args(tmp_path, **kw):
    options = {"output_dir": str(tmp_path / "out"), "num_train_epochs": 2, "per_device_train_batch_size": BS,
               "per_device_eval_batch_size": BS, "eval_strategy": "epoch", "save_strategy": "no",
               "logging_strategy": "no", "report_to": [], "use_cpu": True, "disable_tqdm": True,
               "learning_rate": 1e-3, **kw}
    return transformers.TrainingArguments(**options)


@pytest.fixture(scope="module")
def trained(outputs, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hf")
    train, valid, test = _datasets()
    model = _model()
    logits = outputs(model, pick=lambda out: out.logits)
    cb = ActivationsHistogram(path=tmp / "c.tp")
    trainer = transformers.Trainer(model=model, args=_args(tmp), train_dataset=train, eval_dataset=valid,
                                   callbacks=[cb])
    trainer.train()
    preds = trainer.predict(test)
    trainer.evaluate()
    logits.remove()
    return cb, trainer, logits, preds


def test_train_two_epochs(check_run, check_truth_split, trained):
    cb, trainer, logits, preds = trained
    run = cb.run
    # the evaluate() after training joins the last epoch
    check_run(run, train_steps=N_TRAIN // BS, valid_steps=[2, 4], last_train_total=N_TRAIN * 2,
              last_valid_total=[N_VALID * 2, 2 * N_VALID * 2], classes=["three", "seven"])
    assert run.n_steps("train") == trainer.state.global_step == 2 * N_TRAIN // BS
    assert run.layers[-1].name == "output" and run.layers[-1].out_shape == (BS, 2)
    assert run.layers[-2].name == "classifier"
    check_truth_split(run)
    check_truth_split(run, "train")


def test_logits_are_the_last_layer(assert_hist_equals, trained):
    cb, trainer, logits, preds = trained
    run = cb.run
    assert_hist_equals(run.histogram(-1, "train"), logits.values(training=True))
    # eval-mode calls: 2 x valid in training, then predict (test), then evaluate (valid, joins the last epoch)
    valid = logits.values(training=False)
    n_valid = N_VALID * 2
    assert_hist_equals(run.histogram(-1, "valid", epoch=0), valid[:n_valid])
    assert_hist_equals(run.histogram(-1, "valid", epoch=1),
                       torch.cat([valid[n_valid:2 * n_valid], valid[-n_valid:]]))


def test_predict_is_test(assert_hist_equals, trained):
    cb, trainer, logits, preds = trained
    run = cb.run
    assert run.phases == ["train", "valid", "test"] and run.epochs == 2
    test = run.histogram(-1, "test", epoch=1)
    assert test.steps == -(-N_TEST // BS) and test.total == preds.predictions.size
    np.testing.assert_array_equal(logits.values(training=False)[2 * N_VALID * 2:][: N_TEST * 2].numpy(),
                                  preds.predictions.reshape(-1))
    assert_hist_equals(test, torch.as_tensor(preds.predictions))


def test_no_evaluation_still_closes_epochs(tmp_path):
    train, _, _ = _datasets()
    train = Digits(train.x[:64], train.y[:64])  # 2 steps per epoch
    cb = ActivationsHistogram(path=None, bins=20)
    trainer = transformers.Trainer(model=_model(), args=_args(tmp_path, eval_strategy="no"), train_dataset=train,
                                   callbacks=[cb])
    trainer.train()
    assert cb.run.epochs == 2 and cb.run.phases == ["train"]
    assert cb.run.epoch_info(1).steps["train"][:2] == (2, 4)


def test_charts(check_charts, trained, tmp_path):
    check_charts(trained[0], tmp_path)
