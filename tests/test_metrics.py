"""Metrics as types (safetrain.train.metrics): the in-graph sums, added over uneven batches, give
scikit-learn's values on real predictions; a new metric is one class and one registry line and
then reaches TensorBoard, report.json and the best-epoch choice by name."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import read_tensorboard
from safetrain.core.errors import ConfigError
from safetrain.train.metrics import METRICS, Collection, Metric, Totals, macro_f1


@pytest.fixture(scope="module")
def digits_predictions():
    """Real predictions with real mistakes: a weak logistic regression on scikit-learn's digits
    (few iterations, few features), its decision values as logits, on the held-out half."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    x = x[:, ::7]  # 10 of 64 pixels: a model that errs
    model = LogisticRegression(max_iter=30).fit(x[::2], y[::2])
    return y[1::2].astype(np.int32), model.decision_function(x[1::2]).astype(np.float32)


def _totals(names, labels, logits, batch_sizes, num_classes=10):
    import tensorflow as tf

    collection = Collection(names, num_classes)
    totals = Totals(collection)
    start = 0
    for size in batch_sizes:
        y, z = labels[start:start + size], logits[start:start + size]
        loss = tf.keras.losses.sparse_categorical_crossentropy(y, z, from_logits=True)
        totals.add({k: np.asarray(v) for k, v in collection.update(tf.constant(y), tf.constant(z), loss).items()})
        start += size
    assert start == len(labels)
    return totals


def test_sums_over_uneven_batches_give_scikit_learns_values(digits_predictions):
    from sklearn.metrics import accuracy_score, f1_score, log_loss, top_k_accuracy_score

    y, logits = digits_predictions
    totals = _totals(["loss", "accuracy", "macro_f1", "top5_accuracy"], y, logits, [128, 7, 500, len(y) - 635])
    got = totals.results()
    predicted = logits.argmax(axis=1)
    assert 0.3 < accuracy_score(y, predicted) < 0.95  # the fixture errs, so the metrics differ
    assert got["accuracy"] == pytest.approx(accuracy_score(y, predicted), abs=1e-12)
    assert got["macro_f1"] == pytest.approx(f1_score(y, predicted, average="macro"), abs=1e-9)
    assert got["macro_f1"] != pytest.approx(got["accuracy"], abs=1e-3)
    assert got["top5_accuracy"] == pytest.approx(top_k_accuracy_score(y, logits, k=5, labels=range(10)), abs=1e-12)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    assert got["loss"] == pytest.approx(log_loss(y, probabilities, labels=range(10)), rel=1e-4)
    assert totals.count == len(y)


def test_macro_f1_leaves_out_classes_neither_present_nor_predicted_as_scikit_learn_does():
    from sklearn.metrics import f1_score

    y = np.array([0, 0, 1, 1, 1, 2])
    p = np.array([0, 1, 1, 1, 0, 0])  # class 3 of 4: never seen, never predicted; class 2 missed
    confusion = np.zeros((4, 4), np.int64)
    np.add.at(confusion, (y, p), 1)
    assert macro_f1(confusion) == pytest.approx(f1_score(y, p, average="macro"))


def test_top5_with_five_classes_or_fewer_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="top5_accuracy.*always 1.0 with 4 classes") as refused:
        Collection(["accuracy", "top5_accuracy"], num_classes=4)
    assert refused.value.config_key == "trainer.metrics"


@METRICS.register("balanced_accuracy_test")
class BalancedAccuracy(Metric):
    """The example the docs give: a new metric is this class and the registry line above it."""

    higher_is_better = True

    def state(self):
        return {"balanced_confusion": ((self.num_classes, self.num_classes), "int32")}

    def update(self, batch):
        return {"balanced_confusion": batch.confusion(self.num_classes)}

    def result(self, sums, count):
        confusion = np.asarray(sums["balanced_confusion"], np.float64)
        support = confusion.sum(axis=1)
        return float((np.diag(confusion)[support > 0] / support[support > 0]).mean())


def test_a_new_metric_is_one_class_and_one_registry_line(digits_predictions):
    from sklearn.metrics import balanced_accuracy_score

    y, logits = digits_predictions
    got = _totals(["balanced_accuracy_test"], y, logits, [300, len(y) - 300]).results()
    assert got["balanced_accuracy_test"] == pytest.approx(balanced_accuracy_score(y, logits.argmax(axis=1)))


@pytest.mark.e2e
def test_a_registered_metric_is_logged_reported_and_chooses_the_best_epoch(train):
    """End to end: the metric the test registered above is named in trainer.metrics and chosen
    for keep_best; it reaches TensorBoard (eval/, test/), report.json and the best-epoch record."""
    result = train("trainer.epochs=2", "trainer.max_steps=null", "trainer.metrics=[accuracy,balanced_accuracy_test]",
                   "trainer.early_stopping.metric=macro_f1")
    assert result.code == 0, result.text
    report = result.report()
    metrics = report["metrics"]
    for split in ("eval", "test"):
        for name in ("loss", "accuracy", "balanced_accuracy_test", "macro_f1"):
            assert isinstance(metrics[f"{split}_{name}"], float), (split, name)
    assert report["best"]["metric"] == "eval_macro_f1"
    assert report["best"]["value"] == pytest.approx(
        max(v for _, v in read_tensorboard(result.run_dir / "tb")[0]["eval/macro_f1"]))
    scalars, _ = read_tensorboard(result.run_dir / "tb")
    assert len(scalars["eval/balanced_accuracy_test"]) == 2
    assert scalars["test/balanced_accuracy_test"][0][1] == pytest.approx(metrics["test_balanced_accuracy_test"])
    assert "macro_f1" in result.text  # the epoch line names every eval metric


def test_an_unknown_metric_name_is_refused_listing_the_known_ones(train):
    result = train("trainer.metrics=[accuracy,f1_macro]")
    assert result.code == 2
    assert "trainer.metrics[1]='f1_macro' is not a known metric (did you mean 'macro_f1'?)" in result.text
    assert "top5_accuracy" in result.text
