"""The input mosaic and the confusion matrix as text, in NumPy.

What the model actually sees after the pipeline's enforcement (resized, channel-converted,
normalized): a mosaic of the first training batch, each image rescaled to its own min..max for
display — a plain array paste, no plotting needed. The confusion matrix's counts as a Markdown
table with per-class accuracy. The drawn pictures (the labelled confusion matrix, top losses) are
matplotlib's, in safetrain.experiment.results. TensorFlow-free so it is tested directly.
"""

from __future__ import annotations

import numpy as np


def mosaic(images: np.ndarray, columns: int = 8, gap: int = 1) -> np.ndarray:
    """(N, H, W, C) in any range -> one (rows*(H+gap), columns*(W+gap), 3) float image in [0, 1]."""
    images = np.asarray(images, dtype=np.float32)
    n, h, w, c = images.shape
    columns = max(1, min(columns, n))
    rows = -(-n // columns)
    out = np.ones((rows * (h + gap) + gap, columns * (w + gap) + gap, 3), np.float32)
    for i, image in enumerate(images):
        lo, hi = float(image.min()), float(image.max())
        shown = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
        shown = np.repeat(shown[..., :1], 3, axis=-1) if c != 3 else shown
        r, k = divmod(i, columns)
        out[gap + r * (h + gap): gap + r * (h + gap) + h, gap + k * (w + gap): gap + k * (w + gap) + w] = shown
    return out


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(axis=1)
    return np.divide(np.diag(matrix), totals, out=np.full(len(matrix), np.nan), where=totals > 0)


def matrix_text(matrix: np.ndarray, names: list[str]) -> str:
    """A Markdown table (TensorBoard's Text tab renders it): counts, true class per row."""
    head = "| true \\ predicted | " + " | ".join(names) + " | accuracy |"
    rule = "|" + "---|" * (len(names) + 2)
    accuracy = per_class_accuracy(matrix)
    rows = [f"| **{name}** | " + " | ".join(str(int(v)) for v in row) + f" | {acc:.3f} |"
            for name, row, acc in zip(names, matrix, accuracy)]
    return "\n".join([head, rule, *rows])
