"""Build the train/eval/test tf.data pipelines that deliver exactly the declared image spec.

Order per example: decode (TFDS) -> float32 -> channel adapter -> resize adapter -> normalize ->
cast to the declared dtype; then cache (decoded, adapted examples, when they fit in memory),
shuffle, batch, prefetch. The adapters come from `plan_adapters`, which has already refused any
mismatch the config does not explicitly allow.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from pipelines.sources.digits import SklearnDigits
from pipelines.sources.tfds_source import open_builder, read_split
from pipelines.spec import AdapterPlan, ImageSpec, SourceSpec, plan_adapters
from safetrain.config.schema import DatasetConfig, Source
from safetrain.errors import DataError

_CACHE_LIMIT_BYTES = 2 << 30  # cache adapted examples in memory up to 2 GiB


@dataclass
class Datasets:
    train: tf.data.Dataset
    eval: tf.data.Dataset | None
    test: tf.data.Dataset | None
    source: SourceSpec
    spec: ImageSpec
    plan: AdapterPlan
    counts: dict[str, int | None]   # examples per split (None where the source cannot tell)
    steps_per_epoch: int | None
    normalization_stats: tuple[list[float], list[float]] | None = None

    def describe(self) -> str:
        """The `pipeline/spec` text: source, adapters, model input, split sizes."""
        lines = list(self.plan.steps)
        lines += [f"split {k}: {v if v is not None else 'unknown'} examples" for k, v in self.counts.items()]
        if self.normalization_stats:
            mean, std = self.normalization_stats
            lines.append(f"standardize: mean={mean} std={std}")
        return "\n".join(lines)


def declared_spec(cfg: DatasetConfig) -> ImageSpec:
    return ImageSpec(height=cfg.image.height, width=cfg.image.width, channels=cfg.image.channels,
                     dtype=cfg.image.dtype.value, normalization=cfg.image.normalization.value)


def open_source(cfg: DatasetConfig) -> tuple[tfds.core.DatasetBuilder, SourceSpec]:
    if cfg.source is Source.digits:
        builder = open_builder("sklearn_digits", cfg.data_dir, cfg.download, builder_cls=SklearnDigits)
    elif cfg.source is Source.tfds:
        builder = open_builder(cfg.name, cfg.data_dir, cfg.download)
    else:  # validate() refuses these before we get here
        raise DataError(f"dataset.source={cfg.source.value} is not available in this version",
                        config_key="dataset.source")
    image_key, label_key = _supervised_keys(builder, cfg)
    image = builder.info.features[image_key]
    label = builder.info.features[label_key]
    height, width, channels = (tuple(image.shape) + (None, None, None))[:3]
    num_classes = cfg.num_classes or getattr(label, "num_classes", None)
    if not num_classes:
        raise DataError(f"dataset {cfg.name} does not say how many classes it has",
                        hint="set dataset.num_classes", config_key="dataset.num_classes")
    spec = SourceSpec(name=cfg.name, height=height, width=width, channels=channels,
                      dtype=np.dtype(getattr(image, "np_dtype", np.uint8)).name, num_classes=int(num_classes))
    return builder, spec


def build_datasets(cfg: DatasetConfig, batch_size: int, eval_batch_size: int, seed: int,
                   deterministic: bool = False) -> Datasets:
    builder, source = open_source(cfg)
    spec = declared_spec(cfg)
    plan = plan_adapters(source, spec, cfg.resize.value, cfg.channel_policy.value)

    def raw(split: str, training: bool) -> tf.data.Dataset:
        read_config = tfds.ReadConfig(shuffle_seed=seed)
        ds = read_split(builder, split, shuffle_files=training, read_config=read_config)
        if cfg.max_examples:
            ds = ds.take(cfg.max_examples)
        return ds.map(lambda x, y: (_adapt(x, plan, spec), tf.cast(y, tf.int32)),
                      num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic or None)

    counts = {name: _count(builder, split, cfg.max_examples)
              for name, split in (("train", cfg.splits.train), ("eval", cfg.splits.eval),
                                  ("test", cfg.splits.test)) if split}
    stats = None
    if spec.normalization == "standardize":
        stats = _channel_stats(raw(cfg.splits.train, training=False))

    def finish(name: str, split: str, batch: int) -> tf.data.Dataset:
        training = name == "train"
        ds = raw(split, training)
        ds = ds.map(lambda x, y: (_normalize(x, spec, stats), y), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=deterministic or None)
        if cfg.cache and (counts.get(name) or 0) * _example_bytes(spec) <= _CACHE_LIMIT_BYTES:
            ds = ds.cache()
        if training:
            ds = ds.shuffle(cfg.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(batch, drop_remainder=training)
        options = tf.data.Options()
        options.deterministic = deterministic
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    train_n = counts.get("train")
    return Datasets(
        train=finish("train", cfg.splits.train, batch_size),
        eval=finish("eval", cfg.splits.eval, eval_batch_size) if cfg.splits.eval else None,
        test=finish("test", cfg.splits.test, eval_batch_size) if cfg.splits.test else None,
        source=source, spec=spec, plan=plan, counts=counts,
        steps_per_epoch=(train_n // batch_size) if train_n is not None else None,
        normalization_stats=stats,
    )


def _supervised_keys(builder, cfg: DatasetConfig) -> tuple[str, str]:
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise DataError(f"TFDS dataset {cfg.name} has no (image, label) supervised keys",
                        hint="pick an image-classification dataset", config_key="dataset.name")
    return keys[0], keys[1]


def _count(builder, split: str, limit: int | None) -> int | None:
    try:
        n = builder.info.splits[split].num_examples
    except (KeyError, ValueError, AssertionError, TypeError):
        return None
    if not isinstance(n, int):
        return None  # e.g. under tfds.testing.mock_data, whose split info is a stand-in
    return min(n, limit) if limit else n


def _example_bytes(spec: ImageSpec) -> int:
    return spec.height * spec.width * spec.channels * 4


def _adapt(image: tf.Tensor, plan: AdapterPlan, spec: ImageSpec) -> tf.Tensor:
    """Channel and size adapters on float32 pixels in the source's value range."""
    image = tf.cast(image, tf.float32)
    if plan.channels is not None:
        image = _convert_channels(image, plan.channels[1])
    if plan.resize == "bilinear":
        image = tf.image.resize(image, (spec.height, spec.width), method="bilinear")
    elif plan.resize == "pad_or_crop":
        image = tf.image.resize_with_crop_or_pad(image, spec.height, spec.width)
    return tf.ensure_shape(image, spec.shape)


