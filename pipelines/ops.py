"""Tensor ops of the pipelines: adapters, normalization, label encoding, the epoch seed.

Pure TensorFlow functions of a tensor and the specs, shared by the training pipelines
(pipelines.build) and the serving path (pipelines.serving), so serving cannot drift from
training. Each runs the same eagerly and inside `Dataset.map` (both are tested).
"""

from __future__ import annotations

import tensorflow as tf

from safetrain.pipelines import checks
from safetrain.pipelines.spec import AdapterPlan, ImageSpec
from safetrain.config.schema import DatasetConfig, LabelEncoding


def plain(fn):
    """A tf.data map/filter function traced as written, without autograph: the pipelines' functions
    are TensorFlow ops with Python branches on configuration only (tf.cond where a tensor decides),
    and autograph's source conversion cost ~0.3 s per function at every build, before the first
    batch."""
    return tf.autograph.experimental.do_not_convert(fn)


def epoch_seed(seed: int | None, epoch: int) -> int:
    """The shuffle seed of one epoch: each epoch's order is a function of (seed, epoch) alone."""
    return ((seed or 0) * 1_000_003 + epoch) % (2**31 - 1)


@plain
def is_ok(x, y, status, key):
    """Dataset.filter predicate: the example passed every check."""
    return tf.equal(status, checks.OK)


def example_bytes(spec: ImageSpec, bytes_per_value: int = 4) -> int:
    """Bytes of one adapted example as cached (float32 after adapters; uint8 when none run)."""
    return spec.height * spec.width * spec.channels * bytes_per_value


def adapt(image: tf.Tensor, plan: AdapterPlan, spec: ImageSpec) -> tf.Tensor:
    """Channel and size adapters on float32 pixels in the source's value range."""
    if plan.channels is not None:
        image = convert_channels(image, plan.channels)
    if plan.resize == "bilinear":
        image = tf.image.resize(image, (spec.height, spec.width), method="bilinear")
    elif plan.resize == "pad_or_crop":
        image = tf.image.resize_with_crop_or_pad(image, spec.height, spec.width)
    return tf.ensure_shape(image, spec.shape)


def convert_channels(image: tf.Tensor, to: int) -> tf.Tensor:
    """gray/gray+alpha/RGB/RGBA -> `to` channels; alpha is dropped, never blended."""
    have = tf.shape(image)[-1]
    return tf.cond(tf.equal(have, to), lambda: image, lambda: _convert(image, have, to))


def _convert(image: tf.Tensor, have: tf.Tensor, to: int) -> tf.Tensor:
    color = tf.cond(have >= 3, lambda: image[..., :3], lambda: image[..., :1])  # drop alpha
    if to == 3:
        return tf.cond(have >= 3, lambda: color, lambda: tf.image.grayscale_to_rgb(color))
    return tf.cond(have >= 3, lambda: tf.image.rgb_to_grayscale(color), lambda: color)


def normalize(image: tf.Tensor, spec: ImageSpec, value_range: tuple[float, float], stats) -> tf.Tensor:
    lo, hi = value_range
    if spec.normalization == "scale_0_1":
        image = (image - lo) / (hi - lo)
    elif spec.normalization == "scale_0_255":  # backbones with their own Rescaling layer inside
        image = (image - lo) / (hi - lo) * 255.0
    elif spec.normalization == "minus_one_one":
        image = (image - lo) / (hi - lo) * 2.0 - 1.0
    elif spec.normalization == "standardize":
        mean, std = stats
        image = (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
    return tf.cast(image, spec.dtype)


def encode(label: tf.Tensor, cfg: DatasetConfig, num_classes: int) -> tf.Tensor:
    if cfg.label_encoding is LabelEncoding.one_hot:
        return tf.one_hot(label, num_classes, dtype=tf.float32)
    if cfg.label_encoding is LabelEncoding.multi_hot:
        return multi_hot(label, num_classes)
    return label


def multi_hot(mask: tf.Tensor, num_classes: int) -> tf.Tensor:
    """Label sets as int64 bit masks (bit i: label i) -> 0/1 rows, float32 (..., num_classes)."""
    bits = tf.bitwise.right_shift(tf.cast(mask, tf.int64)[..., None], tf.range(num_classes, dtype=tf.int64))
    return tf.cast(tf.bitwise.bitwise_and(bits, 1), tf.float32)
