"""Assemble and run one training job: hardware, data, model, loop, test, report.

Called by safetrain.run after the config has been validated; this is where TensorFlow is first
imported. Everything that writes to the run directory is closed in `finally`, and TensorFlow's
and Keras' own errors leave here diagnosed (safetrain.diagnosis): one kind, the layer or key, the
fix, and the exit code of the phase they happened in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from models import gradients
from models.build import build_model
from models.shapes import ModelPlan, infer
from pipelines.build import bad_examples_error, build_datasets
from safetrain import visuals
from safetrain.checkpoints import Checkpoints
from safetrain.cluster import current_task, wait_for_peers
from safetrain.config.schema import BadExamplePolicy, Config, OnDeadGradient, OnNan, OnOom
from safetrain.env_report import env_text, versions
from safetrain.diagnosis import Context, LayerRef, diagnose, is_safetrain_bug
from safetrain.errors import GraphError, NumericsError, SafetrainError, SpecError
from safetrain.export import export
from safetrain.hardware import choose_precision, detect_devices, make_strategy, split_cpu
from safetrain.loop import PROBE_STEPS, TrainLoop
from safetrain.optimizers import LOSSES, OPTIMIZERS
from safetrain.replay import locate_non_finite
from safetrain.report import ErrorLog, RunReport
from safetrain.signals import SignalGuard
from safetrain.steps import Steps
from safetrain.summaries import Summaries

log = logging.getLogger("safetrain")
tfds.disable_progress_bar()


def train(cfg: Config, plan: ModelPlan, run_dir: Path, report: RunReport, errors: ErrorLog,
          guard: SignalGuard | None = None, checkpoint_dir: Path | None = None) -> None:
    """Run the job; any error after this point is also written to TensorBoard's errors/graph.
    `checkpoint_dir`: the chief's checkpoints (default <run_dir>/checkpoints)."""
    summaries = Summaries(run_dir / "tb")
    checkpoint_dir = checkpoint_dir or run_dir / "checkpoints"
    try:
        while True:
            context = Context(phase="data")
            try:
                _train(cfg, plan, run_dir, report, errors, summaries, guard, checkpoint_dir, context)
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
            # trainer.on_oom=halve_batch: record this attempt, then again from the last checkpoint.
            note = (f"{error.message}; retrying from the last checkpoint with trainer.batch_size="
                    f"{smaller.trainer.batch_size} (trainer.on_oom=halve_batch)")
            errors.write(phase=error.phase, kind=error.kind, message=note, hint=error.hint, step=context.step,
                         config_key=error.config_key, tf_error_class=error.tf_error_class, op=error.op)
            summaries.text("errors/graph", _graph_text(error) + "\n" + note, step=report.steps)
            log.warning("out of memory with trainer.batch_size=%d: retrying from the last checkpoint with %d "
                        "(trainer.on_oom=halve_batch)", cfg.trainer.batch_size, smaller.trainer.batch_size)
            cfg = smaller
    except SafetrainError as err:
        summaries.text("errors/graph", _graph_text(err), step=report.steps)
        raise
    finally:
        summaries.close()


def _run_spec(cfg: Config, num_classes: int) -> dict:
    """The settings that fix the weights' shapes and meaning: a resume must keep them."""
    image = cfg.dataset.image
    return {"dataset.image.height": image.height, "dataset.image.width": image.width,
            "dataset.image.channels": image.channels, "dataset.image.normalization": image.normalization.value,
            "dataset.num_classes": num_classes, "dataset.label_encoding": cfg.dataset.label_encoding.value,
            "model.layers": json.dumps(cfg.model.layers, sort_keys=True, default=str)}


