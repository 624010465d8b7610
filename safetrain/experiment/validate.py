"""Checks that need more than one field or a registry, run before TensorFlow is imported.

Hydra and the schema already refused wrong types and unknown keys. Here: value ranges, names
that must exist in a registry, combinations that cannot work, and the model spec's shapes
against the declared image spec. Each failure explains why and gives the exact override.

Two steps, neither changing its argument: `resolve(cfg)` returns the concrete config a run uses
(absolute paths, the backbone's normalization), and `validate(cfg)` only checks it and returns the
model's shape plan.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from safetrain.models.backbones import BACKBONES, check_input, parse_backbone
from safetrain.models.shapes import ModelPlan, infer
from safetrain.models.parse import parse_layers
from safetrain.train.cluster import current_task
from safetrain.config.schema import AUTO, EXPORT_FORMATS, FILE_SOURCES, Config, Normalization, OnOom, Source, StrategyKind, TaskKind
from safetrain.core.errors import ConfigError
from safetrain.train.throughput import divisors
from safetrain.train.optimizers import LOSS_ENCODING, LOSSES, OPTIMIZERS
from safetrain.experiment.validate_recipe import check_recipe
from safetrain.experiment.validate_task import check_task
from safetrain.train.metrics import best_metric, metric_names, task_of


def _positive(key: str, value: float | int | None, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f"{key}={value} must be greater than 0.", hint=f"set {key} to a positive value",
                          config_key=key)


def _check_steps_per_loop(t) -> None:
    """trainer.steps_per_loop: `auto` or K >= 1 dividing log_every_steps and checkpoint_every_steps.
    K steps run in one graph call, and logging and checkpoints happen between calls: a cadence that
    is not a multiple of K would fall inside a call (Orbit refuses it the same way)."""
    k = t.steps_per_loop
    if k == AUTO:
        return
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"trainer.steps_per_loop={k!r} must be a whole number of steps >= 1, or auto.",
                          hint="set trainer.steps_per_loop=auto (steps per call chosen so a call takes ~100 ms)",
                          config_key="trainer.steps_per_loop")
    for key, every in (("trainer.log_every_steps", t.log_every_steps),
                       ("trainer.checkpoint_every_steps", t.checkpoint_every_steps)):
        if every % k:
            common = math.gcd(t.log_every_steps, t.checkpoint_every_steps)
            fits = max(d for d in divisors(common) if d <= k)
            raise ConfigError(
                f"trainer.steps_per_loop={k} does not divide {key}={every}: {k} steps run in one graph call, and "
                f"logging and checkpoints happen between calls, so step {every} would fall inside one.",
                hint=f"set trainer.steps_per_loop={fits} (it divides both cadences), or {key}={every + k - every % k}, "
                     f"or trainer.steps_per_loop=auto", config_key="trainer.steps_per_loop")


def _absolute(path: str | None) -> str | None:
    return str(Path(path).expanduser().resolve()) if path else path


DEFAULT_NAME = "digits_cnn"  # configs/experiment/digits_cnn.yaml, the run `python -m safetrain` makes


def resolve(cfg: Config) -> Config:
    """The concrete config a run uses, as a new Config (`cfg` is not changed): dataset.path,
    dataset.data_dir and a model.backbone.weights file made absolute (~ and the working directory
    resolved), and dataset.image.normalization=backbone replaced by what the backbone's weights
    expect, so the pipeline, the export and the run spec all see the concrete normalization. An
    unknown backbone name is left for validate() to refuse."""
    d, b = cfg.dataset, cfg.model.backbone
    image = d.image
    if image.normalization is Normalization.backbone and b.name in BACKBONES.names():
        image = dataclasses.replace(image, normalization=Normalization(BACKBONES.get(b.name).normalization))
    dataset = dataclasses.replace(d, path=_absolute(d.path), table=_absolute(d.table), data_dir=_absolute(d.data_dir),
                                  image=image)
    weights = b.weights if b.weights in (None, "imagenet") else _absolute(b.weights)
    model = dataclasses.replace(cfg.model, backbone=dataclasses.replace(b, weights=weights))
    # Null metrics are the task's (accuracy for one class per image, mAP for label sets).
    t, task = cfg.trainer, task_of(d)
    stopping = t.early_stopping and dataclasses.replace(t.early_stopping, metric=best_metric(t, task))
    trainer = dataclasses.replace(t, metrics=metric_names(t, task), early_stopping=stopping)
    # The default experiment's name on another dataset (`dataset=image_folder` without
    # +experiment) would call a run on a user's photos "digits_cnn": name it by what it trains.
    name = cfg.name
    if name == DEFAULT_NAME and d.source is not Source.digits:
        name = f"{d.name}_{cfg.model.name}"
    return dataclasses.replace(cfg, dataset=dataset, model=model, trainer=trainer, name=name)


def validate(cfg: Config) -> ModelPlan:
    """Raise ConfigError/SpecError on the first problem; return the model's shape plan. Checks
    only: give it `resolve(cfg)`, the config the run will use."""
    t, d = cfg.trainer, cfg.dataset
    for key, value in (("trainer.epochs", t.epochs), ("trainer.batch_size", t.batch_size),
                       ("trainer.checkpoint_every_steps", t.checkpoint_every_steps),
                       ("trainer.log_every_steps", t.log_every_steps),
                       ("optimizer.learning_rate", cfg.optimizer.learning_rate),
                       ("dataset.image.height", d.image.height), ("dataset.image.width", d.image.width),
                       ("dataset.max_pixels", d.max_pixels), ("dataset.max_file_bytes", d.max_file_bytes),
                       ("dataset.shuffle_buffer", d.shuffle_buffer)):
        _positive(key, value)
    for key, value in (("trainer.max_steps", t.max_steps), ("trainer.eval_batch_size", t.eval_batch_size),
                       ("dataset.num_classes", d.num_classes), ("dataset.max_examples", d.max_examples),
                       ("optimizer.clipnorm", cfg.optimizer.clipnorm)):
        _positive(key, value, allow_none=True)
    if d.image.channels not in (1, 3, 4):
        raise ConfigError(f"dataset.image.channels={d.image.channels} must be 1 (gray), 3 (RGB) or 4 (RGBA).",
                          hint="set dataset.image.channels=1 or 3", config_key="dataset.image.channels")
    if d.num_classes is not None and d.num_classes < 2:
        raise ConfigError(f"dataset.num_classes={d.num_classes}: classification needs at least 2 classes.",
                          hint="set dataset.num_classes=null to take it from the data",
                          config_key="dataset.num_classes")
    _check_source_paths(d)
    if d.pixel_range is not None and (len(d.pixel_range) != 2 or not d.pixel_range[0] < d.pixel_range[1]):
        raise ConfigError(f"dataset.pixel_range={list(d.pixel_range)} must be [min, max] with min < max.",
                          hint="set dataset.pixel_range=[0,255] (or [0,1] for float images in 0..1)",
                          config_key="dataset.pixel_range")
    if not 0.0 < d.suspect_min_probability <= 1.0:
        raise ConfigError(f"dataset.suspect_min_probability={d.suspect_min_probability} must be in (0, 1]: the "
                          f"predicted probability above which a misclassified file is listed as a suspect label.",
                          hint="set dataset.suspect_min_probability=0.8", config_key="dataset.suspect_min_probability")
    _check_export(t)
    _check_paths(cfg)
    _check_cluster(cfg)
    _check_folder_settings(d)
    if t.on_oom is OnOom.halve_batch and current_task() is not None:
        raise ConfigError("trainer.on_oom=halve_batch cannot be used in a multi-worker run (TF_CONFIG): every "
                          "worker would have to agree on the new batch size.",
                          hint="set trainer.on_oom=error and a trainer.batch_size that fits",
                          config_key="trainer.on_oom")
    _check_steps_per_loop(t)
    if t.checkpoint_every_seconds is not None and t.checkpoint_every_seconds <= 0:
        raise ConfigError(f"trainer.checkpoint_every_seconds={t.checkpoint_every_seconds} must be > 0 (or null).",
                          hint="set trainer.checkpoint_every_seconds=600",
                          config_key="trainer.checkpoint_every_seconds")
    if t.checkpoint_every_seconds and current_task() is not None:
        raise ConfigError("trainer.checkpoint_every_seconds cannot be used in a multi-worker run: every worker must "
                          "save at the same step, and their clocks differ.",
                          hint="use trainer.checkpoint_every_steps", config_key="trainer.checkpoint_every_seconds")
    if t.min_batch_size < 1:
        raise ConfigError(f"trainer.min_batch_size={t.min_batch_size} must be >= 1.",
                          hint="set trainer.min_batch_size=1", config_key="trainer.min_batch_size")
    check_recipe(cfg)
    OPTIMIZERS.get(cfg.optimizer.name)
    LOSSES.get(t.loss)
    check_task(cfg)
    wanted = LOSS_ENCODING.get(t.loss)
    if wanted and wanted != d.label_encoding.value:
        other = next(loss for loss, enc in LOSS_ENCODING.items() if enc == d.label_encoding.value)
        raise ConfigError(
            f"trainer.loss={t.loss} expects {wanted} labels but dataset.label_encoding="
            f"{d.label_encoding.value}: the loss would read {d.label_encoding.value} labels as "
            f"{wanted} ones (Keras reports this as a rank mismatch inside the first step).",
            hint=f"set trainer.loss={other}, or dataset.label_encoding={wanted}",
            config_key="trainer.loss")
    backbone = _check_backbone(cfg)
    layers = parse_layers(cfg.model.layers) if cfg.model.layers or backbone is None else []
    # The head size does not change whether the body fits; the real count comes from the data.
    return infer(layers, (d.image.height, d.image.width, d.image.channels), d.num_classes or 2, backbone=backbone,
                 multi_label=d.task is TaskKind.multi_label)


def _check_backbone(cfg: Config):
    """model.backbone: a registered name, weights that can be read, a fine-tune schedule that fits
    the run, and the backbone's input contract on dataset.image (resolve() has made
    `normalization: backbone` concrete where the name is known)."""
    b, image = cfg.model.backbone, cfg.dataset.image

    def refuse(message: str, hint: str, key: str) -> None:
        raise ConfigError(message, hint=hint, config_key=key)

    if b.name is None:
        if image.normalization is Normalization.backbone:
            refuse("dataset.image.normalization=backbone means \"what the backbone's weights expect\", and "
                   "model.backbone.name is null (no backbone).",
                   f"set model=backbone (or model.backbone.name=one of: {', '.join(BACKBONES.names())}), or "
                   "dataset.image.normalization=scale_0_1", "dataset.image.normalization")
        for key in ("fine_tune_from_epoch", "fine_tune_learning_rate", "fine_tune_blocks"):
            if getattr(b, key) is not None:
                refuse(f"model.backbone.{key} is set, and model.backbone.name is null (no backbone to fine-tune).",
                       f"set model.backbone.name, or model.backbone.{key}=null", f"model.backbone.{key}")
        if b.trainable:
            refuse("model.backbone.trainable=true, and model.backbone.name is null (no backbone).",
                   "set model.backbone.name, or model.backbone.trainable=false", "model.backbone.trainable")
        return None
    entry = BACKBONES.get(b.name)
    if b.weights not in (None, "imagenet"):
        path = Path(b.weights)
        if not path.is_file():
            refuse(f"model.backbone.weights={b.weights} is not a file. It must be imagenet, null (random "
                   f"initialization) or a weights file for {entry.name} (.h5 or .weights.h5).",
                   "point model.backbone.weights at the file (e.g. the one Keras caches in ~/.keras/models), or set "
                   "model.backbone.weights=imagenet", "model.backbone.weights")
        if not path.name.endswith(".h5"):
            refuse(f"model.backbone.weights={b.weights}: Keras loads backbone weights from .h5 files (legacy "
                   f"ImageNet downloads) or .weights.h5 files (model.save_weights); this is neither.",
                   "convert it with keras: model.save_weights('backbone.weights.h5'), or set "
                   "model.backbone.weights=imagenet", "model.backbone.weights")
    check_input(entry, (image.height, image.width, image.channels), declared=True)
    if image.normalization.value != entry.normalization:
        refuse(f"dataset.image.normalization={image.normalization.value} conflicts with model.backbone.name="
               f"{entry.name}, which expects {entry.normalization} ({entry.preprocessing}); the run would train, "
               f"silently worse.",
               f"set dataset.image.normalization=backbone (or {entry.normalization})", "dataset.image.normalization")
    epochs = cfg.trainer.epochs
    if b.fine_tune_from_epoch is not None:
        if b.trainable:
            refuse(f"model.backbone.trainable=true trains the backbone from the first step, and "
                   f"model.backbone.fine_tune_from_epoch={b.fine_tune_from_epoch} says to keep it frozen until then.",
                   "choose one: model.backbone.trainable=false with fine_tune_from_epoch, or fine_tune_from_epoch=null",
                   "model.backbone.fine_tune_from_epoch")
        if not 2 <= b.fine_tune_from_epoch <= epochs:
            refuse(f"model.backbone.fine_tune_from_epoch={b.fine_tune_from_epoch} must be an epoch of this run after "
                   f"the first: 2..{epochs} (trainer.epochs={epochs}).",
                   f"set model.backbone.fine_tune_from_epoch={max(2, epochs // 2)}" +
                   (", or model.backbone.trainable=true" if b.fine_tune_from_epoch <= 1 else ""),
                   "model.backbone.fine_tune_from_epoch")
    if not (b.trainable or b.fine_tune_from_epoch is not None):
        for key in ("fine_tune_learning_rate", "fine_tune_blocks"):
            if getattr(b, key) is not None:
                refuse(f"model.backbone.{key} applies when the backbone trains, and it stays frozen "
                       f"(model.backbone.trainable=false, fine_tune_from_epoch=null).",
                       "set model.backbone.fine_tune_from_epoch=N (or trainable=true), or "
                       f"model.backbone.{key}=null", f"model.backbone.{key}")
    _positive("model.backbone.fine_tune_learning_rate", b.fine_tune_learning_rate, allow_none=True)
    _positive("model.backbone.fine_tune_blocks", b.fine_tune_blocks, allow_none=True)
    return parse_backbone(b)


def _check_folder_settings(d) -> None:
    _check_splits(d)
    _check_duplicates(d)


def _check_source_paths(d) -> None:
    """The file or folder each source reads is named."""
    if d.source is Source.image_table and not d.table:
        raise ConfigError("dataset.source=image_table reads its labels from dataset.table, which is not set.",
                          hint="set dataset.table=/path/to/train.csv (a .csv, .tsv or .jsonl file with a path and a "
                               "label column)", config_key="dataset.table")
    if d.source in (Source.image_folder, Source.idx) and not d.path:
        raise ConfigError(
            f"dataset.source={d.source.value} reads files from dataset.path, which is not set.",
            hint=f"set dataset.path=/path/to/{'class/folders' if d.source is Source.image_folder else 'idx/files'}",
            config_key="dataset.path")


def _check_splits(d) -> None:
    """`auto` splits (the folder's own train/, val/, test/) only where a folder decides them."""
    auto = [role for role in ("train", "eval", "test") if getattr(d.splits, role) == AUTO]
    if auto and d.source not in FILE_SOURCES:
        raise ConfigError(f"dataset.splits.{auto[0]}=auto takes the split from an image folder's own train/, val/ and "
                          f"test/ folders (or a table's split column); dataset.source={d.source.value} needs a split "
                          f"string.",
                          hint=f"set dataset.splits.{auto[0]}=train (TFDS syntax, slices allowed: train[:90%])",
                          config_key=f"dataset.splits.{auto[0]}")


def _check_duplicates(d) -> None:
    """dataset.near_duplicate_radius: auto | bits of the 256-bit pHash | null; the similarity in (0, 1]."""
    r = d.near_duplicate_radius
    if not (r is None or r == AUTO or (isinstance(r, int) and not isinstance(r, bool) and 0 <= r <= 128)):
        raise ConfigError(f"dataset.near_duplicate_radius={r!r} must be auto (calibrated on the folder), a number of "
                          f"bits of the 256-bit perceptual hash from 0 to 128, or null (exact duplicates only).",
                          hint="set dataset.near_duplicate_radius=auto", config_key="dataset.near_duplicate_radius")
    if not 0.0 < d.near_duplicate_similarity <= 1.0:
        raise ConfigError(f"dataset.near_duplicate_similarity={d.near_duplicate_similarity} must be in (0, 1]: the "
                          f"correlation of two files' thumbnails at which a near-duplicate candidate counts.",
                          hint="set dataset.near_duplicate_similarity=0.98",
                          config_key="dataset.near_duplicate_similarity")


def _check_cluster(cfg: Config) -> None:
    """multi_worker needs a well-formed TF_CONFIG; TF_CONFIG makes `auto` mean multi_worker."""
    h = cfg.hardware
    task = current_task()  # raises ConfigError naming TF_CONFIG when it is malformed
    if h.strategy is StrategyKind.multi_worker and task is None:
        raise ConfigError("hardware.strategy=multi_worker needs TF_CONFIG (the cluster and this "
                          "worker's task), which is not set.",
                          hint='export TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                               '"task": {"type": "worker", "index": 0}}\' on each worker',
                          config_key="hardware.strategy")
    if task is not None and h.strategy in (StrategyKind.one_device, StrategyKind.mirrored):
        raise ConfigError(f"TF_CONFIG is set (this process is {task.describe()}) but "
                          f"hardware.strategy={h.strategy.value} trains alone: every worker would "
                          f"train its own copy.",
                          hint="set hardware.strategy=multi_worker (or auto), or unset TF_CONFIG",
                          config_key="hardware.strategy")
    if task is not None and h.logical_cpus:
        raise ConfigError("hardware.logical_cpus splits one machine for a mirrored run; it does not "
                          "combine with a multi-worker cluster (TF_CONFIG).",
                          hint="set hardware.logical_cpus=null", config_key="hardware.logical_cpus")
    if h.worker_timeout_s <= 0:
        raise ConfigError(f"hardware.worker_timeout_s={h.worker_timeout_s} must be > 0.",
                          hint="set hardware.worker_timeout_s=300", config_key="hardware.worker_timeout_s")


