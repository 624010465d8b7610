"""Augmentation of training batches with Keras' preprocessing layers, exact on resume, checked.

The layers are Keras' own (RandomFlip, RandomRotation, RandomZoom, RandomTranslation,
RandomBrightness, RandomContrast, RandAugment, RandomErasing, MixUp, CutMix; only the random
resized crop, which Keras lacks, is ours: pipelines.crop), applied per batch
in tf.data after the pipeline's enforcement and before normalization, on pixels in the source's
value range (which each layer is told). Two things the layers cannot give on their own:

- **Randomness as a function of (seed, epoch, batch).** A layer draws from its SeedGenerator,
  whose state advances with every call, so a resumed run would draw other numbers. Before each
  batch, every generator of every layer (RandAugment's inner ones included) is set to a state
  derived from (trainer.seed, epoch, batch index), so batch k of epoch e is augmented the same
  way whether the run was interrupted or not. The state is shared, so this map runs sequentially
  (it still overlaps training through prefetch).
- **The declared spec after augmentation.** The result is checked in-graph: the declared shape,
  finite values, pixels inside the source's value range and, with MixUp/CutMix, label rows that
  are probabilities; a violation stops the run naming the augment keys.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from safetrain.pipelines.crop import RandomResizedCrop
from safetrain.pipelines.spec import ImageSpec
from safetrain.config.schema import AugmentConfig, Crop, Flip

_FLIPS = {Flip.horizontal: "horizontal", Flip.vertical: "vertical", Flip.both: "horizontal_and_vertical"}
_STREAM = 2**20  # draws apart between the generators of one batch


def layers_for(cfg: AugmentConfig, value_range: tuple[float, float], seed: int) -> list:
    """The Keras layers `cfg` asks for, in a fixed order (crop, geometry, colour, RandAugment, erasing)."""
    L, lo_hi = keras.layers, (float(value_range[0]), float(value_range[1]))
    # float32 whatever the global mixed-precision policy: these are pixels, not activations.
    common = dict(seed=seed, dtype="float32")
    chosen = []
    if cfg.crop is Crop.random_resized:
        chosen.append(RandomResizedCrop(tuple(cfg.crop_scale), tuple(cfg.crop_ratio), **common))
    if cfg.flip in _FLIPS:
        chosen.append(L.RandomFlip(_FLIPS[cfg.flip], **common))
    if cfg.rotation:
        chosen.append(L.RandomRotation(cfg.rotation, fill_mode="reflect", **common))
    if cfg.zoom:
        chosen.append(L.RandomZoom(cfg.zoom, cfg.zoom, fill_mode="reflect", **common))
    if cfg.translate:
        chosen.append(L.RandomTranslation(cfg.translate, cfg.translate, fill_mode="reflect", **common))
    if cfg.brightness:
        chosen.append(L.RandomBrightness(cfg.brightness, value_range=lo_hi, **common))
    if cfg.contrast:
        chosen.append(L.RandomContrast(cfg.contrast, value_range=lo_hi, **common))
    if cfg.rand_augment.num_ops:
        chosen.append(L.RandAugment(value_range=lo_hi, num_ops=cfg.rand_augment.num_ops,
                                    factor=cfg.rand_augment.magnitude, **common))
    if cfg.erasing:
        chosen.append(L.RandomErasing(factor=cfg.erasing, value_range=lo_hi, **common))
    return chosen


def describe(cfg: AugmentConfig) -> str:
    parts = [f"random resized crop {cfg.crop_scale[0]:g}-{cfg.crop_scale[1]:g} of the area"
             if cfg.crop is Crop.random_resized else ""]
    parts.append(f"flip {cfg.flip.value}" if cfg.flip is not Flip.none else "")
    parts += [f"{name} {value:g}" for name, value in (("rotation", cfg.rotation), ("zoom", cfg.zoom),
                                                      ("translate", cfg.translate), ("brightness", cfg.brightness),
                                                      ("contrast", cfg.contrast), ("erasing", cfg.erasing),
                                                      ("mixup", cfg.mixup), ("cutmix", cfg.cutmix)) if value]
    if cfg.rand_augment.num_ops:
        parts.append(f"rand_augment {cfg.rand_augment.num_ops} ops x{cfg.rand_augment.magnitude:g}")
    return ", ".join(p for p in parts if p) or "none"


def is_on(cfg: AugmentConfig) -> bool:
    return describe(cfg) != "none"


class Augmenter:
    """`augmenter(images, labels, epoch, batch)` -> augmented (images, labels), checked."""

    def __init__(self, cfg: AugmentConfig, spec: ImageSpec, value_range: tuple[float, float], seed: int) -> None:
        self.cfg, self.spec, self.value_range, self.seed = cfg, spec, value_range, seed
        self.layers = layers_for(cfg, value_range, seed)
        self.mixers = ([keras.layers.MixUp(alpha=cfg.mixup, seed=seed, dtype="float32")] if cfg.mixup else []) + \
                      ([keras.layers.CutMix(factor=cfg.cutmix, seed=seed, dtype="float32")] if cfg.cutmix else [])
        # Every SeedGenerator the layers draw from, sub-layers included (Keras keeps them per layer).
        self.generators = [g for layer in self.layers + self.mixers for sub in layer._flatten_layers()
                           for g in sub._seed_generators]
        self.describe = describe(cfg)

    def __call__(self, images, labels, epoch, batch):
        self._reseed(epoch, batch)
        x = tf.cast(images, tf.float32)
        for layer in self.layers:
            x = layer(x, training=True)
        for mixer in self.mixers:
            mixed = mixer({"images": x, "labels": tf.cast(labels, tf.float32)}, training=True)
            x, labels = mixed["images"], mixed["labels"]
        return self._checked(x, labels)

    def _reseed(self, epoch, batch) -> None:
        key = (tf.cast(self.seed, tf.int64) * 1_000_003 + tf.cast(epoch, tf.int64)) * 7_919 + tf.cast(batch, tf.int64)
        key = tf.math.floormod(key, 2**31 - 1)
        for i, generator in enumerate(self.generators):
            generator.state.assign(tf.cast(tf.stack([key, tf.constant(i * _STREAM, tf.int64)]), generator.state.dtype))

    def _checked(self, x, labels):
        lo, hi = self.value_range
        keys = f"augment ({self.describe})"
        x = tf.ensure_shape(x, (None, *self.spec.shape))
        asserts = [
            tf.debugging.assert_all_finite(x, f"{keys} produced NaN/Inf pixels"),
            tf.debugging.assert_greater_equal(x, tf.constant(lo, tf.float32) - 1e-3 * (hi - lo), message=(
                f"{keys} produced pixels below the source range [{lo:g}, {hi:g}]")),
            tf.debugging.assert_less_equal(x, tf.constant(hi, tf.float32) + 1e-3 * (hi - lo), message=(
                f"{keys} produced pixels above the source range [{lo:g}, {hi:g}]")),
        ]
        if self.mixers:
            asserts.append(tf.debugging.assert_near(tf.reduce_sum(labels, -1), tf.ones(tf.shape(labels)[:1]),
                                                    atol=1e-3, message=f"{keys}: mixed label rows must sum to 1"))
        with tf.control_dependencies(asserts):
            return tf.identity(x), labels
