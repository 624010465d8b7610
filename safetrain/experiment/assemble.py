"""The run's periodic actions, declared in one list, in the order they run, with their state.

CLU's `periodic_actions` and Orbit's `Controller` actions are the model: each action is a small
object in safetrain/train/ that decides itself when it is due (safetrain.train.actions). Which
ones a run has, and in which order, is decided only here, and what each keeps in the checkpoint
comes from the action itself (`checkpointed()`), so it cannot be forgotten.

Adding a periodic action: write it in safetrain/train/ (a `BaseAction`), then add one line to the
list in `assemble` (docs/architecture.md shows an example).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

from safetrain.config.schema import Config, Mode
from safetrain.experiment.parity import PARITY_FILES
from safetrain.experiment.validate_recipe import best_mode
from safetrain.pipelines.build import Datasets
from safetrain.record.run_record import RunRecord
from safetrain.train import schedules
from safetrain.train.actions import (Action, Evaluate, GradientProbe, LogScalars, ReducePlateau, SaveCheckpoints,
                                     SelectBest, SwitchWeights)
from safetrain.train.best import BestState
from safetrain.train.budget import Budget, parse_budget
from safetrain.train.checkpoints import Checkpoints
from safetrain.train.ema import EmaWeights
from safetrain.train.loop import TrainLoop
from safetrain.train.metrics import best_metric, task_of
from safetrain.train.task import Task
from safetrain.train.throughput import WallTime

log = logging.getLogger("safetrain")

# Epoch ends save a checkpoint at most this often (and always where training ends); steps and
# seconds (trainer.checkpoint_every_*) and SIGTERM/SIGINT save as configured.
EPOCH_SAVE_SECONDS = 10.0


@dataclass(frozen=True)
class Selection:
    """How the best eval epoch is chosen (trainer.keep_best, trainer.early_stopping)."""

    keep: bool                  # restore the best epoch's weights for test and export
    patience: int | None        # early stopping after this many epochs without improvement; None = off
    metric: str = "accuracy"    # of the eval split
    higher: bool = True
    min_delta: float = 0.0


def selection(cfg: Config) -> Selection:
    t, stopping = cfg.trainer, cfg.trainer.early_stopping
    # null: keep the best when there is an eval split (validate() refused an explicit true without one).
    keep = bool(cfg.dataset.splits.eval) if t.keep_best is None else t.keep_best
    metric = best_metric(t, task_of(cfg.dataset))
    if stopping is None:
        return Selection(keep=keep, patience=None, metric=metric, higher=best_mode(metric, None) is Mode.max)
    return Selection(keep=keep, patience=stopping.patience, metric=metric,  # patience None: off
                     higher=best_mode(metric, stopping.mode) is Mode.max, min_delta=stopping.min_delta)


def run_spec(cfg: Config, num_classes: int, chosen: Selection) -> dict:
    """The settings that fix the weights' shapes and meaning, and what the checkpoint holds: a
    resume must keep them."""
    image = cfg.dataset.image
    return {"trainer.keep_best": chosen.keep, "trainer.ema": cfg.trainer.ema,
            "optimizer.schedule": cfg.optimizer.schedule.value,
            "dataset.image.height": image.height, "dataset.image.width": image.width,
            "dataset.image.channels": image.channels, "dataset.image.normalization": image.normalization.value,
            "dataset.num_classes": num_classes, "dataset.label_encoding": cfg.dataset.label_encoding.value,
            "dataset.task": cfg.dataset.task.value,
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


@dataclass(frozen=True)
class Assembly:
    """The actions in order, and the pieces the run reads after training."""

    actions: list[Action]
    evaluation: Evaluate | None
    best: BestState | None
    ema: EmaWeights | None
    budget: Budget | None = None


def assemble(cfg: Config, task: Task, data: Datasets, record: RunRecord, loop: TrainLoop, probe: GradientProbe,
             checkpoints: Checkpoints, chosen: Selection, wall: WallTime) -> Assembly:
    """The periodic actions of `loop`, in the order they run after each step and each epoch; the
    state each one keeps goes into `checkpoints` before the loop restores it."""
    t, o = cfg.trainer, cfg.optimizer
    evaluation = Evaluate(wall.timed("eval", loop.evaluate), data.eval, record) if data.eval is not None else None
    with task.strategy.scope():  # the best epoch's record (and weights): chosen on the eval split only
        best = BestState(task.model, keep_weights=chosen.keep) if evaluation else None
    optimizers = [task.optimizer, *([task.fine_tune.optimizer] if task.fine_tune else [])]
    ema = EmaWeights(*optimizers) if t.ema is not None else None
    average = ema if evaluation else None  # the epoch's eval and selection judge the moving average
    plateau = task.schedule.plateau if evaluation else None  # validate(): plateau needs eval
    # The rate the logged step used (the optimizer has already counted that step).
    used_rate = lambda: schedules.value_at(task.schedule.learning_rate, task.optimizer.iterations - 1)  # noqa: E731
    budget = _budget(cfg, task, data, record, loop, evaluation, checkpoints)
    if budget is not None and evaluation is not None:
        evaluation.due = budget.eval_due  # evaluations spaced out when one costs too much of an epoch
    actions = [action for action in (
        probe,                                                   # the first steps: dead gradients
        LogScalars(t.log_every_steps, record, loop.progress, loop.timer, learning_rate=used_rate),
        average and SwitchWeights(average.use, True),            # epoch end: the moving average in,
        evaluation,                                              # evaluated on the eval split,
        best and SelectBest(evaluation, best, chosen.metric, chosen.higher, chosen.min_delta, chosen.patience),
        plateau and ReducePlateau(evaluation, plateau, o.plateau_metric,
                                  best_mode(o.plateau_metric, None, "optimizer.plateau_metric") is Mode.max,
                                  o.plateau_patience,
                                  o.decay_factor, o.min_learning_rate / o.learning_rate, o.learning_rate),
        average and SwitchWeights(average.use, False),           # the trained weights back,
        budget,                                                  # the steps that fit the time budget,
        SaveCheckpoints(checkpoints, t.checkpoint_every_steps,   # and last, a checkpoint of what
                        t.checkpoint_every_seconds, time.perf_counter,   # all of them decided
                        epoch_seconds=EPOCH_SAVE_SECONDS),
    ) if action]
    for action in actions:
        checkpoints.track(action.checkpointed())
    return Assembly(actions=actions, evaluation=evaluation, best=best, ema=ema, budget=budget)


def _budget(cfg: Config, task: Task, data: Datasets, record: RunRecord, loop: TrainLoop,
            evaluation: Evaluate | None, checkpoints: Checkpoints) -> Budget | None:
    """trainer.time_budget's planner over the task's horizon (the schedule reads it), counted
    from the command's start (safetrain.core.run_state.run_started); None without a budget."""
    t = cfg.trainer
    if task.horizon is None:
        return None
    spe = data.steps_per_epoch
    cap = min(spe * t.epochs, t.max_steps or spe * t.epochs)
    timed = data.eval if data.eval is not None else data.test
    counts = data.counts
    formats = tuple(t.export_formats)
    return Budget(parse_budget(t.time_budget), task.horizon, cap=cap, steps_per_epoch=spe,
                  batch_size=t.batch_size, eval_examples=counts.get("eval", 0) if evaluation else 0,
                  test_examples=counts.get("test", 0),
                  results_examples=counts.get("eval", 0),  # calibration (or thresholds) and suspect labels
                  export=t.export, started=record.started, clock=time.monotonic, replan=not t.deterministic,
                  converted=sum(f in ("tflite", "tflite_int8", "onnx") for f in formats), proven=len(formats),
                  parity_examples=min(counts.get("test", 0), PARITY_FILES),
                  evaluation=evaluation,
                  time_evaluation=(lambda: loop.time_evaluation(timed)) if timed is not None else None,
                  time_test=(lambda: loop.time_evaluation(data.test)) if data.test is not None else None,
                  save_seconds=lambda: checkpoints.save_seconds)


def record_best(record: RunRecord, best: BestState, chosen: Selection, exported: bool = True) -> bool:
    """The chosen epoch in report.json, and (keep_best) its weights back in the model for testing;
    True when they were restored."""
    if not best.epoch:
        return False
    restored = chosen.keep and best.restore()
    record.report.best = {"epoch": best.epoch, "step": best.step, "metric": f"eval_{chosen.metric}",
                          "value": best.value, "weights_restored": restored}
    if restored:
        log.info("best eval %s %.4f at epoch %d (step %d): its weights are tested%s (trainer.keep_best)",
                 chosen.metric, best.value, best.epoch, best.step, " and exported" if exported else "")
    return restored
