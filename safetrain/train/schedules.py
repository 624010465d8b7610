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


WARMUP_SHARE = 0.10        # under trainer.time_budget the warmup is at most this share of the planned steps


class Horizon:
    """The run's planned total steps and the shape of the learning-rate curve over them, as
    variables (trainer.time_budget plans them after the first steps and re-plans by time;
    safetrain.train.budget): the schedule reads them at every step, so a new plan needs no
    retrace, and the checkpoint keeps them.

    The decay runs on a *progress* from 0 (the warmup's end) to 1 (the last planned step). A new
    plan never restarts it: it bends the rest of the curve from where it is (`replan`): progress
    `bend_progress` at step `bend_step` goes on linearly to 1 at the new last step. So the rate is
    continuous at a re-plan and never rises after the warmup, however the plan changes."""

    def __init__(self, total_steps: int, warmup_steps: int = 0, one_cycle: bool = False) -> None:
        self.configured_warmup = int(warmup_steps)
        self.one_cycle = one_cycle
        self.variable = tf.Variable(int(total_steps), dtype=tf.int64, trainable=False, name="budget_planned_steps")
        self.warmup = tf.Variable(self._warmup_for(total_steps), dtype=tf.int64, trainable=False,
                                  name="budget_warmup_steps")
        self.bend_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="budget_bend_step")
        self.bend_progress = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="budget_bend_progress")

    def trackables(self) -> dict:
        """The checkpoint's names for the variables (stable: they are part of its format)."""
        return {"budget_planned_steps": self.variable, "budget_warmup_steps": self.warmup,
                "budget_bend_step": self.bend_step, "budget_bend_progress": self.bend_progress}

    @property
    def total(self) -> int:
        return int(self.variable.numpy())

    @property
    def warmup_steps(self) -> int:
        return int(self.warmup.numpy())

    def _warmup_for(self, total: int) -> int:
        if self.one_cycle:
            return max(1, round(ONE_CYCLE_WARMUP * total))
        if not self.configured_warmup:
            return 0
        return max(1, min(self.configured_warmup, round(WARMUP_SHARE * total)))

    def first_plan(self, total: int) -> None:
        """The first plan: its total, and the warmup scaled to it (optimizer.warmup_epochs, at most
        a tenth of the plan; one_cycle's rise is 30% of it). The warmup is fixed from here on."""
        self.variable.assign(int(total))
        self.warmup.assign(self._warmup_for(total))

    def replan(self, step: int, total: int) -> None:
        """A new total from `step` on: after the warmup, the decay goes on from its present
        progress to 1 at the new last step."""
        if step > self.warmup_steps:
            progress = float(self.progress(step))
            self.bend_step.assign(int(step))
            self.bend_progress.assign(progress)
        self.variable.assign(int(total))

    def progress(self, step):
        """The decay's progress at `step` (0 until the warmup's end, 1 from the last planned step)."""
        step = keras.ops.cast(step, "float32")
        total = keras.ops.cast(self.variable, "float32")
        start = keras.ops.maximum(keras.ops.cast(self.bend_step, "float32"), keras.ops.cast(self.warmup, "float32"))
        done = keras.ops.cast(self.bend_progress, "float32")
        span = keras.ops.maximum(1.0, total - 1.0 - start)
        return done + (1.0 - done) * keras.ops.clip((step - start) / span, 0.0, 1.0)


class OverHorizon(keras.optimizers.schedules.LearningRateSchedule):
    """trainer.time_budget's rate: a linear warmup over the horizon's warmup steps, then Keras'
    decay (`decay(progress)`: CosineDecay or PolynomialDecay made over one step and fed the
    progress in [0, 1]; None: constant) over the horizon's progress, which a re-plan bends and
    never turns back."""

    def __init__(self, rate: float, decay, horizon: Horizon, start: float = 0.0) -> None:
        self.rate, self.decay, self.horizon, self.start = rate, decay, horizon, start

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = keras.ops.cast(self.horizon.warmup, "float32")
        rise = self.start + (self.rate - self.start) * (step + 1.0) / keras.ops.maximum(warmup, 1.0)
        later = (self.decay(self.horizon.progress(step)) if self.decay is not None
                 else keras.ops.cast(self.rate, "float32"))
        return keras.ops.where(step < warmup, keras.ops.minimum(rise, self.rate), later)

    def get_config(self) -> dict:
        return {}


@dataclass(frozen=True)
class Plan:
    """The schedule for the optimizer and the words for the console and TensorBoard."""

    learning_rate: object   # a float (constant, no warmup) or a Keras LearningRateSchedule
    describe: str
    plateau: PlateauState | None = None  # schedule=plateau: what its action changes


