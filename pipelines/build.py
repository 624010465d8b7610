"""Build the train/eval/test tf.data pipelines that deliver exactly the declared image spec.

Per example: raw pixels as float32 -> checks (size/channels where they vary, finite, value
range, label range) -> channel and size adapters -> (cache). Then shuffle, batch, and per batch
(vectorized): normalize from the source's value range, cast to the declared dtype, encode labels.
The adapters come from `plan_adapters`, which has already refused any mismatch the config does
not explicitly allow.

Before the first step every split is read once (the scan): it fills the in-memory cache, counts
the examples, lists every bad one with its key and reason, and sums the per-channel statistics
that `standardize` needs. Bad examples then either stop the run (on_bad_example=error, exit 3,
naming each) or are filtered out, counted and listed (skip). Nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from pipelines import checks
from pipelines.sources.base import Source, array_source
from pipelines.sources.digits import SklearnDigits
from pipelines.sources.idx import find_idx_files, idx_source
from pipelines.sources.image_folder import image_folder_source
from pipelines.sources.tfds_source import open_builder, tfds_source
from pipelines.spec import AdapterPlan, BadExample, ImageSpec, SourceSpec, plan_adapters
from safetrain.config.schema import BadExamplePolicy, DatasetConfig, LabelEncoding, Source as SourceKind
from safetrain.errors import DataError

_CACHE_LIMIT_BYTES = 2 << 30  # cache adapted examples in memory up to 2 GiB
_SCAN_BATCH = 1024


@dataclass
class Datasets:
    train_epoch: Callable[[int], tf.data.Dataset]   # the training batches of epoch N (1-based)
    eval: tf.data.Dataset | None
    test: tf.data.Dataset | None
    source: SourceSpec
    spec: ImageSpec
    plan: AdapterPlan
    counts: dict[str, int]          # good examples per split
    steps_per_epoch: int
    bad: list[BadExample] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    normalization_stats: tuple[list[float], list[float]] | None = None
    raw_test: Callable[[], tf.data.Dataset] | None = None  # (image, label, key) before adapters: export checks

    def model_input(self, image: tf.Tensor) -> tf.Tensor:
        """One raw image as the training pipeline delivers it: adapters, normalization, dtype."""
        adapted = _adapt(tf.cast(image, tf.float32), self.plan, self.spec)
        return _normalize(adapted, self.spec, self.source.value_range, self.normalization_stats)

    def describe(self) -> str:
        """The `pipeline/spec` text: source, scan findings, adapters, model input, split sizes."""
        lines = list(self.notes) + list(self.plan.steps)
        lines += [f"split {k}: {v} examples" for k, v in self.counts.items()]
        if self.bad:
            lines.append(f"bad examples: {len(self.bad)} (listed in errors.jsonl)")
        if self.normalization_stats:
            mean, std = self.normalization_stats
            lines.append(f"standardize: mean={[round(m, 4) for m in mean]} std={[round(s, 4) for s in std]}")
        return "\n".join(lines)


def declared_spec(cfg: DatasetConfig) -> ImageSpec:
    return ImageSpec(height=cfg.image.height, width=cfg.image.width, channels=cfg.image.channels,
                     dtype=cfg.image.dtype.value, normalization=cfg.image.normalization.value)


def open_source(cfg: DatasetConfig) -> Source:
    pixel_range = tuple(cfg.pixel_range) if cfg.pixel_range else None
    if cfg.source is SourceKind.digits:
        builder = open_builder("sklearn_digits", cfg.data_dir, cfg.download, builder_cls=SklearnDigits)
        return tfds_source(builder, "digits", cfg.num_classes)
    if cfg.source is SourceKind.tfds:
        for folder in cfg.local_idx_dirs:
            if Path(folder).is_dir() and find_idx_files(Path(folder)):
                source = idx_source(cfg.name, folder, cfg.num_classes, pixel_range)
                source.notes.insert(0, f"using local IDX files in {folder} instead of TFDS "
                                       f"(dataset.local_idx_dirs)")
                return source
        return tfds_source(open_builder(cfg.name, cfg.data_dir, cfg.download), cfg.name, cfg.num_classes)
    if cfg.source is SourceKind.idx:
        return idx_source(cfg.name, cfg.path, cfg.num_classes, pixel_range)
    return image_folder_source(cfg.name, cfg.path, cfg.num_classes, cfg.max_pixels, cfg.max_file_bytes)


def build_datasets(cfg: DatasetConfig, batch_size: int, eval_batch_size: int, seed: int,
                   source: Source | None = None) -> Datasets:
    """`source` overrides the configured one (in-memory arrays from Python, tests).

    Element order is always deterministic (parallel maps keep their order): resuming and the NaN
    replay depend on seeing the same batches at the same position, and reordering cheap maps
    buys nothing measurable (scripts/bench_pipeline.py)."""
    source = source or open_source(cfg)
    spec = declared_spec(cfg)
    plan = plan_adapters(source.spec, spec, cfg.resize.value, cfg.channel_policy.value)
    check_args = dict(value_range=source.spec.value_range, num_classes=source.spec.num_classes,
                      size=(spec.height, spec.width) if plan.check_size else None,
                      channels=spec.channels if plan.check_channels else None)
    parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def checked(split: str) -> tf.data.Dataset:
        ds = source.read(split)
        if cfg.max_examples:
            ds = ds.take(cfg.max_examples)

        def prepare(image, label, key):
            raw = tf.cast(image, tf.float32)
            status = checks.example_status(raw, label, **check_args)
            adapted = tf.cond(tf.equal(status, checks.OK), lambda: _adapt(raw, plan, spec),
                              lambda: tf.zeros(spec.shape, tf.float32))
            return adapted, tf.cast(label, tf.int32), status, key

        ds = ds.map(prepare, **parallel)
        expected = source.count(split)
        if cfg.cache and (expected or 0) * _example_bytes(spec) <= _CACHE_LIMIT_BYTES:
            ds = ds.cache()
        return ds

    names = {"train": cfg.splits.train, "eval": cfg.splits.eval, "test": cfg.splits.test}
    bases, counts, bad = {}, {}, list(source.bad)
    stats_sums = None
    for name, split in names.items():
        if not split:
            continue
        bases[name] = checked(split)
        counts[name], found, sums = _scan(bases[name], split, check_args,
                                          want_stats=name == "train" and spec.normalization == "standardize")
        bad += found
        stats_sums = sums if sums is not None else stats_sums
    stats = _mean_std(stats_sums) if stats_sums is not None else None
    if not counts.get("train"):
        raise DataError(f"the training split {cfg.splits.train!r} of dataset {source.spec.name} has no usable "
                        f"examples" + (f" ({len(bad)} bad)" if bad else ""),
                        hint="check dataset.splits.train and the data", config_key="dataset.splits.train")

    bad_splits = {b.split for b in bad}

    def finish(name: str, batch: int, epoch: int = 1) -> tf.data.Dataset:
        ds = bases[name]
        if names[name] in bad_splits:  # per-example filtering costs; only where the scan found bad ones
            ds = ds.filter(_is_ok)
        if name == "train":
            # Each epoch's order is a function of (seed, epoch) alone, so a resumed run (or the NaN
            # replay) sees exactly the batches the first run saw at the same position; the
            # iterator's whole state is then (epoch, batches done), which the checkpoint holds.
            ds = ds.shuffle(cfg.shuffle_buffer, seed=epoch_seed(seed, epoch), reshuffle_each_iteration=False)
        ds = ds.batch(batch, drop_remainder=name == "train")
        # Normalize and encode whole batches: vectorized, ~10x cheaper than per example.
        ds = ds.map(lambda x, y, status, key: (_normalize(x, spec, source.spec.value_range, stats),
                                               _encode(y, cfg, source.spec.num_classes)),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)

    return Datasets(
        train_epoch=lambda epoch: finish("train", batch_size, epoch),
        eval=finish("eval", eval_batch_size) if "eval" in bases else None,
        test=finish("test", eval_batch_size) if "test" in bases else None,
        source=source.spec, spec=spec, plan=plan, counts=counts,
        steps_per_epoch=counts["train"] // batch_size, bad=bad, notes=source.notes,
        normalization_stats=stats,
        raw_test=(lambda: source.read(names["test"])) if names.get("test") else None,
    )


def prepare_encoded(data: tf.Tensor, spec: ImageSpec, resize: str, channel_policy: str, stats) -> tf.Tensor:
    """The serving path for one encoded image (PNG, JPEG, BMP, GIF bytes): decode, then the same
    adapters the config allows (`dataset.resize`, `dataset.channel_policy`) and the training
    normalization. What those policies refuse in training is refused here too, by name."""
    image = tf.cast(tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False), tf.float32)
    checks = []
    if channel_policy == "error":
        checks.append(tf.debugging.assert_equal(tf.shape(image)[-1], spec.channels, message=(
            f"the image's channel count is not the model's {spec.channels} (trained with "
            f"dataset.channel_policy=error)")))
    if resize == "error":
        checks.append(tf.debugging.assert_equal(tf.shape(image)[:2], [spec.height, spec.width], message=(
            f"the image is not {spec.height}x{spec.width} (trained with dataset.resize=error)")))
    with tf.control_dependencies(checks):  # refuse by name before any adapter could fail obscurely
        image = tf.identity(image)
    plan = AdapterPlan(resize=None if resize == "error" else resize,
                       channels=None if channel_policy == "error" else spec.channels, steps=())
    return _normalize(_adapt(image, plan, spec), spec, (0.0, 255.0), stats)


def epoch_seed(seed: int | None, epoch: int) -> int:
    return ((seed or 0) * 1_000_003 + epoch) % (2**31 - 1)


def _is_ok(x, y, status, key):
    return tf.equal(status, checks.OK)


def bad_examples_error(bad: list[BadExample], policy: BadExamplePolicy) -> DataError | None:
    """With on_bad_example=error, the error naming the bad examples (None when there are none)."""
    if not bad or policy is BadExamplePolicy.skip:
        return None
    shown = "; ".join(b.describe() for b in bad[:3])
    more = f"; and {len(bad) - 3} more (all in errors.jsonl)" if len(bad) > 3 else ""
    return DataError(f"{len(bad)} bad example{'s' if len(bad) > 1 else ''}: {shown}{more}",
                     hint="fix or remove the files, or set dataset.on_bad_example=skip to train without them "
                          "(each skip is listed in errors.jsonl and counted in report.json)",
                     config_key="dataset.on_bad_example")


def from_arrays(cfg: DatasetConfig, splits: dict[str, tuple[np.ndarray, np.ndarray]], batch_size: int,
                seed: int = 0, value_range: tuple[float, float] | None = None) -> Datasets:
    """Pipelines over in-memory arrays: the same checks and adapters as every other source."""
    source = array_source(cfg.name, splits, cfg.num_classes, value_range)
    return build_datasets(cfg, batch_size, batch_size, seed, source=source)


def _scan(ds: tf.data.Dataset, split: str, check_args: dict, want_stats: bool):
    """One pass: good-example count, bad examples with reasons, optional per-channel sums."""
    good, bad = 0, []
    sums = None
    for x, _, status, key in ds.batch(_SCAN_BATCH):
        status = status.numpy()
        ok = status == checks.OK
        good += int(ok.sum())
        for code, k in zip(status[~ok], key.numpy()[~ok]):
            bad.append(BadExample(split=split, key=k.decode(), reason=checks.reason(int(code), **check_args)))
        if want_stats and ok.any():
            pixels = tf.reshape(tf.boolean_mask(x, ok), (-1, x.shape[-1])).numpy().astype(np.float64)
            batch_sums = np.stack([pixels.sum(0), (pixels ** 2).sum(0), np.full(pixels.shape[1], len(pixels))])
            sums = batch_sums if sums is None else sums + batch_sums
    return good, bad, sums


def _mean_std(sums: np.ndarray) -> tuple[list[float], list[float]]:
    total, total_sq, n = sums
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 1e-12))
    return [float(v) for v in mean], [float(v) for v in std]


def _example_bytes(spec: ImageSpec) -> int:
    return spec.height * spec.width * spec.channels * 4


def _adapt(image: tf.Tensor, plan: AdapterPlan, spec: ImageSpec) -> tf.Tensor:
    """Channel and size adapters on float32 pixels in the source's value range."""
    if plan.channels is not None:
        image = _convert_channels(image, plan.channels)
    if plan.resize == "bilinear":
        image = tf.image.resize(image, (spec.height, spec.width), method="bilinear")
    elif plan.resize == "pad_or_crop":
        image = tf.image.resize_with_crop_or_pad(image, spec.height, spec.width)
    return tf.ensure_shape(image, spec.shape)


