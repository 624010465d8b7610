"""Build the train/eval/test tf.data pipelines that deliver exactly the declared image spec.

Per example: raw pixels as float32 -> checks (size/channels where they vary, finite, value
range, label range; pipelines.checks) -> channel and size adapters (pipelines.ops) -> (cache).
Then shuffle, batch, and per batch (vectorized): normalize from the source's value range, cast to
the declared dtype, encode labels. The adapters come from `plan_adapters`, which has already
refused any mismatch the config does not explicitly allow.

Before the first step every split is read once (pipelines.scan): it fills the cache, counts the
examples, lists every bad one and sums the statistics `standardize` needs. A source that has
checked every example itself (Source.class_counts: an image folder's uint8 cache) skips that
pass. The source comes from the registry in pipelines.sources.registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tensorflow as tf

from safetrain.pipelines import checks
from safetrain.pipelines.augment import Augmenter, is_on
from safetrain.pipelines.ops import adapt, encode, epoch_seed, example_bytes, is_ok, normalize, plain
from safetrain.pipelines.scan import mean_std, scan
from safetrain.pipelines.sources.base import Source, array_source
from safetrain.pipelines.sources.registry import open_source
from safetrain.pipelines.spec import AdapterPlan, BadExample, DataEvent, ImageSpec, SourceSpec, plan_adapters
from safetrain.config.schema import AugmentConfig, DatasetConfig, Sampling
from safetrain.core.errors import DataError

_CACHE_LIMIT_BYTES = 2 << 30  # cache adapted examples in memory up to 2 GiB


@dataclass
class Datasets:
    train_epoch: Callable[[int], tf.data.Dataset]   # the training batches of epoch N (1-based), augmented
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
    train_plain: Callable[[int], tf.data.Dataset] | None = None  # the same batches without augmentation
    augmentation: str = "none"      # what augments the training batches (pipelines.augment)
    class_counts: dict[str, list[int]] = field(default_factory=dict)  # good examples per class id, per split
    splits: dict[str, str | None] = field(default_factory=dict)  # the split string each role read
    sampling: str = "shuffle"       # dataset.sampling: how training examples are drawn
    report: dict = field(default_factory=dict)   # the source's findings for report.json `data`
    events: list[DataEvent] = field(default_factory=list)  # and for errors.jsonl
    preprocessing: str | None = None  # why this normalization (a backbone's input contract), for the export too
    # eval/test batches as (model input, class id, key: file path or split#index), in the order of `eval`/`test`
    with_keys: Callable[[str], tf.data.Dataset | None] = lambda name: None

    def model_input(self, image: tf.Tensor) -> tf.Tensor:
        """One raw image as the training pipeline delivers it: adapters, normalization, dtype."""
        adapted = adapt(tf.cast(image, tf.float32), self.plan, self.spec)
        return normalize(adapted, self.spec, self.source.value_range, self.normalization_stats)

    def describe(self) -> str:
        """The `pipeline/spec` text: source, scan findings, adapters, model input, split sizes."""
        lines = list(self.notes) + list(self.plan.steps)
        if self.preprocessing:
            lines.append(f"preprocessing: {self.preprocessing}")
        lines += [f"split {k}: {v} examples" for k, v in self.counts.items()]
        if self.bad:
            lines.append(f"bad examples: {len(self.bad)} (listed in errors.jsonl)")
        if self.normalization_stats:
            mean, std = self.normalization_stats
            lines.append(f"standardize: mean={[round(m, 4) for m in mean]} std={[round(s, 4) for s in std]}")
        if self.sampling == "balanced":
            lines.append("sampling balanced: each training example's class drawn uniformly "
                         f"({self.steps_per_epoch} batches per epoch, rare classes repeated)")
        if self.augmentation != "none":
            lines.append(f"augment training batches (before normalization, checked after): {self.augmentation}")
        return "\n".join(lines)


def declared_spec(cfg: DatasetConfig) -> ImageSpec:
    return ImageSpec(height=cfg.image.height, width=cfg.image.width, channels=cfg.image.channels,
                     dtype=cfg.image.dtype.value, normalization=cfg.image.normalization.value)


def build_datasets(cfg: DatasetConfig, batch_size: int, eval_batch_size: int, seed: int,
                   source: Source | None = None, augment: AugmentConfig | None = None,
                   channels_why: str = "") -> Datasets:
    """`source` overrides the configured one (in-memory arrays from Python, tests). `augment`:
    what augments the training batches (pipelines.augment; eval and test never are).
    `channels_why`: why the model needs dataset.image.channels (named in a channel error).

    Element order is always deterministic (parallel maps keep their order): resuming and the NaN
    replay depend on seeing the same batches at the same position, and reordering cheap maps
    buys nothing measurable (scripts/bench_pipeline.py)."""
    source = source or open_source(cfg)
    spec = declared_spec(cfg)
    plan = plan_adapters(source.spec, spec, cfg.resize.value, cfg.channel_policy.value, channels_why)
    names = source.splits or {"train": cfg.splits.train, "eval": cfg.splits.eval, "test": cfg.splits.test}
    pipe = _Pipeline(cfg, source, spec, plan, seed)
    bases, scanned = _scan_splits(pipe, names)
    if not scanned.counts.get("train"):
        bad = scanned.bad
        raise DataError(f"the training split {names['train']!r} of dataset {source.spec.name} has no usable "
                        f"examples" + (f" ({len(bad)} bad)" if bad else ""),
                        hint="check dataset.splits.train and the data", config_key="dataset.splits.train")
    pipe.scanned(scanned, augment)
    counts = scanned.counts

    def finish(name: str, batch: int, epoch: int = 1, augmented: bool = False, keys: bool = False):
        return pipe.finish(bases[name], name, names[name], batch, epoch, augmented, keys)

    return Datasets(
        train_epoch=lambda epoch: finish("train", batch_size, epoch, augmented=True),
        train_plain=lambda epoch: finish("train", batch_size, epoch),
        augmentation=pipe.augmenter.describe if pipe.augmenter else "none", class_counts=scanned.class_counts,
        sampling=cfg.sampling.value, report=source.report, events=source.events,
        eval=finish("eval", eval_batch_size) if "eval" in bases else None,
        test=finish("test", eval_batch_size) if "test" in bases else None,
        source=source.spec, spec=spec, plan=plan, counts=counts, splits=names,
        steps_per_epoch=counts["train"] // batch_size, bad=scanned.bad, notes=source.notes,
        normalization_stats=scanned.stats,
        raw_test=(lambda: source.read(names["test"])) if names.get("test") else None,
        with_keys=lambda name: finish(name, eval_batch_size, keys=True) if name in bases and name != "train" else None,
    )


@dataclass
class _Scanned:
    """What reading every split once found."""

    counts: dict[str, int] = field(default_factory=dict)             # good examples per split
    class_counts: dict[str, list[int]] = field(default_factory=dict)  # good examples per class id, per split
    bad: list[BadExample] = field(default_factory=list)
    stats: tuple[list[float], list[float]] | None = None              # standardize: per-channel mean, std


def _scan_splits(pipe: "_Pipeline", names: dict[str, str]) -> tuple[dict[str, tf.data.Dataset], _Scanned]:
    """Each split's checked examples, read once (filling the cache): counts, bad examples,
    standardize's statistics."""
    cfg, source, spec = pipe.cfg, pipe.source, pipe.spec
    bases, found, stats_sums = {}, _Scanned(bad=list(source.bad)), None
    for name, split in names.items():
        if not split:
            continue
        base = bases[name] = pipe.checked(split)
        want_stats = name == "train" and spec.normalization == "standardize"
        if source.class_counts and pipe.keep_uint8 and not want_stats and not cfg.max_examples:
            # Every example was checked at the source's own scan: no second pass (it would cost a
            # read of the whole split before the first step and find nothing new).
            found.class_counts[name] = [int(n) for n in source.class_counts(split)]
            found.counts[name] = source.examples(split) if source.examples else sum(found.class_counts[name])
            continue
        scanned = scan(base, split, pipe.check_args, want_stats=want_stats)
        found.counts[name] = scanned.good
        found.bad += scanned.bad
        stats_sums = scanned.sums if scanned.sums is not None else stats_sums
        found.class_counts[name] = [int(n) for n in scanned.class_counts]
    found.stats = mean_std(stats_sums) if stats_sums is not None else None
    return bases, found


