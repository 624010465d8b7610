"""Composite blocks: one config entry, one row of the shape table, one Keras layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from safetrain.models.fields import positive
from safetrain.models.spec import LAYERS, LayerSpec, Shape, _conv_out, _fmt_pair, _pair


@LAYERS.register("residual")
@dataclass(frozen=True)
class Residual(LayerSpec):
    """conv-BN-relu-conv-BN plus a shortcut (a 1x1 conv + BN where shape changes), added, relu."""

    type: ClassVar[str] = "residual"
    filters: int = positive(32)
    kernel_size: int | tuple[int, int] = positive(3)
    strides: int | tuple[int, int] = positive(1)

    padding: ClassVar[str] = "same"

    def label(self) -> str:
        return f"residual {self.filters}, {_fmt_pair(self.kernel_size)}, strides={_fmt_pair(self.strides)}"

    def output_shape(self, shape: Shape) -> Shape:
        return _conv_out(self, shape, self.filters)

    def projects(self, shape: Shape) -> bool:
        return shape[-1] != self.filters or _pair(self.strides) != (1, 1)

    def params(self, shape: Shape) -> int:
        kh, kw = _pair(self.kernel_size)
        c, f = shape[-1], self.filters
        convs = kh * kw * c * f + kh * kw * f * f       # no bias: batch norm follows
        norms = 2 * 4 * f
        shortcut = (c * f + 4 * f) if self.projects(shape) else 0
        return convs + norms + shortcut

    def flops(self, shape: Shape, out: Shape) -> int:
        kh, kw = _pair(self.kernel_size)
        c, f = shape[-1], self.filters
        pixels = out[0] * out[1]
        main = 2 * pixels * f * kh * kw * (c + f)
        shortcut = 2 * pixels * f * c if self.projects(shape) else 0
        return main + shortcut + 6 * pixels * f
