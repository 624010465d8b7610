"""Learning-rate schedules, decoupled weight decay and label smoothing, on real Keras objects."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from safetrain.config.schema import OptimizerConfig, Schedule
from safetrain.train.optimizers import LOSSES, OPTIMIZERS, exclude_one_dimensional
from safetrain.train.schedules import learning_rate, value_at

LR, LOW, SPE, TOTAL = 0.1, 0.001, 10, 100  # 10 steps per epoch, 10 epochs


def _curve(**settings) -> np.ndarray:
    plan = learning_rate(OptimizerConfig(learning_rate=LR, **settings), SPE, TOTAL)
    return np.array([value_at(plan.learning_rate, step) for step in range(TOTAL)])


def test_constant_without_warmup_is_a_plain_float():
    plan = learning_rate(OptimizerConfig(learning_rate=LR), SPE, TOTAL)
    assert plan.learning_rate == LR and plan.describe == "constant 0.1"


def test_warmup_rises_linearly_then_the_cosine_decays_to_the_minimum_on_the_last_step():
    curve = _curve(schedule=Schedule.cosine, warmup_epochs=2, min_learning_rate=LOW)
    assert curve[0] == pytest.approx(LR / 20) and curve[19] == pytest.approx(LR)  # 20 warmup steps
    assert np.allclose(np.diff(curve[:20]), LR / 20)
    assert curve[20] == pytest.approx(LR) and np.all(np.diff(curve[20:]) <= 1e-9)
    assert curve[-1] == pytest.approx(LOW)
    assert curve[60] == pytest.approx(LOW + (LR - LOW) * 0.5 * (1 + np.cos(np.pi * 40 / 79)), rel=1e-5)


def test_linear_decay_ends_at_the_minimum():
    curve = _curve(schedule=Schedule.linear, min_learning_rate=LOW)
    assert curve[0] == pytest.approx(LR) and curve[-1] == pytest.approx(LOW)
    assert np.allclose(np.diff(curve), (LOW - LR) / 99, rtol=1e-4)


def test_step_drops_by_the_factor_at_each_milestone_epoch():
    curve = _curve(schedule=Schedule.step, milestones=[3, 6], decay_factor=0.1)
    assert curve[30] == pytest.approx(LR) and curve[31] == pytest.approx(LR * 0.1)
    assert curve[60] == pytest.approx(LR * 0.1) and curve[61] == pytest.approx(LR * 0.01)


def test_one_cycle_rises_from_a_25th_to_the_peak_then_anneals():
    curve = _curve(schedule=Schedule.one_cycle, min_learning_rate=LOW)
    assert curve[0] == pytest.approx(LR / 25) and curve.argmax() == 30 and curve.max() == pytest.approx(LR)
    assert curve[-1] == pytest.approx(LOW)


def test_weight_decay_shrinks_kernels_and_leaves_biases_and_normalization_alone():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, bias_initializer="ones"),
                              keras.layers.BatchNormalization()])
    optimizer = OPTIMIZERS.get("sgd")(0.1, None, 0.5)
    assert exclude_one_dimensional(optimizer, model.trainable_variables) == 3  # bias, gamma, beta
    optimizer.build(model.trainable_variables)
    before = [np.array(v) for v in model.trainable_variables]
    optimizer.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in model.trainable_variables])
    after = [np.array(v) for v in model.trainable_variables]
    kernel = [i for i, v in enumerate(model.trainable_variables) if len(v.shape) == 2]
    for i, (b, a) in enumerate(zip(before, after)):
        np.testing.assert_allclose(a, b * (1 - 0.1 * 0.5) if i in kernel else b, rtol=1e-6)


@pytest.mark.parametrize("loss", ["sparse_categorical_crossentropy", "categorical_crossentropy"])
def test_label_smoothing_gives_the_smoothed_cross_entropy_for_either_encoding(loss):
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]], "float32")
    ids = np.array([0, 2])
    labels = ids if loss.startswith("sparse") else np.eye(3, dtype="float32")[ids]
    s = 0.2
    target = (1 - s) * np.eye(3)[ids] + s / 3
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -(target * log_p).sum(-1)
    np.testing.assert_allclose(np.array(LOSSES.get(loss)(label_smoothing=s)(labels, logits)), expected, rtol=1e-5)
    plain = np.array(LOSSES.get(loss)()(labels, logits))
    np.testing.assert_allclose(plain, -log_p[np.arange(2), ids], rtol=1e-5)


def test_the_moving_average_swaps_in_and_out_exactly():
    from safetrain.train.ema import EmaWeights

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    optimizer = OPTIMIZERS.get("sgd")(0.1, None, 0.0, 0.5)
    optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(0)
    for _ in range(3):
        optimizer.apply_gradients([(rng.normal(size=v.shape).astype("float32"), v) for v in model.trainable_variables])
    trained = [np.array(v) for v in model.trainable_variables]
    average = [np.array(v) for v in optimizer._model_variables_moving_average]
    assert not all(np.array_equal(a, b) for a, b in zip(trained, average))
    ema = EmaWeights(optimizer)
    ema.use(True)
    ema.use(True)  # idempotent
    assert all(np.array_equal(np.array(v), a) for v, a in zip(model.trainable_variables, average))
    ema.use(False)
    assert all(np.array_equal(np.array(v), t) for v, t in zip(model.trainable_variables, trained))
    assert all(np.array_equal(np.array(v), a) for v, a in zip(optimizer._model_variables_moving_average, average))


def test_the_weights_moving_average_warms_its_decay_up_so_short_runs_do_not_average_the_initial_weights():
    """trainer.ema: min(decay, (1 + t) / (10 + t)) at step t (timm's and TF Model Garden's rule), in
    Keras' own EMA update. Without it, 0.999 would keep 0.999**t of the random initial weights."""
    import keras

    from safetrain.train.optimizers import OPTIMIZERS, ema_decay_at

    assert float(ema_decay_at(0.999, 0)) == pytest.approx(0.1) and float(ema_decay_at(0.999, 90)) == pytest.approx(0.91)
    assert float(ema_decay_at(0.999, 100_000)) == pytest.approx(0.999)
    keras.utils.set_random_seed(0)
    variable = keras.Variable(np.ones(3, np.float32))
    optimizer = OPTIMIZERS.get("sgd")(0.1, None, 0.0, 0.999)
    optimizer.build([variable])
    average, seen = None, []
    for t in range(60):
        optimizer.apply([keras.ops.convert_to_tensor(np.full(3, 1.0 + t % 3, np.float32))], [variable])
        value = variable.numpy().copy()
        decay = 0.0 if t == 0 else min(0.999, (1 + t) / (10 + t))  # Keras: the first step copies the weights
        average = value if average is None else decay * average + (1 - decay) * value
        seen.append(value)
    np.testing.assert_allclose(optimizer._model_variables_moving_average[0].numpy(), average, rtol=1e-5)
    # the average sits among the recent weights, far from where training started
    assert abs(average[0] - seen[-1][0]) < abs(average[0] - 1.0) / 5
