"""Pictures for TensorBoard, drawn with NumPy: an input mosaic and a confusion-matrix heat map.

People would rather look than read for two things: what the model actually sees after the
pipeline's enforcement (resized, channel-converted, normalized — a mosaic of the first training
batch, each image rescaled to its own min..max for display), and where it confuses classes (the
test split's confusion matrix, rows = true class, columns = predicted, row-normalized).
TensorFlow-free so it is tested directly.
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


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels, np.int64), np.asarray(predicted, np.int64)), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    totals = matrix.sum(axis=1)
    return np.divide(np.diag(matrix), totals, out=np.full(len(matrix), np.nan), where=totals > 0)


def heatmap(matrix: np.ndarray, cell: int | None = None) -> np.ndarray:
    """Row-normalized matrix as an RGB image: white (0) to dark blue (1), correct cells in green."""
    k = len(matrix)
    cell = cell or max(4, min(32, 512 // max(k, 1)))
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = np.ones((k * cell, k * cell, 3), np.float32)
    for i in range(k):
        for j in range(k):
            v = float(share[i, j])
            color = (1 - v, 1 - 0.4 * v, 1 - v) if i == j else (1 - v, 1 - v, 1 - 0.3 * v)
            image[i * cell:(i + 1) * cell, j * cell:(j + 1) * cell] = color
    return image


def matrix_text(matrix: np.ndarray, names: list[str]) -> str:
    """A Markdown table (TensorBoard's Text tab renders it): counts, true class per row."""
    head = "| true \\ predicted | " + " | ".join(names) + " | accuracy |"
    rule = "|" + "---|" * (len(names) + 2)
    accuracy = per_class_accuracy(matrix)
    rows = [f"| **{name}** | " + " | ".join(str(int(v)) for v in row) + f" | {acc:.3f} |"
            for name, row, acc in zip(names, matrix, accuracy)]
    return "\n".join([head, rule, *rows])
