"""After a NaN/Inf stop: replay from the last checkpoint with check_numerics to name the first op.

The loop only learns that a step's loss or gradient norm was non-finite. Which op produced the
first NaN (a log of a negative number in a custom layer, an overflowing update from a huge
learning rate, a division in the loss) is what the user needs. Checking every op costs a lot
(scripts/bench_check_numerics.py), so it is never on in the hot path. Instead, when the loop
stops, we restore the last checkpoint, which the loop never overwrote with poisoned weights, turn
on `tf.debugging.enable_check_numerics`, and run the same steps again on the same batches (the
data order is a function of seed and epoch, see pipelines/build.py). TensorFlow then raises at
the first op whose output is not finite, with its node name, which maps to the model layer.

Nothing is written during the replay: checkpoints, TensorBoard and report.json keep the state
of the original run.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf

from safetrain.diagnose.facts import facts
from safetrain.core.run_state import Context, Position

log = logging.getLogger("safetrain")

MAX_REPLAY_STEPS = 500  # beyond this the replay would take too long; say so instead


@dataclass(frozen=True)
class Finding:
    """What the replay found: a sentence for the error message, the config key to blame, the op."""

    text: str
    config_key: str | None = None
    op: str | None = None


def locate_non_finite(*, make_steps: Callable[[], object], restore: Callable[[], Position],
                      train_batches: Callable[[int, int], Iterable], steps_per_epoch: int,
                      failed_step: int, model, context: Context) -> Finding:
    """Where the first non-finite value of the steps up to `failed_step` appeared.
    `train_batches(epoch, skip)`: the same batches the loop trained on (safetrain.train.loop)."""
    start = restore()
    step, epoch, in_epoch = start.step, start.epoch, start.in_epoch
    if failed_step - step > MAX_REPLAY_STEPS:
        return Finding(f"Not replayed: the last checkpoint is {failed_step - step} steps before the failure (more "
                       f"than {MAX_REPLAY_STEPS}); lower trainer.checkpoint_every_steps to make the replay possible.")
    log.info("replaying steps %d..%d from the checkpoint with check_numerics to find the first non-finite op",
             step + 1, failed_step)
    found = None
    start_size = before = _largest_weight(model)
    tf.debugging.enable_check_numerics()
    try:
        steps = make_steps()  # fresh tf.functions: check_numerics instruments graphs traced from now on
        while step < failed_step and found is None:
            iterator = iter(train_batches(epoch, in_epoch))
            while step < failed_step and in_epoch < steps_per_epoch:
                with _checks_paused():  # eager variable reads are checked too
                    before = _largest_weight(model)  # the failing step's own update runs alongside the check
                try:
                    steps.train(iterator)
                except tf.errors.OpError as err:
                    found = err
                    break
                step, in_epoch = step + 1, in_epoch + 1
            epoch, in_epoch = epoch + 1, 0
    finally:
        tf.debugging.disable_check_numerics()  # before reading weights: eager reads are checked too
    if found is not None:
        return _explain(found, step + 1, failed_step, (start_size, before), context)
    return Finding("The replay from the last checkpoint with check_numerics ran to the failing step without a "
                   "non-finite value (non-deterministic kernels); set trainer.deterministic=true to make it exact.")


def _largest_weight(model) -> float:
    """The largest |weight| of the model (inf when any is non-finite)."""
    largest = 0.0
    for variable in model.trainable_variables:
        value = np.asarray(variable.value).astype(np.float32)
        largest = max(largest, float(np.max(np.abs(value))) if value.size else 0.0)
    return largest


@contextlib.contextmanager
def _checks_paused():
    """check_numerics off for a moment (only ever used while it is on)."""
    tf.debugging.disable_check_numerics()
    try:
        yield
    finally:
        tf.debugging.enable_check_numerics()


def _explain(err: tf.errors.OpError, step: int, failed_step: int, sizes: tuple[float, float],
             context: Context) -> Finding:
    f = facts(err, context)
    op = (f.op or "unknown op").replace("/CheckNumericsV2", "")
    where = f.layer.describe() if f.layer else "no model layer (the loss or the optimizer update)"
    start_size, before = sizes
    text = (f"Replayed with check_numerics: the first non-finite value came from op {op} in {where}, at step "
            f"{step}" + (f" (the loop noticed at step {failed_step})" if step != failed_step else "") + ".")
    if f.source:
        text += f" Your code: {f.source}."
    if not np.isfinite(before) or before > 1e3 * max(1.0, start_size):
        text += (f" Before that step the largest weight was {before:.3g} (at the checkpoint {start_size:.3g}): "
                 f"the updates blew the weights up, so the learning rate is the likely cause.")
        return Finding(text, "optimizer.learning_rate", op)
    if "gradient" in op.lower() or op.startswith(("SGD", "Adam", "RMSprop", "AdamW")):
        return Finding(text + " It is in the backward pass or the update: lower optimizer.learning_rate or set "
                              "optimizer.clipnorm.", "optimizer.learning_rate", op)
    return Finding(text, f.layer.config_key if f.layer else None, op)
