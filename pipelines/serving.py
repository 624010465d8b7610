"""The serving path: one encoded image file to the model input, as training delivers it.

The export's signature (safetrain.experiment.export) runs this inside the SavedModel: decode, then the same
adapter and normalization ops as the training pipeline (pipelines.ops), with what the config's
policies refuse in training refused here too, by name.
"""

from __future__ import annotations

import tensorflow as tf

from safetrain.pipelines.ops import adapt, normalize
from safetrain.pipelines.spec import AdapterPlan, ImageSpec


def prepare_encoded(data: tf.Tensor, spec: ImageSpec, resize: str, channel_policy: str, stats) -> tf.Tensor:
    """The serving path for one encoded image (PNG, JPEG, BMP, GIF bytes): decode, then the same
    adapters the config allows (`dataset.resize`, `dataset.channel_policy`) and the training
    normalization. What those policies refuse in training is refused here too, by name."""
    image = tf.cast(tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False), tf.float32)
    assertions = []
    if channel_policy == "error":
        assertions.append(tf.debugging.assert_equal(tf.shape(image)[-1], spec.channels, message=(
            f"the image's channel count is not the model's {spec.channels} (trained with "
            f"dataset.channel_policy=error)")))
    if resize == "error":
        assertions.append(tf.debugging.assert_equal(tf.shape(image)[:2], [spec.height, spec.width], message=(
            f"the image is not {spec.height}x{spec.width} (trained with dataset.resize=error)")))
    with tf.control_dependencies(assertions):  # refuse by name before any adapter could fail obscurely
        image = tf.identity(image)
    plan = AdapterPlan(resize=None if resize == "error" else resize,
                       channels=None if channel_policy == "error" else spec.channels, steps=())
    return normalize(adapt(image, plan, spec), spec, (0.0, 255.0), stats)
