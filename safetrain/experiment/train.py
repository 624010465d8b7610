"""Assemble and run one training job: hardware, data, model, loop, test, export.

Called by safetrain.experiment.run after the config has been validated; this is where TensorFlow is first
imported. Each setup step (`_hardware`, `_data`, `_model`) builds and returns a typed result and
writes nothing; `_train` records each result once, through the run record (safetrain.record.run_record),
and keeps the diagnosis context (safetrain.core.run_state) current. TensorFlow's and Keras' own errors
leave here diagnosed (safetrain.diagnose.diagnosis): one kind, the layer or key, the fix, and the exit code
of the phase they happened in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from safetrain.models import gradients
from safetrain.models.backbone_build import backbone_of, fetch_imagenet
from safetrain.models.build import build_model, layer_name
from safetrain.models.shapes import ModelPlan, infer
from safetrain.pipelines.build import Datasets, build_datasets
from safetrain.pipelines.scan import bad_examples_error
from safetrain.experiment import lr_find, results, visuals
from safetrain.train import schedules
from safetrain.train.actions import (Evaluate, GradientProbe, LogScalars, ReducePlateau, SaveCheckpoints, SelectBest,
                               SwitchWeights)
from safetrain.train.best import BestState
from safetrain.train.ema import EmaWeights
from safetrain.train.fine_tune import FineTune
from safetrain.train.checkpoints import Checkpoints
from safetrain.train.cluster import ClusterTask, current_task, wait_for_peers
from safetrain.config.schema import BadExamplePolicy, Config, Mode, OnDeadGradient, OnNan, OnOom
from safetrain.experiment.validate import best_mode
from safetrain.diagnose.diagnosis import diagnose
from safetrain.diagnose.facts import is_safetrain_bug, layer_from_op
from safetrain.train.env_report import env_text, versions
from safetrain.core.errors import ErrorKind, GraphError, NanStop, NumericsError, SafetrainError, SpecError
from safetrain.experiment.export import export
from safetrain.train.hardware import Device, choose_precision, detect_devices, make_strategy, split_cpu
from safetrain.train.loop import TrainLoop
from safetrain.train.optimizers import LOSSES, OPTIMIZERS, exclude_one_dimensional
from safetrain.train.progress import Progress
from safetrain.record.run_record import RunRecord
from safetrain.diagnose.replay import locate_non_finite
from safetrain.core.run_state import Context, LayerRef
from safetrain.train.signals import SignalGuard
from safetrain.train.steps import Steps
from safetrain.train.throughput import StepTimer, WallTime

log = logging.getLogger("safetrain")
tfds.disable_progress_bar()

TOP_LOSSES = 15  # examples in the top-losses grid


@dataclass(frozen=True)
class Hardware:
    """The devices found, the precision policy chosen (and why), and the strategy over them."""

    devices: list[Device]
    policy: str
    reason: str
    strategy: Any
    cluster: ClusterTask | None

    @property
    def replicas(self) -> int:
        return self.strategy.num_replicas_in_sync


@dataclass(frozen=True)
class Built:
    """The model and optimizer, built in the strategy's scope for the real input shape."""

    plan: ModelPlan
    model: keras.Model
    optimizer: Any
    layers: dict[str, LayerRef]  # Keras layer name -> the config entry it came from
    schedule: schedules.Plan     # the learning rate over the steps
    recipe: str                  # optimizer, learning-rate schedule, weight decay, label smoothing, in words
    fine_tune: FineTune | None = None  # a backbone that trains (from the start or a later epoch)


def train(cfg: Config, plan: ModelPlan, record: RunRecord, guard: SignalGuard | None = None,
          checkpoint_dir: Path | None = None) -> None:
    """Run the job. `checkpoint_dir`: the chief's checkpoints (default <run dir>/checkpoints).
    Under trainer.on_oom=halve_batch an out-of-memory attempt is recorded and the job runs again
    from the last checkpoint with half the batch."""
    record.open_tensorboard()
    checkpoint_dir = checkpoint_dir or record.run_dir / "checkpoints"
    while True:
        context = Context(phase="data")
        try:
            _train(cfg, plan, record, guard, checkpoint_dir, context)
            return
        except SafetrainError:
            raise
        except Exception as err:  # noqa: BLE001 - TensorFlow/Keras failures become one diagnosis
            if is_safetrain_bug(err):
                raise
            error = diagnose(err, context)
            smaller = _halved(cfg, error)
            if smaller is None:
                raise error from err
        note = (f"{error.message}; retrying from the last checkpoint with trainer.batch_size="
                f"{smaller.trainer.batch_size} (trainer.on_oom=halve_batch)")
        record.failure(error, step=context.step, message=note)
        log.warning("out of memory with trainer.batch_size=%d: retrying from the last checkpoint with %d "
                    "(trainer.on_oom=halve_batch)", cfg.trainer.batch_size, smaller.trainer.batch_size)
        cfg = smaller


