"""Build the Keras model from a ModelPlan and check it against the inferred shapes.

The mapping from spec type to Keras class is closed and explicit (no import strings). Layers are
named `L<index>_<type>` so any TensorFlow message that names a node also names the config entry.
"""

from __future__ import annotations

import keras

from models.shapes import ModelPlan
from models.spec import LayerSpec
from safetrain.errors import SpecError

_KERAS = {
    "conv2d": keras.layers.Conv2D,
    "max_pool": keras.layers.MaxPooling2D,
    "avg_pool": keras.layers.AveragePooling2D,
    "global_avg_pool": keras.layers.GlobalAveragePooling2D,
    "global_max_pool": keras.layers.GlobalMaxPooling2D,
    "flatten": keras.layers.Flatten,
    "dense": keras.layers.Dense,
    "dropout": keras.layers.Dropout,
    "batch_norm": keras.layers.BatchNormalization,
}


def layer_name(spec: LayerSpec) -> str:
    return f"L{spec.index}_{spec.type}"


def build_model(plan: ModelPlan, input_dtype: str = "float32", seed: int | None = None) -> keras.Model:
    inputs = keras.Input(shape=plan.input_shape, dtype=input_dtype, name="image")
    x = inputs
    for spec in plan.layers:
        kwargs = spec.keras_args()
        if spec.type == "dropout" and seed is not None:
            kwargs["seed"] = seed + spec.index
        x = _KERAS[spec.type](name=layer_name(spec), **kwargs)(x)
    # The head always computes in float32: softmax/cross-entropy in float16 lose too much.
    logits = keras.layers.Dense(plan.num_classes, dtype="float32", name="head")(x)
    model = keras.Model(inputs, logits, name="safetrain_model")
    check_shapes(model, plan)
    return model


def check_shapes(model: keras.Model, plan: ModelPlan) -> None:
    """The built model must match the inferred table exactly; a mismatch is a bug in models/."""
    built = [tuple(layer.output.shape[1:]) for layer in model.layers[1:]]
    inferred = [row.shape for row in plan.rows[1:]]
    if built != inferred:
        raise SpecError(f"built model shapes {built} differ from the inferred shapes {inferred}",
                        hint="this is a safetrain bug in models/spec.py; please report it")
    if model.count_params() != plan.total_params:
        raise SpecError(f"built model has {model.count_params()} parameters, inferred {plan.total_params}",
                        hint="this is a safetrain bug in models/spec.py; please report it")
