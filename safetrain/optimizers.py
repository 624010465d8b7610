"""Optimizer and loss registries. Builders import Keras lazily so config validation stays TF-free."""

from __future__ import annotations

from typing import Any, Callable

from safetrain.registry import Registry

OPTIMIZERS: Registry[Callable[..., Any]] = Registry("optimizer", "optimizer.name")
LOSSES: Registry[Callable[[], Any]] = Registry("loss", "trainer.loss")


def _kwargs(clipnorm: float | None) -> dict[str, Any]:
    return {"clipnorm": clipnorm} if clipnorm else {}


@OPTIMIZERS.register("adam")
def adam(learning_rate: float, clipnorm: float | None = None):
    import keras
    return keras.optimizers.Adam(learning_rate=learning_rate, **_kwargs(clipnorm))


@OPTIMIZERS.register("adamw")
def adamw(learning_rate: float, clipnorm: float | None = None):
    import keras
    return keras.optimizers.AdamW(learning_rate=learning_rate, **_kwargs(clipnorm))


@OPTIMIZERS.register("sgd")
def sgd(learning_rate: float, clipnorm: float | None = None):
    import keras
    return keras.optimizers.SGD(learning_rate=learning_rate, momentum=0.9, **_kwargs(clipnorm))


@OPTIMIZERS.register("rmsprop")
def rmsprop(learning_rate: float, clipnorm: float | None = None):
    import keras
    return keras.optimizers.RMSprop(learning_rate=learning_rate, **_kwargs(clipnorm))


@LOSSES.register("sparse_categorical_crossentropy")
def sparse_categorical_crossentropy():
    """Integer labels, logits from the head; per-example losses (the step averages them)."""
    import keras
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="none")


@LOSSES.register("categorical_crossentropy")
def categorical_crossentropy():
    """One-hot labels (dataset.label_encoding=one_hot), logits from the head."""
    import keras
    return keras.losses.CategoricalCrossentropy(from_logits=True, reduction="none")


# Which label encoding each loss expects: validate() refuses the other one before training.
LOSS_ENCODING = {"sparse_categorical_crossentropy": "sparse", "categorical_crossentropy": "one_hot"}