def _train(cfg: Config, plan: ModelPlan, record: RunRecord, guard: SignalGuard | None, checkpoint_dir: Path,
           context: Context) -> None:
    wall = WallTime()
    started = wall.started
    t = cfg.trainer
    report = record.report
    report.versions = versions()

    hardware = _hardware(cfg, plan)
    _record_hardware(record, cfg, hardware, context)
    keras.utils.set_random_seed(t.seed)
    if t.deterministic:
        tf.config.experimental.enable_op_determinism()

    if plan.backbone is not None:  # before the data: offline, the download fails in seconds
        context.phase = "build"
        fetch_imagenet(plan.backbone, plan.input_shape)
        context.phase = "data"
    with wall.phase("scan"):
        data = _data(cfg, hardware.cluster, plan)
    if plan.backbone is not None:
        entry = plan.backbone.entry
        data.preprocessing = (f"for backbone {entry.name}, pixels from [{data.source.value_range[0]:g}, "
                              f"{data.source.value_range[1]:g}] mapped as dataset.image.normalization="
                              f"{data.spec.normalization}: {entry.preprocessing}")
    _record_data(record, cfg, data)
    _check_data(cfg, data)
    class_weights = _class_weights(cfg, data)
    if class_weights:
        names = data.source.names()
        report.data["class_weights"] = dict(zip(names, class_weights))
        how = cfg.dataset.class_weights if isinstance(cfg.dataset.class_weights, str) else "a list"
        log.info("class weights (dataset.class_weights: %s): %s", how,
                 ", ".join(f"{name} {w:.3g}" for name, w in zip(names, class_weights)))

    plan = infer(list(plan.layers), data.spec.shape, data.source.num_classes, backbone=plan.backbone)  # real input
    _record_plan(record, cfg, plan)
    context.phase, context.input_spec = "build", data.spec.describe()
    built = _model(cfg, plan, data, hardware)
    _record_model(record, cfg, built, hardware.policy, context)
    context.phase = "train"
    if t.lr_find:
        _lr_find(cfg, built, data, hardware, record, class_weights)
        return
    if cfg.dry_run:
        log.info("dry run: the config, the data (every example scanned) and the model (%s parameters) check out; "
                 "nothing was trained", f"{report.model['params']:,}")
        return

    model, optimizer, strategy = built.model, built.optimizer, hardware.strategy
    spec_of = lambda ds: strategy.experimental_distribute_dataset(ds).element_spec  # noqa: E731
    eval_ds = data.eval if data.eval is not None else data.test

    def make_steps(**overrides) -> Steps:
        args = dict(strategy=strategy, model=model, optimizer=optimizer,
                    loss_fn=LOSSES.get(t.loss)(label_smoothing=t.label_smoothing),
                    eval_spec=spec_of(eval_ds) if eval_ds is not None else None,
                    jit_compile=t.jit_compile, guard_updates=t.on_nan is OnNan.skip_step,
                    time_input=not t.deterministic,
                    on_missing_gradients=lambda paths: _gradient_error(built.plan, paths, ErrorKind.missing_gradient),
                    class_weights=class_weights, **(built.fine_tune.steps_args() if built.fine_tune else {}))
        return Steps(**{**args, **overrides})

    def train_batches(epoch: int, skip: int):
        dataset = data.train_epoch(epoch)
        return strategy.experimental_distribute_dataset(dataset.skip(skip) if skip else dataset)

    selection = _selection(cfg)
    plateau = built.schedule.plateau
    plateau_state = plateau.trackables() if plateau else {}
    with strategy.scope():  # the best epoch's record (and weights): chosen on the eval split only
        best = BestState(model, keep_weights=selection.keep) if data.eval is not None else None
    tuned = built.fine_tune
    checkpoints = Checkpoints(checkpoint_dir, model, optimizer, writer=hardware.cluster is None or
                              hardware.cluster.is_chief, batch_size=t.batch_size,
                              run_spec=_run_spec(cfg, data.source.num_classes, selection),
                              extra={**(best.trackables() if best else {}), **plateau_state,
                                     **({"fine_tune_optimizer": tuned.optimizer} if tuned else {})})
    steps = tuned.steps_for(1, make_steps, on_switch=lambda _: None) if tuned else make_steps()
    clock, progress = time.perf_counter, Progress()
    probe = GradientProbe(steps.variable_paths, lambda paths, step: _dead_gradients(built.plan, paths, step, t, record))
    restart_probe = lambda new: probe.restart(new.variable_paths)  # noqa: E731 - the backbone was unfrozen
    steps_for_epoch = (lambda epoch: tuned.steps_for(epoch, make_steps, restart_probe)) if tuned else None
    # Steady-state timing starts after the last traced step: the probe's steps, then the plain one.
    timer = StepTimer(warmup_steps=probe.steps + 1)
    loop = TrainLoop(steps=steps, train_batches=train_batches, distribute=strategy.experimental_distribute_dataset,
                     cfg=t, record=record, checkpoints=checkpoints, steps_per_epoch=data.steps_per_epoch,
                     probe=probe, timer=timer, progress=progress, started=started, clock=clock, guard=guard,
                     context=context, steps_for_epoch=steps_for_epoch,
                     steps_per_loop=None if t.steps_per_loop == "auto" else int(t.steps_per_loop))
    evaluation = Evaluate(wall.timed("eval", loop.evaluate), data.eval, record) if data.eval is not None else None
    choose = SelectBest(evaluation, best, selection.metric, selection.higher, selection.min_delta,
                        selection.patience) if best else None
    ema = EmaWeights(optimizer, *([tuned.optimizer] if tuned else [])) if t.ema is not None else None
    # The rate the logged step used (the optimizer has already counted that step).
    used_rate = lambda: schedules.value_at(built.schedule.learning_rate, optimizer.iterations - 1)  # noqa: E731
    # In this order: the eval result (of the moving average, with trainer.ema) feeds the selection,
    # the trained weights go back, and checkpointing saves what all of them decided.
    o = cfg.optimizer
    reduce = ReducePlateau(evaluation, plateau, o.plateau_metric.value,
                           best_mode(o.plateau_metric, None) is Mode.max, o.plateau_patience,
                           o.decay_factor, o.min_learning_rate / o.learning_rate, o.learning_rate) \
        if plateau else None  # validate(): plateau needs eval
    epoch_end = [action for action in (evaluation, choose, reduce) if action] if evaluation else []
    if ema and epoch_end:
        epoch_end = [SwitchWeights(ema.use, True), *epoch_end, SwitchWeights(ema.use, False)]
    loop.actions = [probe, LogScalars(t.log_every_steps, record, progress, timer, learning_rate=used_rate),
                    *epoch_end,
                    SaveCheckpoints(checkpoints, t.checkpoint_every_steps, t.checkpoint_every_seconds, clock)]
    wall.add("start_up", wall.since_start())
    try:
        try:
            result = loop.run()
        except NanStop as stop:
            if hardware.cluster is not None:
                raise
            found = locate_non_finite(
                make_steps=lambda: make_steps(guard_updates=False, time_input=False), restore=checkpoints.restore,
                train_batches=train_batches, steps_per_epoch=data.steps_per_epoch, failed_step=stop.step,
                model=model, context=context)
            raise NumericsError(f"{stop.message}. {found.text}", hint=stop.hint,
                                config_key=found.config_key or stop.config_key, op=found.op) from None
        restored = _record_best(record, best, selection) if best is not None else False
        if ema is not None and not restored:  # the best epoch's copy, if restored, is of the average already
            ema.use(True)
        with wall.phase("test"):
            test = loop.evaluate(data.test) if data.test is not None else (None, None)
    finally:
        _record_loop(record, loop, evaluation, model, wall)
    report.metrics.update(test_loss=test[0], test_accuracy=test[1])
    record.scalars(result.steps, {"test/loss": test[0], "test/accuracy": test[1]})
    if data.test is not None:
        if hardware.cluster is None or hardware.cluster.is_chief:
            with wall.phase("results"):
                _results(cfg, steps, data, record, result.steps)
    if t.export and (hardware.cluster is None or hardware.cluster.is_chief):
        with wall.phase("export"):
            report.export = export(model, data, cfg.dataset, record.run_dir / "export", tuple(t.export_formats),
                                   float32_model=lambda: _float32_copy(built.plan, model),
                                   layer_of=lambda node: layer_from_op(node, context))
        log.info("exported: %s (self-check on test images: max |diff| %s)%s", report.export["path"],
                 report.export["self_check_max_abs_diff"], _tflite_note(report.export.get("tflite")))
    elif t.export:  # saving may read variables collectively: every worker saves, only the chief keeps it
        with tempfile.TemporaryDirectory(prefix="safetrain-worker-export-") as scratch:
            export(model, data, cfg.dataset, Path(scratch) / "export")
    _record_wall(record, wall)
    _final_summary(record)


