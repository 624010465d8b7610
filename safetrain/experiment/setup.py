"""The run's setup steps before the model: hardware, data, the data's checks, class weights.

Each builds one thing and returns it, and writes nothing: safetrain.experiment.recording records
each result once.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from safetrain.config.schema import ClassWeights, Config
from safetrain.core.errors import SpecError
from safetrain.models.shapes import ModelPlan
from safetrain.pipelines.build import Datasets, build_datasets
from safetrain.pipelines.scan import bad_examples_error
from safetrain.train.cluster import ClusterTask, current_task, wait_for_peers
from safetrain.train.hardware import Device, choose_precision, detect_devices, make_strategy, split_cpu

log = logging.getLogger("safetrain")


@dataclass(frozen=True)
class Hardware:
    """The devices found, the precision policy chosen (and why), and the strategy over them."""

    devices: list[Device]
    policy: str
    reason: str
    strategy: Any
    cluster: ClusterTask | None
    trial: Any = None  # safetrain.train.precision_trial.Trial: how auto measured the precision

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync

    @property
    def is_chief(self) -> bool:
        """The process that keeps checkpoints, results and the export (every process, alone)."""
        return self.cluster is None or self.cluster.is_chief


def hardware(cfg: Config, plan: ModelPlan) -> Hardware:
    """Devices, precision policy and strategy (after a multi-worker rendezvous)."""
    if cfg.hardware.logical_cpus:
        split_cpu(cfg.hardware.logical_cpus)
    devices = detect_devices()
    recurrent = any(layer.type in ("lstm", "gru", "bidirectional") for layer in plan.layers)
    policy, reason = choose_precision(devices, cfg.hardware.precision, recurrent=recurrent, backbone=plan.backbone)
    keras.mixed_precision.set_global_policy(policy)  # always set: a multirun may share one process
    cluster = current_task()
    if cluster is not None:
        waited = wait_for_peers(cluster, cfg.hardware.worker_timeout_s)
        log.info("cluster: %s; every worker reachable after %.1f s", cluster.describe(), waited)
    strategy = make_strategy(cfg.hardware.strategy, devices, cluster=cluster)
    return Hardware(devices=devices, policy=policy, reason=reason, strategy=strategy, cluster=cluster)


def data(cfg: Config, cluster: ClusterTask | None, plan: ModelPlan) -> Datasets:
    """The checked pipelines (every split scanned once)."""
    t = cfg.trainer
    why = (f" (model.backbone.name={plan.backbone.entry.name} takes RGB: an ImageNet stem)"
           if plan.backbone is not None else "")
    datasets = build_datasets(cfg.dataset, t.batch_size, t.eval_batch_size or t.batch_size, t.seed,
                              augment=cfg.augment, channels_why=why)
    if plan.backbone is not None:
        entry, low, high = plan.backbone.entry, *datasets.source.value_range
        datasets.preprocessing = (f"for backbone {entry.name}, pixels from [{low:g}, {high:g}] mapped as "
                                  f"dataset.image.normalization={datasets.spec.normalization}: {entry.preprocessing}")
    if cluster is not None:
        # Shard by element: every worker reads the whole (small, cached) dataset and keeps its share.
        # FILE sharding (TensorFlow's default) needs at least one input file per worker.
        datasets = _shard_by_data(datasets)
    return datasets


def _shard_by_data(data: Datasets) -> Datasets:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    shard = lambda ds: ds.with_options(options) if ds is not None else None  # noqa: E731
    return dataclasses.replace(data, train_epoch=lambda epoch: shard(data.train_epoch(epoch)),
                               train_plain=lambda epoch: shard(data.train_plain(epoch)),
                               eval=shard(data.eval), test=shard(data.test))


def check_data(cfg: Config, data: Datasets) -> None:
    """Bad examples refused unless dataset.on_bad_example=skip; a training split with no batch."""
    refused = bad_examples_error(data.bad, cfg.dataset.on_bad_example)
    if refused is not None:
        raise refused
    if data.bad:
        log.warning("skipped %d bad examples (dataset.on_bad_example=skip), listed in errors.jsonl; first: %s",
                    len(data.bad), data.bad[0].describe())
    if data.steps_per_epoch == 0:
        t = cfg.trainer
        raise SpecError(
            f"the training split {data.splits['train']!r} has {data.counts['train']} examples, "
            f"fewer than one batch (trainer.batch_size={t.batch_size}): no step would run",
            hint=f"set trainer.batch_size={max(1, data.counts['train'] or 1)} or less, or use more data",
            config_key="trainer.batch_size")


def positive_weights(data: Datasets) -> list[float]:
    """Multi-label dataset.class_weights=balanced: each label's positives weighed by its negatives
    over its positives on the training split (the `pos_weight` of TensorFlow's weighted
    cross-entropy), so a rare label's few positives count as much as its many negatives."""
    images, counts = data.counts["train"], data.class_counts["train"]
    empty = [name for name, n in zip(data.source.names(), counts) if not n]
    if empty:
        raise SpecError(f"dataset.class_weights=balanced: label {empty[0]!r} has no training image "
                        f"(split {data.splits['train']!r}), so it has no positives to weigh",
                        hint="give the weights as a list (one per label), or add images with that label",
                        config_key="dataset.class_weights")
    return [float((images - n) / n) if images > n else 1.0 for n in counts]


def class_weights(cfg: Config, data: Datasets) -> list[float] | None:
    """dataset.class_weights for this data: balanced (scikit-learn's n / (K * n_class) over the
    training split's counts) or the given list, checked against the classes found."""
    weights, names = cfg.dataset.class_weights, data.source.names()
    if weights == ClassWeights.none:
        return None
    if weights == ClassWeights.balanced and data.source.multi_label:
        return positive_weights(data)
    if weights == ClassWeights.balanced:
        counts = data.class_counts["train"]
        empty = [name for name, n in zip(names, counts) if not n]
        if empty:
            raise SpecError(f"dataset.class_weights=balanced: class {empty[0]!r} has no training examples "
                            f"(split {data.splits['train']!r}), so it has no weight to balance",
                            hint="give the weights as a list, or add examples of that class",
                            config_key="dataset.class_weights")
        from sklearn.utils.class_weight import compute_class_weight

        ids = np.arange(len(names))
        return [float(w) for w in compute_class_weight("balanced", classes=ids, y=np.repeat(ids, counts))]
    if len(weights) != len(names):
        raise SpecError(f"dataset.class_weights has {len(weights)} weights, and the data has {len(names)} classes "
                        f"({', '.join(names)})", hint=f"give {len(names)} weights, one per class id, in that order",
                        config_key="dataset.class_weights")
    return [float(w) for w in weights]
