"""Export the trained model as a SavedModel whose serving signature enforces the input spec, then
the other formats asked, each proven on the test split's files.

`classify(images)` takes a batch of encoded image files (PNG, JPEG, BMP, GIF bytes) of any size
and applies what training applied — decode, the channel and size adapters the config allows,
the same normalization (with the training split's statistics for `standardize`), and for an image
folder the cache's rounding to uint8 — then returns the calibrated class probabilities (the logits
over the temperature fitted on eval; `logits` is before it), the top class id and its name, and
`sure` when an "unsure" threshold was set (multi-label: a sigmoid per label, and `labels`, the 0/1
set at the thresholds tuned on eval, which signature.json also lists). The enforcement is
`pipelines.serving.prepare_encoded`, the same adapter ops the training pipeline runs, so serving
cannot drift from training. A SavedModel is a graph: loading it runs no Python from the export.

Each export checks itself: test-split images are encoded as PNG and classified both ways — the
training pipeline plus the model, and the serving signature — and must agree. The images and the
in-training probabilities are kept under export/samples/ for anyone to re-check (the tests do, in
a fresh process, through `python -m safetrain.predict`). Then `.keras`, TFLite, int8 and ONNX
(safetrain.experiment.conversions) are written as asked and every written format is proven on the
test files through its own serving path (safetrain.experiment.parity, report.json export.parity).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from safetrain.pipelines.build import Datasets
from safetrain.experiment import conversions, parity, runtimes
from safetrain.experiment.calibration import Calibration
from safetrain.pipelines.serving import prepare_encoded, serving_resize, upright_bytes
from safetrain.config.schema import DatasetConfig
from safetrain.record import names
from safetrain.train.steps import graph_logits

log = logging.getLogger("safetrain")

SAMPLES = 8


def probabilities_of(logits, multi_label: bool, temperature: float = 1.0):
    """The head's logits as probabilities: a softmax over logits / T, or a sigmoid per label."""
    logits = tf.cast(logits, tf.float32)
    return tf.sigmoid(logits) if multi_label else tf.nn.softmax(logits / temperature, axis=-1)