def _check_export(t) -> None:
    """trainer.export_formats names known formats, saved_model among them; the unsure target is a rate."""
    formats = list(t.export_formats)
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown or "saved_model" not in formats or len(set(formats)) != len(formats):
        raise ConfigError(f"trainer.export_formats={formats} must list saved_model (the self-checked serving "
                          f"export safetrain.predict uses) and any of {', '.join(EXPORT_FORMATS[1:])}, each once"
                          + (f"; unknown: {', '.join(map(str, unknown))}" if unknown else "") + ".",
                          hint="set trainer.export_formats=[saved_model,keras,tflite,tflite_int8,onnx]",
                          config_key="trainer.export_formats")
    target = t.serving_target_accuracy
    if target is not None and not 0.0 < target <= 1.0:
        raise ConfigError(f"trainer.serving_target_accuracy={target} must be in (0, 1]: the accuracy the answers "
                          f"above the \"unsure\" threshold reach on eval.",
                          hint="set trainer.serving_target_accuracy=0.99 (or null: no unsure answer)",
                          config_key="trainer.serving_target_accuracy")


def _check_paths(cfg: Config) -> None:
    """Paths from the config (resolve() made them absolute) must be what their key says: a folder
    to read from, a data dir that is a folder if it exists."""
    d = cfg.dataset
    if d.path and not Path(d.path).is_dir():
        raise ConfigError(f"dataset.path={d.path} is not an existing folder.",
                          hint="point dataset.path at the folder that holds the data", config_key="dataset.path")
    if d.data_dir and Path(d.data_dir).exists() and not Path(d.data_dir).is_dir():
        raise ConfigError(f"dataset.data_dir={d.data_dir} is a file, not a folder.",
                          hint="point dataset.data_dir at a folder (TFDS prepares datasets in it)",
                          config_key="dataset.data_dir")