def learning_rate(cfg: OptimizerConfig, steps_per_epoch: int, total_steps: int,
                  horizon: Horizon | None = None) -> Plan:
    """`horizon`: the total is planned later (trainer.time_budget); `total_steps` is its cap."""
    if horizon is not None:
        return _over_horizon(cfg, horizon)
    lr, low = cfg.learning_rate, cfg.min_learning_rate
    warmup = warmup_steps(cfg, steps_per_epoch)
    kind = cfg.schedule
    at = f"step {total_steps}"
    if kind is Schedule.one_cycle:
        rise = max(1, round(ONE_CYCLE_WARMUP * total_steps))
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=lr / ONE_CYCLE_START, warmup_target=lr, warmup_steps=rise,
            decay_steps=max(1, total_steps - rise - 1), alpha=low / lr)
        return Plan(schedule, f"one_cycle: {lr / ONE_CYCLE_START:g} -> {lr:g} over {rise} steps, cosine to {low:g} "
                              f"at {at}")
    if kind is Schedule.plateau:
        state = PlateauState()
        base = LinearWarmup(lr, warmup, lr) if warmup else lr
        return Plan(Scaled(base, state._scale),
                    _plateau_words(cfg, f"linear warmup over {warmup} steps" if warmup else ""), plateau=state)
    # The decays reach min_learning_rate on the run's last step (step index total_steps - 1).
    decay_steps = max(1, total_steps - warmup - 1)
    if kind is Schedule.constant:
        after, words = lr, f"constant {lr:g}"
    elif kind is Schedule.cosine:
        after = keras.optimizers.schedules.CosineDecay(lr, decay_steps=decay_steps, alpha=low / lr)
        words = f"cosine {lr:g} -> {low:g} at {at}"
    elif kind is Schedule.linear:
        after = keras.optimizers.schedules.PolynomialDecay(lr, decay_steps=decay_steps, end_learning_rate=low,
                                                           power=1.0)
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
    if warmup >= total_steps:  # a smoke run (+debug=tiny) of a recipe: say so, change nothing
        words += f" (the run ends after {total_steps} steps, inside the warmup)"
    return Plan(LinearWarmup(after, warmup, lr), words)


def warmup_steps(cfg: OptimizerConfig, steps_per_epoch: int) -> int:
    """optimizer.warmup_epochs in steps (at least 1 when asked for)."""
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    return max(1, warmup) if cfg.warmup_epochs else 0


def horizon_for(cfg: OptimizerConfig, steps_per_epoch: int, cap: int) -> Horizon:
    """trainer.time_budget's horizon: `cap` steps until the first plan. Build it in the strategy's scope."""
    return Horizon(cap, warmup_steps(cfg, steps_per_epoch), one_cycle=cfg.schedule is Schedule.one_cycle)


def _plateau_words(cfg: OptimizerConfig, warmup_words: str) -> str:
    return (f"{warmup_words + ', then ' if warmup_words else ''}{cfg.learning_rate:g}, "
            f"x{cfg.decay_factor:g} after {cfg.plateau_patience} epochs without a better eval "
            f"{cfg.plateau_metric} (not below {cfg.min_learning_rate:g})")


def _over_horizon(cfg: OptimizerConfig, horizon: Horizon) -> Plan:
    """The rate over trainer.time_budget's planned steps: Keras' CosineDecay / PolynomialDecay fed
    the horizon's progress (Horizon), behind a warmup scaled to the plan."""
    lr, low, kind = cfg.learning_rate, cfg.min_learning_rate, cfg.schedule
    at = "the step trainer.time_budget plans (a re-plan bends the rest of the curve, never up)"
    warmup_words = (f"linear warmup over {horizon.configured_warmup} steps (at most {WARMUP_SHARE:.0%} of the "
                    f"planned steps)" if horizon.configured_warmup else "")
    cosine = keras.optimizers.schedules.CosineDecay(lr, decay_steps=1, alpha=low / lr)
    if kind is Schedule.one_cycle:
        return Plan(OverHorizon(lr, cosine, horizon, start=lr / ONE_CYCLE_START),
                    f"one_cycle: {lr / ONE_CYCLE_START:g} -> {lr:g} over 30% of the planned steps, cosine to {low:g} "
                    f"at {at}")
    if kind is Schedule.plateau:
        state = PlateauState()
        return Plan(Scaled(OverHorizon(lr, None, horizon), state._scale), _plateau_words(cfg, warmup_words),
                    plateau=state)
    linear = keras.optimizers.schedules.PolynomialDecay(lr, decay_steps=1, end_learning_rate=low, power=1.0)
    decays = {Schedule.constant: (None, f"constant {lr:g}"),
              Schedule.cosine: (cosine, f"cosine {lr:g} -> {low:g} at {at}"),
              Schedule.linear: (linear, f"linear {lr:g} -> {low:g} at {at}")}
    decay, words = decays[kind]  # step: refused with a budget (validate_recipe)
    return Plan(OverHorizon(lr, decay, horizon), f"{warmup_words}, then {words}" if warmup_words else words)


def value_at(learning_rate, step) -> float:
    """The rate a step used: `step` is the optimizer's iteration count before it (0-based)."""
    return float(learning_rate(step)) if callable(learning_rate) else float(learning_rate)
