"""What a finished run shows about its mistakes: pictures, a per-class report, suspect labels.

Plain NumPy over the predictions of one split (labels, class probabilities, each example's key —
the file path for image folders): scikit-learn computes the confusion matrix and precision,
recall and F1 per class; matplotlib (the Agg backend: no display needed) draws the labelled
confusion matrix and the top-losses grid. Each picture comes back as an RGB array for TensorBoard
and is written as a PNG for the run dir. No TensorFlow here: safetrain.experiment.train collects the
predictions with the model and hands them over.

Suspect labels are the cheap first pass at label noise: files of the eval/test splits the trained
model puts in another class with high confidence. That is where a wrong label (or a very
ambiguous image) most often shows, and where a person should look first; it is not a label-noise
estimate (cleanlab's confident learning uses out-of-sample probabilities for *every* example, via
cross-validation, and per-class thresholds) and it says nothing about the training split.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_MAX_ANNOTATED_CLASSES = 30  # above this the cells are too small for their counts


@dataclass(frozen=True)
class Predictions:
    split: str
    labels: np.ndarray         # (N,) int class ids
    probabilities: np.ndarray  # (N, K) float
    keys: list[str]            # (N,) file path (image folders) or split#index
    multi_label: bool = False  # labels are label sets as bit masks; probabilities a sigmoid per label
    thresholds: np.ndarray | None = None  # multi-label: a label is predicted at or above its (None: 0.5)
    logits: np.ndarray | None = None      # (N, K) the head's, before any temperature (calibration)

    @property
    def predicted(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def truth(self) -> np.ndarray:
        """Multi-label: the sets as 0/1 rows (N, K)."""
        labels = np.asarray(self.labels, np.int64).reshape(-1)
        return (labels[:, None] >> np.arange(self.probabilities.shape[1])) & 1

    @property
    def label_losses(self) -> np.ndarray:
        """Multi-label: each example's binary cross-entropy per label (N, K)."""
        p = np.clip(np.nan_to_num(self.probabilities, nan=0.5, posinf=1.0, neginf=0.0), 1e-7, 1 - 1e-7)
        return -np.where(self.truth == 1, np.log(p), np.log(1 - p))

    @property
    def losses(self) -> np.ndarray:
        """Cross-entropy of each example (-log p(true class)), for the top losses (multi-label: the
        mean over labels of the binary cross-entropy). A non-finite probability (a model whose
        weights overflowed) counts as p = 0, the worst loss: NaN would make every ordering of the
        examples arbitrary."""
        if self.multi_label:
            return self.label_losses.mean(axis=1)
        p = self.probabilities[np.arange(len(self.labels)), self.labels]
        return -np.log(np.clip(np.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0), 1e-12, 1.0))

    def title(self, i: int, names: list[str]) -> str:
        """What example `i` is and what the model said, for a picture's title."""
        if not self.multi_label:
            top = self.predicted[i]
            return f"true {names[self.labels[i]]} | pred {names[top]} {self.probabilities[i, top]:.2f}"
        cut = self.thresholds if self.thresholds is not None else np.full(len(names), 0.5)
        given = [names[c] for c in np.flatnonzero(self.truth[i])] or ["none"]
        said = [f"{names[c]} {self.probabilities[i, c]:.2f}" for c in np.argsort(-self.probabilities[i])
                if self.probabilities[i, c] >= cut[c]] or ["none"]
        if len(said) > 3:  # a title has room for three
            said = said[:3] + [f"+{len(said) - 3}"]
        return f"true {', '.join(given)}\npred {', '.join(said)}"


def confusion(pred: Predictions, num_classes: int) -> np.ndarray:
    from sklearn.metrics import confusion_matrix

    return confusion_matrix(pred.labels, pred.predicted, labels=list(range(num_classes)))


def per_class_report(pred: Predictions, names: list[str]) -> dict:
    """{"classes": {name: {precision, recall, f1, support}}, "macro_avg": {...}, "weighted_avg": {...}}
    (scikit-learn's classification_report; a class never predicted has precision 0, not NaN)."""
    from sklearn.metrics import classification_report

    raw = classification_report(pred.labels, pred.predicted, labels=list(range(len(names))),
                                target_names=names, output_dict=True, zero_division=0)
    row = lambda r: {"precision": round(float(r["precision"]), 4), "recall": round(float(r["recall"]), 4),  # noqa: E731
                     "f1": round(float(r["f1-score"]), 4), "support": int(r["support"])}
    return {"classes": {name: row(raw[name]) for name in names},
            "macro_avg": row(raw["macro avg"]), "weighted_avg": row(raw["weighted avg"])}


def worst_classes(report: dict, n: int = 3) -> list[tuple[str, dict]]:
    """The `n` classes with the lowest F1 (those with test examples)."""
    present = [(name, r) for name, r in report["classes"].items() if r["support"]]
    return sorted(present, key=lambda item: (item[1]["f1"], item[0]))[:n]


