"""The best eval epoch's record and weights, kept in tf.Variables so checkpoints carry them.

`SelectBest` (safetrain.train.actions) decides in plain Python; this is where its state lives on the
training side: the best value, its epoch, step and eval loss, the epochs since, and — with trainer.keep_best
— a copy of every model variable taken at the best epoch. All of them are checkpointed with the
run (safetrain.train.checkpoints), so a resumed run keeps choosing exactly as an uninterrupted one, and
restores the same weights for the test split and the export. The copy costs one model's worth of
memory; it is made in the strategy's scope, so it is mirrored like the weights.
"""

from __future__ import annotations

import tensorflow as tf


class BestState:
    def __init__(self, model, keep_weights: bool) -> None:
        self.model = model
        # Meaningless while epoch is 0 (no best yet); finite, so a checkpoint holds no Inf (a NaN stop
        # checks that every saved tensor is finite).
        self._value = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="best_value")
        self._epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_epoch")
        self._step = tf.Variable(0, dtype=tf.int64, trainable=False, name="best_step")
        self._bad = tf.Variable(0, dtype=tf.int64, trainable=False, name="epochs_without_improvement")
        self._loss = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="best_eval_loss")  # breaks ties
        self.copies = [tf.Variable(tf.identity(v.value), trainable=False, name="best_" + v.name)
                       for v in model.variables] if keep_weights else []

    def trackables(self) -> dict:
        """What the checkpoint holds of it."""
        return {"best_value": self._value, "best_epoch": self._epoch, "best_step": self._step,
                "best_bad_epochs": self._bad, "best_eval_loss": self._loss, "best_weights": self.copies}

    value = property(lambda self: float(self._value.numpy()), lambda self, v: self._value.assign(v))
    epoch = property(lambda self: int(self._epoch.numpy()), lambda self, v: self._epoch.assign(v))
    step = property(lambda self: int(self._step.numpy()), lambda self, v: self._step.assign(v))
    bad_epochs = property(lambda self: int(self._bad.numpy()), lambda self, v: self._bad.assign(v))
    loss = property(lambda self: float(self._loss.numpy()), lambda self, v: self._loss.assign(v))

    def capture(self) -> None:
        for copy, variable in zip(self.copies, self.model.variables):
            copy.assign(variable.value)

    def restore(self) -> bool:
        """Put the best epoch's weights back into the model; False when there are none to restore."""
        if not self.copies or not self.epoch:
            return False
        for copy, variable in zip(self.copies, self.model.variables):
            variable.assign(copy)
        return True
