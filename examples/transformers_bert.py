"""Hugging Face Trainer: a tiny BERT built from a config (no download) on scikit-learn's digits, 3 vs 7.

Each 8x8 image becomes a sequence of 64 tokens (pixel intensities 0..16).
Run: python examples/transformers_bert.py [RUN_FILE_OR_FOLDER/]  (default: a new run in runs/transformers/)
"""

import numpy as np
import torch
from _common import fresh_run, report
from sklearn.datasets import load_digits
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

from twinpeaks.transformers import ActivationsHistogram


class Digits(torch.utils.data.Dataset):
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.y[i]}


path = fresh_run("transformers")
torch.manual_seed(0)
d = load_digits()
keep = (d.target == 3) | (d.target == 7)
x = torch.tensor(d.data[keep], dtype=torch.long)
y = torch.tensor((d.target[keep] == 7).astype(np.int64))
train, valid, test = Digits(x[:250], y[:250]), Digits(x[250:310], y[250:310]), Digits(x[310:], y[310:])
config = BertConfig(vocab_size=17, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                    max_position_embeddings=64, num_labels=2, id2label={0: "3", 1: "7"}, label2id={"3": 0, "7": 1})
args = TrainingArguments(output_dir="runs/hf-out", num_train_epochs=3, per_device_train_batch_size=32,
                         eval_strategy="epoch", save_strategy="no", report_to=[], use_cpu=True, learning_rate=2e-3, disable_tqdm=True)

# the two lines
cb = ActivationsHistogram(path=path)
trainer = Trainer(model=BertForSequenceClassification(config), args=args, train_dataset=train, eval_dataset=valid,
                  callbacks=[cb])

trainer.train()
trainer.predict(test)  # recorded as "test"
report(cb, path)
