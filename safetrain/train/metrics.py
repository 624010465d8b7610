"""Metrics as types: a name, a direction, an in-graph update and a host-side result.

CommonLoopUtils' `metrics.Collection` and Keras' `Metric` are the model, with one difference that
the loop needs: a metric's state is a dict of *sums* (a count of correct answers, a confusion
matrix), so the per-replica values of a step reduce with one SUM, a multi-step call adds them in
its `tf.while_loop`, and the plain-Python loop adds calls and batches with `+` — the result is
computed once, on the host, from the totals (a mean of batch F1 scores would not be the F1 score).

Adding a metric is one class and one registry line:

    @METRICS.register("balanced_accuracy")
    class BalancedAccuracy(Metric):
        higher_is_better = True
        def state(self): return {"confusion": ((self.num_classes, self.num_classes), "int32")}
        def update(self, batch): return {"confusion": batch.confusion(self.num_classes)}
        def result(self, sums, count): ...

Then `trainer.metrics=[accuracy,balanced_accuracy]` logs it on eval and test (eval/NAME,
test/NAME, report.json eval_NAME and test_NAME), and `trainer.early_stopping.metric=NAME` selects
the best epoch and stops early on it. No TensorFlow at import: config validation reads the names
and directions before TensorFlow starts; `update` runs inside the step functions
(safetrain.train.steps), where TensorFlow is loaded.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from safetrain.config.schema import Schedule
from safetrain.train import label_metrics  # noqa: F401 - registers the multi-label members
from safetrain.train.metric_base import (COUNT, DEFAULT_BEST, DEFAULT_METRICS, METRICS, MULTI, SINGLE,  # noqa: F401
                                         Batch, Metric, label_count_state, label_f1)


@METRICS.register("loss")
class Loss(Metric):
    """The mean per-example loss (the training loss, class weights and regularization left out on
    eval and test)."""

    higher_is_better = False
    label = "loss"
    tasks = (SINGLE, MULTI)

    def state(self):
        return {"loss_sum": ((), "float32")}

    def update(self, batch):
        import tensorflow as tf

        return {"loss_sum": tf.reduce_sum(tf.cast(batch.per_example_loss, tf.float32))}

    def result(self, sums, count):
        return float(sums["loss_sum"]) / count if count else float("nan")


@METRICS.register("accuracy")
class Accuracy(Metric):
    """The share of examples whose top class is the true one (soft labels: their largest class)."""

    higher_is_better = True
    label = "acc"

    def state(self):
        return {"correct": ((), "int32")}

    def update(self, batch):
        import tensorflow as tf

        return {"correct": tf.reduce_sum(tf.cast(tf.equal(batch.true, batch.predicted), tf.int32))}

    def result(self, sums, count):
        return int(sums["correct"]) / count if count else float("nan")


@METRICS.register("top5_accuracy")
class Top5Accuracy(Metric):
    """The share of examples whose true class is among the 5 most probable (needs > 5 classes:
    with 5 or fewer it is always 1)."""

    higher_is_better = True
    label = "top5"
    k = 5

    def __init__(self, name: str, num_classes: int, task: str = SINGLE) -> None:
        super().__init__(name, num_classes, task)
        if num_classes <= self.k:
            from safetrain.core.errors import ConfigError

            raise ConfigError(f"trainer.metrics lists {name}, which is always 1.0 with {num_classes} classes "
                              f"(it needs more than {self.k})", hint=f"remove {name} from trainer.metrics",
                              config_key="trainer.metrics")

    def state(self):
        return {"top5_correct": ((), "int32")}

    def update(self, batch):
        import tensorflow as tf

        hit = tf.math.in_top_k(batch.true, tf.cast(batch.logits, tf.float32), self.k)
        return {"top5_correct": tf.reduce_sum(tf.cast(hit, tf.int32))}

    def result(self, sums, count):
        return int(sums["top5_correct"]) / count if count else float("nan")


@METRICS.register("macro_f1")
class MacroF1(Metric):
    """The unweighted mean of the per-class F1 scores, from the split's confusion matrix: every
    class counts the same, so a rare class the model ignores pulls it down where accuracy hides it.
    Classes that neither occur nor are predicted are left out (scikit-learn's
    `f1_score(average="macro")` does the same); a class's F1 is 0 when it has no true positive.
    Multi-label: the same mean over the labels, each label's F1 from its own true positives, false
    positives and false negatives at the 0.5 threshold (the test's are at the tuned thresholds)."""

    higher_is_better = True
    label = "macro_f1"
    tasks = (SINGLE, MULTI)

    def state(self):
        if self.task == MULTI:
            return label_count_state(self.num_classes)
        return {"confusion": ((self.num_classes, self.num_classes), "int32")}

    def update(self, batch):
        if self.task == MULTI:
            return batch.label_counts()
        return {"confusion": batch.confusion(self.num_classes)}

    def result(self, sums, count):
        if self.task == MULTI:
            tp, fp, fn = (np.asarray(sums[k], np.float64) for k in ("label_tp", "label_fp", "label_fn"))
            return label_f1(tp, fp, fn)[0]
        return macro_f1(np.asarray(sums["confusion"]))


def macro_f1(confusion: np.ndarray) -> float:
    """Macro F1 of a confusion matrix (rows: true class, columns: predicted)."""
    confusion = confusion.astype(np.float64)
    tp = np.diag(confusion)
    support, predicted = confusion.sum(axis=1), confusion.sum(axis=0)
    seen = (support + predicted) > 0
    if not seen.any():
        return float("nan")
    f1 = np.divide(2 * tp, support + predicted, out=np.zeros_like(tp), where=(support + predicted) > 0)
    return float(f1[seen].mean())


def task_of(dataset) -> str:
    """dataset.task's value (single_label | multi_label)."""
    return getattr(getattr(dataset, "task", None), "value", SINGLE)


def metric_names(trainer, task: str = SINGLE) -> list[str]:
    """trainer.metrics, or the task's defaults when null."""
    return list(trainer.metrics) if trainer.metrics is not None else list(DEFAULT_METRICS[task])


def best_metric(trainer, task: str = SINGLE) -> str:
    """trainer.early_stopping.metric (what keep_best and early stopping choose on), or the task's default."""
    stopping = trainer.early_stopping
    return (stopping.metric if stopping is not None and stopping.metric else None) or DEFAULT_BEST[task]


def eval_names(trainer, optimizer, task: str = SINGLE) -> list[str]:
    """What the eval step computes, in order (each once): the loss, trainer.metrics, and the metrics
    that choose the best epoch and stop early (trainer.early_stopping.metric) or cut the rate on a
    plateau (optimizer.plateau_metric). Null names are the task's defaults."""
    names = ["loss", *metric_names(trainer, task)]
    if trainer.early_stopping is not None:
        names.append(best_metric(trainer, task))
    if optimizer.schedule is Schedule.plateau:
        names.append(optimizer.plateau_metric)
    return list(dict.fromkeys(names))


def direction(name: str, config_key: str = "trainer.metrics") -> bool:
    """Whether higher is better for the metric `name` (unknown names fail listing the known ones)."""
    return METRICS.get(name, config_key).higher_is_better


class Collection:
    """The metrics one step function computes, side by side: their state's sums (plus the example
    count) come out of the graph, `Totals` adds them up, `results` turns totals into values."""

    def __init__(self, names: list[str], num_classes: int, task: str = SINGLE) -> None:
        self.names = list(dict.fromkeys(names))  # in order, once each
        self.metrics = [METRICS.get(name)(name, num_classes, task) for name in self.names]
        self.num_classes, self.task = num_classes, task
        wrong = [m.name for m in self.metrics if task not in m.tasks]
        if wrong:
            raise ValueError(f"metrics {wrong} have no meaning for dataset.task={task}")
        specs: dict[str, tuple] = {}
        for metric in self.metrics:
            for key, spec in metric.state().items():
                if key == COUNT or specs.setdefault(key, spec) != spec:
                    raise ValueError(f"metrics {self.names} disagree on the state key {key!r}")

    def state(self) -> dict[str, tuple[tuple[int, ...], str]]:
        return {COUNT: ((), "int32"), **{k: v for metric in self.metrics for k, v in metric.state().items()}}

    def update(self, labels, logits, per_example_loss) -> dict[str, Any]:
        """In the graph: this batch's sums, for every metric of the collection, and the count."""
        import tensorflow as tf

        if self.task == MULTI:  # 0/1 rows (soft targets from label smoothing count at >= 0.5)
            true = tf.cast(tf.cast(labels, tf.float32) >= 0.5, tf.int32)
            batch = Batch(true=true, predicted=tf.cast(tf.cast(logits, tf.float32) >= 0.0, tf.int32), logits=logits,
                          per_example_loss=per_example_loss, multi_label=True)
        else:
            true = tf.argmax(labels, axis=-1, output_type=tf.int32) if labels.shape.rank == 2 \
                else tf.cast(labels, tf.int32)  # one-hot or soft (MixUp/CutMix) rows: their largest class
            batch = Batch(true=true, predicted=tf.argmax(logits, axis=-1, output_type=tf.int32), logits=logits,
                          per_example_loss=per_example_loss)
        out = {COUNT: tf.shape(true)[0]}
        for metric in self.metrics:
            out.update(metric.update(batch))
        return out

    def zeros(self) -> dict[str, Any]:
        """In the graph: every sum at zero (a multi-step call's starting totals)."""
        import tensorflow as tf

        return {key: tf.zeros(shape, dtype) for key, (shape, dtype) in self.state().items()}

    def results(self, sums: Mapping[str, Any]) -> dict[str, float]:
        count = int(sums.get(COUNT, 0))
        if not count:  # nothing seen (an empty split)
            return {metric.name: float("nan") for metric in self.metrics}
        return {metric.name: metric.result(sums, count) for metric in self.metrics}


# What every train step reports (cheap; the console and TensorBoard show them): the loss and the
# task's headline accuracy.
TRAIN_METRICS = {SINGLE: ["loss", "accuracy"], MULTI: ["loss", "subset_accuracy"]}


def train_collection(num_classes: int, task: str = SINGLE) -> Collection:
    return Collection(TRAIN_METRICS[task], num_classes, task)


class Totals:
    """Sums of one epoch's (or one evaluation's) step outputs over a collection's state keys
    (plain numpy, host side); `results()` gives each metric's value. Without a collection: the
    train step's (single-label: loss and accuracy)."""

    def __init__(self, collection: Collection | None = None) -> None:
        self.collection = collection or train_collection(0)
        self.sums: dict[str, np.ndarray] = {}

    def add(self, out: Mapping[str, Any]) -> None:
        for key in self.collection.state():
            if key in out:
                value = np.asarray(out[key])
                self.sums[key] = self.sums[key] + value if key in self.sums else value.copy()

    @property
    def count(self) -> int:
        return int(self.sums.get(COUNT, 0))

    def results(self) -> dict[str, float]:
        return self.collection.results(self.sums)

    @property
    def mean_loss(self) -> float:
        return self.results().get("loss", float("nan"))

    @property
    def headline(self) -> tuple[str, str]:
        """(name, console label) of the collection's first metric after the loss: accuracy
        (single-label) or subset_accuracy (multi-label). No result computed: it runs every step."""
        metric = next(m for m in self.collection.metrics if m.name != "loss")
        return metric.name, metric.label or metric.name

    @property
    def accuracy(self) -> float:
        """The headline accuracy (see `headline`)."""
        return self.results().get(self.headline[0], float("nan"))

