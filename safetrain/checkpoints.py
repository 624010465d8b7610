"""Checkpoints of model, optimizer and position (step, epoch, batch within epoch).

`tf.train.CheckpointManager` under <run dir>/checkpoints. A rerun in the same run dir restores
the latest one and continues from the saved position.

In a multi-worker run only the chief keeps checkpoints. The others still take part in every save
(reading a mirrored or sync-on-read variable can be a collective op all workers must join), but
write to a private temporary directory that is deleted at once — TensorFlow's documented pattern.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import tensorflow as tf

log = logging.getLogger("safetrain")


class Checkpoints:
    def __init__(self, directory: Path, model, optimizer, max_to_keep: int = 3, writer: bool = True,
                 batch_size: int = 0) -> None:
        """`batch_size`: the global batch this run uses. A checkpoint saved with another one (a
        rerun with a new trainer.batch_size, or on_oom=halve_batch) resumes at the same example:
        batches done are converted, rounding down."""
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
        self.epoch = tf.Variable(1, dtype=tf.int64, trainable=False, name="epoch")
        self.in_epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="in_epoch")
        self.batch_size = tf.Variable(batch_size, dtype=tf.int64, trainable=False, name="batch_size")
        self.checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=self.step,
                                              epoch=self.epoch, in_epoch=self.in_epoch,
                                              batch_size=self.batch_size)
        self.manager = tf.train.CheckpointManager(self.checkpoint, str(directory), max_to_keep=max_to_keep)
        self.writer = writer
        self.last_saved_step: int | None = None

    def restore(self) -> tuple[int, int, int]:
        """(steps done, epoch to continue, batches of that epoch already done); zeros when fresh."""
        latest = self.manager.latest_checkpoint
        if latest is None:
            return 0, 1, 0
        current = int(self.batch_size.numpy())
        self.checkpoint.restore(latest).assert_existing_objects_matched()
        saved, in_epoch = int(self.batch_size.numpy()), int(self.in_epoch.numpy())
        if saved and current and saved != current and in_epoch:
            in_epoch = in_epoch * saved // current
            log.info("the checkpoint was saved with batch size %d, this run uses %d: continuing at batch %d "
                     "of the epoch (same examples)", saved, current, in_epoch)
        self.batch_size.assign(current)
        return int(self.step.numpy()), int(self.epoch.numpy()), in_epoch

    def save(self, step: int, epoch: int, in_epoch: int) -> None:
        if step == self.last_saved_step and int(self.epoch.numpy()) == epoch:
            return
        self.step.assign(step)
        self.epoch.assign(epoch)
        self.in_epoch.assign(in_epoch)
        if self.writer:
            self.manager.save(checkpoint_number=step)
        else:
            with tempfile.TemporaryDirectory(prefix="safetrain-worker-ckpt-") as scratch:
                self.checkpoint.write(str(Path(scratch) / "ckpt"))
        self.last_saved_step = step