class _Pipeline:
    """One dataset's two halves: per example (read, check, adapt, cache: `checked`) and, once the
    splits are scanned, per batch (filter, shuffle or balance, batch, augment, normalize, encode:
    `finish`)."""

    def __init__(self, cfg: DatasetConfig, source: Source, spec: ImageSpec, plan: AdapterPlan, seed: int) -> None:
        self.cfg, self.source, self.spec, self.plan, self.seed = cfg, source, spec, plan, seed
        self.check_args = dict(value_range=source.spec.value_range, num_classes=source.spec.num_classes,
                               size=(spec.height, spec.width) if plan.check_size else None,
                               channels=spec.channels if plan.check_channels else None,
                               multi_label=source.spec.multi_label)
        # One class id fits int32; a label set is an int64 bit mask (up to 63 labels).
        self.label_dtype = tf.int64 if source.spec.multi_label else tf.int32
        self.parallel = dict(num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        self.keep_uint8 = source.spec.dtype == "uint8" and plan.resize is None and plan.channels is None and \
            (source.spec.height, source.spec.width, source.spec.channels) == spec.shape
        self.found = _Scanned()
        self.augmenter: Augmenter | None = None

    def checked(self, split: str) -> tf.data.Dataset:
        cfg, spec, plan, check_args, keep_uint8 = self.cfg, self.spec, self.plan, self.check_args, self.keep_uint8
        label_dtype = self.label_dtype
        ds = self.source.read(split)
        if cfg.max_examples:
            ds = ds.take(cfg.max_examples)

        @plain
        def prepare(image, label, key):
            if keep_uint8:  # nothing to adapt: the cache holds the uint8 pixels (4x smaller than float32)
                status = checks.example_status(image, label, **check_args)
                # tf.cond, not tf.where: a broadcast select of the whole image cost 0.3 ms an example
                kept = tf.cond(tf.equal(status, checks.OK), lambda: image, lambda: tf.zeros_like(image))
                return tf.ensure_shape(kept, spec.shape), tf.cast(label, label_dtype), status, key
            raw = tf.cast(image, tf.float32)
            status = checks.example_status(raw, label, **check_args)
            adapted = tf.cond(tf.equal(status, checks.OK), lambda: adapt(raw, plan, spec),
                              lambda: tf.zeros(spec.shape, tf.float32))
            return adapted, tf.cast(label, label_dtype), status, key

        ds = ds.map(prepare, **self.parallel)
        expected = self.source.count(split)
        if cfg.cache and (expected or 0) * example_bytes(spec, 1 if keep_uint8 else 4) <= _CACHE_LIMIT_BYTES:
            ds = ds.cache()
        return ds

    def scanned(self, found: _Scanned, augment: AugmentConfig | None) -> None:
        """What the scan found, for `finish`; the augmenter, which needs the final spec."""
        self.found = found
        if augment and is_on(augment):
            self.augmenter = Augmenter(augment, self.spec, self.source.spec.value_range, self.seed)

    def finish(self, base: tf.data.Dataset, name: str, split: str, batch: int, epoch: int = 1,
               augmented: bool = False, keys: bool = False) -> tf.data.Dataset:
        cfg, spec, source, parallel, found = self.cfg, self.spec, self.source.spec, self.parallel, self.found
        ds = base
        if split in {b.split for b in found.bad}:  # per-example filtering costs; only where the scan found bad ones
            ds = ds.filter(is_ok)
        if name == "train" and cfg.sampling is Sampling.balanced:
            ds = _balanced(ds, found.class_counts["train"], found.counts["train"], cfg.shuffle_buffer,
                           epoch_seed(self.seed, epoch))
        elif name == "train":
            # Each epoch's order is a function of (seed, epoch) alone, so a resumed run (or the NaN
            # replay) sees exactly the batches the first run saw at the same position; the
            # iterator's whole state is then (epoch, batches done), which the checkpoint holds.
            ds = ds.shuffle(cfg.shuffle_buffer, seed=epoch_seed(self.seed, epoch), reshuffle_each_iteration=False)
        ds = ds.batch(batch, drop_remainder=name == "train")
        # Normalize and encode whole batches: vectorized, ~10x cheaper than per example.
        norm = lambda x: normalize(tf.cast(x, tf.float32), spec, source.value_range, found.stats)  # noqa: E731
        label = lambda y: encode(y, cfg, source.num_classes)  # noqa: E731
        if augmented and self.augmenter is not None:
            # Batch index from the epoch's start: with the epoch, it seeds the batch's augmentation
            # (a resume's skip() comes after this). Sequential: the layers' seed state is shared.
            augmenter = self.augmenter
            ds = ds.map(plain(lambda x, y, status, key: (x, label(y))), **parallel)
            ds = ds.enumerate().map(lambda i, xy: augmenter(xy[0], xy[1], epoch, i))
            ds = ds.map(plain(lambda x, y: (norm(x), y)), **parallel)
        elif keys:
            ds = ds.map(plain(lambda x, y, status, key: (norm(x), y, key)), **parallel)
        else:
            ds = ds.map(plain(lambda x, y, status, key: (norm(x), label(y))), **parallel)
        options = tf.data.Options()
        options.deterministic = True
        return ds.with_options(options).prefetch(tf.data.AUTOTUNE)


def _balanced(ds: tf.data.Dataset, class_counts: list[int], size: int, buffer: int, seed: int) -> tf.data.Dataset:
    """dataset.sampling=balanced: an epoch of `size` examples, each drawn from a class chosen
    uniformly (tf.data's `sample_from_datasets` over one repeated, shuffled stream per class, the
    resampling TensorFlow's imbalanced-data guide uses). Rare classes repeat within an epoch and
    common ones are thinned; an epoch keeps the split's size, so steps per epoch do not change.
    Every draw is seeded from `seed` (the epoch's), so the epoch is the same on a resume.
    Classes absent from the split are left out (they cannot be drawn). Cost: every per-class
    stream filters the whole cached split, about K passes over it per epoch."""
    present = [c for c, n in enumerate(class_counts) if n]
    streams = [ds.filter(lambda x, y, status, key, c=c: tf.equal(y, c))
               .shuffle(min(buffer, class_counts[c]), seed=(seed * 131 + c) % (2**31 - 1),
                        reshuffle_each_iteration=True)
               .repeat() for c in present]
    mixed = tf.data.Dataset.sample_from_datasets(streams, weights=[1.0 / len(present)] * len(present), seed=seed)
    return mixed.take(size)


def from_arrays(cfg: DatasetConfig, splits: dict[str, tuple[np.ndarray, np.ndarray]], batch_size: int,
                seed: int = 0, value_range: tuple[float, float] | None = None,
                augment: AugmentConfig | None = None) -> Datasets:
    """Pipelines over in-memory arrays: the same checks and adapters as every other source."""
    source = array_source(cfg.name, splits, cfg.num_classes, value_range)
    return build_datasets(cfg, batch_size, batch_size, seed, source=source, augment=augment)
