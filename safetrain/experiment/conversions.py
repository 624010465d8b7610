"""The trained model converted for an app: TFLite float32, TFLite int8, ONNX.

Each takes the same Keras wrapper, the float32 copy of the model with the temperature and the
softmax (multi-label: a sigmoid) on top, so every format returns the calibrated probabilities the
SavedModel's `classify` returns, from the model input (signature.json names the preprocessing).

A conversion that fails (an op the target lacks) raises `Unconvertible` with the reason, naming the
op and the config layer that holds it where the message says; the export then leaves that format
out and says why, the others stand.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import tensorflow as tf

from safetrain.experiment.runtimes import captured_stderr

ONNX_OPSET = 17
INT8_SAMPLES = 200  # training images the int8 converter calibrates its activation ranges on


class Unconvertible(Exception):
    """The converter cannot produce this format; the message says why and how to fix it."""


def probability_model(float_model, spec, multi: bool, temperature: float):
    """Input (the model input, float32) -> the model -> logits / T -> softmax (or sigmoid)."""
    import keras

    inputs = keras.Input(spec.shape, dtype="float32", name="image")
    logits = float_model(inputs)
    if not multi and temperature != 1.0:
        logits = keras.layers.Rescaling(1.0 / temperature, dtype="float32", name="temperature")(logits)
    head = keras.layers.Activation("sigmoid", dtype="float32", name="probabilities") if multi else \
        keras.layers.Softmax(dtype="float32", name="probabilities")
    return keras.Model(inputs, head(logits))


@contextlib.contextmanager
def saved_for_conversion(wrapper):
    """The wrapper through Keras' own SavedModel export: converting a tf.function over the model
    (directly or saved by tf.saved_model) left Keras 3's variables as TFLite resource variables
    that were never initialized — measured: a 4 KB model whose every output was NaN."""
    with tempfile.TemporaryDirectory(prefix="safetrain-convert-") as scratch:
        wrapper.export(scratch, format="tf_saved_model", verbose=False)
        yield scratch


def tflite(saved: str, log: Path, describe_failure: Callable[[Exception], str]) -> bytes:
    """Float32 TFLite, builtin ops only (what an app's interpreter has)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    return _convert(converter, log, describe_failure)


def tflite_int8(saved: str, log: Path, representative: Iterable[np.ndarray],
                describe_failure: Callable[[Exception], str], full_integer: bool) -> bytes:
    """`full_integer`: int8 weights and activations, int8 input and output (the representative
    images set the activation ranges); else dynamic range: int8 weights, float activations."""
    converter = tf.lite.TFLiteConverter.from_saved_model(saved)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if full_integer:
        samples = [np.asarray(x, np.float32)[None] for x in representative]
        converter.representative_dataset = lambda: ([x] for x in samples)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return _convert(converter, log, describe_failure)


def onnx(fn, spec, describe_failure: Callable[[Exception], str]) -> bytes:
    """ONNX through tf2onnx from `fn`, the wrapper as a tf.function (safetrain.experiment.export
    makes it); loaded back by ONNX Runtime before it counts (tf2onnx can emit a graph that only
    fails when a runtime opens it)."""
    import logging

    import onnxruntime
    import tf2onnx

    said: list[str] = []

    class Keep(logging.Handler):  # tf2onnx names an unsupported op only in its log, then emits the graph anyway
        def emit(self, record: logging.LogRecord) -> None:
            said.append(record.getMessage())

    quiet, keep = logging.getLogger("tf2onnx"), Keep(logging.ERROR)
    level, propagate = quiet.level, quiet.propagate
    quiet.addHandler(keep)
    quiet.setLevel(logging.ERROR)
    quiet.propagate = False
    try:
        proto, _ = tf2onnx.convert.from_function(
            fn, input_signature=(tf.TensorSpec([None, *spec.shape], tf.float32, name="image"),), opset=ONNX_OPSET)
        flat = proto.SerializeToString()
        onnxruntime.InferenceSession(flat, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - tf2onnx and onnxruntime raise many types
        raise Unconvertible(describe_failure(RuntimeError("\n".join([*said, str(err)])))) from None
    finally:
        quiet.removeHandler(keep)
        quiet.setLevel(level)
        quiet.propagate = propagate
    return flat


def _convert(converter, log: Path, describe_failure) -> bytes:
    """The conversion, its C++ diagnostics (pages of MLIR locations) kept off the terminal and
    written to `log` when it fails."""
    try:
        with captured_stderr() as said:
            flat = converter.convert()
    except Exception as err:  # noqa: BLE001 - the converter raises ConverterError and plain exceptions
        log.write_text("".join(said) + f"\n{type(err).__name__}: {err}\n")
        raise Unconvertible(describe_failure(err)) from None
    return flat


def failure_reason(target: str, key: str, err: Exception, concrete, layer_of) -> str:
    """The ops `target` lacks and the config layers that hold them, from the converter's message
    and the graph; else the message's first line."""
    text = str(err)
    ops = set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text))
    ops |= set(re.findall(r"Tensorflow op \[[^:\]]*: (\w+)\] is not supported", text))
    if not ops:
        first = text.strip().splitlines()[0][:300] if text.strip() else type(err).__name__
        return f"the {target} converter failed: {first}"
    nodes = [node.name for node in concrete.graph.as_graph_def().node if node.op in ops]
    for function in concrete.graph.as_graph_def().library.function:
        nodes += [node.name for node in function.node_def if node.op in ops]
    layers = sorted({ref.describe() for ref in (layer_of(n) for n in nodes) if ref} if layer_of else set())
    where = f" in {', '.join(layers)}" if layers else ""
    return (f"{target} has no builtin kernel for {', '.join(sorted(ops))}{where}; an app's runtime could not run it. Fix: "
            f"replace the op in that layer with a builtin one, or leave {key} out of trainer.export_formats")
