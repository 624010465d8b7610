"""Layer specs: typed, validated, and able to compute their own output shape in plain Python.

A model spec is the list under `model.layers` (Keras argument names) plus a head added from the
dataset. Each layer type is a frozen dataclass registered by name whose fields declare their own
value checks (models.fields); models.parse turns config dicts into these specs. `output_shape`
refuses shapes that cannot work (a dimension < 1, dense on an image) before TensorFlow builds
anything. Shapes here exclude the batch dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Optional

from safetrain.models.fields import fraction, one_of, positive
from safetrain.core.errors import SpecError
from safetrain.core.registry import Registry

Shape = tuple[int, ...]

LAYERS: Registry[type["LayerSpec"]] = Registry("layer type", "model.layers.N.type")

ACTIVATIONS = ("relu", "gelu", "sigmoid", "tanh", "softmax", "swish", "silu", "elu", "selu",
               "leaky_relu", "linear")
PADDINGS = ("valid", "same")


@dataclass(frozen=True)
class LayerSpec:
    """One layer; `index` is its position in `model.layers`, used in every message."""

    type: ClassVar[str]
    index: int

    @property
    def key(self) -> str:
        return f"model.layers.{self.index}"

    def label(self) -> str:
        """Short human description for the shape table and errors."""
        return self.type

    def output_shape(self, shape: Shape) -> Shape:
        return shape

    def params(self, shape: Shape) -> int:
        return 0

    def flops(self, shape: Shape, out: Shape) -> int:
        return 0

    def check(self) -> None:
        """Checks of one layer's own arguments beyond their types (a hook; most need none)."""

    def keras_args(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "index"}

    def _error(self, what: str, fix: str, field: str | None = None) -> SpecError:
        key = f"{self.key}.{field}" if field else self.key
        return SpecError(f"model layer {self.index} ({self.label()}) {what}", hint=fix, config_key=key)


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _fmt_pair(value) -> str:
    a, b = _pair(value)
    return f"{a}x{b}"


def _window_out(size: int, window: int, stride: int, padding: str) -> int:
    if padding == "same":
        return math.ceil(size / stride)
    return (size - window) // stride + 1


def _require_image(layer: LayerSpec, shape: Shape) -> None:
    if len(shape) != 3:
        raise layer._error(
            f"needs an image (height, width, channels) but receives {_show(shape)}",
            f"move {layer.key} before the flatten/dense layers, or remove it")


def _show(shape: Shape) -> str:
    return "(None, " + ", ".join(str(d) for d in shape) + ")" if shape else "(None,)"


@LAYERS.register("conv2d")
@dataclass(frozen=True)
class Conv2D(LayerSpec):
    type: ClassVar[str] = "conv2d"
    filters: int = positive(32)
    kernel_size: int | tuple[int, int] = positive(3)
    strides: int | tuple[int, int] = positive(1)
    padding: str = one_of(PADDINGS, "valid")
    activation: Optional[str] = one_of(ACTIVATIONS, None)
    use_bias: bool = True

    def label(self) -> str:
        act = f", {self.activation}" if self.activation else ""
        return (f"{self.type} {self.filters}, {_fmt_pair(self.kernel_size)}, "
                f"strides={_fmt_pair(self.strides)}, {self.padding}{act}")

    def output_shape(self, shape: Shape) -> Shape:
        return _conv_out(self, shape, self.filters)

    def params(self, shape: Shape) -> int:
        kh, kw = _pair(self.kernel_size)
        return kh * kw * shape[-1] * self.filters + (self.filters if self.use_bias else 0)

    def flops(self, shape: Shape, out: Shape) -> int:
        kh, kw = _pair(self.kernel_size)
        return 2 * out[0] * out[1] * self.filters * kh * kw * shape[-1]


@dataclass(frozen=True)
class _Pool(LayerSpec):
    pool_size: int | tuple[int, int] = positive(2)
    strides: Optional[int | tuple[int, int]] = positive(None)
    padding: str = one_of(PADDINGS, "valid")

    def label(self) -> str:
        return f"{self.type} {_fmt_pair(self.pool_size)}, {self.padding}"

    def output_shape(self, shape: Shape) -> Shape:
        _require_image(self, shape)
        (ph, pw) = _pair(self.pool_size)
        sh, sw = _pair(self.strides if self.strides is not None else self.pool_size)
        out = (_window_out(shape[0], ph, sh, self.padding), _window_out(shape[1], pw, sw, self.padding))
        if min(out) < 1:
            raise self._error(
                f"leaves no pixels: input {_show(shape)} -> output {_show(out + (shape[2],))}",
                f"set {self.key}.padding=same, lower {self.key}.pool_size, or remove this layer",
                "pool_size")
        return out + (shape[2],)

    def flops(self, shape: Shape, out: Shape) -> int:
        ph, pw = _pair(self.pool_size)
        return out[0] * out[1] * out[2] * ph * pw


@LAYERS.register("max_pool")
@dataclass(frozen=True)
class MaxPool(_Pool):
    type: ClassVar[str] = "max_pool"


@LAYERS.register("avg_pool")
@dataclass(frozen=True)
class AvgPool(_Pool):
    type: ClassVar[str] = "avg_pool"


