"""Per-example checks inside the tf.data graph: a status code per example instead of a crash.

Every example gets `status` (OK or the first problem found); a bad example's pixels are replaced
by zeros so nothing non-finite or mis-shaped flows further, and the pipeline decides (error or
skip) with the example's key in hand. Pure TensorFlow ops: the same function runs eagerly and
inside `Dataset.map` (both are tested).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

OK, BAD_SIZE, BAD_CHANNELS, NON_FINITE, OUT_OF_RANGE, BAD_LABEL = range(6)


def label_counts(labels: np.ndarray, num_classes: int, multi_label: bool = False) -> np.ndarray:
    """Examples per class id (multi-label: per label, from the bit masks) of good labels."""
    labels = np.asarray(labels, np.int64)
    if multi_label:
        return ((labels[:, None] >> np.arange(num_classes)) & 1).sum(axis=0).astype(np.int64)
    return np.bincount(labels, minlength=num_classes)[:num_classes].astype(np.int64)


def example_status(image: tf.Tensor, label: tf.Tensor, *, value_range: tuple[float, float],
                   num_classes: int, size: tuple[int, int] | None = None,
                   channels: int | None = None, multi_label: bool = False) -> tf.Tensor:
    """int32 status of one example; `image` is float32 (H, W, C) in the source's raw range, or
    uint8 (every value finite, and in range when the range covers 0-255: those checks are left
    out, not computed, for the uint8 pixels an image-folder cache delivers).

    `size`/`channels` are checked only where the plan could not (sizes or channels vary and the
    config forbids adapting them). Earlier checks win: a wrong-size image is reported as that,
    not also as out of range.
    """
    lo, hi = value_range
    status = tf.constant(OK, tf.int32)
    label = tf.cast(label, tf.int64)
    # Multi-label: a bit mask with no bit at or above num_classes.
    beyond = tf.not_equal(tf.bitwise.right_shift(label, num_classes), 0) if multi_label else label >= num_classes
    status = tf.where(tf.logical_or(label < 0, beyond), BAD_LABEL, status)
    if image.dtype != tf.uint8 or lo > 0 or hi < 255:
        image = tf.cast(image, tf.float32)
        in_range = tf.reduce_all(tf.logical_and(image >= lo, image <= hi))
        status = tf.where(in_range, status, OUT_OF_RANGE)
        status = tf.where(tf.reduce_all(tf.math.is_finite(image)), status, NON_FINITE)
    shape = tf.shape(image)
    if channels is not None:
        status = tf.where(tf.equal(shape[-1], channels), status, BAD_CHANNELS)
    if size is not None:
        status = tf.where(tf.reduce_all(tf.equal(shape[:2], size)), status, BAD_SIZE)
    return status


def reason(status: int, *, value_range: tuple[float, float], num_classes: int,
           size: tuple[int, int] | None = None, channels: int | None = None, multi_label: bool = False) -> str:
    """The words for a status code, naming the config key that decides it."""
    lo, hi = value_range
    return {
        BAD_SIZE: (f"size differs from the declared {size[0]}x{size[1]}" if size else "wrong size")
                  + " (dataset.resize=error; set dataset.resize=bilinear or pad_or_crop to adapt it)",
        BAD_CHANNELS: f"does not have the declared {channels} channels (dataset.channel_policy=error; "
                      f"set dataset.channel_policy=convert to convert it)",
        NON_FINITE: "pixel values include NaN or Inf",
        OUT_OF_RANGE: f"pixel values outside the source range [{lo:g}, {hi:g}] (dataset.pixel_range)",
        BAD_LABEL: (f"label set names a label outside the {num_classes} labels" if multi_label else
                    f"label outside [0, {num_classes}) (dataset.num_classes={num_classes})"),
    }.get(status, f"status {status}")
