"""One training job, phase by phase: hardware, data, model, the loop, test, results, export.

Called by safetrain.experiment.run after the config has been validated; this is where TensorFlow
is first imported. `_run` is the phase list, read top to bottom. Each setup step
(safetrain.experiment.setup, safetrain.train.task) builds and returns one thing and writes
nothing; safetrain.experiment.recording records each result once and keeps the diagnosis context
(safetrain.core.run_state) current; the periodic actions are assembled in one place
(safetrain.experiment.assemble). TensorFlow's and Keras' own errors leave here diagnosed
(safetrain.diagnose): one kind, the layer or key, the fix, and the exit code of the phase they
happened in.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import tempfile
from pathlib import Path

import keras
import tensorflow as tf
import tensorflow_datasets as tfds

from safetrain.config.schema import AUTO, FILE_SOURCES, Config, OnDeadGradient, OnOom
from safetrain.core.errors import ErrorKind, GraphError, NanStop, NumericsError, Phase, SafetrainError
from safetrain.core.run_state import Context
from safetrain.diagnose.diagnosis import diagnose
from safetrain.diagnose.facts import is_safetrain_bug, layer_from_op
from safetrain.diagnose.replay import locate_non_finite
from safetrain.experiment import lr_find, precision, recording, setup
from safetrain.experiment.analysis import analyse_label_sets, analyse_test
from safetrain.experiment.assemble import Assembly, assemble, record_best, run_spec, selection
from safetrain.experiment.export import ExportAsk, export
from safetrain.experiment.setup import Hardware
from safetrain.models import gradients
from safetrain.models.backbone_build import fetch_imagenet
from safetrain.models.build import build_model
from safetrain.models.shapes import ModelPlan, infer
from safetrain.pipelines.build import Datasets
from safetrain.record import names
from safetrain.record.run_record import RunRecord
from safetrain.train.actions import GradientProbe
from safetrain.train.checkpoints import Checkpoints
from safetrain.train.env_report import versions
from safetrain.train.loop import TrainLoop
from safetrain.train.signals import SignalGuard
from safetrain.train.task import Task, build_task
from safetrain.train.throughput import StepTimer, WallTime

log = logging.getLogger("safetrain")
tfds.disable_progress_bar()


def train(cfg: Config, plan: ModelPlan, record: RunRecord, guard: SignalGuard | None = None,
          checkpoint_dir: Path | None = None, math_mode: str | None = None) -> None:
    """Run the job. `checkpoint_dir`: the chief's checkpoints (default <run dir>/checkpoints).
    `math_mode`: oneDNN's math mode TensorFlow started with (safetrain.experiment.precision).
    Under trainer.on_oom=halve_batch an out-of-memory attempt is recorded and the job runs again
    from the last checkpoint with half the batch."""
    record.open_tensorboard()
    checkpoint_dir = checkpoint_dir or record.run_dir / names.CHECKPOINTS
    while True:
        context = Context(phase=Phase.data)
        try:
            _run(cfg, plan, record, guard, checkpoint_dir, context, math_mode)
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


def _run(cfg: Config, plan: ModelPlan, record: RunRecord, guard: SignalGuard | None, checkpoint_dir: Path,
         context: Context, math_mode: str | None) -> None:
    """The phases, in order."""
    wall, t = WallTime(), cfg.trainer
    record.report.versions = versions()

    hardware = setup.hardware(cfg, plan)
    recording.record_hardware(record, cfg, hardware, context)
    keras.utils.set_random_seed(t.seed)
    if t.deterministic:
        tf.config.experimental.enable_op_determinism()

    if plan.backbone is not None:  # before the data: offline, the download fails in seconds
        context.phase = Phase.build
        fetch_imagenet(plan.backbone, plan.input_shape)
        context.phase = Phase.data
    with wall.phase("scan"):
        data = setup.data(cfg, hardware.cluster, plan)
    recording.record_data(record, cfg, data)
    setup.check_data(cfg, data)
    class_weights = setup.class_weights(cfg, data)
    recording.record_class_weights(record, cfg, data, class_weights)

    plan = infer(list(plan.layers), data.spec.shape, data.source.num_classes, backbone=plan.backbone,  # real input
                 multi_label=data.source.multi_label)
    recording.record_plan(record, cfg, plan)
    context.phase, context.input_spec = Phase.build, data.spec.describe()
    hardware = _precision(cfg, plan, data, hardware, math_mode)
    recording.record_precision(record, cfg, hardware, hardware.trial, context)
    task = build_task(plan, optimizer=cfg.optimizer, trainer=t, strategy=hardware.strategy,
                      steps_per_epoch=data.steps_per_epoch, policy=hardware.policy, input_dtype=data.spec.dtype)
    recording.record_model(record, cfg, task, hardware.policy, context)
    context.phase = Phase.train
    if t.lr_find:
        lr_find.run(cfg, task, data, hardware.policy, record, class_weights)
        return
    if cfg.dry_run:
        log.info("dry run: the config, the data (every example scanned) and the model (%s parameters) check out; "
                 "nothing was trained", f"{record.report.model['params']:,}")
        return
    _fit(cfg, task, data, hardware, record, guard, checkpoint_dir, context, wall, class_weights)
    recording.record_wall(record, wall)
    recording.final_summary(record)


def _precision(cfg: Config, plan: ModelPlan, data: Datasets, hardware: Hardware, math_mode: str | None) -> Hardware:
    """The precision the model is built in: auto's trial (or its cached decision), else as chosen."""
    policy, reason, trial = precision.decide(cfg, plan, data, hardware, math_mode)
    keras.mixed_precision.set_global_policy(policy)
    return dataclasses.replace(hardware, policy=policy, reason=reason, trial=trial)


