"""The learning rate over the run: Keras schedules, plus a linear warmup in front of them.

Every schedule is a function of the optimizer's step counter (`optimizer.iterations`, which the
checkpoint holds), so a resumed run continues on exactly the curve it left: there is no schedule
state to save. Keras has the decays (CosineDecay — whose own warmup makes one_cycle —,
PolynomialDecay with power 1, PiecewiseConstantDecay); only the warmup that goes in front of any
of them is ours, because Keras' warmup exists for the cosine decay alone.

Lengths are in steps: `steps_per_epoch` and the run's total steps (trainer.epochs, or
trainer.max_steps when it ends the run sooner) come from the data. The one schedule with state of
its own is plateau (it depends on eval results, not on the step): `PlateauState`, changed between
epochs by the ReducePlateau action (safetrain.train.actions) and checkpointed. Build the plan in the
strategy's scope: that state is made of variables.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf

from safetrain.config.schema import OptimizerConfig, Schedule

ONE_CYCLE_START = 25.0     # one_cycle starts at learning_rate / 25 (fastai's div, timm's warmup)
ONE_CYCLE_WARMUP = 0.3     # share of the run spent rising to learning_rate


class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """target * (step + 1) / warmup_steps for the first `warmup_steps` steps (the first step already
    moves the weights), then `after(step - warmup_steps)`: the schedule that follows starts at its
    own step 0."""

    def __init__(self, after, warmup_steps: int, target: float) -> None:
        self.after = after
        self.warmup_steps = warmup_steps
        self.target = target

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.target * (step + 1.0) / float(self.warmup_steps)
        rest = keras.ops.maximum(step - float(self.warmup_steps), 0.0)  # finite in the unused branch too
        later = self.after(rest) if callable(self.after) else keras.ops.cast(self.after, "float32")
        return keras.ops.where(step < self.warmup_steps, warm, later)

    def get_config(self) -> dict:
        return {"warmup_steps": self.warmup_steps, "target": self.target}


class Scaled(keras.optimizers.schedules.LearningRateSchedule):
    """`base(step) * scale`, with `scale` a variable read at every step: schedule=plateau lowers it
    between epochs without retracing the step, and the checkpoint keeps it."""

    def __init__(self, base, scale) -> None:
        self.base = base
        self.scale = scale

    def __call__(self, step):
        base = self.base(step) if callable(self.base) else keras.ops.cast(self.base, "float32")
        return base * keras.ops.cast(self.scale, "float32")

    def get_config(self) -> dict:
        return {}


class PlateauState:
    """schedule=plateau's state in tf.Variables (checkpointed, so a resume lowers the rate exactly
    when the uninterrupted run would): the rate's scale, the best eval value (meaningless until
    `seen`; finite, so checkpoints hold no Inf), epochs since."""

    def __init__(self) -> None:
        self._scale = tf.Variable(1.0, dtype=tf.float32, trainable=False, name="plateau_scale")
        self._best = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="plateau_best")
        self._seen = tf.Variable(False, trainable=False, name="plateau_seen")
        self._bad = tf.Variable(0, dtype=tf.int64, trainable=False, name="plateau_bad_epochs")

    scale = property(lambda self: float(self._scale.numpy()), lambda self, v: self._scale.assign(v))
    best = property(lambda self: float(self._best.numpy()), lambda self, v: self._best.assign(v))
    seen = property(lambda self: bool(self._seen.numpy()), lambda self, v: self._seen.assign(v))
    bad_epochs = property(lambda self: int(self._bad.numpy()), lambda self, v: self._bad.assign(v))

    def trackables(self) -> dict:
        return {"plateau_scale": self._scale, "plateau_best": self._best, "plateau_seen": self._seen,
                "plateau_bad_epochs": self._bad}


class Horizon:
    """The run's total steps as a variable (trainer.time_budget plans it after the first steps and
    may re-plan it; safetrain.train.budget): cosine, linear and one_cycle read it at every step, so
    a new plan needs no retrace, and the checkpoint keeps it."""

    def __init__(self, total_steps: int) -> None:
        self.variable = tf.Variable(int(total_steps), dtype=tf.int64, trainable=False, name="budget_planned_steps")


class OverHorizon(keras.optimizers.schedules.LearningRateSchedule):
    """A Keras schedule made for the horizon's current total at each call: `make(total)` builds
    the same CosineDecay/PolynomialDecay as a fixed run, with tensors for its lengths."""

    def __init__(self, make, horizon: Horizon) -> None:
        self.make = make
        self.horizon = horizon

    def __call__(self, step):
        total = keras.ops.cast(self.horizon.variable, "float32")
        return self.make(total)(step)

    def get_config(self) -> dict:
        return {}


def _lengths(schedule, **lengths):
    """A Keras schedule with tensor lengths: its constructor checks them as Python numbers
    (`if decay_steps <= 0`), its __call__ casts them as tensors; so it is made with 1 and the
    (already >= 1) tensors are set after."""
    for name, value in lengths.items():
        setattr(schedule, name, value)
    return schedule


@dataclass(frozen=True)
class Plan:
    """The schedule for the optimizer and the words for the console and TensorBoard."""

    learning_rate: object   # a float (constant, no warmup) or a Keras LearningRateSchedule
    describe: str
    plateau: PlateauState | None = None  # schedule=plateau: what its action changes


def learning_rate(cfg: OptimizerConfig, steps_per_epoch: int, total_steps: int,
                  horizon: Horizon | None = None) -> Plan:
    """`horizon`: the total is planned later (trainer.time_budget); `total_steps` is its cap."""
    lr, low = cfg.learning_rate, cfg.min_learning_rate
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    if cfg.warmup_epochs and warmup < 1:
        warmup = 1
    kind = cfg.schedule
    at = "the step trainer.time_budget plans" if horizon else f"step {total_steps}"
    if kind is Schedule.one_cycle:
        def one_cycle(total):
            if horizon:
                rise = keras.ops.maximum(1.0, keras.ops.round(ONE_CYCLE_WARMUP * total))
                return _lengths(keras.optimizers.schedules.CosineDecay(
                    initial_learning_rate=lr / ONE_CYCLE_START, warmup_target=lr, warmup_steps=1, decay_steps=1,
                    alpha=low / lr), warmup_steps=rise, decay_steps=keras.ops.maximum(1.0, total - rise - 1))
            rise = max(1, round(ONE_CYCLE_WARMUP * total))
            return keras.optimizers.schedules.CosineDecay(
                initial_learning_rate=lr / ONE_CYCLE_START, warmup_target=lr, warmup_steps=rise,
                decay_steps=max(1, total - rise - 1), alpha=low / lr)
        rise_words = "30% of the run" if horizon else f"{max(1, round(ONE_CYCLE_WARMUP * total_steps))} steps"
        schedule = OverHorizon(one_cycle, horizon) if horizon else one_cycle(total_steps)
        return Plan(schedule, f"one_cycle: {lr / ONE_CYCLE_START:g} -> {lr:g} over {rise_words}, cosine to {low:g} "
                              f"at {at}")
    if kind is Schedule.plateau:
        state = PlateauState()
        base = LinearWarmup(lr, warmup, lr) if warmup else lr
        words = (f"{'linear warmup over ' + str(warmup) + ' steps, then ' if warmup else ''}{lr:g}, "
                 f"x{cfg.decay_factor:g} after {cfg.plateau_patience} epochs without a better eval "
                 f"{cfg.plateau_metric.value} (not below {low:g})")
        return Plan(Scaled(base, state._scale), words, plateau=state)
    # The decays reach min_learning_rate on the run's last step (step index total_steps - 1).
    def decay_steps(total):
        return keras.ops.maximum(1.0, total - warmup - 1) if horizon else max(1, total - warmup - 1)

    def sized(schedule_class, total, **kw):
        if horizon:
            return _lengths(schedule_class(lr, decay_steps=1, **kw), decay_steps=decay_steps(total))
        return schedule_class(lr, decay_steps=decay_steps(total), **kw)

    if kind is Schedule.constant:
        after, words = lr, f"constant {lr:g}"
    elif kind is Schedule.cosine:
        def after_(total):
            return sized(keras.optimizers.schedules.CosineDecay, total, alpha=low / lr)
        after = OverHorizon(after_, horizon) if horizon else after_(total_steps)
        words = f"cosine {lr:g} -> {low:g} at {at}"
    elif kind is Schedule.linear:
        def after_(total):
            return sized(keras.optimizers.schedules.PolynomialDecay, total, end_learning_rate=low, power=1.0)
        after = OverHorizon(after_, horizon) if horizon else after_(total_steps)
        words = f"linear {lr:g} -> {low:g} at {at}"
    else:  # step
        boundaries = [round(m * steps_per_epoch) - warmup for m in cfg.milestones]
        values = [lr * cfg.decay_factor ** i for i in range(len(boundaries) + 1)]
        after = keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
        words = (f"step {lr:g}, x{cfg.decay_factor:g} at epochs {', '.join(f'{m:g}' for m in cfg.milestones)} "
                 f"(steps {', '.join(str(b + warmup) for b in boundaries)})")
    if not warmup:
        return Plan(after, words)
    words = f"linear warmup over {warmup} steps, then {words}"
    if warmup >= total_steps and not horizon:  # a smoke run (+debug=tiny) of a recipe: say so, change nothing
        words += f" (the run ends after {total_steps} steps, inside the warmup)"
    return Plan(LinearWarmup(after, warmup, lr), words)


def value_at(learning_rate, step) -> float:
    """The rate a step used: `step` is the optimizer's iteration count before it (0-based)."""
    return float(learning_rate(step)) if callable(learning_rate) else float(learning_rate)