class Serving(tf.Module):
    def __init__(self, model, data: Datasets, cfg: DatasetConfig, resize: str, thresholds=None,
                 temperature: float = 1.0, unsure: float | None = None, rounded: bool = False) -> None:
        super().__init__()
        self.model = model
        self.class_names = tf.constant(data.source.names())
        multi = data.source.multi_label
        cut = tf.constant(np.asarray(thresholds if thresholds is not None else [0.5] * data.source.num_classes,
                                     np.float32)) if multi else None
        spec, stats = data.spec, data.normalization_stats
        channels = cfg.channel_policy.value

        def prepare(encoded):
            return tf.cast(prepare_encoded(encoded, spec, resize, channels, stats, rounded), tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def classify(images):
            x = tf.map_fn(prepare, images, fn_output_signature=tf.TensorSpec(spec.shape, tf.float32))
            logits = tf.cast(self.model(tf.cast(x, spec.dtype), training=False), tf.float32)
            probabilities = probabilities_of(logits, multi, temperature)
            top = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            out = {"probabilities": probabilities, "logits": logits, "top_class": top,
                   "top_name": tf.gather(self.class_names, top)}
            if multi:  # the label set: each label at or above its threshold
                out["labels"] = tf.cast(probabilities >= cut, tf.int32)
            if unsure is not None:  # below it the answer is "unsure" (trainer.serving_target_accuracy)
                out["sure"] = tf.reduce_max(probabilities, axis=-1) >= unsure
            return out

        self.classify = classify
        preprocessing = data.preprocessing or f"normalization {spec.normalization} (dataset.image)"

        @tf.function(input_signature=[])
        def describe():
            """What `classify` applies, readable from the SavedModel alone (signature `describe`)."""
            return {"model_input": tf.constant(spec.describe()), "preprocessing": tf.constant(preprocessing),
                    "resize": tf.constant(resize), "channel_policy": tf.constant(channels),
                    "temperature": tf.constant(float(temperature))}

        self.describe = describe

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def prepare_images(images):
            """Encoded files to the model input, exactly as `classify` prepares them (for the TFLite,
            ONNX and .keras models, which take the model input: safetrain.predict --format)."""
            return tf.map_fn(prepare, images, fn_output_signature=tf.TensorSpec(spec.shape, tf.float32))

        self.prepare_images = prepare_images


@dataclass
class ExportAsk:
    """What the export writes besides the SavedModel, and what it folds in."""

    formats: tuple[str, ...] = ("saved_model", "keras")
    asked_resize: str = "bilinear"
    thresholds: list | None = None       # multi-label: each label's (None: 0.5)
    calibration: Calibration | None = None
    from_files: bool = False             # an image folder or table: the test files are on disk
    prove: bool = True                   # the parity rows (workers' scratch exports skip them)


def export(model, data: Datasets, cfg: DatasetConfig, directory: Path, ask: ExportAsk | None = None,
           float32_model=None, layer_of=None) -> dict:
    """Write the SavedModel and its self-check (always: safetrain.predict and the other formats'
    preprocessing use it), then each format asked, then prove every written format on the test
    split's files (export.parity); return what report.json records. `float32_model()`: the same
    weights in a float32 model (TFLite has no bfloat16 kernels); `layer_of(node_name)`: the LayerRef
    of the config entry a graph node came from (for a conversion error). A float format that
    disagrees beyond the tolerance is listed in `info["failed"]` (the caller stops the run with exit
    4 after recording it)."""
    ask = ask or ExportAsk()
    resize, decided_by = serving_resize(cfg.resize.value, ask.asked_resize)
    multi = data.source.multi_label
    thresholds = ask.thresholds if ask.thresholds is not None or not multi else [0.5] * data.source.num_classes
    calibrated = ask.calibration if ask.calibration is not None and not multi else Calibration(
        skipped="multi-label" if multi else "no eval split")
    temperature = calibrated.temperature
    unsure = calibrated.unsure.threshold if calibrated.unsure is not None else None
    serving = Serving(model, data, cfg, resize, thresholds, temperature, unsure, rounded=ask.from_files)
    tf.saved_model.save(serving, str(directory), signatures={"serving_default": serving.classify,
                                                             "describe": serving.describe})
    info = {"path": str(directory), "input": "encoded image files (PNG, JPEG, BMP, GIF), any size",
            "model_input": data.spec.describe(), "classes": data.source.names(),
            "preprocessing": data.preprocessing or f"normalization {data.spec.normalization} (dataset.image)",
            "resize": cfg.resize.value, "serving_resize": resize, "serving_resize_from": decided_by,
            "channel_policy": cfg.channel_policy.value,
            # the signature decodes as TensorFlow does (no EXIF); safetrain.predict turns photos upright first
            "exif_orientation": cfg.exif_orientation.value,
            "task": "multi_label" if multi else "single_label", "output": "a sigmoid per label" if multi else "softmax",
            "temperature": round(temperature, 6), "calibrated": not calibrated.skipped,
            "logits": "classify's `logits` output: before the temperature"}
    if multi:
        info["thresholds"] = {name: round(float(v), 6) for name, v in zip(data.source.names(), thresholds)}
    if calibrated.unsure is not None:
        info["unsure"] = {"below": unsure, "target_accuracy": calibrated.unsure.target_accuracy,
                          "eval_coverage": calibrated.unsure.eval_coverage, "reason": calibrated.unsure.reason or None}
    if "keras" in ask.formats:
        info.update(_keras_file(model, directory / names.KERAS_FILE))
    (directory / names.SIGNATURE).write_text(json.dumps(info, indent=2) + "\n")
    tolerance = parity.tolerance(model.dtype_policy.compute_dtype, temperature)
    info["self_check_tolerance"] = tolerance
    logits = graph_logits(model)
    info["self_check_max_abs_diff"] = _self_check(serving, logits, data, directory / names.SAMPLES, tolerance,
                                                  temperature)
    converted = [f for f in ("tflite", "tflite_int8", "onnx") if f in ask.formats]
    if converted:
        info.update(convert_all(float32_model() if float32_model else model, data, directory, converted,
                                temperature, layer_of))
    if ask.prove:
        prove_all(model, logits, data, directory, ask, info, tolerance, temperature, float32_model, layer_of)
    return info


def convert_all(float_model, data: Datasets, directory: Path, formats: list[str], temperature: float,
                layer_of, int8_full: bool = True) -> dict:
    """Each of `formats` (tflite, tflite_int8, onnx) written, or its reason; one Keras wrapper for all."""
    spec, multi = data.spec, data.source.multi_label
    wrapper = conversions.probability_model(float_model, spec, multi, temperature)
    fn = tf.function(lambda x: wrapper(x, training=False))
    concrete = fn.get_concrete_function(tf.TensorSpec([None, *spec.shape], tf.float32))
    out: dict = {}

    def why(target, key):
        return lambda err: conversions.failure_reason(target, key, err, concrete, layer_of)

    with conversions.saved_for_conversion(wrapper) as saved:
        for fmt in formats:
            path, log_path = directory / runtimes.FILES[fmt], directory / f"{fmt}_converter.log"
            began = time.monotonic()
            try:
                if fmt == "tflite":
                    flat = conversions.tflite(saved, log_path, why("TFLite", fmt))
                    kind = "float32"
                elif fmt == "tflite_int8":
                    flat, kind = _int8(saved, log_path, data, why("TFLite int8", fmt), int8_full)
                else:
                    flat, kind = conversions.onnx(fn, spec, why("ONNX", fmt)), "float32"
            except conversions.Unconvertible as err:
                out[fmt] = {"path": None, "error": str(err)}
                log.warning("warning: no %s in the export (%s); the SavedModel is complete%s", path.name, err,
                            f"; the converter's own output is in {log_path}" if log_path.exists() else "")
                continue
            path.write_bytes(flat)
            out[fmt] = {"path": str(path), "bytes": len(flat), "quantization": kind,
                        "seconds": round(time.monotonic() - began, 2),
                        "input": f"{spec.describe()}: apply signature.json's preprocessing first (the SavedModel's "
                                 f"prepare_images does)",
                        "output": "a probability per label" if multi else "calibrated class probabilities"}
    return out


def _int8(saved: str, log_path: Path, data: Datasets, why, full: bool) -> tuple[bytes, str]:
    """Full-integer int8 calibrated on training images; dynamic range when that cannot convert."""
    if full:
        try:
            return conversions.tflite_int8(saved, log_path, _representative(data), why, full_integer=True), "int8"
        except conversions.Unconvertible as err:
            log.warning("warning: full-integer int8 did not convert (%s); trying dynamic-range int8", err)
    return conversions.tflite_int8(saved, log_path, (), why, full_integer=False), "dynamic_range"


def _representative(data: Datasets) -> list:
    """Training images as the model takes them, without augmentation (the int8 activation ranges)."""
    batches = data.train_plain(0) if data.train_plain is not None else data.train_epoch(0)
    images = []
    for batch in batches:
        images += list(tf.cast(batch[0], tf.float32).numpy())
        if len(images) >= conversions.INT8_SAMPLES:
            break
    return images[:conversions.INT8_SAMPLES]


def prove_all(model, logits, data: Datasets, directory: Path, ask: ExportAsk, info: dict, tolerance: float,
              temperature: float, float32_model, layer_of) -> None:
    """export.parity: each written format on the test files against `logits` (graph_logits); an int8
    model under its gate falls back to dynamic range (proven again); a float format beyond the
    tolerance goes in info["failed"]."""
    multi = data.source.multi_label

    def reference(images):
        return probabilities_of(logits(images), multi, temperature).numpy()

    upright = upright_bytes if info["exif_orientation"] == "apply" else (lambda b: b)
    files = parity.collect(data, reference, ask.from_files, upright, info.get("thresholds") and
                           [info["thresholds"][n] for n in data.source.names()],
                           limit=min(parity.PARITY_FILES, data.counts.get("test") or parity.PARITY_FILES))
    if files is None or not np.isfinite(files.reference).all():
        info["parity"] = []
        info["parity_note"] = ("no test split with a file form (float images, or no test split): nothing proven"
                               if files is None else "the trained model's probabilities are not finite on the test "
                               "files (its weights overflowed): nothing to prove the formats against")
        log.warning("warning: the export formats were not proven: %s", info["parity_note"])
        return
    served = runtimes.load_saved_model(directory)
    rows, failed = [], []
    written = [f for f in ask.formats if f == "saved_model" or (f == "keras" and info.get("keras_file"))
               or (info.get(f) or {}).get("path")]
    for fmt in written:
        row = _prove(fmt, directory, served, files, tolerance, data)
        if fmt == "tflite_int8" and not row["passed"] and info[fmt]["quantization"] == "int8":
            reason = f"full-integer int8 failed its gate ({row['gate']})"
            log.warning("warning: %s; falling back to dynamic-range int8", reason)
            info.update(convert_all(float32_model() if float32_model else model, data, directory, [fmt],
                                    temperature, layer_of, int8_full=False))
            info[fmt]["fallback_reason"] = reason
            row = _prove(fmt, directory, served, files, tolerance, data) if info[fmt].get("path") else None
        if row is not None and fmt == "tflite_int8" and not row["passed"]:
            (directory / runtimes.FILES[fmt]).unlink(missing_ok=True)
            info[fmt] = {"path": None, "error": f"int8 failed its gate ({row['gate']}); not exported",
                         **({"fallback_reason": info[fmt]["fallback_reason"]} if "fallback_reason" in info[fmt] else {})}
            log.warning("warning: no %s in the export: %s", runtimes.FILES[fmt], info[fmt]["error"])
        elif row is not None and not row["passed"]:
            failed.append(row)
        if row is not None:
            rows.append(row)
    info["parity"] = rows
    if failed:
        info["failed"] = failed


def _prove(fmt: str, directory: Path, served, files, tolerance: float, data: Datasets) -> dict:
    began = time.monotonic()
    run = runtimes.runner(directory, fmt, served)
    gate = None if fmt == "tflite_int8" else tolerance
    row = parity.prove(fmt, run, files, directory / runtimes.FILES[fmt], gate, data.source.names())
    row["seconds"] = round(time.monotonic() - began, 2)  # loading, the files and the latency repeats
    return row


def _keras_file(model, path: Path) -> dict:
    """The bare model (no input enforcement) as `.keras`, for fine-tuning in Keras — kept only if it
    loads back with `safe_mode=True` to the same weights. A custom layer without `get_config` or
    Keras registration cannot; the file is then left out and the reason recorded."""
    import keras

    from safetrain.models.norm import portable

    try:
        model = portable(model)   # Keras' own BatchNormalization: loads without safetrain
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


def _self_check(serving: Serving, logits, data: Datasets, samples: Path, tolerance: float,
                temperature: float) -> float | None:
    if data.raw_test is None:
        return None
    inputs, encoded, files = [], [], []
    for image, _, _ in data.raw_test().take(SAMPLES):
        if image.dtype != tf.uint8:
            return None  # float sources have no lossless PNG form; nothing to compare
        encoded.append(tf.io.encode_png(image).numpy())
        inputs.append(data.model_input(image))
    if not encoded:
        return None
    expected = probabilities_of(logits(tf.stack(inputs)), data.source.multi_label, temperature).numpy()
    samples.mkdir(parents=True, exist_ok=True)
    for i, png in enumerate(encoded):
        path = samples / f"test_{i}.png"
        path.write_bytes(png)
        files.append(path.name)
    served = serving.classify(tf.constant(encoded))["probabilities"].numpy()
    diff = float(np.max(np.abs(served - expected)))
    (samples / "expected.json").write_text(json.dumps(
        {"files": files, "probabilities": [p.tolist() for p in expected]}, indent=1) + "\n")
    if diff > tolerance:
        log.warning("warning: the exported model disagrees with training on test images (max |diff| %.3g > %g)",
                    diff, tolerance)
    return round(diff, 6)
