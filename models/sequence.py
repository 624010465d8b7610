"""Sequence layers: image rows as a sequence, LSTM, GRU, Bidirectional.

Shapes are (timesteps, features) without the batch dimension. A recurrent layer on anything
else (an image, a flat vector) is refused with the layer named and the fix: insert
`{type: rows_as_sequence}` before it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar, Optional

from safetrain.models.fields import fraction, one_of, positive
from safetrain.models.parse import parse_layer
from safetrain.models.spec import LAYERS, LayerSpec, Shape, _require_image, _show
from safetrain.core.errors import SpecError


@LAYERS.register("rows_as_sequence")
@dataclass(frozen=True)
class RowsAsSequence(LayerSpec):
    """(H, W, C) image -> (H, W*C): each row is one timestep."""

    type: ClassVar[str] = "rows_as_sequence"

    def output_shape(self, shape: Shape) -> Shape:
        _require_image(self, shape)
        return (shape[0], shape[1] * shape[2])


@dataclass(frozen=True)
class _Recurrent(LayerSpec):
    units: int = positive(64)
    return_sequences: bool = False
    dropout: float = fraction(0.0)
    recurrent_dropout: float = fraction(0.0)
    gates: ClassVar[int] = 4

    def label(self) -> str:
        return f"{self.type} {self.units}" + (", sequences" if self.return_sequences else "")

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) != 2:
            what = "an image" if len(shape) == 3 else "a flat vector" if len(shape) == 1 else "a tensor"
            fix = ("insert {type: rows_as_sequence} before " + self.key if len(shape) == 3 else
                   f"set return_sequences: true on the recurrent layer before {self.key}, or remove the "
                   f"flatten/dense layers before it")
            raise self._error(f"needs a sequence (timesteps, features) but receives {what} {_show(shape)}", fix)
        return (shape[0], self.units) if self.return_sequences else (self.units,)

    def params(self, shape: Shape) -> int:
        return self.gates * self.units * (shape[-1] + self.units + self._bias_sets())

    def _bias_sets(self) -> int:
        return 1

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * shape[0] * self.gates * self.units * (shape[1] + self.units)


@LAYERS.register("lstm")
@dataclass(frozen=True)
class LSTM(_Recurrent):
    type: ClassVar[str] = "lstm"


@LAYERS.register("gru")
@dataclass(frozen=True)
class GRU(_Recurrent):
    type: ClassVar[str] = "gru"
    gates: ClassVar[int] = 3

    def _bias_sets(self) -> int:
        return 2  # Keras' default reset_after=True keeps an input and a recurrent bias


@LAYERS.register("bidirectional")
@dataclass(frozen=True)
class Bidirectional(LayerSpec):
    """Runs `layer` (an lstm or gru spec) forwards and backwards; merge_mode concat doubles units."""

    type: ClassVar[str] = "bidirectional"
    layer: dict = None  # type: ignore[assignment]
    merge_mode: Optional[str] = one_of(("concat", "sum", "ave", "mul"), "concat")

    @functools.cached_property
    def inner(self) -> _Recurrent:
        inner = parse_layer(self.index, self.layer or {}, key=f"{self.key}.layer")
        if not isinstance(inner, _Recurrent):  # not self._error: its label() would need `inner`
            raise SpecError(f"model layer {self.index} (bidirectional) wraps a {inner.type}; it can only "
                            f"wrap lstm or gru", hint=f"set {self.key}.layer to {{type: lstm, units: 64}}",
                            config_key=f"{self.key}.layer")
        return inner

    def label(self) -> str:
        return f"bidirectional({self.inner.label()}), {self.merge_mode}"

    def output_shape(self, shape: Shape) -> Shape:
        out = self.inner.output_shape(shape)
        if self.merge_mode == "concat":
            return out[:-1] + (2 * out[-1],)
        return out

    def params(self, shape: Shape) -> int:
        return 2 * self.inner.params(shape)

    def flops(self, shape: Shape, out: Shape) -> int:
        return 2 * self.inner.flops(shape, self.inner.output_shape(shape))

    def check(self) -> None:
        self.inner  # noqa: B018  (parses and checks the wrapped layer now, not at build time)
