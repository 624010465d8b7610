"""Multi-label results: a threshold per label tuned on eval, the test split scored at those
thresholds (and at 0.5, to show what tuning bought), the per-label table and the per-label
precision-recall picture.

A sigmoid per label gives a probability per label, and where to cut it is a choice: 0.5 (what
fastai's `MultiCategoryBlock` and a plain Keras `fit` use) is rarely where a label's best F1 lies
(scripts/bench_multi_label.py: after 8 epochs the tuned thresholds ran from 0.06 to 0.94, and micro
F1 rose from 0.627 at 0.5 to 0.763). Each label's threshold is chosen on the eval split (never
test): the one with the best F1 there, or the lowest one reaching `trainer.threshold_precision`
when asked. A label with no positive in eval keeps 0.5 (nothing to tune it on), said so.

Plain NumPy and scikit-learn (`precision_recall_curve`, `average_precision_score`,
`accuracy_score`, `hamming_loss`); matplotlib draws the picture. No TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from safetrain.train.metrics import label_f1

DEFAULT_THRESHOLD = 0.5


@dataclass(frozen=True)
class Thresholds:
    values: np.ndarray        # (C,) the probability at or above which a label is predicted
    how: list[str]            # per label: "best eval F1", "eval precision >= 0.9", "no eval positive: 0.5", ...
    eval_examples: int

    def report(self, names: list[str]) -> dict:
        return {name: {"threshold": round(float(v), 4), "how": h} for name, v, h in zip(names, self.values, self.how)}


def tune(truth: np.ndarray, probabilities: np.ndarray, target_precision: float | None = None) -> Thresholds:
    """A threshold per label from the eval split's 0/1 truth and probabilities (N, C)."""
    from sklearn.metrics import precision_recall_curve

    values, how = [], []
    for label in range(truth.shape[1]):
        y, p = truth[:, label], probabilities[:, label]
        if not y.any():
            values.append(DEFAULT_THRESHOLD)
            how.append(f"no eval positive: {DEFAULT_THRESHOLD}")
            continue
        precision, recall, cuts = precision_recall_curve(y, p)
        precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
        if target_precision is not None:
            reach = np.flatnonzero(precision >= target_precision)
            if reach.size:  # cuts increase: the first reaching one keeps the most recall
                values.append(float(cuts[reach[0]]))
                how.append(f"eval precision >= {target_precision:g}")
                continue
            note = f"eval precision {target_precision:g} unreachable: best eval F1"
        else:
            note = "best eval F1"
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                       where=(precision + recall) > 0)
        values.append(float(cuts[int(np.argmax(f1))]))
        how.append(note)
    return Thresholds(np.asarray(values, np.float64), how, int(truth.shape[0]))


def fixed(num_labels: int, why: str) -> Thresholds:
    return Thresholds(np.full(num_labels, DEFAULT_THRESHOLD), [why] * num_labels, 0)


def scores(truth: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray) -> dict[str, float]:
    """The multi-label metrics of one split at `thresholds`: mAP (exact; labels with a positive),
    micro and macro F1 (macro over labels that occur or are predicted, as the training loop's),
    subset accuracy, Hamming loss."""
    from sklearn.metrics import accuracy_score, average_precision_score, hamming_loss

    predicted = (probabilities >= thresholds[None, :]).astype(np.int64)
    tp = (truth * predicted).sum(0).astype(np.float64)
    fp = ((1 - truth) * predicted).sum(0).astype(np.float64)
    fn = (truth * (1 - predicted)).sum(0).astype(np.float64)
    macro, micro = label_f1(tp, fp, fn)
    present = truth.any(axis=0)
    ap = [average_precision_score(truth[:, c], probabilities[:, c]) for c in np.flatnonzero(present)]
    return {"map": float(np.mean(ap)) if ap else float("nan"), "micro_f1": micro, "macro_f1": macro,
            "subset_accuracy": float(accuracy_score(truth, predicted)),
            "hamming_loss": float(hamming_loss(truth, predicted))}


def per_label(truth: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray, names: list[str]) -> dict:
    """{label: {support, ap, f1, precision, recall, threshold, f1_at_0.5}} on one split (ap None without a
    positive; f1_at_0.5: what the label's F1 would be at a fixed 0.5)."""
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support

    predicted = (probabilities >= thresholds[None, :]).astype(np.int64)
    precision, recall, f1, support = precision_recall_fscore_support(truth, predicted, average=None, zero_division=0)
    half = precision_recall_fscore_support(truth, (probabilities >= DEFAULT_THRESHOLD).astype(np.int64), average=None,
                                           zero_division=0)[2]
    out = {}
    for c, name in enumerate(names):
        ap = average_precision_score(truth[:, c], probabilities[:, c]) if truth[:, c].any() else None
        out[name] = {"support": int(support[c]), "ap": None if ap is None else round(float(ap), 4),
                     "f1": round(float(f1[c]), 4), "precision": round(float(precision[c]), 4),
                     "recall": round(float(recall[c]), 4), "threshold": round(float(thresholds[c]), 4),
                     "f1_at_0.5": round(float(half[c]), 4)}
    return out


def top_losses(losses: np.ndarray, probabilities: np.ndarray, truth: np.ndarray, keys: list[str], names: list[str],
               n: int = 3) -> dict[str, list[dict]]:
    """Per label, the `n` test examples with its highest binary cross-entropy: the images it is
    most wrong about, missed (given 1) or wrongly claimed (given 0), each {file, given, probability}."""
    out = {}
    for c, name in enumerate(names):
        worst = np.argsort(-losses[:, c], kind="stable")[:n]
        out[name] = [{"file": keys[i], "given": int(truth[i, c]), "probability": round(float(probabilities[i, c]), 4)}
                     for i in worst]
    return out


def table_text(rows: dict) -> str:
    """The per-label table as Markdown (TensorBoard's Text tab), rarest label first."""
    lines = ["| label | support | AP | F1 | precision | recall | threshold |", "|---|---|---|---|---|---|---|"]
    for name, r in sorted(rows.items(), key=lambda item: (item[1]["support"], item[0])):
        ap = "n/a" if r["ap"] is None else f"{r['ap']:.3f}"
        lines.append(f"| {name} | {r['support']} | {ap} | {r['f1']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} "
                     f"| {r['threshold']:.3f} |")
    return "\n".join(lines)


def pr_figure(truth: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray, names: list[str],
              path: Path | None = None) -> np.ndarray:
    """One precision-recall curve per label (test split), each with its tuned threshold's point."""
    from sklearn.metrics import precision_recall_curve

    from safetrain.experiment.results import _pyplot, _rendered

    plt = _pyplot()
    count = len(names)
    cols = min(4, count)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.0 * rows), squeeze=False)
    for c, ax in enumerate(axes.flat):
        if c >= count:
            ax.axis("off")
            continue
        y, p = truth[:, c], probabilities[:, c]
        ax.set_title(f"{names[c]} ({int(y.sum())} positive)", fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        if not y.any():
            ax.text(0.5, 0.5, "no positive", ha="center", fontsize=8)
            continue
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, lw=1.2)
        chosen = p >= thresholds[c]
        tp = float((chosen & (y == 1)).sum())
        at = (tp / max(chosen.sum(), 1), tp / y.sum())
        ax.plot(at[1], at[0], "o", color="crimson", label=f"threshold {thresholds[c]:.2f}")
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle("test precision-recall per label (dot: the threshold tuned on eval)", fontsize=10)
    fig.tight_layout()
    return _rendered(fig, path)
