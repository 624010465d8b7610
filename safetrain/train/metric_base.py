"""The metric type and its registry (safetrain.train.metrics has the members and the collection;
safetrain.train.label_metrics the multi-label ones). No TensorFlow at import."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import numpy as np

from safetrain.core.registry import Registry

METRICS: Registry[type["Metric"]] = Registry("metric", "trainer.metrics")

COUNT = "count"  # every collection's examples (summed like the metrics' own state)


SINGLE, MULTI = "single_label", "multi_label"  # dataset.task
# What eval and test compute beside the loss, and what keep_best and early stopping choose on,
# when trainer.metrics and trainer.early_stopping.metric are null (safetrain.experiment.validate.resolve).
DEFAULT_METRICS = {SINGLE: ["accuracy", "macro_f1"],
                   MULTI: ["map", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"]}
DEFAULT_BEST = {SINGLE: "accuracy", MULTI: "map"}
AP_BINS = 256  # mAP during training: per-label score histograms (the final test mAP is exact, from scikit-learn)


@dataclass(frozen=True)
class Batch:
    """One batch as the metrics see it (graph tensors). Single-label: the true and predicted class
    per example (int32, shape (B,)). Multi-label: the true and predicted label sets as 0/1 rows
    (int32, (B, C); predicted at probability >= 0.5, a logit >= 0). Both: the logits and the
    per-example loss (float32)."""

    true: Any
    predicted: Any
    logits: Any
    per_example_loss: Any
    multi_label: bool = False

    def label_counts(self) -> dict[str, Any]:
        """Multi-label: true positives, false positives and false negatives per label, int32 (C,)."""
        import tensorflow as tf

        t, p = self.true, self.predicted
        return {"label_tp": tf.reduce_sum(t * p, axis=0), "label_fp": tf.reduce_sum((1 - t) * p, axis=0),
                "label_fn": tf.reduce_sum(t * (1 - p), axis=0)}

    def confusion(self, num_classes: int):
        """This batch's confusion matrix (rows: true class), int32."""
        import tensorflow as tf

        return tf.math.confusion_matrix(self.true, self.predicted, num_classes=num_classes, dtype=tf.int32)


class Metric:
    """One metric. `state()`: the sums it keeps, {key: (shape, dtype)} (a key two metrics share
    must mean the same sums: a collection keeps one of each); `update(batch)`: this batch's
    contribution to each; `result(sums, count)`: the value from the totals (plain numpy).
    `tasks`: the dataset.task values it has a meaning for (validation refuses it elsewhere)."""

    higher_is_better: ClassVar[bool]
    label: ClassVar[str] = ""   # short name on the console ("acc"); the registry name when empty
    tasks: ClassVar[tuple[str, ...]] = (SINGLE,)

    def __init__(self, name: str, num_classes: int, task: str = SINGLE) -> None:
        self.name = name
        self.num_classes = num_classes
        self.task = task

    def state(self) -> dict[str, tuple[tuple[int, ...], str]]:
        raise NotImplementedError

    def update(self, batch: Batch) -> dict[str, Any]:
        raise NotImplementedError

    def result(self, sums: Mapping[str, np.ndarray], count: int) -> float:
        raise NotImplementedError


def label_count_state(num_classes: int) -> dict:
    return {k: ((num_classes,), "int32") for k in ("label_tp", "label_fp", "label_fn")}


def label_f1(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> tuple[float, float]:
    """(macro F1 over the labels that occur or are predicted, micro F1) from per-label counts."""
    seen = (tp + fp + fn) > 0
    per_label = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=seen)
    macro = float(per_label[seen].mean()) if seen.any() else float("nan")
    pooled = 2 * tp.sum() + fp.sum() + fn.sum()
    micro = float(2 * tp.sum() / pooled) if pooled else float("nan")
    return macro, micro
