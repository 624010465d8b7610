"""Freeze and fine-tune a pretrained backbone: which of its weights train in which epoch, and how.

The backbone's weights get their own optimizer (the same kind as `optimizer.name`, with the same
clipping, weight decay and EMA), built over every variable the fine-tune phase will train at
step 0 — so the checkpoint holds its slots from the first save and a resume in either phase
restores the same structure. Its own step counter starts at the unfreeze, so Adam's bias
correction treats the backbone's first update as a first update (one optimizer shared with the
head would be thousands of steps in and give the fresh moments ~3x too large a step). Its rate is
`model.backbone.fine_tune_learning_rate`, else the run's schedule for `trainable: true`, else
`optimizer.learning_rate / 10`, constant, for `fine_tune_from_epoch` (fastai's and the Keras
guide's order of magnitude).

Frozen variables are not trainable, so the gradient probe and the missing/dead-gradient checks
never see them: they are meant to get no update. When the backbone unfreezes, the step functions
are rebuilt (a new trainable set is a new graph) and the probe starts again over the new set.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from safetrain.models.backbone_build import set_trainable
from safetrain.models.backbones import BackboneSpec
from safetrain.train.optimizers import exclude_one_dimensional

log = logging.getLogger("safetrain")


@dataclass
class FineTune:
    spec: BackboneSpec
    backbone: Any              # the Keras backbone model inside the safetrain model
    optimizer: Any             # the backbone's own optimizer
    variables: list            # what it updates once unfrozen (all or the top fine_tune_blocks blocks)
    rate: str                  # its learning rate, in words
    _steps: dict = field(default_factory=dict)
    _current: bool | None = None

    @classmethod
    def build(cls, spec: BackboneSpec, backbone, make_optimizer: Callable[[Any], Any], schedule_rate,
              base_rate: float, rate_words: str) -> "FineTune":
        """Call inside the strategy's scope, before the head's optimizer is built (its variables
        are the model's trainable ones minus `variables`)."""
        set_trainable(backbone, spec, True)
        variables = list(backbone.trainable_variables)
        if spec.fine_tune_learning_rate is not None:
            rate, words = spec.fine_tune_learning_rate, f"{spec.fine_tune_learning_rate:g} (constant)"
        elif spec.trainable:
            rate, words = schedule_rate, f"the run's ({rate_words})"
        else:
            rate, words = base_rate / 10, f"{base_rate / 10:g} (optimizer.learning_rate / 10, constant)"
        optimizer = make_optimizer(rate)
        exclude_one_dimensional(optimizer, variables)  # no weight decay on biases and normalization, as the head's
        optimizer.build(variables)
        set_trainable(backbone, spec, spec.trainable_in(1))
        return cls(spec=spec, backbone=backbone, optimizer=optimizer, variables=variables, rate=words)

    def describe(self) -> str:
        count = sum(int(v.numpy().size) for v in self.variables)
        when = ("from the first step" if self.spec.trainable else
                f"from epoch {self.spec.fine_tune_from_epoch} (frozen before: those weights are meant to get "
                f"no update, and the gradient checks leave them out)")
        part = f"its top {self.spec.fine_tune_blocks} blocks" if self.spec.fine_tune_blocks else "all of it"
        bn = ("BatchNorm statistics stay the pretrained ones (training=False)" if self.spec.weights is not None else
              "BatchNorm learns its statistics (from scratch, momentum 0.9)")
        return (f"backbone {self.spec.entry.name}: {part} ({count:,} weights) trained {when}, own optimizer at "
                f"learning rate {self.rate}; {bn}")

    def steps_args(self) -> dict:
        """Steps arguments for the current state (the NaN replay rebuilds the step functions)."""
        return {"fine_tune": self._fine_tune(bool(self._current))}

    def _fine_tune(self, trainable: bool):
        return (self.optimizer, self.variables) if trainable else None

    def steps_for(self, epoch: int, make_steps: Callable[..., Any], on_switch: Callable[[Any], None]):
        """The step functions for `epoch`: the backbone's trainable flags set for it, one Steps per
        state (built on first use), `on_switch(steps)` when the state changes within this process."""
        trainable = self.spec.trainable_in(epoch)
        set_trainable(self.backbone, self.spec, trainable)
        if trainable not in self._steps:
            self._steps[trainable] = make_steps(fine_tune=self._fine_tune(trainable))
        if self._current is not None and self._current != trainable:
            log.info("epoch %d: backbone %s unfrozen (%s)", epoch, self.spec.entry.name, self.rate)
            on_switch(self._steps[trainable])
        self._current = trainable
        return self._steps[trainable]
