"""Which layer cut the gradients: words for missing (None) or exactly-zero gradients.

Plain Python over variable paths (`L3_lstm/lstm_cell/kernel`, `head/kernel`): the variables that
get no gradient belong to some layers; the layer right after the last of them is where the
gradient stopped — an op with no gradient (argmax, round, casts to int) or a zero one (sign).
"""

from __future__ import annotations

import re

from safetrain.models.shapes import ModelPlan
from safetrain.core.errors import Explanation

_INDEX = re.compile(r"^L(\d+)_")


def layer_index(path: str) -> int | None:
    match = _INDEX.match(path)
    return int(match.group(1)) if match else None


def explain(plan: ModelPlan, paths: list[str], kind: str) -> Explanation:
    """What to say about variables whose gradient is `kind` ("missing" or "zero")."""
    indices = [i for i in map(layer_index, paths) if i is not None]
    shown = ", ".join(paths[:6]) + (f" and {len(paths) - 6} more" if len(paths) > 6 else "")
    what = ("get no gradient at all (None)" if kind == "missing"
            else "got an exactly zero gradient in every one of the first steps: these weights never change")
    message = f"{len(paths)} trainable variable{'s' if len(paths) > 1 else ''} {what}: {shown}"
    if not indices:
        return Explanation(message, "check the loss and the head")
    culprit = next((s for s in plan.layers if s.index == max(indices) + 1), None)
    if culprit is None:
        return Explanation(message + ". The gradient stops between the last layer and the head.",
                           "make sure the head's input depends differentiably on the layers")
    message += (f". The gradient stops at model layer {culprit.index} ({culprit.label()}, config "
                f"{culprit.key}), right after them: an op there has " +
                ("no gradient (argmax, round, a cast to int, a disconnected branch)" if kind == "missing"
                 else "a zero gradient (sign, round, floor, a step function)"))
    hint = (f"make model layer {culprit.index} differentiable (e.g. tanh instead of sign, softmax "
            f"instead of argmax), or a straight-through estimator x + tf.stop_gradient(f(x) - x)")
    return Explanation(message, hint, culprit.key)
