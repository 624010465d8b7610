"""The scan: one pass over each split before the first step.

It fills the in-memory cache, counts the good examples, lists every bad one with its key and
reason, and sums the per-channel statistics that `standardize` needs. Bad examples then either
stop the run (`bad_examples_error`, on_bad_example=error, exit 3, naming each) or are filtered
out, counted and listed (skip). Nothing is dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from safetrain.pipelines import checks
from safetrain.pipelines.spec import BadExample
from safetrain.config.schema import BadExamplePolicy
from safetrain.core.errors import DataError

SCAN_BATCH = 1024


@dataclass(frozen=True)
class Scanned:
    """What the pass over one split found."""

    good: int                    # examples that passed every check
    bad: list[BadExample]
    sums: np.ndarray | None      # per-channel sum, sum of squares, count (for standardize), when asked
    class_counts: np.ndarray     # good examples per class id (class weights, balanced sampling)


def scan(ds: tf.data.Dataset, split: str, check_args: dict, want_stats: bool) -> Scanned:
    """One pass: good-example count, bad examples with reasons, optional per-channel sums."""
    good, bad = 0, []
    sums = None
    class_counts = np.zeros(check_args["num_classes"], np.int64)
    for x, labels, status, key in ds.batch(SCAN_BATCH):
        status = status.numpy()
        ok = status == checks.OK
        good += int(ok.sum())
        class_counts += checks.label_counts(labels.numpy()[ok], len(class_counts), check_args.get("multi_label", False))
        for code, k in zip(status[~ok], key.numpy()[~ok]):
            bad.append(BadExample(split=split, key=k.decode(), reason=checks.reason(int(code), **check_args)))
        if want_stats and ok.any():
            pixels = tf.reshape(tf.boolean_mask(x, ok), (-1, x.shape[-1])).numpy().astype(np.float64)
            batch_sums = np.stack([pixels.sum(0), (pixels ** 2).sum(0), np.full(pixels.shape[1], len(pixels))])
            sums = batch_sums if sums is None else sums + batch_sums
    return Scanned(good, bad, sums, class_counts)


def mean_std(sums: np.ndarray) -> tuple[list[float], list[float]]:
    total, total_sq, n = sums
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean ** 2, 1e-12))
    return [float(v) for v in mean], [float(v) for v in std]


def bad_examples_error(bad: list[BadExample], policy: BadExamplePolicy) -> DataError | None:
    """With on_bad_example=error, the error naming the bad examples (None when there are none)."""
    if not bad or policy is BadExamplePolicy.skip:
        return None
    # One of each kind first (a table's missing file, duplicate row, unknown label, ...), so one
    # run names every kind of problem; then the rest up to three.
    kinds: dict[str, BadExample] = {}
    for b in bad:
        if b.kind:
            kinds.setdefault(b.kind, b)
    firsts = list(kinds.values())
    shown_list = (firsts + [b for b in bad if b not in firsts])[:max(3, len(firsts))]
    shown = "; ".join(b.describe() for b in shown_list)
    more = f"; and {len(bad) - len(shown_list)} more (all in errors.jsonl)" if len(bad) > len(shown_list) else ""
    return DataError(f"{len(bad)} bad example{'s' if len(bad) > 1 else ''}: {shown}{more}",
                     hint="fix or remove the files, or set dataset.on_bad_example=skip to train without them "
                          "(each skip is listed in errors.jsonl and counted in report.json)",
                     config_key="dataset.on_bad_example")
