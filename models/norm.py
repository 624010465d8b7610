"""Batch normalization that trains with TensorFlow's fused kernel.

Why. Keras 3's `BatchNormalization` trains with `tf.nn.moments` and `tf.nn.batch_normalization`:
about ten element-wise ops a layer, forward and backward, each a pass over the activations. On a
CPU those passes cost about as much as the convolutions: on Fashion-MNIST's recipe model (four conv
+ batch-norm pairs, with dropout after each block as it then had; batch 128, float32, a 2-core Intel
Xeon) a training step took 150 ms with the Keras layer and 88 ms with no batch norm at all.
TensorFlow's `FusedBatchNormV3` (oneDNN's kernel on CPU, cuDNN's on GPU) does the statistics, the
normalization and the moving averages in one op and the gradient in another: the same step took
107 ms (`scripts/bench_fused_norm.py`, median of 5 interleaved rounds).

So `FusedBatchNorm` is Keras' layer (same weights, arguments and inference path, so exports and
the shape table are unchanged) whose training call on a 4-D NHWC input goes through
`tf.compat.v1.nn.fused_batch_norm`, the library's lower-level primitive. Everything else (2-D
inputs after a dense layer, masks, renorm, synchronized statistics, another axis, a symbolic
`training`) falls back to Keras' own call.

One difference: the fused op updates the moving variance with the unbiased batch variance
(n / (n - 1) times Keras' biased one), as Keras 2 and tf.keras did; for a batch of 128 images of
14x14 that is a factor 1.00003. Training normalizes with the biased variance in both.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="safetrain")
class FusedBatchNorm(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` that trains through TensorFlow's fused kernel."""

    def _fuses(self, inputs, training, mask) -> bool:
        return (training is True and self.trainable and mask is None and len(inputs.shape) == 4
                and self.axis in (-1, 3) and not self.renorm and not self.synchronized
                and keras.backend.backend() == "tensorflow")

    def call(self, inputs, training=None, mask=None):
        if not self._fuses(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        channels = inputs.shape[-1]
        scale = self.gamma if self.scale else tf.ones((channels,), self.variable_dtype)
        offset = self.beta if self.center else tf.zeros((channels,), self.variable_dtype)
        # Half-precision inputs keep float32 statistics and parameters (the op's U type), as Keras
        # upcasts for its own moments; the output is in the input's dtype.
        y, mean, variance, *_ = tf.compat.v1.nn.fused_batch_norm(
            inputs, scale, offset, mean=self.moving_mean, variance=self.moving_variance,
            epsilon=self.epsilon, is_training=True, exponential_avg_factor=1.0 - self.momentum,
            data_format="NHWC")
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        return y


def portable(model):
    """The same model with Keras' own `BatchNormalization` in place of each top-level
    `FusedBatchNorm` (same weights), so a saved `model.keras` loads where safetrain is not
    installed. Returns `model` itself when it has none."""
    if not any(type(layer) is FusedBatchNorm for layer in model.layers):
        return model

    def plain(layer):
        if type(layer) is FusedBatchNorm:
            return keras.layers.BatchNormalization.from_config(layer.get_config())
        return layer   # reused as it is: weights shared with `model`

    clone = keras.models.clone_model(model, clone_function=plain)
    for source, target in zip(model.layers, clone.layers):
        if type(source) is FusedBatchNorm:
            target.set_weights(source.get_weights())
    return clone