def _convert_channels(image: tf.Tensor, to: int) -> tf.Tensor:
    image = image[..., :3] if to != 4 else image  # RGBA -> RGB drops alpha
    have = tf.shape(image)[-1]
    if to == 3:
        return tf.cond(have == 1, lambda: tf.image.grayscale_to_rgb(image[..., :1]), lambda: image[..., :3])
    return tf.cond(have == 3, lambda: tf.image.rgb_to_grayscale(image[..., :3]), lambda: image[..., :1])


def _normalize(image: tf.Tensor, spec: ImageSpec, stats) -> tf.Tensor:
    if spec.normalization == "scale_0_1":
        image = image / 255.0
    elif spec.normalization == "minus_one_one":
        image = image / 127.5 - 1.0
    elif spec.normalization == "standardize":
        mean, std = stats
        image = (image - tf.constant(mean)) / tf.constant(std)
    return tf.cast(image, spec.dtype)


def _channel_stats(ds: tf.data.Dataset) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the (adapted, unnormalized) training split, in one pass."""

    def add(acc, example):
        x = tf.reshape(tf.cast(example[0], tf.float64), (-1, tf.shape(example[0])[-1]))
        return (acc[0] + tf.reduce_sum(x, 0), acc[1] + tf.reduce_sum(x * x, 0),
                acc[2] + tf.cast(tf.shape(x)[0], tf.float64))

    channels = ds.element_spec[0].shape[-1]
    zeros = tf.zeros([channels], tf.float64)
    total, total_sq, n = ds.reduce((zeros, zeros, tf.constant(0.0, tf.float64)), add)
    mean = total / n
    std = tf.sqrt(tf.maximum(total_sq / n - mean * mean, 1e-12))
    return [float(v) for v in mean.numpy()], [float(v) for v in std.numpy()]
