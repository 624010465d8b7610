"""FusedBatchNorm trains as Keras' BatchNormalization does, and model.keras stays plain Keras."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from safetrain.core.tf_import import import_tensorflow

tf = import_tensorflow()

import keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from safetrain.models.norm import FusedBatchNorm, portable  # noqa: E402


@pytest.fixture(scope="module")
def features():
    """Real activations: 64 of scikit-learn's digits through a fixed 3x3 conv (8 channels)."""
    images = load_digits().images[:64, :, :, None].astype("float32") / 16.0
    keras.utils.set_random_seed(3)
    conv = keras.layers.Conv2D(8, 3, padding="same")
    return conv(tf.constant(images))


def _pair(momentum=0.9):
    plain, fused = keras.layers.BatchNormalization(momentum=momentum), FusedBatchNorm(momentum=momentum)
    return plain, fused


def _train_call(layer, x):
    weights = tf.range(1, x.shape[-1] + 1, dtype=tf.float32)
    pull = tf.random.stateless_normal(x.shape, seed=(1, 2))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        # Channels weighted and a fixed pull per element: no gradient is zero by symmetry.
        loss = tf.reduce_sum(tf.square(y) * weights) + tf.reduce_sum(y * pull)
    dx, dgamma, dbeta = tape.gradient(loss, [x, layer.gamma, layer.beta])
    return y, dx, dgamma, dbeta


def test_a_training_step_matches_keras_batch_normalization(features):
    plain, fused = _pair()
    for _ in range(3):   # three updates of the moving statistics
        expected, got = _train_call(plain, features), _train_call(fused, features)
    for name, a, b in zip(("output", "input gradient", "gamma gradient", "beta gradient"), expected, got):
        scale = float(tf.reduce_max(tf.abs(a))) or 1.0
        assert float(tf.reduce_max(tf.abs(a - b))) <= 1e-4 * scale, name
    np.testing.assert_allclose(fused.moving_mean.numpy(), plain.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
    # The fused op keeps the unbiased batch variance (n / (n - 1)); Keras the biased one.
    n = features.shape[0] * features.shape[1] * features.shape[2]
    start = 1.0 * 0.9 ** 3           # what is left of the initial variance of 1 after three updates
    np.testing.assert_allclose(fused.moving_variance.numpy() - start,
                               (plain.moving_variance.numpy() - start) * n / (n - 1), rtol=1e-4)


def test_inference_and_two_dimensional_inputs_are_keras_own_call(features):
    plain, fused = _pair()
    plain.build(features.shape)
    fused.build(features.shape)
    fused.set_weights([w * 1.5 + 0.1 for w in plain.get_weights()])
    plain.set_weights(fused.get_weights())
    np.testing.assert_array_equal(fused(features, training=False).numpy(), plain(features, training=False).numpy())
    flat = tf.reshape(features, (features.shape[0], -1))
    plain2, fused2 = _pair()
    np.testing.assert_array_equal(fused2(flat, training=True).numpy(), plain2(flat, training=True).numpy())
    np.testing.assert_array_equal(fused2.moving_variance.numpy(), plain2.moving_variance.numpy())


def _model():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    x = FusedBatchNorm(name="norm")(keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs))
    return keras.Model(inputs, keras.layers.Dense(3, name="head")(keras.layers.Flatten()(x)))


LOAD = ("import sys, keras, numpy as np\n"
        "try:\n"
        "    keras.saving.load_model(sys.argv[1], safe_mode=True, compile=False)\n"
        "    print('fused file loaded')\n"
        "except Exception as err:\n"
        "    print('fused file refused:', type(err).__name__, 'FusedBatchNorm' in str(err))\n"
        "m = keras.saving.load_model(sys.argv[2], safe_mode=True, compile=False)\n"
        "print(type(m.get_layer('norm')).__name__, float(sum(np.abs(w).sum() for w in m.get_weights())))\n")


def test_portable_swaps_in_keras_layer_and_the_file_loads_without_safetrain(tmp_path):
    model = _model()
    model.get_layer("norm").set_weights([np.full((4,), v, "float32") for v in (1.5, 0.2, 0.3, 2.0)])
    same = portable(model)
    assert type(same.get_layer("norm")) is keras.layers.BatchNormalization
    for a, b in zip(model.get_weights(), same.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = load_digits().images[:5, :, :, None].astype("float32")
    np.testing.assert_array_equal(model(x, training=False).numpy(), same(x, training=False).numpy())
    assert portable(same) is same

    # A fresh interpreter that never imports safetrain: the fused layer's file cannot load there,
    # the portable one loads to the same weights.
    model.save(tmp_path / "fused.keras")
    same.save(tmp_path / "plain.keras")
    total = float(sum(np.abs(w).sum() for w in model.get_weights()))
    done = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path / "fused.keras"), str(tmp_path / "plain.keras")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    refused, loaded = done.stdout.strip().splitlines()[-2:]
    assert refused.startswith("fused file refused:") and refused.endswith("True"), refused
    name, value = loaded.split()
    assert name == "BatchNormalization" and float(value) == pytest.approx(total, rel=1e-6)


def test_the_models_safetrain_builds_train_through_the_fused_kernel(features):
    """`batch_norm` specs and the residual block's norms: the training graph holds FusedBatchNormV3
    (forward and gradient), the inference graph none."""
    from safetrain.models.build import build_model
    from safetrain.models.parse import parse_layers
    from safetrain.models.shapes import infer

    layers = [{"type": "conv2d", "filters": 8, "kernel_size": 3, "padding": "same"}, {"type": "batch_norm"},
              {"type": "residual", "filters": 8}, {"type": "global_avg_pool"}]
    model = build_model(infer(parse_layers(layers), (8, 8, 8), 3), seed=0)

    def ops(training: bool) -> Counter:
        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(x, training=training))
            return tape.gradient(loss, model.trainable_variables)
        return Counter(op.type for op in step.get_concrete_function(features).graph.get_operations())

    training, inference = ops(True), ops(False)
    assert training["FusedBatchNormV3"] == 3 and training["FusedBatchNormGradV3"] == 3  # top level + the block's two
    assert inference["FusedBatchNormV3"] == 0 and inference["FusedBatchNormGradV3"] == 0
