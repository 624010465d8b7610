"""An Inception-style random resized crop as a Keras layer (augment.crop=random_resized).

Keras 3.15 has no such layer: `RandomCrop` cuts a fixed-size window and `RandomZoom` keeps the
aspect ratio. This one draws, per image, a box covering a share of the area in `scale` with a
width/height ratio in `ratio` (log-uniform, as torchvision and timm draw it), and resizes the box
back to the image's size with TensorFlow's `tf.image.crop_and_resize` (bilinear). Its numbers come
from a `keras.random.SeedGenerator` like Keras' own layers, so `pipelines.augment.Augmenter`
reseeds it per (seed, epoch, batch) with the rest: exact on resume.

Where torchvision retries up to 10 draws and then falls back to a centre crop, a box that does not
fit is clamped to the image (its side becomes the image's side): one draw, vectorized, and the
area share can only grow, never exceed the image. Bilinear interpolation averages neighbouring
pixels, so the output stays inside the input's value range.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf


class RandomResizedCrop(keras.layers.Layer):
    def __init__(self, scale: tuple[float, float], ratio: tuple[float, float], seed: int | None = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images, training=True):
        if not training:
            return images
        images = tf.convert_to_tensor(images, tf.float32)
        shape = tf.shape(images)
        n = shape[0]
        height, width = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
        area = keras.random.uniform((n,), self.scale[0], self.scale[1], seed=self.generator)
        log_ratio = keras.random.uniform((n,), math.log(self.ratio[0]), math.log(self.ratio[1]), seed=self.generator)
        ratio = tf.exp(log_ratio)
        # Fractions of the height and width: (bw * W) / (bh * H) = ratio and bw * bh = area.
        box_w = tf.minimum(tf.sqrt(area * ratio * height / width), 1.0)
        box_h = tf.minimum(tf.sqrt(area / ratio * width / height), 1.0)
        top = keras.random.uniform((n,), 0.0, 1.0, seed=self.generator) * (1.0 - box_h)
        left = keras.random.uniform((n,), 0.0, 1.0, seed=self.generator) * (1.0 - box_w)
        boxes = tf.stack([top, left, top + box_h, left + box_w], axis=1)
        static = images.shape[1:3]
        size = list(static) if static.is_fully_defined() else tf.stack([shape[1], shape[2]])
        return tf.image.crop_and_resize(images, boxes, tf.range(n), size, method="bilinear")

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "ratio": self.ratio}