@dataclass(frozen=True)
class _GlobalPool(LayerSpec):
    def output_shape(self, shape: Shape) -> Shape:
        _require_image(self, shape)
        return (shape[2],)

    def flops(self, shape: Shape, out: Shape) -> int:
        return math.prod(shape)


@LAYERS.register("global_avg_pool")
@dataclass(frozen=True)
class GlobalAvgPool(_GlobalPool):
    type: ClassVar[str] = "global_avg_pool"


@LAYERS.register("global_max_pool")
@dataclass(frozen=True)
class GlobalMaxPool(_GlobalPool):
    type: ClassVar[str] = "global_max_pool"


@LAYERS.register("flatten")
@dataclass(frozen=True)
class Flatten(LayerSpec):
    type: ClassVar[str] = "flatten"

    def output_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)


@LAYERS.register("dense")
@dataclass(frozen=True)
class Dense(LayerSpec):
    type: ClassVar[str] = "dense"
    units: int = positive(128)
    activation: Optional[str] = one_of(ACTIVATIONS, None)
    use_bias: bool = True

    def label(self) -> str:
        return f"dense {self.units}" + (f", {self.activation}" if self.activation else "")

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 1:
            raise self._error(
                f"receives {_show(shape)}, not a flat feature vector (Keras would apply it to the "
                f"last axis only, which is rarely what a classifier means)",
                f"insert {{type: flatten}} or {{type: global_avg_pool}} before {self.key}")
        return (self.units,)

    def params(self, shape: Shape) -> int:
        return shape[0] * self.units + (self.units if self.use_bias else 0)

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * shape[0] * self.units


@LAYERS.register("dropout")
@dataclass(frozen=True)
class Dropout(LayerSpec):
    type: ClassVar[str] = "dropout"
    rate: float = fraction(0.5)

    def label(self) -> str:
        return f"dropout {self.rate}"


@LAYERS.register("batch_norm")
@dataclass(frozen=True)
class BatchNorm(LayerSpec):
    type: ClassVar[str] = "batch_norm"
    momentum: float = 0.99
    epsilon: float = 1e-3

    def params(self, shape: Shape) -> int:
        return 4 * shape[-1]  # gamma, beta (trainable) + moving mean, variance

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * math.prod(shape)


@LAYERS.register("depthwise_conv2d")
@dataclass(frozen=True)
class DepthwiseConv2D(LayerSpec):
    type: ClassVar[str] = "depthwise_conv2d"
    kernel_size: int | tuple[int, int] = positive(3)
    strides: int | tuple[int, int] = positive(1)
    padding: str = one_of(PADDINGS, "valid")
    depth_multiplier: int = positive(1)
    activation: Optional[str] = one_of(ACTIVATIONS, None)
    use_bias: bool = True

    def label(self) -> str:
        return (f"depthwise_conv2d x{self.depth_multiplier}, {_fmt_pair(self.kernel_size)}, "
                f"strides={_fmt_pair(self.strides)}, {self.padding}")

    def output_shape(self, shape: Shape) -> Shape:
        return _conv_out(self, shape, shape[-1] * self.depth_multiplier if len(shape) == 3 else 0)

    def params(self, shape: Shape) -> int:
        kh, kw = _pair(self.kernel_size)
        out = shape[-1] * self.depth_multiplier
        return kh * kw * out + (out if self.use_bias else 0)

    def flops(self, shape: Shape, out: Shape) -> int:
        kh, kw = _pair(self.kernel_size)
        return 2 * out[0] * out[1] * out[2] * kh * kw


@LAYERS.register("separable_conv2d")
@dataclass(frozen=True)
class SeparableConv2D(Conv2D):
    """A depthwise conv (depth_multiplier per channel) then a 1x1 pointwise conv to `filters`."""

    type: ClassVar[str] = "separable_conv2d"
    depth_multiplier: int = positive(1)

    def params(self, shape: Shape) -> int:
        kh, kw = _pair(self.kernel_size)
        mid = shape[-1] * self.depth_multiplier
        return kh * kw * mid + mid * self.filters + (self.filters if self.use_bias else 0)

    def flops(self, shape: Shape, out: Shape) -> int:
        kh, kw = _pair(self.kernel_size)
        mid = shape[-1] * self.depth_multiplier
        return 2 * out[0] * out[1] * (mid * kh * kw + mid * self.filters)


def _conv_out(layer, shape: Shape, channels: int) -> Shape:
    """Output shape of any 2-D convolution; a collapse names the layer and the fix."""
    _require_image(layer, shape)
    (kh, kw), (sh, sw) = _pair(layer.kernel_size), _pair(layer.strides)
    out = (_window_out(shape[0], kh, sh, layer.padding), _window_out(shape[1], kw, sw, layer.padding))
    if min(out) < 1:
        raise layer._error(
            f"leaves no pixels: input {_show(shape)} -> output {_show(out + (channels,))}; "
            f"a {kh}x{kw} kernel does not fit a {shape[0]}x{shape[1]} input under padding=valid",
            f"set {layer.key}.padding=same, or lower {layer.key}.kernel_size/strides", "padding")
    return out + (channels,)
