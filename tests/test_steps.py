"""safetrain.train.steps on real TensorFlow: several train steps in one graph call (trainer.steps_per_loop).

A tiny Keras model and real tf.data batches: K steps in one call must train exactly what K
single calls train, stop right after the first non-finite step without applying it (on_nan=
skip_step), and stop cleanly when the data runs out, every step's update kept.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from safetrain.train.optimizers import LOSSES
from safetrain.train.steps import Steps


def _setup(images: np.ndarray, labels: np.ndarray, guard: bool = False, batch: int = 4, activation: str | None = "relu"):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3, 3, 1)), keras.layers.Conv2D(2, 2, activation=activation),
                              keras.layers.Flatten(), keras.layers.Dropout(0.2, seed=1), keras.layers.Dense(3)])
    optimizer = keras.optimizers.Adam(1e-2)
    optimizer.build(model.trainable_variables)
    strategy = tf.distribute.get_strategy()
    data = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch)
    steps = Steps(strategy=strategy, model=model, optimizer=optimizer,
                  loss_fn=LOSSES.get("sparse_categorical_crossentropy")(), eval_spec=data.element_spec,
                  guard_updates=guard, time_input=False)
    return steps, model, optimizer, data


def _data(n: int = 40):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 3, 3, 1)).astype("float32"), rng.integers(0, 3, n).astype("int32")


def _weights(model) -> list[np.ndarray]:
    return [v.numpy().copy() for v in model.weights]


def test_k_steps_in_one_call_train_bitwise_what_k_single_calls_train():
    images, labels = _data()
    single, model_1, _, data = _setup(images, labels)
    iterator = iter(data)
    sums = [single.train(iterator) for _ in range(8)]
    many, model_k, optimizer_k, data_k = _setup(images, labels)
    iterator = iter(data_k)
    first, second = many.train_steps(iterator, tf.constant(5)), many.train_steps(iterator, tf.constant(3))
    assert int(first["steps"]) == 5 and int(second["steps"]) == 3 and bool(second["finite"])
    assert int(optimizer_k.iterations.numpy()) == 8
    for a, b in zip(_weights(model_1), _weights(model_k)):
        np.testing.assert_array_equal(a, b)
    assert float(first["loss_sum"]) == pytest.approx(sum(float(s["loss_sum"]) for s in sums[:5]), rel=1e-6)
    assert int(first["count"]) + int(second["count"]) == 32
    assert many.train_steps.experimental_get_tracing_count() == 1  # n is a tensor: one trace for every n


def test_the_call_stops_right_after_a_non_finite_step_and_skip_step_does_not_apply_it():
    images, labels = _data()
    images[12] = np.nan  # batch 4 (examples 12-15)
    # No ReLU after the convolution: oneDNN (Intel Xeons with AVX512_BF16, AMD EPYC Zen 4) fuses
    # conv + ReLU in graph mode and its max(NaN, 0) is 0, which would absorb the NaN before the
    # loss; with a linear convolution nothing between the input and the loss can.
    steps, model, optimizer, data = _setup(images, labels, guard=True, activation=None)
    iterator = iter(data)
    out = steps.train_steps(iterator, tf.constant(10))
    assert int(out["steps"]) == 4 and not bool(out["finite"]) and np.isnan(float(out["last_loss_sum"]))
    assert int(out["count"]) == 12 and np.isfinite(float(out["loss_sum"]))  # the three finite steps' sums
    assert int(optimizer.iterations.numpy()) == 3  # the non-finite update was not applied
    assert all(np.isfinite(w).all() for w in _weights(model))
    rest = steps.train_steps(iterator, tf.constant(10))  # the next call goes on from batch 5
    assert int(rest["steps"]) == 6 and bool(rest["finite"]) and int(optimizer.iterations.numpy()) == 9


def test_data_that_runs_out_inside_a_call_keeps_every_step_and_fetches_nothing_ahead():
    images, labels = _data(20)  # 5 batches
    steps, _, optimizer, data = _setup(images, labels)
    iterator = iter(data)
    out = steps.train_steps(iterator, tf.constant(3))
    assert int(out["steps"]) == 3
    out = steps.train_steps(iterator, tf.constant(3))  # only 2 left: no OutOfRangeError, both kept
    assert int(out["steps"]) == 2 and bool(out["finite"]) and int(out["count"]) == 8
    assert int(optimizer.iterations.numpy()) == 5
    assert int(steps.train_steps(iterator, tf.constant(3))["steps"]) == 0
