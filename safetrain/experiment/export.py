"""Export the trained model as a SavedModel whose serving signature enforces the input spec.

`classify(images)` takes a batch of encoded image files (PNG, JPEG, BMP, GIF bytes) of any size
and applies what training applied — decode, the channel and size adapters the config allows,
the same normalization (with the training split's statistics for `standardize`) — then returns
class probabilities, the top class id and its name (multi-label: a sigmoid per label, and
`labels`, the 0/1 set at the thresholds tuned on eval, which signature.json also lists). The enforcement is
`pipelines.serving.prepare_encoded`, the same adapter ops the training pipeline runs, so serving
cannot drift from training. A SavedModel is a graph: loading it runs no Python from the export.

Each export checks itself: test-split images are encoded as PNG and classified both ways — the
training pipeline plus the model, and the serving signature — and must agree. The images and the
in-training probabilities are kept under export/samples/ for anyone to re-check (the tests do, in
a fresh process, through `python -m safetrain.predict`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

from safetrain.pipelines.build import Datasets
from safetrain.pipelines.serving import prepare_encoded, serving_resize
from safetrain.config.schema import DatasetConfig
from safetrain.record import names

log = logging.getLogger("safetrain")

SAMPLES = 8


def probabilities_of(logits, multi_label: bool):
    """The head's logits as probabilities: a softmax over the classes, or a sigmoid per label."""
    logits = tf.cast(logits, tf.float32)
    return tf.sigmoid(logits) if multi_label else tf.nn.softmax(logits, axis=-1)