def report_text(report: dict) -> str:
    """A Markdown table for TensorBoard's Text tab."""
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    rows = [*report["classes"].items(), ("**macro avg**", report["macro_avg"]),
            ("**weighted avg**", report["weighted_avg"])]
    lines += [f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
              for name, r in rows]
    return "\n".join(lines)


def suspects(preds: list[Predictions], names: list[str], min_probability: float) -> list[dict]:
    """Misclassified examples predicted with at least `min_probability`, most confident first."""
    rows = []
    for pred in preds:
        predicted = pred.predicted
        for i in np.flatnonzero(predicted != pred.labels):
            p = float(pred.probabilities[i, predicted[i]])
            if p >= min_probability:
                rows.append({"path": pred.keys[i], "split": pred.split, "given_label": names[pred.labels[i]],
                             "predicted_label": names[predicted[i]], "probability": round(p, 4),
                             "given_label_probability": round(float(pred.probabilities[i, pred.labels[i]]), 4)})
    return sorted(rows, key=lambda r: (-r["probability"], r["path"]))


def write_suspects(path: Path, rows: list[dict]) -> None:
    fields = ["path", "split", "given_label", "predicted_label", "probability", "given_label_probability"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def top_loss_indices(pred: Predictions, n: int) -> np.ndarray:
    """The `n` examples with the highest loss, highest first (ties: the earlier example)."""
    return np.argsort(-pred.losses, kind="stable")[:n]


# --- pictures -----------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display; safe to call again
    import matplotlib.pyplot as plt

    return plt


def _rendered(fig, path: Path | None) -> np.ndarray:
    """The figure as an RGB float array in [0, 1] (for TensorBoard), saved as `path` when given."""
    plt = _pyplot()
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    plt.close(fig)
    return rgb


def confusion_figure(matrix: np.ndarray, names: list[str], path: Path | None = None) -> np.ndarray:
    """Counts and the row-normalized matrix side by side, true class per row, class names on both
    axes, each cell's count (and share) written in it."""
    plt = _pyplot()
    k = len(names)
    size = min(22.0, max(5.0, 0.45 * k + 3.0))
    # Constrained layout makes room for the rotated class names and the axis labels under them
    # (tight_layout clipped "predicted class" off a 10-class figure).
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size), dpi=80, layout="constrained")
    totals = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, totals, out=np.zeros(matrix.shape, np.float64), where=totals > 0)
    for ax, values, title, fmt in ((axes[0], matrix, "counts", "{:d}"), (axes[1], share, "share of each true class",
                                                                         "{:.2f}")):
        ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)  # both coloured by share: big classes do not drown others
        ax.set_xticks(range(k), names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
        ax.set_yticks(range(k), names)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        ax.set_title(title)
        if k <= _MAX_ANNOTATED_CLASSES:
            for i in range(k):
                for j in range(k):
                    value = int(values[i, j]) if values is matrix else float(values[i, j])
                    ax.text(j, i, fmt.format(value), ha="center", va="center", fontsize=9 if k <= 12 else 6,
                            color="white" if share[i, j] > 0.5 else "black")
    fig.suptitle(f"test confusion matrix: {int(matrix.sum())} examples, true class per row")
    return _rendered(fig, path)


def top_losses_figure(images: list[np.ndarray], pred: Predictions, indices: np.ndarray, names: list[str],
                      path: Path | None = None) -> np.ndarray:
    """The examples of `indices` (each (H, W, C) in [0, 1], any size: as they look, from
    experiment.analysis.as_it_looks), titled with the true class, the predicted class and its
    probability, the loss and the key."""
    plt = _pyplot()
    n = len(indices)
    columns = min(5, max(1, n))
    rows = max(1, math.ceil(n / columns))
    size = (3.6, 4.2) if pred.multi_label else (3.2, 3.6)  # a label set takes two title lines
    fig, axes = plt.subplots(rows, columns, figsize=(size[0] * columns, size[1] * rows), dpi=80,
                             squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, i in zip(axes.ravel(), images, indices):
        shown = np.clip(image, 0.0, 1.0)
        ax.imshow(shown[..., 0] if shown.shape[-1] == 1 else shown[..., :3], cmap="gray" if shown.shape[-1] == 1
                  else None, vmin=0.0, vmax=1.0)
        key = pred.keys[i]
        key = key if len(key) <= 34 else "…" + key[-33:]
        ax.set_title(f"{pred.title(i, names)}\nloss {pred.losses[i]:.2f}  {key}", fontsize=8)
    fig.suptitle(f"{pred.split}: the {n} highest losses", fontsize=11)
    fig.tight_layout()
    return _rendered(fig, path)
