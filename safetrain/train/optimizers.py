"""Optimizer and loss registries. Builders import Keras lazily so config validation stays TF-free.

An optimizer builder takes the learning rate (a float or a schedule: safetrain.train.schedules), the
gradient clip norm, the weight decay and the EMA decay (Keras' `use_ema`: the optimizer keeps a
moving average of the trainable weights; safetrain.train.ema swaps it in for evaluation). Keras 3
applies weight decay decoupled from the gradient (`w -= lr * weight_decay * w`, AdamW's rule) in
every optimizer; `exclude_one_dimensional` keeps it off biases and normalization scales/offsets,
as timm does. A loss builder takes the label smoothing."""

from __future__ import annotations

import functools
from typing import Any, Callable

from safetrain.core.registry import Registry

OPTIMIZERS: Registry[Callable[..., Any]] = Registry("optimizer", "optimizer.name")
LOSSES: Registry[Callable[[], Any]] = Registry("loss", "trainer.loss")


def _kwargs(clipnorm: float | None, weight_decay: float, ema: float | None) -> dict[str, Any]:
    return {**({"clipnorm": clipnorm} if clipnorm else {}), **({"weight_decay": weight_decay} if weight_decay else {}),
            **({"use_ema": True, "ema_momentum": ema} if ema is not None else {})}


def ema_decay_at(decay: float, step):
    """The moving average's decay at optimizer step `step` (0-based): min(decay, (1 + t) / (10 + t)),
    timm's and TF Model Garden's warm-up. Keras applies `decay` from the second step, so after t
    steps the average still holds decay**t of the random initial weights (0.999**690 = 50%: a
    short run's EMA evaluated near chance); warmed up, it covers about the last tenth of the
    steps until that reaches 1 / (1 - decay)."""
    import keras

    t = keras.ops.cast(step, "float32")
    return keras.ops.minimum(decay, (1.0 + t) / (10.0 + t))


@functools.cache
def _warmed(cls):
    """`cls` with the EMA decay warmed up (ema_decay_at). Keras reads `ema_momentum` as a constant
    inside its update, with no schedule hook, so the update reads a warmed-up value from the step
    counter (a function of the checkpointed `iterations`: resume stays exact) for the one call."""

    class WarmedEma(cls):
        def _update_model_variables_moving_average(self, trainable_variables):
            decay = self.ema_momentum
            self.ema_momentum = ema_decay_at(decay, self.iterations)
            try:
                super()._update_model_variables_moving_average(trainable_variables)
            finally:
                self.ema_momentum = decay

    WarmedEma.__name__ = WarmedEma.__qualname__ = cls.__name__
    return WarmedEma


def exclude_one_dimensional(optimizer, variables) -> int:
    """No weight decay on 1-D weights (biases, batch-norm gamma/beta); returns how many. Call before
    `optimizer.build`."""
    flat = [v for v in variables if len(v.shape) <= 1]
    if flat and optimizer.weight_decay:
        optimizer.exclude_from_weight_decay(var_list=flat)
    return len(flat) if optimizer.weight_decay else 0


@OPTIMIZERS.register("adam")
def adam(learning_rate, clipnorm: float | None = None, weight_decay: float = 0.0, ema: float | None = None):
    import keras
    return _warmed(keras.optimizers.Adam)(learning_rate=learning_rate, **_kwargs(clipnorm, weight_decay, ema))


@OPTIMIZERS.register("adamw")
def adamw(learning_rate, clipnorm: float | None = None, weight_decay: float = 0.0, ema: float | None = None):
    """Keras' AdamW decays by 0.004 unless told: optimizer.weight_decay is passed even when 0."""
    import keras
    return _warmed(keras.optimizers.AdamW)(learning_rate=learning_rate, **{**_kwargs(clipnorm, weight_decay, ema),
                                                                  "weight_decay": weight_decay})


@OPTIMIZERS.register("sgd")
def sgd(learning_rate, clipnorm: float | None = None, weight_decay: float = 0.0, ema: float | None = None):
    import keras
    return _warmed(keras.optimizers.SGD)(learning_rate=learning_rate, momentum=0.9,
                                         **_kwargs(clipnorm, weight_decay, ema))


@OPTIMIZERS.register("rmsprop")
def rmsprop(learning_rate, clipnorm: float | None = None, weight_decay: float = 0.0, ema: float | None = None):
    import keras
    return _warmed(keras.optimizers.RMSprop)(learning_rate=learning_rate, **_kwargs(clipnorm, weight_decay, ema))


@LOSSES.register("sparse_categorical_crossentropy")
def sparse_categorical_crossentropy(label_smoothing: float = 0.0):
    """Integer labels, logits from the head; per-example losses (the step averages them). Keras'
    sparse loss has no label smoothing: with it, the ids become one-hot rows for the categorical
    loss, which has (the same loss, smoothed)."""
    import keras
    if not label_smoothing:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")
    smoothed = categorical_crossentropy(label_smoothing)

    def loss(labels, logits):
        return smoothed(keras.ops.one_hot(keras.ops.cast(labels, "int32"), logits.shape[-1]), logits)

    return loss


@LOSSES.register("categorical_crossentropy")
def categorical_crossentropy(label_smoothing: float = 0.0):
    """One-hot labels (dataset.label_encoding=one_hot), logits from the head."""
    import keras
    return keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing, reduction="none")


@LOSSES.register("binary_crossentropy")
def binary_crossentropy(label_smoothing: float = 0.0, positive_weights: list[float] | None = None):
    """Multi-hot labels (dataset.task=multi_label): one sigmoid per label, each a yes/no question;
    the per-example loss is the mean over the labels. Label smoothing as Keras' BinaryCrossentropy
    (targets 1 - s/2 and s/2). `positive_weights` (dataset.class_weights under multi-label):
    each label's positive term times its weight (`tf.nn.weighted_cross_entropy_with_logits`), so
    a rare label's few positives count as much as its many negatives."""
    import tensorflow as tf

    weights = tf.constant(positive_weights, tf.float32) if positive_weights else None

    def loss(labels, logits):
        y, z = tf.cast(labels, tf.float32), tf.cast(logits, tf.float32)
        if label_smoothing:
            y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
        if weights is None:
            per_label = tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=z)
        else:
            per_label = tf.nn.weighted_cross_entropy_with_logits(labels=y, logits=z, pos_weight=weights)
        return tf.reduce_mean(per_label, axis=-1)

    return loss


# Which label encoding each loss expects: validate() refuses the other one before training.
LOSS_ENCODING = {"sparse_categorical_crossentropy": "sparse", "categorical_crossentropy": "one_hot",
                 "binary_crossentropy": "multi_hot"}
