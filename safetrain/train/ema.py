"""The weights' exponential moving average, swapped into the model to evaluate, test and export.

Keras keeps the average (`use_ema=True`: `optimizer._model_variables_moving_average`, one per
trainable variable, updated inside `apply_gradients`, so a skipped step does not move it, and
checkpointed with the optimizer's other variables). Keras' own `SwapEMAWeights` callback swaps by
arithmetic (a += b; b = a - b; a -= b), which is not exact in floating point: a resumed run would
then drift from an uninterrupted one. This swap copies through a temporary instead, so swapping
twice gives back the same bits.
"""

from __future__ import annotations

import tensorflow as tf


class EmaWeights:
    def __init__(self, *optimizers) -> None:
        """One optimizer per group of variables (the model's, a fine-tuned backbone's); each keeps
        the average of the variables it updates. A backbone's optimizer that has not stepped yet
        holds the frozen weights themselves, so swapping them is exact too."""
        self.optimizers = [getattr(o, "inner_optimizer", o) for o in optimizers]  # under a LossScaleOptimizer
        if not all(getattr(o, "use_ema", False) for o in self.optimizers):
            raise ValueError("EmaWeights needs optimizers built with use_ema=True")
        self.in_model = False  # True while the model holds the average (and the optimizer the weights)

    def use(self, average: bool) -> None:
        """Put the average into the model (True) or the trained weights back (False); idempotent."""
        if average == self.in_model:
            return
        for optimizer in self.optimizers:
            for variable, mean in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average):
                held = tf.identity(variable.value)
                variable.assign(mean.value)
                mean.assign(held)
        self.in_model = average
