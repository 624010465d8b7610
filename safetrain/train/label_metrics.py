"""The multi-label metric types (dataset.task=multi_label), registered in METRICS like the others:
micro F1, subset accuracy, Hamming loss and mAP. Each batch's predicted set is the labels whose
probability is at least 0.5 (the loop's view; the test split is scored again at the thresholds
tuned on eval, safetrain.experiment.label_sets)."""

from __future__ import annotations

import numpy as np

from safetrain.train.metric_base import AP_BINS, METRICS, MULTI, Metric, label_count_state, label_f1


@METRICS.register("micro_f1")
class MicroF1(Metric):
    """Multi-label: F1 over every (image, label) decision pooled, 2TP / (2TP + FP + FN): frequent
    labels weigh more (macro_f1 weighs every label the same)."""

    higher_is_better = True
    label = "micro_f1"
    tasks = (MULTI,)

    def state(self):
        return label_count_state(self.num_classes)

    def update(self, batch):
        return batch.label_counts()

    def result(self, sums, count):
        return label_f1(*(np.asarray(sums[k], np.float64) for k in ("label_tp", "label_fp", "label_fn")))[1]


@METRICS.register("subset_accuracy")
class SubsetAccuracy(Metric):
    """Multi-label: the share of images whose predicted label set is exactly the true one (every
    label right; scikit-learn's `accuracy_score` on label sets). The strict one: one wrong label
    of ten makes the image wrong."""

    higher_is_better = True
    label = "subset_acc"
    tasks = (MULTI,)

    def state(self):
        return {"exact_sets": ((), "int32")}

    def update(self, batch):
        import tensorflow as tf

        exact = tf.reduce_all(tf.equal(batch.true, batch.predicted), axis=-1)
        return {"exact_sets": tf.reduce_sum(tf.cast(exact, tf.int32))}

    def result(self, sums, count):
        return int(sums["exact_sets"]) / count if count else float("nan")


@METRICS.register("hamming_loss")
class HammingLoss(Metric):
    """Multi-label: the share of (image, label) decisions that are wrong (lower is better)."""

    higher_is_better = False
    label = "hamming"
    tasks = (MULTI,)

    def state(self):
        return {"label_errors": ((), "int32")}

    def update(self, batch):
        import tensorflow as tf

        return {"label_errors": tf.reduce_sum(tf.cast(tf.not_equal(batch.true, batch.predicted), tf.int32))}

    def result(self, sums, count):
        return int(sums["label_errors"]) / (count * self.num_classes) if count else float("nan")


@METRICS.register("map")
class MeanAveragePrecision(Metric):
    """Multi-label: the mean over labels (those with a positive) of the average precision — the
    area under each label's precision-recall curve, threshold-free, so it measures the ranking the
    tuned thresholds are later cut from. In the loop each label's scores are counted into
    AP_BINS probability bins (sums that add across batches and replicas, as Keras'
    `AUC(curve="PR", multi_label=True)` does with its thresholds); scores within one bin count as
    ties. The test split's mAP in report.json is scikit-learn's exact `average_precision_score`."""

    higher_is_better = True
    label = "mAP"
    tasks = (MULTI,)

    def state(self):
        shape = (self.num_classes, AP_BINS)
        return {"ap_positive": (shape, "int32"), "ap_negative": (shape, "int32")}

    def update(self, batch):
        import tensorflow as tf

        probability = tf.sigmoid(tf.cast(batch.logits, tf.float32))
        bins = tf.clip_by_value(tf.cast(tf.floor(probability * AP_BINS), tf.int32), 0, AP_BINS - 1)
        hot = tf.one_hot(bins, AP_BINS, dtype=tf.int32)                   # (B, C, bins)
        true = batch.true[..., None]
        return {"ap_positive": tf.reduce_sum(hot * true, axis=0), "ap_negative": tf.reduce_sum(hot * (1 - true), axis=0)}

    def result(self, sums, count):
        return binned_map(np.asarray(sums["ap_positive"]), np.asarray(sums["ap_negative"]))


def binned_map(positive: np.ndarray, negative: np.ndarray) -> float:
    """Mean average precision from per-label score histograms (C, bins), highest bin first: each
    bin is one threshold step; AP = sum over steps of the recall gained times the precision there."""
    tp = np.cumsum(positive[:, ::-1], axis=1).astype(np.float64)
    fp = np.cumsum(negative[:, ::-1], axis=1).astype(np.float64)
    total = tp[:, -1]
    has = total > 0
    if not has.any():
        return float("nan")
    precision = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    gained = np.diff(np.concatenate([np.zeros((len(tp), 1)), tp], axis=1), axis=1)
    ap = (gained * precision).sum(axis=1)[has] / total[has]
    return float(ap.mean())
