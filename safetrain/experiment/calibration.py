"""Probabilities a user can act on: temperature scaling fitted on eval, scored on test, and the
"unsure" threshold for a target accuracy.

A network's softmax is overconfident after training (its 0.97 is often right 90% of the time).
Temperature scaling (Guo et al., 2017) divides the logits by one number T, fitted to minimise the
eval split's negative log-likelihood: the ranking of the classes, so the accuracy, is unchanged,
only the confidence moves. One parameter fitted on held-out data cannot overfit the way the
weights can, and it folds into any exported format as one multiply before the softmax.

The scores are scikit-learn's where it has them (`log_loss`, the multiclass `brier_score_loss`);
the expected calibration error (15 equal-width confidence bins, weighted by their share of the
examples) and the reliability diagram are a few lines of NumPy and matplotlib. netcal has both, but
it installs PyTorch for them.

The "unsure" threshold: sort eval by calibrated confidence; the lowest confidence at which the
examples at or above it are right at least `target` of the time keeps the most images while
reaching the target. Below it the answer is "unsure". It is a property of eval, reported on test.

NumPy only (no TensorFlow): safetrain.experiment.analysis hands over the logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BINS = 15
MIN_EXAMPLES = 100  # eval examples below which T is not fitted: one wrong image moves the NLL's optimum too far
T_RANGE = (0.05, 20.0)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite logits stay NaN rows (the caller says so)
        z = np.asarray(logits, np.float64) / temperature
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def probabilities(logits: np.ndarray, multi: bool, temperature: float = 1.0) -> np.ndarray:
    """The head's logits as probabilities: a softmax over logits / T, or a sigmoid per label."""
    if multi:
        return 1.0 / (1.0 + np.exp(-np.asarray(logits, np.float64)))
    return softmax(logits, temperature)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """T minimising the mean negative log-likelihood of softmax(logits / T) (a 1-D bounded search
    over log T: the NLL is smooth and unimodal in it)."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, np.float64)
    y = np.asarray(labels, np.int64)

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        s = s - s.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(len(y)), y]))

    found = minimize_scalar(nll, bounds=tuple(np.log(T_RANGE)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


def ece(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Expected calibration error: over equal-width bins of the top probability, the gap between
    the bin's mean confidence and its accuracy, weighted by the bin's share of the examples."""
    confidence, correct = _confidence(probabilities, labels)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(total)


