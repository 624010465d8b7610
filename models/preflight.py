"""Preflight of the built model: what Keras would report later, 40 frames deep, or never.

Run while the model is built, layer by layer: NumPy called on a symbolic tensor, any other
failure while a layer is traced, variables created inside a custom layer's `call()`, a custom
layer whose output differs from its declared shape (Keras would blame the next layer), and
non-numeric tensors flowing into a layer. Each error names the layer by index, type and config path.
"""

from __future__ import annotations

import inspect
import re

import tensorflow as tf

from safetrain.models.custom import CustomLayerSpec
from safetrain.models.shapes import ModelPlan
from safetrain.models.spec import LayerSpec, _show
from safetrain.core.errors import ErrorKind, GraphError, SpecError

_NUMPY_SIGNS = ("Cannot convert a symbolic", "to a numpy array", "__array__")


def _where(spec: LayerSpec) -> str:
    return f"model layer {spec.index} ({spec.label()}, config {spec.key})"


def _chain(err: BaseException) -> str:
    parts, seen = [], err
    while seen is not None and len(parts) < 6:
        parts.append(f"{type(seen).__name__}: {seen}")
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


def _numpy_calls(layer) -> list[str]:
    try:
        source = inspect.getsource(type(layer).call)
    except (OSError, TypeError):
        return []
    return sorted(set(re.findall(r"\b(?:np|numpy)\.(\w+)\(", source)))


def call_error(spec: LayerSpec, layer, shape, dtype, err: BaseException) -> GraphError:
    text = _chain(err)
    cls = type(layer).__name__
    if any(sign in text for sign in _NUMPY_SIGNS):
        calls = _numpy_calls(layer)
        swap = ", ".join(f"np.{c} -> keras.ops.{c} (or tf.math.{c})" for c in calls) or \
            "the NumPy call -> the keras.ops / tf op of the same name"
        return GraphError(
            f"{_where(spec)} calls NumPy on a symbolic tensor in {cls}.call(): NumPy needs concrete "
            f"values, but the model is traced into a TensorFlow graph.",
            hint=f"in {cls}.call use TensorFlow ops: {swap}", kind=ErrorKind.symbolic_tensor_numpy,
            config_key=spec.key)
    first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    return GraphError(f"{_where(spec)} failed when traced with input {_show(shape)} {dtype}: "
                      f"{type(err).__name__}: {first}",
                      hint=f"fix {cls}.call for inputs of shape {_show(shape)}; rerun with debug=true "
                           f"for the full error", kind=ErrorKind.build, config_key=spec.key)


def check_output(spec: LayerSpec, y, expected, plan: ModelPlan) -> None:
    dtype = str(y.dtype)
    if not (dtype.startswith(("float", "bfloat", "int", "uint"))):
        nxt = next((s for s in plan.layers if s.index == spec.index + 1), None)
        receiver = f"model layer {nxt.index} ({nxt.label()})" if nxt else "the classification head"
        raise SpecError(
            f"{_where(spec)} outputs {dtype} tensors, but {receiver} needs numbers "
            f"(a {dtype} tensor reaching it fails only when the first step runs)",
            hint=f"make {type(spec).__name__ if not isinstance(spec, CustomLayerSpec) else spec.keras_class.__name__}"
                 f".call return a float tensor", config_key=spec.key)
    actual = tuple(y.shape[1:])
    if actual != tuple(expected):
        dropped = len(actual) < len(expected)
        raise SpecError(
            f"{_where(spec)} returns {_show(actual)} but the spec expects {_show(expected)}"
            + (" — it drops an axis, so the next layer would fail and Keras would blame that one" if dropped else ""),
            hint=("keep the axis (e.g. inputs[:, :1] instead of inputs[:, 0])" if dropped else "")
                 + (", or " if dropped else "") + "declare the shape: @custom_layer(name, "
                 "output_shape=lambda shape, **args: ...)", config_key=spec.key)


def call_layer(spec: LayerSpec, layer, x, shape):
    """`layer(x)` on the symbolic input, with the layer named in any failure. A custom layer is
    built first, so any variable created while `call` runs is one created in call()."""
    custom = isinstance(spec, CustomLayerSpec)
    created: list[str] = []

    def creator(next_creator, **kwargs):
        created.append(str(kwargs.get("name") or "unnamed"))
        return next_creator(**kwargs)

    try:
        if custom and not layer.built:
            layer.build((None, *shape))
        if not custom:
            return layer(x)
        with tf.variable_creator_scope(creator):
            y = layer(x)
    except Exception as err:  # noqa: BLE001 - every failure here is reported with the layer named
        if created:
            raise variable_error(spec, layer, created) from err
        raise call_error(spec, layer, shape, x.dtype, err) from err
    if created:
        raise variable_error(spec, layer, created)
    return y


def variable_error(spec: LayerSpec, layer, created: list[str]) -> GraphError:
    cls = type(layer).__name__
    return GraphError(
        f"{_where(spec)} creates a variable inside {cls}.call() ({', '.join(created)}): a new, "
        f"untrained variable on every call, which tf.function refuses once training starts.",
        hint=f"create it once in {cls}.build() with self.add_weight(...) and use it in call()",
        kind=ErrorKind.variable_in_tf_function, config_key=spec.key)
