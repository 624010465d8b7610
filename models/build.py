"""Build the Keras model from a ModelPlan and check it against the inferred shapes.

The mapping from spec type to Keras class is closed and explicit (no import strings). Layers are
named `L<index>_<type>` so any TensorFlow message that names a node also names the config entry.
"""

from __future__ import annotations

import keras

from safetrain.models import preflight
from safetrain.models.backbone_build import InferenceMode, build_backbone, set_trainable
from safetrain.models.custom import CustomLayerSpec
from safetrain.models.norm import FusedBatchNorm
from safetrain.models.shapes import ModelPlan
from safetrain.models.spec import LayerSpec
from safetrain.core.errors import SpecError

_KERAS = {
    "conv2d": keras.layers.Conv2D,
    "depthwise_conv2d": keras.layers.DepthwiseConv2D,
    "separable_conv2d": keras.layers.SeparableConv2D,
    "max_pool": keras.layers.MaxPooling2D,
    "avg_pool": keras.layers.AveragePooling2D,
    "global_avg_pool": keras.layers.GlobalAveragePooling2D,
    "global_max_pool": keras.layers.GlobalMaxPooling2D,
    "flatten": keras.layers.Flatten,
    "dense": keras.layers.Dense,
    "dropout": keras.layers.Dropout,
    "batch_norm": FusedBatchNorm,      # Keras' layer, trained through the fused kernel (norm.py)
    "lstm": keras.layers.LSTM,
    "gru": keras.layers.GRU,
}


@keras.saving.register_keras_serializable(package="safetrain")
class ResidualBlock(keras.layers.Layer):
    """The `residual` spec: conv-BN-relu-conv-BN + shortcut (1x1 conv + BN when the shape changes).
    Registered and configurable so an exported `model.keras` loads with `safe_mode=True`."""

    def __init__(self, filters: int, kernel_size, strides, **kwargs) -> None:
        super().__init__(**kwargs)
        self.filters, self.kernel_size, self.strides = filters, kernel_size, strides
        conv = dict(padding="same", use_bias=False)
        self.conv1 = keras.layers.Conv2D(filters, kernel_size, strides=strides, **conv)
        self.bn1 = FusedBatchNorm()
        self.conv2 = keras.layers.Conv2D(filters, kernel_size, **conv)
        self.bn2 = FusedBatchNorm()
        self.project = None

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
                "strides": self.strides}

    def build(self, input_shape) -> None:
        if input_shape[-1] != self.filters or self.strides not in (1, (1, 1)):
            self.project = keras.Sequential([
                keras.layers.Conv2D(self.filters, 1, strides=self.strides, use_bias=False),
                FusedBatchNorm()])

    def call(self, x, training=None):
        y = keras.ops.relu(self.bn1(self.conv1(x), training=training))
        y = self.bn2(self.conv2(y), training=training)
        shortcut = self.project(x, training=training) if self.project is not None else x
        return keras.ops.relu(y + shortcut)


def _keras_layer(spec: LayerSpec, seed: int | None, input_shape: tuple[int, ...]):
    """One Keras layer per spec; `input_shape` (no batch) is what the spec receives."""
    name = layer_name(spec)
    if spec.type == "rows_as_sequence":
        height, width, channels = input_shape
        return keras.layers.Reshape((height, width * channels), name=name)
    if spec.type == "residual":
        return ResidualBlock(spec.filters, spec.kernel_size, spec.strides, name=name)
    if spec.type == "bidirectional":
        inner = _KERAS[spec.inner.type](**spec.inner.keras_args())
        return keras.layers.Bidirectional(inner, merge_mode=spec.merge_mode, name=name)
    kwargs = spec.keras_args()
    if isinstance(spec, CustomLayerSpec):
        return spec.keras_class(name=name, **kwargs)
    if spec.type == "dropout" and seed is not None:
        kwargs["seed"] = seed + spec.index
    return _KERAS[spec.type](name=name, **kwargs)


def layer_name(spec: LayerSpec) -> str:
    return f"L{spec.index}_{spec.type}"


def build_model(plan: ModelPlan, input_dtype: str = "float32", seed: int | None = None) -> keras.Model:
    """Build layer by layer, so a failure or a wrong output names the layer that caused it (Keras
    names the *next* layer when a custom layer drops an axis), then preflight custom layers."""
    inputs = keras.Input(shape=plan.input_shape, dtype=input_dtype, name="image")
    x = inputs
    shape = tuple(plan.input_shape)
    rows = plan.rows[1:]
    if plan.backbone is not None:
        # Pretrained weights run in inference mode always (InferenceMode says why). From scratch
        # (weights=null) there are no statistics to keep: BatchNorm learns them as in any model
        # (a frozen Keras 3 BatchNorm runs in inference mode by itself). safetrain.train.fine_tune
        # decides which of its weights train.
        backbone = build_backbone(plan.backbone, shape)
        set_trainable(backbone, plan.backbone, plan.backbone.trainable_in(1))
        pretrained = plan.backbone.weights is not None
        x = InferenceMode(backbone, name="backbone")(x) if pretrained else backbone(x)
        shape, rows = rows[0].shape, rows[1:]
    for spec, row in zip(plan.layers, rows):
        layer = _keras_layer(spec, seed, shape)
        y = preflight.call_layer(spec, layer, x, shape)
        preflight.check_output(spec, y, row.shape, plan)
        x, shape = y, row.shape
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
    for layer, row in zip(model.layers[1:], plan.rows[1:]):
        if row.params is not None and layer.count_params() != row.params:
            raise SpecError(f"built layer {layer.name} has {layer.count_params()} parameters, inferred {row.params}",
                            hint="this is a safetrain bug in models/spec.py; please report it")