def scores(probabilities: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import brier_score_loss, log_loss

    classes = list(range(probabilities.shape[1]))
    p = np.clip(probabilities, 1e-15, 1.0)
    return {"ece": round(ece(probabilities, labels), 6),
            "nll": round(float(log_loss(labels, p / p.sum(axis=1, keepdims=True), labels=classes)), 6),
            "brier": round(float(brier_score_loss(labels, probabilities, labels=classes)), 6)}


def coverage_curve(probabilities: np.ndarray, labels: np.ndarray, points: int = 20) -> list[dict]:
    """Accuracy against coverage: answering only the surest `coverage` share of the images (5%,
    10%, ..., 100%), the accuracy they reach and the confidence they start at."""
    confidence, running = _ranked(probabilities, labels)
    if not len(running):
        return []
    rows = []
    for share in np.linspace(1.0 / points, 1.0, points):
        k = max(0, int(np.ceil(share * len(running))) - 1)
        rows.append({"coverage": round(float(share), 4), "accuracy": round(float(running[k]), 6),
                     "threshold": round(float(confidence[k]), 6)})
    return rows


@dataclass(frozen=True)
class Unsure:
    """Answer "unsure" below `threshold` (a calibrated top probability)."""

    target_accuracy: float
    threshold: float | None           # None: the target is not reached at any coverage on eval
    eval_examples: int
    eval_coverage: float = 0.0        # share of eval at or above the threshold
    eval_accuracy: float | None = None  # their accuracy
    reason: str = ""

    def report(self) -> dict:
        out = {"target_accuracy": self.target_accuracy, "threshold": self.threshold,
               "eval": {"examples": self.eval_examples, "coverage": self.eval_coverage,
                        "accuracy": self.eval_accuracy}}
        if self.reason:
            out["reason"] = self.reason
        return out


def unsure_threshold(probabilities: np.ndarray, labels: np.ndarray, target: float) -> Unsure:
    """The lowest confidence whose examples at or above it reach `target` accuracy on eval (the
    most coverage that does), or None with the reason."""
    confidence, running = _ranked(probabilities, labels)
    # only cut between distinct confidences: every example at the threshold is answered
    last_of_value = np.append(confidence[1:] != confidence[:-1], True)
    ok = np.flatnonzero(last_of_value & (running >= target))
    n = len(running)
    if not len(ok):
        best = float(running[last_of_value].max()) if n else 0.0
        return Unsure(target, None, n, reason=f"no confidence reaches {target:g} accuracy on the {n} eval images "
                                              f"(the most confident reach {best:.3f}); every answer stays a guess")
    k = int(ok[-1])
    return Unsure(target, float(confidence[k]), n, round((k + 1) / n, 6), round(float(running[k]), 6))


def at_threshold(probabilities: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """Coverage and accuracy of the answers at or above `threshold`."""
    confidence, correct = _confidence(probabilities, labels)
    kept = confidence >= threshold
    return {"examples": int(len(correct)), "coverage": round(float(kept.mean()), 6) if len(kept) else 0.0,
            "accuracy": round(float(correct[kept].mean()), 6) if kept.any() else None}


@dataclass
class Calibration:
    """What report.json `calibration` records and the export applies."""

    temperature: float = 1.0
    eval_examples: int = 0
    skipped: str = ""                 # why T stayed 1 (the export is then the raw model)
    test: dict = field(default_factory=dict)
    unsure: Unsure | None = None
    eval_curve: list = field(default_factory=list)  # coverage_curve on the calibrated eval

    def report(self) -> dict:
        out = {"temperature": round(self.temperature, 6), "eval_examples": self.eval_examples, "test": self.test}
        if self.skipped:
            out["skipped"] = self.skipped
        if self.unsure is not None:
            out["unsure"] = self.unsure.report()
        if self.eval_curve:
            out["eval_accuracy_by_coverage"] = self.eval_curve
        return out


def calibrate(eval_logits: np.ndarray | None, eval_labels: np.ndarray | None, enabled: bool,
              target: float | None) -> Calibration:
    """T from eval (or the reason it stays 1), and the unsure threshold on the calibrated eval."""
    n = 0 if eval_logits is None else len(eval_logits)
    if not enabled:
        found = Calibration(eval_examples=n, skipped="trainer.calibrate=false")
    elif n == 0:
        found = Calibration(skipped="no eval split to fit it on (calibrating on test would grade the model on "
                                    "what tuned it)")
    elif not np.isfinite(eval_logits).all():
        bad = int((~np.isfinite(eval_logits).all(axis=1)).sum())
        found = Calibration(eval_examples=n, skipped=f"the model's logits are not finite on {bad} of {n} eval images")
        if target is not None:
            found.unsure = Unsure(target, None, n, reason="the model's eval logits are not finite")
        return found
    elif n < MIN_EXAMPLES:
        found = Calibration(eval_examples=n, skipped=f"{n} eval examples; a temperature needs at least "
                                                     f"{MIN_EXAMPLES} to be trusted")
    else:
        found = Calibration(fit_temperature(eval_logits, eval_labels), n)
    calibrated = softmax(eval_logits, found.temperature) if n else None
    if n:
        found.eval_curve = coverage_curve(calibrated, eval_labels)
    if target is not None:
        found.unsure = unsure_threshold(calibrated, eval_labels, target) if n else \
            Unsure(target, None, 0, reason="no eval split to choose it on; every answer stays a guess")
    return found


def reliability_figure(before: np.ndarray, after: np.ndarray, labels: np.ndarray, temperature: float,
                       path: Path | None = None) -> np.ndarray:
    """Accuracy against confidence per bin, before and after scaling, with the diagonal a
    calibrated model follows and each bin's share of the examples under it."""
    from safetrain.experiment.results import _pyplot, _rendered

    plt = _pyplot()
    fig, (top, share) = plt.subplots(2, 1, figsize=(6, 7), dpi=80, height_ratios=(3, 1), sharex=True,
                                     layout="constrained")
    edges = np.linspace(0.0, 1.0, BINS + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    top.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for probs, name, colour in ((before, "raw", "tab:red"), (after, f"T = {temperature:.2f}", "tab:blue")):
        confidence, correct = _confidence(probs, labels)
        which = np.minimum((confidence * BINS).astype(np.int64), BINS - 1)
        counts = np.bincount(which, minlength=BINS)
        accuracy = np.bincount(which, weights=correct, minlength=BINS) / np.maximum(counts, 1)
        seen = counts > 0
        top.plot(centres[seen], accuracy[seen], marker="o", color=colour,
                 label=f"{name}: ECE {ece(probs, labels):.3f}")
        share.bar(centres, counts / max(1, len(labels)), width=1.0 / BINS, alpha=0.4, color=colour)
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(loc="upper left")
    top.set_title(f"test reliability: {len(labels)} images, {BINS} confidence bins")
    share.set_xlabel("confidence (top probability)")
    share.set_ylabel("share")
    return _rendered(fig, path)


def _ranked(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Confidence from the surest example down, and the accuracy of the examples up to each."""
    confidence, correct = _confidence(probabilities, labels)
    order = np.argsort(-confidence, kind="stable")
    return confidence[order], np.cumsum(correct[order]) / np.arange(1, len(correct) + 1)


def _confidence(probabilities: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probabilities, np.float64)
    return p.max(axis=1), (p.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
