"""What the test split shows about the model's mistakes, after training: the labelled confusion
matrix, the top losses, precision/recall/F1 per class, and for image folders the suspect labels.
The maths and pictures are in safetrain.experiment.results; this runs the model over the splits
and records what they give."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from safetrain.config.schema import FILE_SOURCES, Config
from safetrain.experiment import calibration, label_sets, results, visuals
from safetrain.pipelines.build import Datasets
from safetrain.record import names as run_files
from safetrain.record.run_record import RunRecord
from safetrain.train.steps import Steps

log = logging.getLogger("safetrain")

TOP_LOSSES = 15  # examples in the top-losses grid


def predictions(steps: Steps, data: Datasets, split: str, keep: int = 0, temperature: float = 1.0):
    """Every example of `split` through the model: class ids, probabilities (softmax of the logits
    over `temperature`; multi-label: a sigmoid per label), logits, keys (file paths); with `keep`,
    also {index: model input} of the `keep` highest-loss examples, picked as the batches go (one
    pass; never more than `keep` plus one batch of images held)."""
    ds = data.with_keys(split)
    if ds is None:
        return None, {}
    labels, logits, probabilities, keys = [], [], [], []
    multi = data.source.multi_label
    kept: dict[int, tuple[float, np.ndarray]] = {}  # index -> (loss, image)
    for images, y, key in ds:
        start = len(keys)
        logits.append(steps.logits(images).numpy())
        probabilities.append(_probabilities(logits[-1], multi, temperature))
        labels.append(y.numpy().astype(np.int64))
        keys += [k.decode() for k in key.numpy()]
        if keep:
            batch = results.Predictions(split, labels[-1], probabilities[-1], keys[start:], multi)
            for i in results.top_loss_indices(batch, keep):
                kept[start + int(i)] = (float(batch.losses[i]), images[int(i)].numpy().astype(np.float32))
            # the same order as results.top_loss_indices: highest loss first, the earlier example on ties
            kept = dict(sorted(kept.items(), key=lambda item: (-item[1][0], item[0]))[:keep])
    if not keys:
        return results.Predictions(split, np.zeros(0, np.int64), np.zeros((0, 1)), [], multi), {}
    pred = results.Predictions(split, np.concatenate(labels), np.concatenate(probabilities), keys, multi,
                               logits=np.concatenate(logits))
    return pred, {i: image for i, (_, image) in kept.items()}


def _probabilities(logits: np.ndarray, multi: bool, temperature: float) -> np.ndarray:
    return calibration.probabilities(logits, multi, temperature).astype(np.float32)


def analyse_test(cfg: Config, steps: Steps, data: Datasets, record: RunRecord, step: int) -> calibration.Calibration:
    """The temperature fitted on eval (calibration) and scored on test; then the test split's
    mistakes in TensorBoard, report.json and results/*.png, and for image folders the suspect
    labels of eval and test (suspect_labels.csv), all with the calibrated probabilities. Returns the
    calibration (the export folds it in)."""
    evaluated = predictions(steps, data, "eval")[0]
    usable = evaluated is not None and len(evaluated.labels) > 0
    found = calibration.calibrate(evaluated.logits if usable else None, evaluated.labels if usable else None,
                                  cfg.trainer.calibrate, cfg.trainer.serving_target_accuracy)
    test, images = predictions(steps, data, "test", keep=TOP_LOSSES, temperature=found.temperature)
    if test is None or not len(test.labels):
        record.report.calibration = found.report()
        return found
    names, out = data.source.names(), record.run_dir / run_files.RESULTS
    _calibration_results(found, test, record, step, out / run_files.RELIABILITY)
    matrix = results.confusion(test, len(names))
    accuracy = visuals.per_class_accuracy(matrix)
    record.image("test/confusion_matrix",
                 results.confusion_figure(matrix, names, out / run_files.CONFUSION_MATRIX), step=step)
    record.text("test/confusion_table", visuals.matrix_text(matrix, names), step=step, code=False)
    record.scalars(step, {f"test_class_accuracy/{name}": float(a) for name, a in zip(names, accuracy)
                          if np.isfinite(a)})
    metrics = record.report.metrics
    metrics["test_class_accuracy"] = {name: (float(a) if np.isfinite(a) else None) for name, a in zip(names, accuracy)}
    metrics["per_class"] = results.per_class_report(test, names)
    record.text("test/per_class", results.report_text(metrics["per_class"]), step=step, code=False)

    chosen = results.top_loss_indices(test, TOP_LOSSES)
    shown = [as_it_looks(images[int(i)], test.keys[int(i)], data) for i in chosen]
    grid = results.top_losses_figure(shown, test, chosen, names, out / run_files.TOP_LOSSES)
    record.image("test/top_losses", grid, step=step)
    if cfg.dataset.source in FILE_SOURCES:
        scaled = dataclasses.replace(evaluated, probabilities=_probabilities(evaluated.logits, False,
                                                                            found.temperature)) if usable else None
        _suspect_labels(cfg, data, record, [p for p in (scaled, test) if p is not None])
    return found


def _calibration_results(found: calibration.Calibration, test, record: RunRecord, step: int, picture) -> None:
    """report.json `calibration` with ECE, NLL and Brier on test before and after the temperature,
    the unsure threshold's test coverage and accuracy, the reliability diagram."""
    finite = np.isfinite(test.logits).all(axis=1)
    if not finite.all():  # a model whose weights overflowed: no probability to score
        found.test = {"examples": int(len(test.labels)), "non_finite": int((~finite).sum())}
        record.report.calibration = found.report()
        log.info("calibration: not scored (the model's logits are not finite on %d of %d test images)",
                 int((~finite).sum()), len(test.labels))
        return
    raw = calibration.softmax(test.logits)
    before, after = calibration.scores(raw, test.labels), calibration.scores(test.probabilities, test.labels)
    found.test = {f"{name}_{when}": value for when, said in (("before", before), ("after", after))
                  for name, value in said.items()}
    found.test["examples"] = int(len(test.labels))
    if found.unsure is not None and found.unsure.threshold is not None:
        found.test["at_unsure_threshold"] = calibration.at_threshold(test.probabilities, test.labels,
                                                                     found.unsure.threshold)
    record.report.calibration = found.report()
    record.scalars(step, {"calibration/temperature": found.temperature,
                          **{f"calibration/test_{k}": v for k, v in found.test.items() if isinstance(v, float)}})
    record.image("test/reliability", calibration.reliability_figure(raw, test.probabilities, test.labels,
                                                                    found.temperature, picture), step=step)
    said = (f"temperature {found.temperature:.3f} fitted on {found.eval_examples} eval images" if not found.skipped
            else f"not calibrated ({found.skipped})")
    log.info("calibration: %s; test ECE %.4f -> %.4f, NLL %.4f -> %.4f, Brier %.4f -> %.4f", said,
             before["ece"], after["ece"], before["nll"], after["nll"], before["brier"], after["brier"])
    unsure = found.unsure
    if unsure is not None:
        if unsure.threshold is None:
            log.info("unsure: %s", unsure.reason)
        else:
            at = found.test["at_unsure_threshold"]
            log.info("unsure below %.4f (eval: %.1f%% of images answered at %.4f accuracy, target %g); test: %.1f%% "
                     "answered at %s accuracy", unsure.threshold, 100 * unsure.eval_coverage, unsure.eval_accuracy,
                     unsure.target_accuracy, 100 * at["coverage"],
                     "n/a" if at["accuracy"] is None else f"{at['accuracy']:.4f}")


def analyse_label_sets(cfg: Config, steps: Steps, data: Datasets, record: RunRecord, step: int) -> np.ndarray:
    """Multi-label: a threshold per label tuned on the eval split; the test split scored at them
    (report.json test_NAME, TensorBoard test/NAME) and at 0.5 (test_at_0.5), the per-label table
    and precision-recall picture. Returns the thresholds (the export serves them)."""
    names = data.source.names()
    count, metrics = len(names), record.report.metrics
    evaluated = predictions(steps, data, "eval")[0]
    if evaluated is not None and len(evaluated.labels):
        thresholds = label_sets.tune(evaluated.truth, evaluated.probabilities,
                                     cfg.trainer.threshold_precision)
    else:
        thresholds = label_sets.fixed(count, "no eval split: 0.5")
    metrics["task"] = "multi_label"
    metrics["thresholds"] = thresholds.report(names)
    test, images = predictions(steps, data, "test", keep=TOP_LOSSES) if data.test is not None else (None, {})
    if test is not None and len(test.labels):
        test = dataclasses.replace(test, thresholds=thresholds.values)
        truth = test.truth
        tuned = label_sets.scores(truth, test.probabilities, thresholds.values)
        metrics.update({f"test_{name}": value for name, value in tuned.items()})
        metrics["test_at_0.5"] = label_sets.scores(truth, test.probabilities, np.full(count, 0.5))
        metrics["per_label"] = label_sets.per_label(truth, test.probabilities, thresholds.values, names)
        for name, worst in label_sets.top_losses(test.label_losses, test.probabilities, truth, test.keys,
                                                 names).items():
            metrics["per_label"][name]["top_losses"] = worst
        chosen = results.top_loss_indices(test, TOP_LOSSES)
        shown = [as_it_looks(images[int(i)], test.keys[int(i)], data) for i in chosen]
        grid = results.top_losses_figure(shown, test, chosen, names, record.run_dir / run_files.RESULTS /
                                         run_files.TOP_LOSSES)
        record.image("test/top_losses", grid, step=step)
        record.scalars(step, {f"test/{name}": value for name, value in tuned.items()})
        record.text("test/per_label", label_sets.table_text(metrics["per_label"]), step=step, code=False)
        picture = label_sets.pr_figure(truth, test.probabilities, thresholds.values, names,
                                       record.run_dir / run_files.RESULTS / run_files.PRECISION_RECALL)
        record.image("test/precision_recall", picture, step=step)
    log.info("thresholds (tuned on %d eval images): %s", thresholds.eval_examples,
             ", ".join(f"{n} {v:.2f}" for n, v in zip(names, thresholds.values)))
    return thresholds.values


def as_it_looks(model_input: np.ndarray, key: str, data: Datasets) -> np.ndarray:
    """An example as a person knows it, in [0, 1]: the file itself when the key is one (upright,
    its own colours and size), else the model input with its normalization undone (per-channel
    `standardize` statistics would tint a grey image cyan), for the top-losses picture."""
    from pathlib import Path

    path = Path(key)
    if path.is_file():
        from PIL import Image, ImageOps

        try:
            with Image.open(path) as img:
                img = ImageOps.exif_transpose(img)
                img.thumbnail((256, 256))
                grey = img.mode in ("L", "LA", "I", "I;16", "1") or _is_grey(img)
                pixels = np.asarray(img.convert("L" if grey else "RGB"), np.float32) / 255.0
                return pixels[..., None] if grey else pixels
        except (OSError, ValueError, SyntaxError):
            pass  # changed or unreadable since training: the model input then
    image = model_input.astype(np.float32)
    lo, hi = data.source.value_range or (0.0, 1.0)
    kind = data.spec.normalization
    if kind == "standardize" and data.normalization_stats:
        mean, std = data.normalization_stats
        image = (image * np.asarray(std, np.float32) + np.asarray(mean, np.float32) - lo) / (hi - lo)
    elif kind in ("none", "standardize"):
        image = (image - lo) / (hi - lo)
    elif kind == "minus_one_one":
        image = (image + 1.0) / 2.0
    elif kind == "scale_0_255":
        image = image / 255.0
    return np.clip(image, 0.0, 1.0)


def _is_grey(img) -> bool:
    """An RGB(A) image whose three colour channels are equal (grey drawings saved as RGBA)."""
    rgb = np.asarray(img.convert("RGB"), np.int16)
    return bool(np.all(rgb[..., 0] == rgb[..., 1]) and np.all(rgb[..., 1] == rgb[..., 2]))


def _suspect_labels(cfg: Config, data: Datasets, record: RunRecord, evaluated: list) -> None:
    suspect = results.suspects(evaluated, data.source.names(), cfg.dataset.suspect_min_probability)
    results.write_suspects(record.run_dir / run_files.SUSPECTS, suspect)
    record.report.metrics["suspect_labels"] = {"count": len(suspect), "file": run_files.SUSPECTS,
                                               "min_probability": cfg.dataset.suspect_min_probability}
    if suspect:
        first = suspect[0]
        log.info("suspect labels: %d eval/test files the model puts in another class with p >= %g "
                 "(suspect_labels.csv); most confident: %s labelled %s, predicted %s %.2f", len(suspect),
                 cfg.dataset.suspect_min_probability, first["path"], first["given_label"],
                 first["predicted_label"], first["probability"])