# --- the setup steps: each builds one thing and returns it ------------------------------------

def _hardware(cfg: Config, plan: ModelPlan) -> Hardware:
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


def _data(cfg: Config, cluster: ClusterTask | None, plan: ModelPlan) -> Datasets:
    """The checked pipelines (every split scanned once)."""
    t = cfg.trainer
    why = (f" (model.backbone.name={plan.backbone.entry.name} takes RGB: an ImageNet stem)"
           if plan.backbone is not None else "")
    data = build_datasets(cfg.dataset, t.batch_size, t.eval_batch_size or t.batch_size, t.seed, augment=cfg.augment,
                          channels_why=why)
    if cluster is not None:
        # Shard by element: every worker reads the whole (small, cached) dataset and keeps its share.
        # FILE sharding (TensorFlow's default) needs at least one input file per worker.
        data = _shard_by_data(data)
    return data


def _check_data(cfg: Config, data: Datasets) -> None:
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
            f"the training split {cfg.dataset.splits.train!r} has {data.counts['train']} examples, "
            f"fewer than one batch (trainer.batch_size={t.batch_size}): no step would run",
            hint=f"set trainer.batch_size={max(1, data.counts['train'] or 1)} or less, or use more data",
            config_key="trainer.batch_size")


def _class_weights(cfg: Config, data: Datasets) -> list[float] | None:
    """dataset.class_weights for this data: balanced (scikit-learn's n / (K * n_class) over the
    training split's counts) or the given list, checked against the classes found."""
    weights, names = cfg.dataset.class_weights, data.source.names()
    if isinstance(weights, str) and weights == "none":
        return None
    if isinstance(weights, str):  # balanced
        counts = data.class_counts["train"]
        empty = [name for name, n in zip(names, counts) if not n]
        if empty:
            raise SpecError(f"dataset.class_weights=balanced: class {empty[0]!r} has no training examples "
                            f"(split {cfg.dataset.splits.train!r}), so it has no weight to balance",
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


def _model(cfg: Config, plan: ModelPlan, data: Datasets, hardware: Hardware) -> Built:
    """Model and optimizer, built in the strategy's scope for the planned shapes."""
    # Seeded again right before the weights are drawn: preparing a TFDS dataset (first run on a
    # data dir only) consumes Python's global RNG, which Keras' unseeded initializers draw from.
    t, o = cfg.trainer, cfg.optimizer
    keras.utils.set_random_seed(t.seed)
    run_steps = data.steps_per_epoch * t.epochs
    total_steps = min(run_steps, t.max_steps or run_steps)
    with hardware.strategy.scope():
        schedule = schedules.learning_rate(o, data.steps_per_epoch, total_steps)
        model = build_model(plan, input_dtype=data.spec.dtype, seed=t.seed)
        make_optimizer = lambda rate: OPTIMIZERS.get(o.name)(rate, o.clipnorm, o.weight_decay, t.ema)  # noqa: E731
        tuned = None
        if plan.backbone is not None and plan.backbone.trains_ever():
            tuned = FineTune.build(plan.backbone, backbone_of(model), make_optimizer, schedule.learning_rate,
                                   o.learning_rate, schedule.describe)
        tuned_ids = {id(v) for v in tuned.variables} if tuned else set()
        own = [v for v in model.trainable_variables if id(v) not in tuned_ids]  # the head's optimizer's
        optimizer = make_optimizer(schedule.learning_rate)
        undecayed = exclude_one_dimensional(optimizer, own)
        if hardware.policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        # Slots must exist before the first step under a strategy, and before a restore.
        optimizer.build(own)
    recipe = f"{o.name}, learning rate {schedule.describe}"
    if plan.backbone is not None:
        recipe += f"; {tuned.describe()}" if tuned else (f"; backbone {plan.backbone.entry.name} frozen (its weights "
                                                         f"are meant to get no update; the gradient checks leave "
                                                         f"them out)")
    if o.weight_decay:
        recipe += f", weight decay {o.weight_decay:g} (not on the {undecayed} 1-D weights: biases, normalization)"
    if t.label_smoothing:
        recipe += f", label smoothing {t.label_smoothing:g}"
    if t.ema is not None:
        recipe += f", weights' moving average (decay {t.ema:g}) for eval, test and export"
        horizon, steps = 1 / (1 - t.ema), total_steps
        if horizon > steps / 2:
            log.warning("warning: trainer.ema=%g averages over about %d steps, and the run has %d: the average is "
                        "mostly the early weights; lower trainer.ema (e.g. %g)", t.ema, round(horizon), steps,
                        max(0.5, round(1 - 10 / steps, 4)))
    return Built(plan=plan, model=model, optimizer=optimizer, layers=_layer_refs(plan, model),
                 schedule=schedule, recipe=recipe, fine_tune=tuned)


# --- recording: each setup result is written once, here -----------------------------------------

def _record_hardware(record: RunRecord, cfg: Config, hw: Hardware, context: Context) -> None:
    batch = cfg.trainer.batch_size
    devices = [d.describe() for d in hw.devices]
    record.report.hardware = {
        "devices": devices, "precision_policy": hw.policy, "precision_reason": hw.reason,
        "strategy": _strategy_name(hw.strategy), "replicas": hw.replicas, "global_batch_size": batch,
        "per_replica_batch_size": batch // hw.replicas, "cluster": hw.cluster.describe() if hw.cluster else None}
    log.info("hardware: %s | precision %s (%s) | %s x%d | batch %d global, %d per replica",
             ", ".join(devices), hw.policy, hw.reason, record.report.hardware["strategy"], hw.replicas,
             batch, batch // hw.replicas)
    record.text("env/report", env_text(record.report.versions, hw.devices, record.report.hardware))
    record.hparams(_hparams(cfg, hw.policy, hw.replicas))
    context.precision, context.batch_size = hw.policy, batch
    context.device = devices[-1] if devices else None


def _record_data(record: RunRecord, cfg: Config, data: Datasets) -> None:
    skip = cfg.dataset.on_bad_example is BadExamplePolicy.skip
    record.report.data["counts"] = data.counts
    record.report.data["skipped"] = len(data.bad) if skip else 0  # with error, bad examples stop the run
    record.report.data["sampling"] = data.sampling
    log.info("pipeline:\n  %s", "\n  ".join(data.describe().splitlines()))
    record.text("pipeline/spec", data.describe())
    first_images, _ = next(iter(data.train_plain(1).take(1)))
    record.image("inputs/after_enforcement", visuals.mosaic(first_images.numpy()[:32].astype("float32")))
    if data.augmentation != "none":  # the same batch as the model sees it in training
        augmented, _ = next(iter(data.train_epoch(1).take(1)))
        record.image("inputs/after_augmentation", visuals.mosaic(augmented.numpy()[:32].astype("float32")))
    for bad in data.bad:
        record.event(phase="data", kind=ErrorKind.bad_example, message=bad.reason, example=bad.key,
                     config_key="dataset.on_bad_example",
                     hint="skipped" if skip else "")
    _record_findings(record, cfg, data)


_FINDING_KEYS = {ErrorKind.duplicate: "dataset.near_duplicate_radius", ErrorKind.leakage: "dataset.on_leakage",
                 ErrorKind.missing_class: "dataset.allow_missing_classes"}


def _record_findings(record: RunRecord, cfg: Config, data: Datasets) -> None:
    """What an image folder's scan found beyond bad examples: the scan's work, duplicates, leakage."""
    for key in ("scan", "duplicates", "selected"):
        if key in data.report:
            record.report.data[key] = data.report[key]
    for i, event in enumerate(data.events):
        kind = ErrorKind(event.kind)
        record.event(phase="data", kind=kind, message=event.message, example=event.key, other_example=event.other,
                     config_key=_FINDING_KEYS[kind], sync=i == len(data.events) - 1)
    dup = data.report.get("duplicates")
    if dup and dup["cross_split"]:
        first = next(e.message for e in data.events if e.kind == ErrorKind.leakage)
        action = ("dropped from eval/test" if cfg.dataset.on_leakage.value == "drop_from_eval"
                  else "kept (dataset.on_leakage=warn: set drop_from_eval or error)")
        log.warning("warning: %d image(s) appear in two splits (leakage), %s; all in errors.jsonl; first: %s",
                    dup["cross_split"], action, first)
    if dup and dup["exact"] + dup["near"] - dup["cross_split"] - dup["conflicting_labels"] > 0:
        log.info("duplicates within a split: %d exact, %d near (pHash radius %s), listed in errors.jsonl",
                 dup["exact"] - dup["conflicting_labels"], dup["near"], dup["near_radius"])


def _record_plan(record: RunRecord, cfg: Config, plan: ModelPlan) -> None:
    log.info("model %s:\n%s", cfg.model.name, plan.table())
    record.text("model/summary", plan.table())


def _record_model(record: RunRecord, cfg: Config, built: Built, policy: str, context: Context) -> None:
    params = built.model.count_params()  # counted on the built model: custom layers' are unknown to the plan
    record.report.model = {"name": cfg.model.name, "params": params, "flops_per_example": built.plan.total_flops}
    if built.plan.backbone is not None:
        b = built.plan.backbone
        record.report.model["backbone"] = {
            "name": b.entry.name, "weights": b.weights, "pooling": b.pooling, "state": b.state(),
            "preprocessing": b.entry.preprocessing, "normalization": cfg.dataset.image.normalization.value,
            "flops_note": "recorded at 224x224 (TensorFlow profiler), scaled by the input's area"}
    log.info("optimizer: %s", built.recipe)
    record.text("optimizer/recipe", built.recipe)
    context.params = params
    context.activation_bytes_per_example = _activation_bytes(built.plan, policy)
    context.layers = built.layers


def _record_loop(record: RunRecord, loop: TrainLoop, evaluation: Evaluate | None, model, wall: WallTime) -> None:
    """What training ended with, stopped or not: position, metrics, throughput, the final weights."""
    report, r = record.report, loop.result
    report.model["weights_sha256"] = weights_digest(model)
    report.steps, report.epochs = r.steps, r.epochs
    report.time_to_first_step_s = r.time_to_first_step_s
    report.metrics.update(train_loss=r.train_loss, train_accuracy=r.train_accuracy,
                          eval_loss=evaluation.loss if evaluation else None,
                          eval_accuracy=evaluation.accuracy if evaluation else None)
    report.throughput = loop.timer.summary()
    # What the user got: every example trained over the seconds of the training epochs (each epoch's
    # start, tracing, logging and periodic checkpoints included; evaluation and epoch-end saves not).
    report.throughput["effective_examples_per_sec"] = (
        round(r.examples / r.train_seconds, 1) if r.examples and r.train_seconds > 0 else None)
    parts = {"epoch_setup": r.epoch_setup_seconds, "first_calls": r.first_call_seconds,
             "steady_calls": r.steady_call_seconds, "actions": r.action_seconds}
    report.throughput["train_seconds"] = {**{k: round(v, 3) for k, v in parts.items()},
                                          "other": round(max(0.0, r.train_seconds - sum(parts.values())), 3)}
    report.throughput["steps_per_loop"] = r.steps_per_loop
    report.throughput["steps_per_loop_reason"] = r.steps_per_loop_reason
    wall.add("train", r.train_seconds)
    _record_wall(record, wall)
    rate = report.throughput["examples_per_sec"]
    # Training costs about 3x the forward pass (forward + two backward matmuls per layer): an
    # estimate for comparing machines, not a measurement of the kernels.
    report.throughput["train_flops_per_sec"] = (
        round(3 * report.model["flops_per_example"] * rate) if rate and report.model else None)
    report.data["skipped_steps"] = r.skipped_steps


def _record_wall(record: RunRecord, wall: WallTime) -> None:
    """report.json throughput.wall_seconds: where the run's time went so far. start_up is from the
    run's start to the first train call (scan included, which is also given alone); `other` is
    what the named phases leave (epoch-end checkpoints, TensorBoard writes, restoring)."""
    seconds = dict(wall.seconds)
    total = wall.since_start()
    named = sum(v for k, v in seconds.items() if k != "scan")
    out = {k: round(seconds.get(k, 0.0), 3) for k in ("start_up", "scan", "train", "eval", "test", "results", "export")}
    out.update(other=round(max(0.0, total - named), 3), total=round(total, 3))
    record.report.throughput["wall_seconds"] = out


def _predictions(steps: Steps, data: Datasets, split: str, keep: int = 0):
    """Every example of `split` through the model: class ids, probabilities, keys (file paths);
    with `keep`, also {index: model input} of the `keep` highest-loss examples, picked as the batches
    go (one pass; never more than `keep` plus one batch of images held)."""
    ds = data.with_keys(split)
    if ds is None:
        return None, {}
    labels, probabilities, keys = [], [], []
    kept: dict[int, tuple[float, np.ndarray]] = {}  # index -> (loss, image)
    for images, y, key in ds:
        start = len(keys)
        probabilities.append(steps.probabilities(images).numpy())
        labels.append(y.numpy().astype(np.int64))
        keys += [k.decode() for k in key.numpy()]
        if keep:
            batch = results.Predictions(split, labels[-1], probabilities[-1], keys[start:])
            for i in results.top_loss_indices(batch, keep):
                kept[start + int(i)] = (float(batch.losses[i]), images[int(i)].numpy().astype(np.float32))
            # the same order as results.top_loss_indices: highest loss first, the earlier example on ties
            kept = dict(sorted(kept.items(), key=lambda item: (-item[1][0], item[0]))[:keep])
    if not keys:
        return results.Predictions(split, np.zeros(0, np.int64), np.zeros((0, 1)), []), {}
    pred = results.Predictions(split, np.concatenate(labels), np.concatenate(probabilities), keys)
    return pred, {i: image for i, (_, image) in kept.items()}


def _results(cfg: Config, steps: Steps, data: Datasets, record: RunRecord, step: int) -> None:
    """What the test split shows about the model's mistakes — the labelled confusion matrix, the
    top losses, precision/recall/F1 per class — in TensorBoard, report.json and results/*.png, and
    for image folders the suspect labels of eval and test (suspect_labels.csv)."""
    test, images = _predictions(steps, data, "test", keep=TOP_LOSSES)
    if test is None or not len(test.labels):
        return
    names, out = data.source.names(), record.run_dir / "results"
    matrix = results.confusion(test, len(names))
    accuracy = visuals.per_class_accuracy(matrix)
    record.image("test/confusion_matrix", results.confusion_figure(matrix, names, out / "confusion_matrix.png"),
                 step=step)
    record.text("test/confusion_table", visuals.matrix_text(matrix, names), step=step, code=False)
    record.scalars(step, {f"test_class_accuracy/{name}": float(a) for name, a in zip(names, accuracy)
                          if np.isfinite(a)})
    metrics = record.report.metrics
    metrics["test_class_accuracy"] = {name: (float(a) if np.isfinite(a) else None) for name, a in zip(names, accuracy)}
    metrics["per_class"] = results.per_class_report(test, names)
    record.text("test/per_class", results.report_text(metrics["per_class"]), step=step, code=False)

    chosen = results.top_loss_indices(test, TOP_LOSSES)
    grid = results.top_losses_figure(np.stack([images[int(i)] for i in chosen]), test, chosen, names,
                                     out / "top_losses.png")
    record.image("test/top_losses", grid, step=step)

    if cfg.dataset.source.value == "image_folder":
        evaluated = [p for p in (_predictions(steps, data, "eval")[0], test) if p is not None]
        suspect = results.suspects(evaluated, names, cfg.dataset.suspect_min_probability)
        results.write_suspects(record.run_dir / "suspect_labels.csv", suspect)
        metrics["suspect_labels"] = {"count": len(suspect), "file": "suspect_labels.csv",
                                     "min_probability": cfg.dataset.suspect_min_probability}
        if suspect:
            first = suspect[0]
            log.info("suspect labels: %d eval/test files the model puts in another class with p >= %g "
                     "(suspect_labels.csv); most confident: %s labelled %s, predicted %s %.2f", len(suspect),
                     cfg.dataset.suspect_min_probability, first["path"], first["given_label"],
                     first["predicted_label"], first["probability"])


def _final_summary(record: RunRecord) -> None:
    report = record.report
    m, tp = report.metrics, report.throughput
    acc = f"{m['test_accuracy']:.4f}" if m["test_accuracy"] is not None else "n/a"
    effective = tp.get("effective_examples_per_sec")
    rate = f"{effective:,.0f} examples/s" if effective else "n/a examples/s"
    if tp["examples_per_sec"]:
        rate += f" (training epochs; {tp['examples_per_sec']:,.0f} median steady-state step)"
    skipped = report.data.get("skipped", 0)
    log.info("done: test accuracy %s | %s | %d steps, %d epochs%s",
             acc, rate, report.steps, report.epochs,
             f" | {skipped} bad examples skipped (errors.jsonl)" if skipped else "")
    if m.get("per_class"):
        worst = results.worst_classes(m["per_class"])
        log.info("worst classes (test F1): %s", ", ".join(
            f"{name} {r['f1']:.3f} (precision {r['precision']:.3f}, recall {r['recall']:.3f}, {r['support']} examples)"
            for name, r in worst))
    log.info("tensorboard --logdir %s", record.run_dir / "tb")


# --- helpers ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Selection:
    """How the best eval epoch is chosen (trainer.keep_best, trainer.early_stopping)."""

    keep: bool                  # restore the best epoch's weights for test and export
    patience: int | None        # early stopping after this many epochs without improvement; None = off
    metric: str = "accuracy"    # of the eval split
    higher: bool = True
    min_delta: float = 0.0


def _selection(cfg: Config) -> Selection:
    t, stopping = cfg.trainer, cfg.trainer.early_stopping
    # null: keep the best when there is an eval split (validate() refused an explicit true without one).
    keep = bool(cfg.dataset.splits.eval) if t.keep_best is None else t.keep_best
    if stopping is None:
        return Selection(keep=keep, patience=None)
    return Selection(keep=keep, patience=stopping.patience, metric=stopping.metric.value,  # patience None: off
                     higher=best_mode(stopping.metric, stopping.mode) is Mode.max, min_delta=stopping.min_delta)


def _record_best(record: RunRecord, best: BestState, selection: Selection) -> bool:
    """The chosen epoch in report.json, and (keep_best) its weights back in the model for testing;
    True when they were restored."""
    if not best.epoch:
        return False
    restored = selection.keep and best.restore()
    record.report.best = {"epoch": best.epoch, "step": best.step, "metric": f"eval_{selection.metric}",
                          "value": best.value, "weights_restored": restored}
    if restored:
        log.info("best eval %s %.4f at epoch %d (step %d): its weights are tested and exported (trainer.keep_best)",
                 selection.metric, best.value, best.epoch, best.step)
    return restored


def _run_spec(cfg: Config, num_classes: int, selection: Selection) -> dict:
    """The settings that fix the weights' shapes and meaning, and what the checkpoint holds: a
    resume must keep them."""
    image = cfg.dataset.image
    return {"trainer.keep_best": selection.keep, "trainer.ema": cfg.trainer.ema,
            "optimizer.schedule": cfg.optimizer.schedule.value,
            "dataset.image.height": image.height, "dataset.image.width": image.width,
            "dataset.image.channels": image.channels, "dataset.image.normalization": image.normalization.value,
            "dataset.num_classes": num_classes, "dataset.label_encoding": cfg.dataset.label_encoding.value,
            "model.layers": json.dumps(cfg.model.layers, sort_keys=True, default=str),
            **_backbone_spec(cfg)}


def _backbone_spec(cfg: Config) -> dict:
    """The backbone settings a resume must keep (recorded only with a backbone, so run dirs of
    models without one resume as before)."""
    b = cfg.model.backbone
    if b.name is None:
        return {}
    return {"model.backbone.name": b.name, "model.backbone.pooling": b.pooling.value,
            "model.backbone.trainable": b.trainable, "model.backbone.fine_tune_from_epoch": b.fine_tune_from_epoch,
            "model.backbone.fine_tune_blocks": b.fine_tune_blocks,
            "model.backbone.fine_tune_learning_rate": b.fine_tune_learning_rate}


def _halved(cfg: Config, error: SafetrainError) -> Config | None:
    """The config for the next attempt under trainer.on_oom=halve_batch, or None to stop."""
    t = cfg.trainer
    if (error.kind is not ErrorKind.out_of_memory or t.on_oom is not OnOom.halve_batch
            or t.batch_size // 2 < t.min_batch_size):
        return None
    trainer = dataclasses.replace(t, batch_size=t.batch_size // 2,
                                  eval_batch_size=(t.eval_batch_size // 2 or 1) if t.eval_batch_size else None)
    return dataclasses.replace(cfg, trainer=trainer)


def _layer_refs(plan: ModelPlan, model) -> dict[str, LayerRef]:
    """Keras layer name -> the config entry it came from, for naming layers in diagnoses."""
    refs = {}
    specs = {layer_name(spec): spec for spec in plan.layers}
    for layer in model.layers[1:-1]:
        spec = specs.get(layer.name)
        if spec is not None:
            refs[layer.name] = LayerRef(spec.index, spec.label(), spec.key, type(layer).__name__)
        elif plan.backbone is not None:  # the one nested model: the backbone
            refs[layer.name] = LayerRef(-1, plan.backbone.label(), "model.backbone.name", type(layer).__name__)
    head = model.layers[-1]
    refs[head.name] = LayerRef(len(plan.layers), f"head dense {plan.num_classes}", "dataset.num_classes", "Dense")
    return refs


def _tflite_note(tflite: dict | None) -> str:
    if tflite is None:
        return ""
    if tflite.get("path") is None:
        return "; no model.tflite (report.json export.tflite says why)"
    return f"; model.tflite {tflite['bytes'] / 1e6:.1f} MB, max |diff| {tflite['max_abs_diff']} vs the training model"


def _lr_find(cfg: Config, built: Built, data: Datasets, hardware: Hardware, record: RunRecord,
             class_weights: list[float] | None) -> None:
    """trainer.lr_find: the range test (safetrain.lr_find) on the run's own batches, from its initial
    weights, which are put back afterwards; nothing is trained or checkpointed."""
    t, o = cfg.trainer, cfg.optimizer
    model, strategy = built.model, hardware.strategy
    with strategy.scope():
        optimizer = OPTIMIZERS.get(o.name)(t.lr_find_start, o.clipnorm, o.weight_decay, None)
        exclude_one_dimensional(optimizer, model.trainable_variables)
        if hardware.policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        optimizer.build(model.trainable_variables)
    steps = Steps(strategy=strategy, model=model, optimizer=optimizer,
                  loss_fn=LOSSES.get(t.loss)(label_smoothing=t.label_smoothing), eval_spec=None, time_input=False,
                  class_weights=class_weights)
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    initial = [tf.identity(v.value) for v in model.variables]
    before = weights_digest(model)
    feed = {"epoch": 1, "batches": iter(strategy.experimental_distribute_dataset(data.train_epoch(1)))}

    def step(rate: float) -> float | None:
        inner.learning_rate.assign(rate)
        while True:
            try:
                out = steps.train(feed["batches"])
                break
            except tf.errors.OutOfRangeError:  # the next epoch's batches, in their own order
                feed["epoch"] += 1
                feed["batches"] = iter(strategy.experimental_distribute_dataset(data.train_epoch(feed["epoch"])))
        return float(out["loss_sum"]) / int(out["count"]) if bool(out["finite"]) else None

    try:
        used, losses = lr_find.range_test(step, lr_find.rates(t.lr_find_start, t.lr_find_end, t.lr_find_steps))
    finally:
        for variable, value in zip(model.variables, initial):
            variable.assign(value)
    restored = weights_digest(model) == before
    if len(used) < 5:
        raise NumericsError(f"the range test's loss diverged after {len(used)} steps, from the first rates "
                            f"(trainer.lr_find_start={t.lr_find_start:g}): no curve to read",
                            hint="lower trainer.lr_find_start (e.g. 1e-9), or check the input normalization",
                            config_key="trainer.lr_find_start")
    points = lr_find.suggest(np.array(used), losses)
    result = lr_find.write(record.run_dir, used, losses, points, meta={
        "optimizer": o.name, "batch_size": t.batch_size, "model": cfg.model.name, "precision": hardware.policy,
        "start": t.lr_find_start, "end": t.lr_find_end, "epochs_read": feed["epoch"]})
    record.report.lr_find = {k: result[k] for k in ("suggested_learning_rate", "steepest_descent_learning_rate",
                                                    "lowest_loss_learning_rate", "steps", "override")}
    record.report.lr_find.update(png=str(record.run_dir / "lr_find.png"), json=str(record.run_dir / "lr_find.json"),
                                 initial_weights_restored=restored)
    log.info("lr_find: %d steps from %.1e to %.1e; the loss was lowest at %.2e (too high to train at: it diverges "
             "next) and fell fastest at %.2e (aggressive). Suggested, a tenth of the lowest:\n  %s   (curve: %s)",
             len(used), used[0], used[-1], points["lowest"], points["steepest"], result["override"],
             record.run_dir / "lr_find.png")


def _float32_copy(plan: ModelPlan, model):
    """The same weights in a float32 model (TFLite has no bfloat16 kernels); `model` itself when it
    already computes in float32."""
    if model.dtype_policy.compute_dtype == "float32":
        return model
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("float32")
    try:
        copy = build_model(plan, input_dtype="float32")
        copy.set_weights(model.get_weights())
    finally:
        keras.mixed_precision.set_global_policy(previous)
    return copy


def _activation_bytes(plan: ModelPlan, policy: str) -> int:
    """Forward activations of one example, all kept for the backward pass (an estimate for OOM hints)."""
    width = 2 if policy.startswith("mixed") else 4
    return width * sum(math.prod(d for d in row.shape if d) for row in plan.rows)


def weights_digest(model) -> str:
    """SHA-256 of every model variable's bytes, in order: equal digests mean identical weights
    (compares workers of one run, or an interrupted-and-resumed run with an uninterrupted one)."""
    digest = hashlib.sha256()
    for variable in model.variables:
        digest.update(variable.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value)).tobytes())
    return digest.hexdigest()


def _shard_by_data(data: Datasets) -> Datasets:
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    shard = lambda ds: ds.with_options(options) if ds is not None else None  # noqa: E731
    return dataclasses.replace(data, train_epoch=lambda epoch: shard(data.train_epoch(epoch)),
                               train_plain=lambda epoch: shard(data.train_plain(epoch)),
                               eval=shard(data.eval), test=shard(data.test))


def _gradient_error(plan: ModelPlan, paths: list[str], kind: ErrorKind) -> GraphError:
    said = gradients.explain(plan, paths, "missing" if kind is ErrorKind.missing_gradient else "zero")
    return GraphError(said.why, hint=said.fix, kind=kind, config_key=said.config_key)


def _dead_gradients(plan: ModelPlan, paths: list[str], step: int, t, record: RunRecord) -> None:
    error = _gradient_error(plan, paths, ErrorKind.zero_gradient)
    if t.on_dead_gradient is OnDeadGradient.error:
        raise error
    record.event(phase="train", kind=error.kind, message=error.message, hint=error.hint,
                 config_key=error.config_key, step=step)
    log.warning("warning: %s\n  fix: %s (trainer.on_dead_gradient=error makes this stop the run)",
                error.message, error.hint)


def _hparams(cfg: Config, policy: str, replicas: int) -> dict:
    t, o = cfg.trainer, cfg.optimizer
    return {"experiment": cfg.name, "dataset": cfg.dataset.name, "model": cfg.model.name,
            "optimizer": o.name, "learning_rate": o.learning_rate, "schedule": o.schedule.value,
            "weight_decay": o.weight_decay, "label_smoothing": t.label_smoothing, "batch_size": t.batch_size,
            "epochs": t.epochs, "seed": t.seed, "precision": policy, "replicas": replicas,
            "jit_compile": t.jit_compile, "backbone": cfg.model.backbone.name or "none"}


def _strategy_name(strategy) -> str:
    name = type(strategy).__name__
    if name == "CollectiveAllReduceStrategy":  # the class behind tf.distribute.MultiWorkerMirroredStrategy
        return "MultiWorkerMirroredStrategy"
    return "default (one device)" if name.startswith("_Default") else name