def _convert_channels(image: tf.Tensor, to: int) -> tf.Tensor:
    """gray/gray+alpha/RGB/RGBA -> `to` channels; alpha is dropped, never blended."""
    have = tf.shape(image)[-1]
    color = tf.cond(have >= 3, lambda: image[..., :3], lambda: image[..., :1])  # drop alpha
    if to == 3:
        return tf.cond(have >= 3, lambda: color, lambda: tf.image.grayscale_to_rgb(color))
    return tf.cond(have >= 3, lambda: tf.image.rgb_to_grayscale(color), lambda: color)


def _normalize(image: tf.Tensor, spec: ImageSpec, value_range: tuple[float, float], stats) -> tf.Tensor:
    lo, hi = value_range
    if spec.normalization == "scale_0_1":
        image = (image - lo) / (hi - lo)
    elif spec.normalization == "minus_one_one":
        image = (image - lo) / (hi - lo) * 2.0 - 1.0
    elif spec.normalization == "standardize":
        mean, std = stats
        image = (image - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)
    return tf.cast(image, spec.dtype)


def _encode(label: tf.Tensor, cfg: DatasetConfig, num_classes: int) -> tf.Tensor:
    if cfg.label_encoding is LabelEncoding.one_hot:
        return tf.one_hot(label, num_classes, dtype=tf.float32)
    return label