class Serving(tf.Module):
    def __init__(self, model, data: Datasets, cfg: DatasetConfig, resize: str, thresholds=None) -> None:
        super().__init__()
        self.model = model
        self.class_names = tf.constant(data.source.names())
        multi = data.source.multi_label
        cut = tf.constant(np.asarray(thresholds if thresholds is not None else [0.5] * data.source.num_classes,
                                     np.float32)) if multi else None
        spec, stats = data.spec, data.normalization_stats
        channels = cfg.channel_policy.value

        def prepare(encoded):
            return tf.cast(prepare_encoded(encoded, spec, resize, channels, stats), tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def classify(images):
            x = tf.map_fn(prepare, images, fn_output_signature=tf.TensorSpec(spec.shape, tf.float32))
            probabilities = probabilities_of(self.model(tf.cast(x, spec.dtype), training=False), multi)
            top = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            out = {"probabilities": probabilities, "top_class": top, "top_name": tf.gather(self.class_names, top)}
            if multi:  # the label set: each label at or above its threshold
                out["labels"] = tf.cast(probabilities >= cut, tf.int32)
            return out

        self.classify = classify
        preprocessing = data.preprocessing or f"normalization {spec.normalization} (dataset.image)"

        @tf.function(input_signature=[])
        def describe():
            """What `classify` applies, readable from the SavedModel alone (signature `describe`)."""
            return {"model_input": tf.constant(spec.describe()), "preprocessing": tf.constant(preprocessing),
                    "resize": tf.constant(resize), "channel_policy": tf.constant(channels)}

        self.describe = describe

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def prepare_images(images):
            """Encoded files to the model input, exactly as `classify` prepares them (for a TFLite
            model, which takes the model input: safetrain.predict --tflite)."""
            return tf.map_fn(prepare, images, fn_output_signature=tf.TensorSpec(spec.shape, tf.float32))

        self.prepare_images = prepare_images


def export(model, data: Datasets, cfg: DatasetConfig, directory: Path,
           formats: tuple[str, ...] = ("saved_model", "keras"), float32_model=None, layer_of=None,
           asked_resize: str = "bilinear", thresholds=None) -> dict:
    """Write the SavedModel and its self-check (always: safetrain.predict and the other formats'
    checks use it), `model.keras` and `model.tflite` when asked; return what report.json records.
    `float32_model()`: the same weights in a float32 model (TFLite has no bfloat16 kernels);
    `layer_of(node_name)`: the LayerRef of the config entry a graph node came from (for a conversion error).
    `thresholds`: multi-label, each label's (null: 0.5 each)."""
    resize, decided_by = serving_resize(cfg.resize.value, asked_resize)
    multi = data.source.multi_label
    if multi and thresholds is None:
        thresholds = [0.5] * data.source.num_classes
    serving = Serving(model, data, cfg, resize, thresholds)
    tf.saved_model.save(serving, str(directory), signatures={"serving_default": serving.classify,
                                                             "describe": serving.describe})
    info = {"path": str(directory), "input": "encoded image files (PNG, JPEG, BMP, GIF), any size",
            "model_input": data.spec.describe(), "classes": data.source.names(),
            "preprocessing": data.preprocessing or f"normalization {data.spec.normalization} (dataset.image)",
            "resize": cfg.resize.value, "serving_resize": resize, "serving_resize_from": decided_by,
            "channel_policy": cfg.channel_policy.value,
            # the signature decodes as TensorFlow does (no EXIF); safetrain.predict turns photos upright first
            "exif_orientation": cfg.exif_orientation.value,
            "task": "multi_label" if multi else "single_label", "output": "a sigmoid per label" if multi else "softmax"}
    if multi:
        info["thresholds"] = {name: round(float(v), 6) for name, v in zip(data.source.names(), thresholds)}
    if "keras" in formats:
        info.update(_keras_file(model, directory / names.KERAS_FILE))
    (directory / names.SIGNATURE).write_text(json.dumps(info, indent=2) + "\n")
    # bfloat16 keeps ~3 significant digits: batch composition alone moves probabilities by ~1e-3.
    tolerance = 1e-2 if model.dtype_policy.compute_dtype != "float32" else 1e-4
    info["self_check_tolerance"] = tolerance
    info["self_check_max_abs_diff"] = _self_check(serving, model, data, directory / names.SAMPLES, tolerance)
    if "tflite" in formats:
        info["tflite"] = tflite_export(model, float32_model() if float32_model else model, data,
                                       directory / names.TFLITE_FILE, tolerance, layer_of)
    return info


def tflite_export(model, float_model, data: Datasets, path: Path, tolerance: float, layer_of=None) -> dict:
    """`model.tflite`: the float32 copy of the model converted with TensorFlow's TFLite converter
    (builtin ops only: what an app's interpreter has), input = the model input (the app applies
    signature.json's preprocessing), output = class probabilities (multi-label: a sigmoid per
    label; signature.json's thresholds make the set). Checked with TensorFlow's TFLite
    interpreter against the training model on the test split's first images; an op TFLite lacks is
    one message naming the op and the layer, and the rest of the export stands."""
    import tempfile

    import keras

    spec = data.spec
    inputs = keras.Input(spec.shape, dtype="float32", name="image")
    multi = data.source.multi_label
    head = keras.layers.Activation("sigmoid", dtype="float32", name="probabilities") if multi else \
        keras.layers.Softmax(dtype="float32", name="probabilities")
    wrapper = keras.Model(inputs, head(float_model(inputs)))
    # Through Keras' own SavedModel export: converting a tf.function over the model (directly or
    # saved by tf.saved_model) left Keras 3's variables as TFLite resource variables that were never
    # initialized — measured: a 4 KB model whose every output was NaN.
    converter_log = path.with_name("tflite_converter.log")
    with tempfile.TemporaryDirectory(prefix="safetrain-tflite-") as scratch:
        wrapper.export(scratch, format="tf_saved_model", verbose=False)
        try:
            with _stderr_to(converter_log):  # the converter's C++ diagnostics: pages of MLIR locations
                flat = tf.lite.TFLiteConverter.from_saved_model(scratch).convert()
        except Exception as err:  # noqa: BLE001 - the converter raises ConverterError and plain exceptions
            concrete = tf.function(lambda x: wrapper(x)).get_concrete_function(
                tf.TensorSpec([None, *spec.shape], tf.float32))
            reason = _conversion_problem(err, concrete, layer_of)
            log.warning("warning: no model.tflite in the export (%s); the SavedModel is complete; the converter's "
                        "own output is in %s", reason, converter_log)
            return {"path": None, "error": reason, "converter_log": str(converter_log)}
    converter_log.unlink(missing_ok=True)
    path.write_bytes(flat)
    images = _test_inputs(data)
    if images is None:
        return {"path": str(path), "bytes": len(flat), "max_abs_diff": None, "note": "no test images to compare"}
    expected = probabilities_of(model(images, training=False), multi).numpy()
    got = run_tflite(flat, images.numpy())
    diff = float(np.max(np.abs(got - expected)))
    if diff > tolerance:
        log.warning("warning: model.tflite disagrees with the training model on test images (max |diff| %.3g > %g)",
                    diff, tolerance)
    return {"path": str(path), "bytes": len(flat), "max_abs_diff": round(diff, 6), "tolerance": tolerance,
            "compared_images": int(images.shape[0]), "input": f"{spec.describe()}: apply signature.json's "
            f"preprocessing first", "output": "a probability per label" if multi else "class probabilities"}


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Send file descriptor 2 (where TensorFlow's C++ code writes) to `path` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def run_tflite(flat: bytes, images: np.ndarray) -> np.ndarray:
    """Class probabilities from a TFLite model, one image at a time (TensorFlow's interpreter)."""
    import warnings

    with warnings.catch_warnings():  # "tf.lite.Interpreter is deprecated ... ai-edge-litert": still TF's own
        warnings.simplefilter("ignore")
        interpreter = tf.lite.Interpreter(model_content=flat)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for image in images.astype(np.float32):
        interpreter.set_tensor(inp["index"], image[None])
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0])
    return np.stack(rows)


