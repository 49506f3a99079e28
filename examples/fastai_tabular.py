"""fastai: a tabular learner on scikit-learn's breast cancer data, recorded by twinpeaks.

Run: python examples/fastai_tabular.py [RUN_FILE_OR_FOLDER/]  (default: a new run in runs/fastai/)
"""

from _common import fresh_run, report
from fastai.tabular.all import (
    CategoryBlock,
    Normalize,
    RandomSplitter,
    TabularPandas,
    accuracy,
    range_of,
    tabular_learner,
)
from sklearn.datasets import load_breast_cancer

from twinpeaks.fastai import ActivationsHistogram

path = fresh_run("fastai")
data = load_breast_cancer(as_frame=True)
df = data.frame.assign(target=data.frame["target"].map({0: "malignant", 1: "benign"}))
to = TabularPandas(df, procs=[Normalize], cont_names=list(data.feature_names), y_names="target",
                   y_block=CategoryBlock(), splits=RandomSplitter(0.25, seed=0)(range_of(df)))
dls = to.dataloaders(bs=64)

# the two lines
learn = tabular_learner(dls, layers=[32, 16], metrics=accuracy, cbs=ActivationsHistogram(path=path))
learn.fit_one_cycle(4, 1e-2)

with learn.activations_histogram.phase("test"):  # evaluation outside fit is recorded when asked
    learn.get_preds(dl=dls.valid)
report(learn.activations_histogram, path)