def _halved(cfg: Config, error: SafetrainError) -> Config | None:
    """The config for the next attempt under trainer.on_oom=halve_batch, or None to stop."""
    t = cfg.trainer
    if error.kind != "out_of_memory" or t.on_oom is not OnOom.halve_batch or t.batch_size // 2 < t.min_batch_size:
        return None
    trainer = dataclasses.replace(t, batch_size=t.batch_size // 2,
                                  eval_batch_size=(t.eval_batch_size // 2 or 1) if t.eval_batch_size else None)
    return dataclasses.replace(cfg, trainer=trainer)


def _graph_text(error: SafetrainError) -> str:
    """The TensorBoard errors/graph entry: the same paragraph the terminal shows, plus the record."""
    return (f"{error.kind} (phase {error.phase}, exit {error.exit_code})\n{error}\n"
            f"config key: {error.config_key or '-'} | op: {error.op or '-'} | "
            f"TensorFlow error: {error.tf_error_class or '-'}")


def _train(cfg: Config, plan: ModelPlan, run_dir: Path, report: RunReport, errors: ErrorLog,
           summaries: Summaries, guard: SignalGuard | None, checkpoint_dir: Path, context: Context) -> None:
    started = time.perf_counter()
    t = cfg.trainer
    report.versions = versions()
    strategy, policy, cluster = _hardware(cfg, plan, report, summaries, context)
    keras.utils.set_random_seed(t.seed)
    if t.deterministic:
        tf.config.experimental.enable_op_determinism()
    data = _data(cfg, cluster, report, errors, summaries)
    plan, model, optimizer = _model(cfg, plan, data, strategy, policy, report, summaries, context)
    if cfg.dry_run:
        log.info("dry run: the config, the data (every example scanned) and the model (%s parameters) check out; "
                 "nothing was trained", f"{report.model['params']:,}")
        return

    spec_of = lambda ds: strategy.experimental_distribute_dataset(ds).element_spec  # noqa: E731
    eval_ds = data.eval if data.eval is not None else data.test

    def make_steps(**overrides) -> Steps:
        args = dict(strategy=strategy, model=model, optimizer=optimizer, loss_fn=LOSSES.get(t.loss)(),
                    eval_spec=spec_of(eval_ds) if eval_ds is not None else None,
                    jit_compile=t.jit_compile, guard_updates=t.on_nan is OnNan.skip_step,
                    time_input=not t.deterministic,
                    on_missing_gradients=lambda paths: _gradient_error(plan, paths, "missing"))
        return Steps(**{**args, **overrides})

    checkpoints = Checkpoints(checkpoint_dir, model, optimizer, writer=cluster is None or cluster.is_chief,
                              batch_size=t.batch_size, run_spec=_run_spec(cfg, data.source.num_classes))
    loop = TrainLoop(steps=make_steps(), strategy=strategy, train_epoch=data.train_epoch, eval_ds=data.eval, cfg=t,
                     summaries=summaries, checkpoints=checkpoints,
                     errors=errors, steps_per_epoch=data.steps_per_epoch,
                     learning_rate=lambda: float(optimizer.learning_rate.numpy()), started=started,
                     guard=guard, on_dead_gradients=lambda paths: _dead_gradients(plan, paths, t, errors),
                     context=context)
    try:
        try:
            result = loop.run()
        except NumericsError as err:
            if err.config_key == "trainer.on_nan" and cluster is None:  # the loop's NaN stop
                where, key, op = locate_non_finite(
                    make_steps=lambda: make_steps(guard_updates=False, time_input=False),
                    restore=checkpoints.restore, train_epoch=data.train_epoch, strategy=strategy,
                    steps_per_epoch=data.steps_per_epoch, failed_step=loop.result.steps, model=model,
                    context=context)
                raise NumericsError(f"{err.message}. {where}", hint=err.hint, config_key=key or err.config_key,
                                    op=op) from None
            raise
        test = loop.evaluate(data.test) if data.test is not None else (None, None)
    finally:
        _record(report, loop)
        report.model["weights_sha256"] = weights_digest(model)
    report.metrics.update(test_loss=test[0], test_accuracy=test[1])
    summaries.scalars(result.steps, {"test/loss": test[0], "test/accuracy": test[1]})
    if data.test is not None:
        _confusion(loop.steps, data, summaries, result.steps, report)
    if t.export and (cluster is None or cluster.is_chief):
        report.export = export(model, data, cfg.dataset, run_dir / "export")
        log.info("exported: %s (self-check on test images: max |diff| %s)", report.export["path"],
                 report.export["self_check_max_abs_diff"])
    elif t.export:  # saving may read variables collectively: every worker saves, only the chief keeps it
        with tempfile.TemporaryDirectory(prefix="safetrain-worker-export-") as scratch:
            export(model, data, cfg.dataset, Path(scratch) / "export")
    _final_summary(report, run_dir)


def _hardware(cfg: Config, plan: ModelPlan, report: RunReport, summaries: Summaries, context: Context):
    """Devices, precision policy and strategy (after a multi-worker rendezvous); recorded everywhere."""
    t = cfg.trainer
    if cfg.hardware.logical_cpus:
        split_cpu(cfg.hardware.logical_cpus)
    devices = detect_devices()
    recurrent = any(layer.type in ("lstm", "gru", "bidirectional") for layer in plan.layers)
    policy, reason = choose_precision(devices, cfg.hardware.precision, recurrent=recurrent)
    keras.mixed_precision.set_global_policy(policy)  # always set: a multirun may share one process
    cluster = current_task()
    if cluster is not None:
        waited = wait_for_peers(cluster, cfg.hardware.worker_timeout_s)
        log.info("cluster: %s; every worker reachable after %.1f s", cluster.describe(), waited)
    strategy = make_strategy(cfg.hardware.strategy, devices, cluster=cluster)
    replicas = strategy.num_replicas_in_sync
    report.hardware = {"devices": [d.describe() for d in devices], "precision_policy": policy,
                       "precision_reason": reason, "strategy": _strategy_name(strategy),
                       "replicas": replicas, "global_batch_size": t.batch_size,
                       "per_replica_batch_size": t.batch_size // replicas,
                       "cluster": cluster.describe() if cluster else None}
    log.info("hardware: %s | precision %s (%s) | %s x%d | batch %d global, %d per replica",
             ", ".join(report.hardware["devices"]), policy, reason, report.hardware["strategy"], replicas,
             t.batch_size, t.batch_size // replicas)
    summaries.text("env/report", env_text(report.versions, devices, report.hardware))
    context.precision, context.batch_size = policy, t.batch_size
    context.device = report.hardware["devices"][-1] if report.hardware["devices"] else None
    summaries.hparams(_hparams(cfg, policy, replicas))
    return strategy, policy, cluster


def _data(cfg: Config, cluster, report: RunReport, errors: ErrorLog, summaries: Summaries):
    """The checked pipelines; bad examples recorded, and refused unless dataset.on_bad_example=skip."""
    t = cfg.trainer
    data = build_datasets(cfg.dataset, t.batch_size, t.eval_batch_size or t.batch_size, t.seed)
    if cluster is not None:
        # Shard by element: every worker reads the whole (small, cached) dataset and keeps its share.
        # FILE sharding (TensorFlow's default) needs at least one input file per worker.
        data = _shard_by_data(data)
    report.data["counts"] = data.counts
    log.info("pipeline:\n  %s", "\n  ".join(data.describe().splitlines()))
    summaries.text("pipeline/spec", data.describe())
    first_images, _ = next(iter(data.train_epoch(1).take(1)))
    summaries.image("inputs/after_enforcement", visuals.mosaic(first_images.numpy()[:32].astype("float32")))
    for bad in data.bad:
        errors.write(phase="data", kind="bad_example", message=bad.reason, example=bad.key,
                     config_key="dataset.on_bad_example",
                     hint="skipped" if cfg.dataset.on_bad_example is BadExamplePolicy.skip else "")
    refused = bad_examples_error(data.bad, cfg.dataset.on_bad_example)
    if refused is not None:
        raise refused
    report.data["skipped"] = len(data.bad)
    if data.bad:
        log.warning("skipped %d bad examples (dataset.on_bad_example=skip), listed in errors.jsonl; first: %s",
                    len(data.bad), data.bad[0].describe())
    if data.steps_per_epoch == 0:
        raise SpecError(
            f"the training split {cfg.dataset.splits.train!r} has {data.counts['train']} examples, "
            f"fewer than one batch (trainer.batch_size={t.batch_size}): no step would run",
            hint=f"set trainer.batch_size={max(1, data.counts['train'] or 1)} or less, or use more data",
            config_key="trainer.batch_size")
    return data


def _model(cfg: Config, plan: ModelPlan, data, strategy, policy: str, report: RunReport, summaries: Summaries,
           context: Context):
    """The shape table for the real input, then model and optimizer built in the strategy's scope."""
    t = cfg.trainer
    plan = infer(list(plan.layers), data.spec.shape, data.source.num_classes)
    # params: counted on the built model below (custom layers' are unknown to the plain-Python plan)
    report.model = {"name": cfg.model.name, "params": None, "flops_per_example": plan.total_flops}
    log.info("model %s:\n%s", cfg.model.name, plan.table())
    summaries.text("model/summary", plan.table())
    context.phase, context.input_spec = "build", data.spec.describe()
    context.activation_bytes_per_example = _activation_bytes(plan, policy)
    # Seeded again right before the weights are drawn: preparing a TFDS dataset (first run on a
    # data dir only) consumes Python's global RNG, which Keras' unseeded initializers draw from.
    keras.utils.set_random_seed(t.seed)
    with strategy.scope():
        model = build_model(plan, input_dtype=data.spec.dtype, seed=t.seed)
        optimizer = OPTIMIZERS.get(cfg.optimizer.name)(cfg.optimizer.learning_rate, cfg.optimizer.clipnorm)
        if policy == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        # Slots must exist before the first step under a strategy, and before a restore.
        optimizer.build(model.trainable_variables)
    report.model["params"] = context.params = model.count_params()
    context.layers = _layer_refs(plan, model)
    context.phase = "train"
    return plan, model, optimizer


def _confusion(steps: Steps, data, summaries: Summaries, step: int, report: RunReport) -> None:
    """The test split's confusion matrix and per-class accuracy, as a picture, a table and scalars."""
    labels, predicted = [], []
    for images, y in data.test:
        predicted.append(steps.predict(images).numpy())
        labels.append(y.numpy().argmax(-1) if y.shape.rank == 2 else y.numpy())
    names = data.source.names()
    matrix = visuals.confusion_matrix(np.concatenate(labels), np.concatenate(predicted), len(names))
    accuracy = visuals.per_class_accuracy(matrix)
    summaries.image("test/confusion_matrix", visuals.heatmap(matrix), step=step)
    summaries.text("test/confusion_table", visuals.matrix_text(matrix, names), step=step, code=False)
    summaries.scalars(step, {f"test_class_accuracy/{name}": float(a) for name, a in zip(names, accuracy)
                             if np.isfinite(a)})
    report.metrics["test_class_accuracy"] = {name: (float(a) if np.isfinite(a) else None)
                                             for name, a in zip(names, accuracy)}


def _layer_refs(plan: ModelPlan, model) -> dict[str, LayerRef]:
    """Keras layer name -> the config entry it came from, for naming layers in diagnoses."""
    refs = {}
    for spec, layer in zip(plan.layers, model.layers[1:]):
        refs[layer.name] = LayerRef(spec.index, spec.label(), spec.key, type(layer).__name__)
    head = model.layers[-1]
    refs[head.name] = LayerRef(len(plan.layers), f"head dense {plan.num_classes}", "dataset.num_classes", "Dense")
    return refs


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


def _shard_by_data(data):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    shard = lambda ds: ds.with_options(options) if ds is not None else None  # noqa: E731
    return dataclasses.replace(data, train_epoch=lambda epoch: shard(data.train_epoch(epoch)),
                               eval=shard(data.eval), test=shard(data.test))


def _gradient_error(plan: ModelPlan, paths: list[str], kind: str) -> GraphError:
    message, hint, key = gradients.explain(plan, paths, kind)
    return GraphError(message, hint=hint, kind=f"{kind}_gradient", config_key=key)


def _dead_gradients(plan: ModelPlan, paths: list[str], t, errors: ErrorLog) -> None:
    error = _gradient_error(plan, paths, "zero")
    if t.on_dead_gradient is OnDeadGradient.error:
        raise error
    errors.write(phase="train", kind=error.kind, message=error.message, hint=error.hint,
                 config_key=error.config_key, step=PROBE_STEPS)
    log.warning("warning: %s\n  fix: %s (trainer.on_dead_gradient=error makes this stop the run)",
                error.message, error.hint)


def _hparams(cfg: Config, policy: str, replicas: int) -> dict:
    t, o = cfg.trainer, cfg.optimizer
    return {"experiment": cfg.name, "dataset": cfg.dataset.name, "model": cfg.model.name,
            "optimizer": o.name, "learning_rate": o.learning_rate, "batch_size": t.batch_size,
            "epochs": t.epochs, "seed": t.seed, "precision": policy, "replicas": replicas,
            "jit_compile": t.jit_compile}


def _strategy_name(strategy) -> str:
    name = type(strategy).__name__
    if name == "CollectiveAllReduceStrategy":  # the class behind tf.distribute.MultiWorkerMirroredStrategy
        return "MultiWorkerMirroredStrategy"
    return "default (one device)" if name.startswith("_Default") else name


def _record(report: RunReport, loop: TrainLoop) -> None:
    r = loop.result
    report.steps, report.epochs = r.steps, r.epochs
    report.time_to_first_step_s = r.time_to_first_step_s
    report.metrics.update(train_loss=r.train_loss, train_accuracy=r.train_accuracy,
                          eval_loss=r.eval_loss, eval_accuracy=r.eval_accuracy)
    report.throughput = loop.timer.summary()
    rate = report.throughput["examples_per_sec"]
    # Training costs about 3x the forward pass (forward + two backward matmuls per layer): an
    # estimate for comparing machines, not a measurement of the kernels.
    report.throughput["train_flops_per_sec"] = (
        round(3 * report.model["flops_per_example"] * rate) if rate and report.model else None)
    report.data["skipped_steps"] = r.skipped_steps


def _final_summary(report: RunReport, run_dir: Path) -> None:
    m, tp = report.metrics, report.throughput
    acc = f"{m['test_accuracy']:.4f}" if m["test_accuracy"] is not None else "n/a"
    rate = f"{tp['examples_per_sec']:,.0f}" if tp["examples_per_sec"] else "n/a"
    skipped = report.data.get("skipped", 0)
    log.info("done: test accuracy %s | %s examples/s (median, steady state) | %d steps, %d epochs%s",
             acc, rate, report.steps, report.epochs,
             f" | {skipped} bad examples skipped (errors.jsonl)" if skipped else "")
    log.info("tensorboard --logdir %s", run_dir / "tb")