def _test_inputs(data: Datasets, count: int = 32):
    keyed = data.with_keys("test")
    if keyed is None:
        return None
    for images, _, _ in keyed.take(1):
        return tf.cast(images[:count], tf.float32)
    return None


def _conversion_problem(err: Exception, concrete, layer_of) -> str:
    """The ops TFLite lacks and the layers that hold them, from the converter's message and the graph."""
    import re

    text = str(err)
    ops = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", text)))
    if not ops:
        return f"the TFLite converter failed: {text.strip().splitlines()[0][:300] if text.strip() else type(err)}"
    nodes = [node.name for node in concrete.graph.as_graph_def().node if node.op in ops]
    for function in concrete.graph.as_graph_def().library.function:
        nodes += [node.name for node in function.node_def if node.op in ops]
    layers = sorted({ref.describe() for ref in (layer_of(n) for n in nodes) if ref} if layer_of else set())
    where = f" in {', '.join(layers)}" if layers else ""
    return (f"TFLite has no builtin kernel for {', '.join(ops)}{where}; an app's TFLite interpreter could not run it. "
            f"Fix: replace the op in that layer with a TFLite builtin one (TensorFlow's TFLite op list), or leave "
            f"tflite out of trainer.export_formats")


def _keras_file(model, path: Path) -> dict:
    """The bare model (no input enforcement) as `.keras`, for fine-tuning in Keras — kept only if it
    loads back with `safe_mode=True` to the same weights. A custom layer without `get_config` or
    Keras registration cannot; the file is then left out and the reason recorded."""
    import keras

    try:
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
        saved, back = model.get_weights(), loaded.get_weights()
        if len(saved) != len(back) or not all(np.array_equal(a, b) for a, b in zip(saved, back)):
            raise ValueError("the reloaded weights differ")
    except Exception as err:  # noqa: BLE001 - any failure means: no .keras file, and why
        path.unlink(missing_ok=True)
        reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0][:200] if str(err).strip() else ''}"
        log.warning("warning: no model.keras in the export (%s); the SavedModel is complete", reason)
        return {"keras_file": None, "keras_file_note": reason}
    return {"keras_file": str(path), "keras_file_note": "loads with keras.saving.load_model(path, safe_mode=True)",
            "keras_weights_sha256": arrays_digest(saved)}


def arrays_digest(arrays) -> str:
    """SHA-256 over weight arrays (values only): the same after a save and a load."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _self_check(serving: Serving, model, data: Datasets, samples: Path, tolerance: float) -> float | None:
    if data.raw_test is None:
        return None
    files, expected, encoded = [], [], []
    for image, _, _ in data.raw_test().take(SAMPLES):
        if image.dtype != tf.uint8:
            return None  # float sources have no lossless PNG form; nothing to compare
        encoded.append(tf.io.encode_png(image).numpy())
        logits = model(data.model_input(image)[None], training=False)
        expected.append(probabilities_of(logits, data.source.multi_label)[0].numpy())
    if not encoded:
        return None
    samples.mkdir(parents=True, exist_ok=True)
    for i, png in enumerate(encoded):
        path = samples / f"test_{i}.png"
        path.write_bytes(png)
        files.append(path.name)
    served = serving.classify(tf.constant(encoded))["probabilities"].numpy()
    diff = float(np.max(np.abs(served - np.stack(expected))))
    (samples / "expected.json").write_text(json.dumps(
        {"files": files, "probabilities": [p.tolist() for p in expected]}, indent=1) + "\n")
    if diff > tolerance:
        log.warning("warning: the exported model disagrees with training on test images (max |diff| %.3g > %g)",
                    diff, tolerance)
    return round(diff, 6)
