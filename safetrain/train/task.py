"""What trains: the model, its optimizer(s) and the step functions, built once.

Orbit's and TF Model Garden's `Task` is the model: one place decides how the model, the optimizer
(schedule, weight decay off 1-D weights, loss scaling, EMA, a fine-tuned backbone's own
optimizer) and the step functions are made, and the CLI's run, the LR finder and the benchmark
scripts all take them from here instead of rebuilding them by hand. Call `build_task` in the
strategy's scope's stead: it enters the scope itself.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any, Callable

import keras

from safetrain.config.schema import OnNan, OptimizerConfig, TrainerConfig
from safetrain.models.backbone_build import backbone_of
from safetrain.models.build import build_model
from safetrain.models.shapes import ModelPlan
from safetrain.train import schedules
from safetrain.train.fine_tune import FineTune
from safetrain.train.metrics import MULTI, SINGLE, Collection, eval_names
from safetrain.train.optimizers import LOSSES, OPTIMIZERS, exclude_one_dimensional
from safetrain.train.steps import Steps

log = logging.getLogger("safetrain")


def new_optimizer(o: OptimizerConfig, learning_rate, ema: float | None = None):
    """An unbuilt optimizer of kind optimizer.name (clipping and weight decay as configured)."""
    return OPTIMIZERS.get(o.name)(learning_rate, o.clipnorm, o.weight_decay, ema)


def ready_optimizer(optimizer, variables: list, policy: str):
    """Weight decay kept off 1-D weights, loss scaling under float16, slots built (they must exist
    before the first step under a strategy, and before a restore). Returns (optimizer, how many
    1-D weights are left undecayed)."""
    undecayed = exclude_one_dimensional(optimizer, variables)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(variables)
    return optimizer, undecayed


@dataclass(frozen=True)
class Task:
    """The model and optimizer, built in the strategy's scope for the planned input shape."""

    plan: ModelPlan
    model: keras.Model
    optimizer: Any
    strategy: Any
    trainer: TrainerConfig
    schedule: schedules.Plan     # the learning rate over the steps
    recipe: str                  # optimizer, learning-rate schedule, weight decay, label smoothing, in words
    fine_tune: FineTune | None = None  # a backbone that trains (from the start or a later epoch)
    horizon: schedules.Horizon | None = None  # trainer.time_budget: the planned total steps (a variable)
    eval_metrics: tuple[str, ...] = ("loss", "accuracy")  # what the eval step computes (metrics.eval_names)

    def steps(self, *, eval_spec=None, class_weights: list[float] | None = None,
              on_missing_gradients: Callable[[list[str]], Exception] | None = None, **overrides) -> Steps:
        """The step functions for the model's current trainable set, as trainer.* configures them;
        `overrides` replace any Steps argument (the NaN replay turns the guards off)."""
        t, multi = self.trainer, self.plan.multi_label
        # Multi-label class weights are per-label positive weights, which the loss applies itself.
        positive = {"positive_weights": class_weights} if multi and class_weights else {}
        args = dict(strategy=self.strategy, model=self.model, optimizer=self.optimizer,
                    loss_fn=LOSSES.get(t.loss)(label_smoothing=t.label_smoothing, **positive), eval_spec=eval_spec,
                    eval_loss_fn=LOSSES.get(t.loss)(label_smoothing=t.label_smoothing) if positive else None,
                    jit_compile=t.jit_compile, guard_updates=t.on_nan is OnNan.skip_step,
                    time_input=not t.deterministic, on_missing_gradients=on_missing_gradients,
                    class_weights=class_weights, multi_label=multi,
                    eval_metrics=Collection(list(self.eval_metrics), self.plan.num_classes, MULTI if multi else SINGLE),
                    **(self.fine_tune.steps_args() if self.fine_tune else {}))
        return Steps(**{**args, **overrides})

    def checkpointed(self) -> dict:
        """What the checkpoint keeps beyond the model and the head's optimizer."""
        return {"fine_tune_optimizer": self.fine_tune.optimizer} if self.fine_tune else {}


def build_task(plan: ModelPlan, *, optimizer: OptimizerConfig, trainer: TrainerConfig, strategy,
               steps_per_epoch: int, policy: str = "float32", input_dtype: str = "float32") -> Task:
    """Model and optimizer in `strategy`'s scope; the schedule planned over the run's steps."""
    t, o = trainer, optimizer
    # Seeded again right before the weights are drawn: preparing a TFDS dataset (first run on a
    # data dir only) consumes Python's global RNG, which Keras' unseeded initializers draw from.
    keras.utils.set_random_seed(t.seed)
    run_steps = steps_per_epoch * t.epochs
    total_steps = min(run_steps, t.max_steps or run_steps)
    with strategy.scope():
        horizon = schedules.horizon_for(o, steps_per_epoch, total_steps) if t.time_budget is not None else None
        schedule = schedules.learning_rate(o, steps_per_epoch, total_steps, horizon)
        model = build_model(plan, input_dtype=input_dtype, seed=t.seed)
        tuned = None
        if plan.backbone is not None and plan.backbone.trains_ever():
            tuned = FineTune.build(plan.backbone, backbone_of(model), functools.partial(new_optimizer, o, ema=t.ema),
                                   schedule.learning_rate, o.learning_rate, schedule.describe)
        tuned_ids = {id(v) for v in tuned.variables} if tuned else set()
        own = [v for v in model.trainable_variables if id(v) not in tuned_ids]  # the head's optimizer's
        head_optimizer, undecayed = ready_optimizer(new_optimizer(o, schedule.learning_rate, t.ema), own, policy)
    recipe = _recipe(o, t, plan, schedule, tuned, undecayed)
    return Task(plan=plan, model=model, optimizer=head_optimizer, strategy=strategy, trainer=t, schedule=schedule,
                recipe=recipe, fine_tune=tuned, horizon=horizon,
                eval_metrics=tuple(eval_names(t, o, MULTI if plan.multi_label else SINGLE)))


def _recipe(o: OptimizerConfig, t: TrainerConfig, plan: ModelPlan, schedule: schedules.Plan, tuned: FineTune | None,
            undecayed: int) -> str:
    """The optimizer recipe in words (logged, and in TensorBoard's optimizer/recipe)."""
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
        recipe += (f", weights' moving average (decay {t.ema:g}, warmed up as min(decay, (1 + t) / (10 + t))) "
                   f"for eval, test and export")
    return recipe
