"""Where a run is: its position in the data, and what a diagnosis needs to know about it.

The loop and the run (safetrain.experiment) write `Context` (phase, step, the model's layers, the batch); the
diagnosis reads it. Keeping it here, apart from the error classifier, lets the loop depend only
on plain state. TensorFlow-free.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from safetrain.core.errors import Phase

_command_started: float | None = None


def command_started(at: float) -> None:
    """`python -m safetrain` marks its first line (time.monotonic()): trainer.time_budget is the whole
    command's wall time, so the seconds Python, Hydra and the config take before the run's record
    (about 2 s on a 2-core VM: 3% of a 1-minute budget) are counted too."""
    global _command_started
    _command_started = at


def run_started() -> float:
    """The time.monotonic() a run counts from: the command's start for the command's first run, now
    for any later one (a multirun's next jobs, runs made inside a test process)."""
    global _command_started
    at, _command_started = _command_started, None
    return at if at is not None else time.monotonic()


@dataclass(frozen=True)
class Position:
    """A point in training: steps done, the epoch to continue (1-based), and batches of that
    epoch already done. The data order is a function of (seed, epoch), so this is the iterator's
    whole state: what a checkpoint stores and a resume continues from."""

    step: int = 0
    epoch: int = 1
    in_epoch: int = 0


@dataclass(frozen=True)
class LayerRef:
    """A model layer as the user knows it."""

    index: int          # position in model.layers; -1 for a pretrained backbone (model.backbone)
    label: str          # e.g. "conv2d 32, 3x3, ..." (the shape table's wording)
    config_key: str     # e.g. "model.layers[3]"
    class_name: str = ""

    def describe(self) -> str:
        if self.index < 0:
            return f"the {self.label} (config {self.config_key})"
        return f"model layer {self.index} ({self.label}, config {self.config_key})"


@dataclass
class Context:
    """What the run knew when the error happened; every field may be unknown."""

    phase: Phase = Phase.train
    step: int | None = None
    batch_size: int | None = None
    precision: str | None = None
    device: str | None = None
    input_spec: str | None = None         # what the pipeline delivers, e.g. "28x28x1 float32"
    params: int | None = None
    activation_bytes_per_example: int | None = None
    layers: dict[str, LayerRef] = field(default_factory=dict)  # Keras layer name -> LayerRef
