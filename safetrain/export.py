"""Export the trained model as a SavedModel whose serving signature enforces the input spec.

`classify(images)` takes a batch of encoded image files (PNG, JPEG, BMP, GIF bytes) of any size
and applies what training applied — decode, the channel and size adapters the config allows,
the same normalization (with the training split's statistics for `standardize`) — then returns
class probabilities, the top class id and its name. The enforcement is
`pipelines.serving.prepare_encoded`, the same adapter ops the training pipeline runs, so serving
cannot drift from training. A SavedModel is a graph: loading it runs no Python from the export.

Each export checks itself: test-split images are encoded as PNG and classified both ways — the
training pipeline plus the model, and the serving signature — and must agree. The images and the
in-training probabilities are kept under export/samples/ for anyone to re-check (the tests do, in
a fresh process, through `python -m safetrain.predict`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipelines.build import Datasets
from pipelines.serving import prepare_encoded
from safetrain.config.schema import DatasetConfig

log = logging.getLogger("safetrain")

SAMPLES = 8


class Serving(tf.Module):
    def __init__(self, model, data: Datasets, cfg: DatasetConfig) -> None:
        super().__init__()
        self.model = model
        self.class_names = tf.constant(data.source.names())
        spec, stats = data.spec, data.normalization_stats
        resize, channels = cfg.resize.value, cfg.channel_policy.value

        def prepare(encoded):
            return tf.cast(prepare_encoded(encoded, spec, resize, channels, stats), tf.float32)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def classify(images):
            x = tf.map_fn(prepare, images, fn_output_signature=tf.TensorSpec(spec.shape, tf.float32))
            probabilities = tf.nn.softmax(tf.cast(self.model(tf.cast(x, spec.dtype), training=False), tf.float32))
            top = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            return {"probabilities": probabilities, "top_class": top, "top_name": tf.gather(self.class_names, top)}

        self.classify = classify
        preprocessing = data.preprocessing or f"normalization {spec.normalization} (dataset.image)"

        @tf.function(input_signature=[])
        def describe():
            """What `classify` applies, readable from the SavedModel alone (signature `describe`)."""
            return {"model_input": tf.constant(spec.describe()), "preprocessing": tf.constant(preprocessing),
                    "resize": tf.constant(resize), "channel_policy": tf.constant(channels)}

        self.describe = describe


def export(model, data: Datasets, cfg: DatasetConfig, directory: Path) -> dict:
    """Write the SavedModel and its self-check; return what report.json records about it."""
    serving = Serving(model, data, cfg)
    tf.saved_model.save(serving, str(directory), signatures={"serving_default": serving.classify,
                                                             "describe": serving.describe})
    info = {"path": str(directory), "input": "encoded image files (PNG, JPEG, BMP, GIF), any size",
            "model_input": data.spec.describe(), "classes": data.source.names(),
            "preprocessing": data.preprocessing or f"normalization {data.spec.normalization} (dataset.image)",
            "resize": cfg.resize.value, "channel_policy": cfg.channel_policy.value,
            # the signature decodes as TensorFlow does (no EXIF); safetrain.predict turns photos upright first
            "exif_orientation": cfg.exif_orientation.value}
    info.update(_keras_file(model, directory / "model.keras"))
    (directory / "signature.json").write_text(json.dumps(info, indent=2) + "\n")
    # bfloat16 keeps ~3 significant digits: batch composition alone moves probabilities by ~1e-3.
    tolerance = 1e-2 if model.dtype_policy.compute_dtype != "float32" else 1e-4
    info["self_check_tolerance"] = tolerance
    info["self_check_max_abs_diff"] = _self_check(serving, model, data, directory / "samples", tolerance)
    return info


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
        expected.append(tf.nn.softmax(tf.cast(logits, tf.float32))[0].numpy())
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
