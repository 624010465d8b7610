"""`python -m safetrain.trial_worker FOLDER`: one precision-trial candidate in its own process.

The precision trial (safetrain/train/precision_trial.py) starts it with a process-wide setting
TensorFlow reads only at start-up (oneDNN's math mode); FOLDER holds `spec.json` (the model's
layers, input, optimizer and trainer settings, the seed, the steps to time) and `batches.npz`
(the batches every candidate trains on). It rebuilds the same model from the same seed, times the
same steps the same way, and writes `result.json` {examples_per_sec, loss}. An entry point:
nothing imports it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(folder: str) -> int:
    import numpy as np

    from safetrain.core.tf_import import import_tensorflow

    tf = import_tensorflow()
    from safetrain.config.schema import OptimizerConfig, TrainerConfig
    from safetrain.models.parse import parse_layers
    from safetrain.models.shapes import infer
    from safetrain.train import precision_trial
    from safetrain.train.task import build_task

    where = Path(folder)
    spec = json.loads((where / "spec.json").read_text())
    arrays = np.load(where / "batches.npz")
    plan = infer(parse_layers(spec["layers"]), tuple(spec["input_shape"]), spec["num_classes"],
                 multi_label=spec.get("multi_label", False))

    def build(policy: str):
        return build_task(plan, optimizer=OptimizerConfig(**spec["optimizer"]),
                          trainer=TrainerConfig(**spec["trainer"]), strategy=tf.distribute.get_strategy(),
                          steps_per_epoch=1, policy=policy, input_dtype=spec["input_dtype"])

    inputs = precision_trial.TrialInputs(images=arrays["images"], labels=arrays["labels"], build=build,
                                         strategy=tf.distribute.get_strategy(), planned_steps=0)
    ready = precision_trial.prepare(precision_trial.FLOAT32, inputs)  # float32 weights; the math mode is process-wide
    if isinstance(ready, precision_trial.Measured):
        print(ready.why, file=sys.stderr)
        return 1
    measured = precision_trial.timed_rounds({"worker": ready}, spec["steps"])["worker"]
    (where / "result.json").write_text(json.dumps({"examples_per_sec": measured.examples_per_sec,
                                                   "loss": measured.loss}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