def _fit(cfg: Config, task: Task, data: Datasets, hardware: Hardware, record: RunRecord, guard: SignalGuard | None,
         checkpoint_dir: Path, context: Context, wall: WallTime, class_weights: list[float] | None) -> None:
    """Train, then test the chosen weights, analyse the test split and export."""
    t, strategy, model = cfg.trainer, task.strategy, task.model
    eval_ds = data.eval if data.eval is not None else data.test
    make_steps = functools.partial(
        task.steps, class_weights=class_weights,
        eval_spec=strategy.experimental_distribute_dataset(eval_ds).element_spec if eval_ds is not None else None,
        on_missing_gradients=lambda paths: _gradient_error(task.plan, paths, ErrorKind.missing_gradient))

    def train_batches(epoch: int, skip: int):
        dataset = data.train_epoch(epoch)
        return strategy.experimental_distribute_dataset(dataset.skip(skip) if skip else dataset)

    chosen = selection(cfg)
    checkpoints = Checkpoints(checkpoint_dir, model, task.optimizer, writer=hardware.is_chief, batch_size=t.batch_size,
                              run_spec=run_spec(cfg, data.source.num_classes, chosen), extra=task.checkpointed())
    tuned = task.fine_tune
    steps = tuned.steps_for(1, make_steps, on_switch=lambda _: None) if tuned else make_steps()
    probe = GradientProbe(steps.variable_paths, lambda paths, step: _dead_gradients(task.plan, paths, step, t, record))
    restart_probe = lambda new: probe.restart(new.variable_paths)  # noqa: E731 - the backbone was unfrozen
    loop = TrainLoop(steps=steps, train_batches=train_batches, distribute=strategy.experimental_distribute_dataset,
                     cfg=t, record=record, checkpoints=checkpoints, steps_per_epoch=data.steps_per_epoch,
                     probe=probe, timer=StepTimer(warmup_steps=probe.steps + 1),  # after the last traced step
                     started=wall.started, guard=guard, context=context,
                     steps_for_epoch=((lambda epoch: tuned.steps_for(epoch, make_steps, restart_probe))
                                      if tuned else None),
                     steps_per_loop=None if t.steps_per_loop == AUTO else int(t.steps_per_loop))
    parts = assemble(cfg, task, data, record, loop, probe, checkpoints, chosen, wall)
    loop.actions = parts.actions
    wall.add("start_up", wall.since_start())
    try:
        result = _train_loop(loop, hardware, make_steps, checkpoints, train_batches, data, model, context)
        _choose_weights(record, parts, chosen, exported=t.export)
        with wall.phase("test"):
            test = loop.evaluate(data.test) if data.test is not None else {}
    finally:
        recording.record_loop(record, loop, parts.evaluation, model, wall)
        if parts.budget is not None:
            record.report.budget = parts.budget.summary(loop.result.steps)
    multi = data.source.multi_label
    if multi:  # the loop's test metrics are at 0.5 (mAP binned): the tuned, exact ones come from the analysis
        test = {name: value for name, value in test.items() if name == "loss"}
    record.report.metrics.update({f"test_{name}": value for name, value in test.items()})
    if test:
        record.scalars(result.steps, {f"test/{name}": value for name, value in test.items()})
    thresholds, calibrated = None, None
    if multi and hardware.is_chief:
        with wall.phase("results"):
            thresholds = analyse_label_sets(cfg, steps, data, record, result.steps)
        record.report.calibration = {"skipped": "multi-label: each label's threshold is tuned on eval instead"}
    elif hardware.is_chief and (data.test is not None or data.eval is not None):
        with wall.phase("results"):  # the temperature needs eval only; the mistakes, test
            calibrated = analyse_test(cfg, steps, data, record, result.steps)
    if t.export:
        with wall.phase("export"):
            _export(cfg, task, data, hardware, record, context, ExportAsk(
                formats=tuple(t.export_formats), asked_resize=t.serving_resize.value, thresholds=thresholds,
                calibration=calibrated, from_files=cfg.dataset.source in FILE_SOURCES))
    loop.close()


