"""Custom layers: register a Keras layer class by decorator and use it by name in configs.

    from safetrain.models.custom import custom_layer

    @custom_layer("scaled_tanh")                        # {type: scaled_tanh, scale: 2.0}
    class ScaledTanh(keras.layers.Layer):
        def __init__(self, scale: float = 1.0, **kwargs):
            super().__init__(**kwargs)
            self.scale = scale
        def call(self, x):
            return keras.ops.tanh(x) * self.scale

Put project layers in `models/custom_layers.py` (imported with the package), so configs reach
them by name and never by import path. The config arguments are checked against the class's
`__init__` signature. Plain-Python shape inference cannot see inside `call`, so a custom layer
keeps its input shape unless it declares `output_shape=lambda shape, **args: ...`; the builder
then checks the declaration against what Keras computes and names this layer if they differ.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, ClassVar

from safetrain.models.spec import LAYERS, LayerSpec, Shape

OutputShape = Callable[..., Shape]


@dataclasses.dataclass(frozen=True)
class CustomLayerSpec(LayerSpec):
    keras_class: ClassVar[type]
    declared_shape: ClassVar[OutputShape | None] = None

    def label(self) -> str:
        return f"{self.type} (custom {self.keras_class.__name__})"

    def output_shape(self, shape: Shape) -> Shape:
        declared = type(self).declared_shape
        return tuple(declared(shape, **self.keras_args())) if declared else shape

    def params(self, shape: Shape) -> int | None:  # type: ignore[override]
        return None  # unknown in plain Python; taken from the built layer

    def keras_args(self) -> dict[str, Any]:
        return {k: v for k, v in super().keras_args().items() if v is not None}


def custom_layer(name: str, output_shape: OutputShape | None = None) -> Callable[[type], type]:
    def register(keras_class: type) -> type:
        # Keras' own Layer arguments (name, dtype, trainable, ...) are not config arguments.
        keras_base = next(c for c in keras_class.__mro__ if c.__module__.startswith("keras"))
        base_params = set(inspect.signature(keras_base.__init__).parameters)
        fields = []
        for param in list(inspect.signature(keras_class.__init__).parameters.values())[1:]:
            if param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL) or param.name in base_params:
                continue
            annotation = param.annotation if param.annotation is not param.empty else Any
            if isinstance(annotation, str):  # `from __future__ import annotations` in the user's module
                annotation = {"int": int, "float": float, "str": str, "bool": bool}.get(annotation, Any)
            default = None if param.default is param.empty else param.default
            fields.append((param.name, annotation, dataclasses.field(default=default)))
        spec_class = dataclasses.make_dataclass(
            f"{keras_class.__name__}Spec", fields, bases=(CustomLayerSpec,), frozen=True,
            namespace={"type": name, "keras_class": keras_class,
                       "declared_shape": staticmethod(output_shape) if output_shape else None})
        LAYERS.register(name)(spec_class)
        keras_class.safetrain_type = name
        return keras_class

    return register
