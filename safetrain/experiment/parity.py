"""Every exported format proven on the test split's files through its own serving path.

The reference is the trained model (the weights tested, any precision) computed as a graph
(safetrain.train.steps.graph_logits) on the training pipeline's input for each test example,
with the calibration's temperature. Each format gets the *files*
(image folders and tables: the files on disk, turned upright as the scan does; sources without
files: their test images as lossless PNGs) through safetrain.experiment.runtimes, the code
`python -m safetrain.predict --format NAME` runs. Per format: top-1 agreement with the reference
(multi-label: the same label set), the largest probability difference, accuracy, each class's
recall and the worst drop against the reference, single-image latency, size.

Gates: a float format (SavedModel, .keras, TFLite, ONNX) must match within the export's tolerance
(`tolerance`: 1e-4 in float32; 1e-2 over the temperature when the model computes in bfloat16);
int8 must agree on >= 99% of the files and lose at most 2 points of recall in any class, else its
fallback (dynamic range) is tried under the same gate.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PARITY_FILES = 2000      # test files each format is proven on (the first ones of the split)
INT8_MIN_AGREEMENT = 0.99
INT8_MAX_CLASS_DROP = 0.02
LATENCY_REPEATS = 10
SHOWN = 5                # differing files named in a failure


@dataclass
class TestFiles:
    names: list[str]          # file paths (or test_N.png for sources without files)
    encoded: list[bytes]      # the bytes each format serves (upright when the scan turned it)
    truth: np.ndarray         # (N, K) 0/1
    reference: np.ndarray     # (N, K) the trained model's probabilities on the training pipeline's input
    multi: bool
    thresholds: np.ndarray | None  # multi-label: each label's

    def decide(self, probabilities: np.ndarray) -> np.ndarray:
        """What the answer is: the top class one-hot, or the label set at the thresholds."""
        if self.multi:
            return (probabilities >= self.thresholds).astype(np.int64)
        return np.eye(probabilities.shape[1], dtype=np.int64)[probabilities.argmax(axis=1)]


def collect(data, probabilities_of, from_files: bool, upright, thresholds=None,
            limit: int = PARITY_FILES) -> TestFiles | None:
    """The first `limit` test examples as files with the reference probabilities;
    `probabilities_of(model_input_batch)`: the trained model's (calibrated) probabilities;
    `upright(bytes)`: the bytes as served. None when the split has no file form."""
    import tensorflow as tf

    multi = data.source.multi_label
    k = data.source.num_classes
    names, encoded, labels, reference = [], [], [], []
    if from_files:
        keyed = data.with_keys("test")
        if keyed is None:
            return None
        for images, y, keys in keyed:
            take = min(limit - len(names), int(images.shape[0]))
            reference.append(probabilities_of(images[:take]))
            labels.append(y.numpy()[:take])
            for key in keys.numpy()[:take]:
                names.append(key.decode())
                encoded.append(upright(Path(names[-1]).read_bytes()))
            if len(names) >= limit:
                break
    else:
        if data.raw_test is None:
            return None
        inputs = []
        for image, y, _ in data.raw_test().take(limit):
            if image.dtype != tf.uint8:
                return None  # float images have no lossless file form
            names.append(f"test_{len(names)}.png")
            encoded.append(tf.io.encode_png(image).numpy())
            inputs.append(data.model_input(image))
            labels.append(np.asarray([y.numpy()]))
        for start in range(0, len(inputs), 256):
            reference.append(probabilities_of(tf.stack(inputs[start:start + 256])))
    if not names:
        return None
    y = np.concatenate(labels).astype(np.int64).reshape(-1)
    truth = ((y[:, None] >> np.arange(k)) & 1) if multi else np.eye(k, dtype=np.int64)[y]
    return TestFiles(names, encoded, truth, np.concatenate(reference).astype(np.float64), multi,
                     None if thresholds is None else np.asarray(thresholds, np.float64))


def tolerance(compute_dtype: str, temperature: float) -> float:
    """The float formats' gate on the largest probability difference. 1e-4 for a float32 model. A
    bfloat16 model's own graph (the SavedModel, .keras) matches it exactly, but TFLite and ONNX run a
    float32 copy, which does not round its activations to bfloat16's 3 significant digits: that moves
    the logits by a few hundredths, ~1e-3 to 1e-2 in probability, and a calibration temperature below
    1 multiplies the logits by 1/T before the softmax, so the gate is 1e-2 / T there (a float32 copy
    of a model calibrated at T = 0.475 on 8,000 drawings differed by 0.008, a Zen 5 EPYC)."""
    if compute_dtype == "float32":
        return 1e-4
    return round(1e-2 / min(1.0, temperature), 6)


def prove(fmt: str, run, files: TestFiles, path: Path, tolerance: float | None, class_names: list[str]) -> dict:
    """One row of export.parity for the artifact at `path`; `tolerance` None: the int8 gate instead of
    a probability match."""
    got = run(files.encoded)
    expected, decided = files.decide(files.reference), files.decide(got)
    agree = (expected == decided).all(axis=1)
    diff = np.abs(got - files.reference)
    support = files.truth.sum(axis=0)
    seen = support > 0
    recall_ref = (expected & files.truth).sum(axis=0)[seen] / support[seen]
    recall = (decided & files.truth).sum(axis=0)[seen] / support[seen]
    drops = recall_ref - recall
    worst = int(np.argmax(drops)) if len(drops) else 0
    row = {"format": fmt, "file": path.name, "bytes": _size(path), "files": len(files.names),
           "agreement": round(float(agree.mean()), 6), "max_abs_diff": round(float(diff.max()), 6),
           "accuracy": round(float((decided == files.truth).all(axis=1).mean()), 6),
           "reference_accuracy": round(float((expected == files.truth).all(axis=1).mean()), 6),
           "worst_class_drop": round(float(max(0.0, drops[worst])) if len(drops) else 0.0, 6),
           "worst_class": np.asarray(class_names)[seen][worst] if len(drops) else None,
           "latency_ms": _latency(run, files.encoded[0]),
           "recall": {str(name): round(float(r), 6) for name, r in zip(np.asarray(class_names)[seen], recall)}}
    if tolerance is not None:
        row["tolerance"] = tolerance
        ok = row["max_abs_diff"] <= tolerance
        gate = f"max |diff| {row['max_abs_diff']:.3g} > {tolerance:g}"
    else:
        ok = row["agreement"] >= INT8_MIN_AGREEMENT and row["worst_class_drop"] <= INT8_MAX_CLASS_DROP
        gate = (f"agreement {row['agreement']:.4f} (gate {INT8_MIN_AGREEMENT}), worst class drop "
                f"{row['worst_class_drop']:.4f} in {row['worst_class']} (gate {INT8_MAX_CLASS_DROP})")
    row["passed"] = bool(ok)
    if not ok:
        order = np.argsort(-(diff.max(axis=1) + (~agree)), kind="stable")[:SHOWN]
        row["gate"] = gate
        row["differing_files"] = [files.names[i] for i in order]
    return row


def _latency(run, one: bytes) -> float:
    """Median milliseconds for one file through the whole serving path (after a warm-up call)."""
    run([one])
    times = []
    for _ in range(LATENCY_REPEATS):
        start = time.perf_counter()
        run([one])
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 3)


def _size(path: Path) -> int:
    """Bytes of the artifact: a file, or a SavedModel's graph and variables."""
    if path.name == "saved_model.pb":
        return path.stat().st_size + sum(p.stat().st_size for p in (path.parent / "variables").rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0