def _train_loop(loop: TrainLoop, hardware: Hardware, make_steps, checkpoints: Checkpoints, train_batches,
                data: Datasets, model, context: Context):
    """The loop; a NaN stop is replayed from the last checkpoint to name the op that made it."""
    try:
        return loop.run()
    except NanStop as stop:
        if hardware.cluster is not None:
            raise
        found = locate_non_finite(
            make_steps=lambda: make_steps(guard_updates=False, time_input=False), restore=checkpoints.restore,
            train_batches=train_batches, steps_per_epoch=data.steps_per_epoch, failed_step=stop.step,
            model=model, context=context)
        raise NumericsError(f"{stop.message}. {found.text}", hint=stop.hint,
                            config_key=found.config_key or stop.config_key, op=found.op) from None


def _choose_weights(record: RunRecord, parts: Assembly, chosen, exported: bool) -> None:
    """The weights tested and exported: the best eval epoch's (trainer.keep_best), else the
    moving average's (trainer.ema), else the last."""
    restored = record_best(record, parts.best, chosen, exported) if parts.best is not None else False
    if parts.ema is not None and not restored:  # the best epoch's copy, if restored, is of the average already
        parts.ema.use(True)


def _export(cfg: Config, task: Task, data: Datasets, hardware: Hardware, record: RunRecord, context: Context,
            ask: ExportAsk) -> None:
    """The chief's export, recorded in report.json; a format that disagrees with the trained model
    beyond its tolerance then stops the run with exit 4 (the training result and the export stay)."""
    if hardware.is_chief:
        info = export(task.model, data, cfg.dataset, record.run_dir / names.EXPORT, ask,
                      float32_model=lambda: _float32_copy(task.plan, task.model),
                      layer_of=lambda node: layer_from_op(node, context))
        recording.record_export(record, info)
        if info.get("failed"):
            raise recording.parity_error(info["failed"])
        return
    # Saving may read variables collectively: every worker saves, only the chief keeps it.
    with tempfile.TemporaryDirectory(prefix="safetrain-worker-export-") as scratch:
        export(task.model, data, cfg.dataset, Path(scratch) / names.EXPORT,
               dataclasses.replace(ask, formats=("saved_model",), prove=False))


def _halved(cfg: Config, error: SafetrainError) -> Config | None:
    """The config for the next attempt under trainer.on_oom=halve_batch, or None to stop."""
    t = cfg.trainer
    if (error.kind is not ErrorKind.out_of_memory or t.on_oom is not OnOom.halve_batch
            or t.batch_size // 2 < t.min_batch_size):
        return None
    trainer = dataclasses.replace(t, batch_size=t.batch_size // 2,
                                  eval_batch_size=(t.eval_batch_size // 2 or 1) if t.eval_batch_size else None)
    return dataclasses.replace(cfg, trainer=trainer)


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


def _gradient_error(plan: ModelPlan, paths: list[str], kind: ErrorKind) -> GraphError:
    said = gradients.explain(plan, paths, "missing" if kind is ErrorKind.missing_gradient else "zero")
    return GraphError(said.why, hint=said.fix, kind=kind, config_key=said.config_key)


def _dead_gradients(plan: ModelPlan, paths: list[str], step: int, t, record: RunRecord) -> None:
    error = _gradient_error(plan, paths, ErrorKind.zero_gradient)
    if t.on_dead_gradient is OnDeadGradient.error:
        raise error
    record.event(phase=Phase.train, kind=error.kind, message=error.message, hint=error.hint,
                 config_key=error.config_key, step=step)
    log.warning("warning: %s\n  fix: %s (trainer.on_dead_gradient=error makes this stop the run)",
                error.message, error.hint)
