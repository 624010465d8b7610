"""Each export format's own serving path: encoded image files in, class probabilities out.

One function per format, used both by the export's proof (safetrain.experiment.parity, on the test
split's files) and by `python -m safetrain.predict --format NAME`, so what was proven is what a
user runs:

- `saved_model`: the SavedModel's `classify` signature: decode, adapters, normalization, the
  model and the temperature, all inside the graph.
- `keras`: model.keras loaded by Keras (safe mode), run as a graph (as Keras' `predict` runs it:
  under mixed_bfloat16 an eager call rounds differently: safetrain.train.steps.graph_logits)
  on the SavedModel's `prepare_images` output; the temperature from signature.json.
- `tflite`, `tflite_int8`: the file run by LiteRT's interpreter (`ai-edge-litert`, TensorFlow's
  successor to `tf.lite.Interpreter`), one image at a time as on a phone; an int8 model's input is
  quantized and its output dequantized with the scales the file declares.
- `onnx`: the file run by ONNX Runtime's CPU provider.

The formats other than the SavedModel take the model input, not a file: their preprocessing is the
SavedModel's `prepare_images` (decode, resize, channels, normalization exactly as `classify` does),
and signature.json describes it for an app that does its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np

from safetrain.experiment.calibration import probabilities
from safetrain.record import names

FILES = {"saved_model": names.SAVED_MODEL, "keras": names.KERAS_FILE, "tflite": names.TFLITE_FILE,
         "tflite_int8": names.TFLITE_INT8_FILE, "onnx": names.ONNX_FILE}

Runner = Callable[[list], np.ndarray]  # encoded files (bytes, already upright) -> (N, K) probabilities


def load_saved_model(export_dir: Path):
    import tensorflow as tf

    return tf.saved_model.load(str(export_dir))


def runner(export_dir: Path, fmt: str, served=None) -> Runner:
    """The serving path of `fmt` in `export_dir` (`served`: the loaded SavedModel, when at hand)."""
    import tensorflow as tf

    served = served if served is not None else load_saved_model(export_dir)
    signature = json.loads((export_dir / names.SIGNATURE).read_text())
    multi = signature.get("task") == "multi_label"
    temperature = float(signature.get("temperature", 1.0))
    path = export_dir / FILES[fmt]

    def prepare(encoded: list) -> np.ndarray:
        return served.prepare_images(tf.constant(encoded)).numpy()

    if fmt == "saved_model":
        return lambda encoded: served.classify(tf.constant(encoded))["probabilities"].numpy()
    if fmt == "keras":
        import keras

        from safetrain.train.steps import graph_logits

        model = keras.saving.load_model(path, safe_mode=True, compile=False)
        logits = graph_logits(model)
        return lambda encoded: probabilities(logits(prepare(encoded)).numpy(), multi, temperature)
    if fmt in ("tflite", "tflite_int8"):
        run = tflite_runner(path.read_bytes())
        return lambda encoded: run(prepare(encoded))
    if fmt == "onnx":
        run = onnx_runner(path.read_bytes())
        return lambda encoded: run(prepare(encoded))
    raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(FILES)}")


def tflite_runner(flat: bytes) -> Callable[[np.ndarray], np.ndarray]:
    """Probabilities from a TFLite model with LiteRT's interpreter, one image at a time; int8
    inputs and outputs are (de)quantized with the file's own scale and zero point."""
    from ai_edge_litert.interpreter import Interpreter

    with _filtered_stderr("INFO: Created TensorFlow Lite XNNPACK delegate"):  # said on every load
        interpreter = Interpreter(model_content=flat)
        interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]

    def run(images: np.ndarray) -> np.ndarray:
        rows = []
        for image in np.asarray(images, np.float32):
            interpreter.set_tensor(inp["index"], _quantized(image[None], inp))
            interpreter.invoke()
            rows.append(_dequantized(interpreter.get_tensor(out["index"]), out)[0])
        return np.stack(rows)

    return run


def _quantized(x: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(detail["dtype"])
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])


def _dequantized(y: np.ndarray, detail: dict) -> np.ndarray:
    if detail["dtype"] == np.float32:
        return y.astype(np.float64)
    scale, zero = detail["quantization"]
    return (y.astype(np.float64) - zero) * scale


def onnx_runner(proto: bytes) -> Callable[[np.ndarray], np.ndarray]:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # warnings about unused initializers are not the user's business
    session = onnxruntime.InferenceSession(proto, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: np.asarray(images, np.float32)})[0].astype(np.float64)


@contextlib.contextmanager
def captured_stderr():
    """File descriptor 2 (where TensorFlow's, LiteRT's and the converters' C++ code writes) caught
    for the block; the list it yields holds the text once the block is over."""
    said: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            said.append(sink.read().decode(errors="replace"))


@contextlib.contextmanager
def _filtered_stderr(noise: str):
    """The block's stderr written back without the lines that start with `noise`."""
    with captured_stderr() as said:
        yield
    kept = [line for line in said[0].splitlines(True) if not line.startswith(noise)]
    if kept:
        sys.stderr.write("".join(kept))
