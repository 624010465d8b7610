"""Preflight of the built model: what Keras would report later, 40 frames deep, or never.

Run while the model is built, layer by layer: NumPy called on a symbolic tensor, any other
failure while a layer is traced, a custom layer whose output differs from its declared shape
(Keras would blame the next layer), non-numeric tensors flowing into a layer, and variables
created inside `call()`. Each error names the layer by index, type and config path.
"""

from __future__ import annotations

import inspect
import re

import keras
import tensorflow as tf

from models.custom import CustomLayerSpec
from models.shapes import ModelPlan
from models.spec import LayerSpec, _show
from safetrain.errors import GraphError, SpecError

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
            hint=f"in {cls}.call use TensorFlow ops: {swap}", kind="numpy_in_graph",
            config_key=spec.key)
    first = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
    return GraphError(f"{_where(spec)} failed when traced with input {_show(shape)} {dtype}: "
                      f"{type(err).__name__}: {first}",
                      hint=f"fix {cls}.call for inputs of shape {_show(shape)}; rerun with debug=true "
                           f"for the full error", kind="build", config_key=spec.key)


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


def check_variables_in_call(model: keras.Model, plan: ModelPlan, input_dtype: str) -> None:
    """Trace each custom layer (already built) in a tf.function; any variable created is wrong."""
    by_name = {f"L{s.index}_{s.type}": s for s in plan.layers if isinstance(s, CustomLayerSpec)}
    shapes = {s.index: row.shape for s, row in zip(plan.layers, plan.rows[:-1])}  # each layer's input
    for layer in model.layers:
        spec = by_name.get(layer.name)
        if spec is None:
            continue
        created: list[str] = []

        def creator(next_creator, **kwargs):
            created.append(str(kwargs.get("name") or "unnamed"))
            return next_creator(**kwargs)

        signature = tf.TensorSpec((None, *shapes[spec.index]), input_dtype)
        try:
            with tf.variable_creator_scope(creator):
                tf.function(lambda t, layer=layer: layer(t, training=True)).get_concrete_function(signature)
        except (ValueError, TypeError) as err:  # tf.function refuses the variable itself
            if not created and "Variable" not in str(err):
                raise call_error(spec, layer, shapes[spec.index], input_dtype, err) from err
            created = created or ["tf.Variable"]
        if created:
            cls = type(layer).__name__
            raise GraphError(
                f"{_where(spec)} creates a variable inside {cls}.call() ({', '.join(created)}): a new, "
                f"untrained variable on every call, which tf.function refuses once training starts.",
                hint=f"create it once in {cls}.build() with self.add_weight(...) and use it in call()",
                kind="variable_in_call", config_key=spec.key)
