"""Shape inference for a whole model spec, and the shape/params/FLOPs table users read.

Runs in plain Python before TensorFlow builds anything; the built Keras model is checked
against it (models.build), so the table is a promise, not a guess.
"""

from __future__ import annotations

from dataclasses import dataclass

from safetrain.models.backbones import BackboneSpec
from safetrain.models.spec import LayerSpec, Shape, _show
from safetrain.core.errors import SpecError


@dataclass(frozen=True)
class Row:
    index: int | None     # position in model.layers; None for the input and the head
    label: str
    shape: Shape          # output shape without the batch dimension
    params: int | None    # None: a custom layer's, known once built
    flops: int            # forward pass, per example (multiply-add = 2)
    approx: bool = False  # FLOPs scaled from a recorded count (a backbone), shown with "≈"


@dataclass(frozen=True)
class ModelPlan:
    layers: tuple[LayerSpec, ...]
    input_shape: Shape
    num_classes: int
    rows: tuple[Row, ...]
    backbone: BackboneSpec | None = None  # a pretrained backbone before `layers` (its row follows the input)
    multi_label: bool = False  # dataset.task=multi_label: a sigmoid per label, not a softmax over the classes

    @property
    def activation(self) -> str:
        """How the head's logits become probabilities (training's loss, eval, export and predict)."""
        return "sigmoid" if self.multi_label else "softmax"

    @property
    def total_params(self) -> int:
        """Known parameters (custom layers' are counted by the built model)."""
        return sum(r.params or 0 for r in self.rows)

    @property
    def total_flops(self) -> int:
        return sum(r.flops for r in self.rows)

    def table(self) -> str:
        header = ("#", "layer", "output shape", "params", "FLOPs")
        approx = "≈" if any(r.approx for r in self.rows) else ""
        body = [("" if r.index is None else str(r.index), r.label, _show(r.shape),
                 "?" if r.params is None else f"{r.params:,}", ("≈" if r.approx else "") + f"{r.flops:,}")
                for r in self.rows]
        body.append(("", "total", "", f"{self.total_params:,}", f"{approx}{self.total_flops:,}"))
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(5)]
        fmt = lambda line: "  ".join(  # noqa: E731
            cell.rjust(w) if i in (0, 3, 4) else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        lines = [fmt(header), *map(fmt, body)]
        if self.backbone is not None:
            lines.append("(backbone params: counted once from the built Keras model, recorded in models/backbones.py; "
                         "FLOPs: TensorFlow's profiler count at 224x224, scaled by the input's area)")
        return "\n".join(lines)


def infer(layers: list[LayerSpec], input_shape: Shape, num_classes: int,
          backbone: BackboneSpec | None = None, multi_label: bool = False) -> ModelPlan:
    rows = [Row(None, "input", tuple(input_shape), 0, 0)]
    shape: Shape = tuple(input_shape)
    if backbone is not None:
        out = backbone.output_shape(shape)
        rows.append(Row(None, backbone.label(), out, backbone.entry.params,
                        backbone.entry.flops(shape[0], shape[1]), approx=True))
        shape = out
    for layer in layers:
        out = layer.output_shape(shape)
        rows.append(Row(layer.index, layer.label(), out, layer.params(shape), layer.flops(shape, out)))
        shape = out
    if len(shape) != 1 and layers:
        raise SpecError(
            f"the classification head needs a flat feature vector, but the last layer "
            f"(model.layers.{len(layers) - 1}, {layers[-1].label()}) gives {_show(shape)}",
            hint="append {type: flatten} or {type: global_avg_pool} to model.layers",
            config_key=f"model.layers.{len(layers) - 1}")
    activation = "a sigmoid per label" if multi_label else "softmax"
    rows.append(Row(None, f"head dense {num_classes} (logits, float32; {activation})", (num_classes,),
                    shape[0] * num_classes + num_classes, 2 * shape[0] * num_classes))
    if len(shape) != 1:
        raise SpecError(f"the classification head needs a flat feature vector, but the model input is {_show(shape)} "
                        f"and model.layers is empty", hint="list layers under model.layers (or pick model=cnn_small)",
                        config_key="model.layers")
    return ModelPlan(tuple(layers), tuple(input_shape), num_classes, tuple(rows), backbone, multi_label)
