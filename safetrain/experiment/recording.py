"""Each setup result and the training's outcome, written once: report.json, TensorBoard, the log,
and the diagnosis context (safetrain.core.run_state) kept current for errors that come later."""

from __future__ import annotations

import hashlib
import logging
import math

import keras
import numpy as np

from safetrain.config.schema import BadExamplePolicy, Config
from safetrain.core.errors import ErrorKind, GraphError, Phase
from safetrain.core.run_state import Context, LayerRef
from safetrain.experiment import results, visuals
from safetrain.experiment.setup import Hardware
from safetrain.models.build import layer_name
from safetrain.models.shapes import ModelPlan
from safetrain.pipelines.build import Datasets
from safetrain.record.run_record import RunRecord
from safetrain.train.env_report import env_text
from safetrain.train.loop import TrainLoop
from safetrain.train.task import Task
from safetrain.train.throughput import WallTime

log = logging.getLogger("safetrain")


def record_hardware(record: RunRecord, cfg: Config, hw: Hardware, context: Context) -> None:
    """The devices and strategy (and the table's precision until `record_precision` settles it)."""
    batch = cfg.trainer.batch_size
    devices = [d.describe() for d in hw.devices]
    record.report.hardware = {
        "devices": devices, "precision_policy": hw.policy, "precision_reason": hw.reason,
        "strategy": _strategy_name(hw.strategy), "replicas": hw.replicas, "global_batch_size": batch,
        "per_replica_batch_size": batch // hw.replicas, "cluster": hw.cluster.describe() if hw.cluster else None}
    context.precision, context.batch_size = hw.policy, batch
    context.device = devices[-1] if devices else None


def record_precision(record: RunRecord, cfg: Config, hw: Hardware, trial, context: Context) -> None:
    """The precision the run trains in, why, and the trial that measured it (if any)."""
    hardware, batch = record.report.hardware, cfg.trainer.batch_size
    hardware.update(precision_policy=hw.policy, precision_reason=hw.reason,
                    precision_trial=trial.record() if trial is not None else None)
    if trial is not None:
        log.info("precision trial (%s): %d steps of this model and batch per candidate\n%s",
                 "cached" if trial.cached else f"{trial.seconds:.1f} s", trial.steps, trial.table())
    log.info("hardware: %s | precision %s (%s) | %s x%d | batch %d global, %d per replica",
             ", ".join(hardware["devices"]), hw.policy, hw.reason, hardware["strategy"], hw.replicas,
             batch, batch // hw.replicas)
    record.text("env/report", env_text(record.report.versions, hw.devices, hardware))
    if cfg.trainer.hparams and not cfg.dry_run and not cfg.trainer.lr_find:  # results to compare, not checks
        record.hparams(_hparams(cfg, hw.policy, hw.replicas))
    context.precision = hw.policy


def record_data(record: RunRecord, cfg: Config, data: Datasets) -> None:
    skip = cfg.dataset.on_bad_example is BadExamplePolicy.skip
    record.report.data["counts"] = data.counts
    record.report.data["skipped"] = len(data.bad) if skip else 0  # with error, bad examples stop the run
    record.report.data["sampling"] = data.sampling
    log.info("pipeline:\n  %s", "\n  ".join(data.describe().splitlines()))
    record.text("pipeline/spec", data.describe())
    first_images, _ = next(iter(data.train_plain(1).take(1)))
    record.image("inputs/after_enforcement", visuals.mosaic(first_images.numpy()[:32].astype("float32")))
    if data.augmentation != "none":  # the same batch as the model sees it in training
        augmented, _ = next(iter(data.train_epoch(1).take(1)))
        record.image("inputs/after_augmentation", visuals.mosaic(augmented.numpy()[:32].astype("float32")))
    for bad in data.bad:
        record.event(phase=Phase.data, kind=ErrorKind.bad_example, message=bad.reason, example=bad.key,
                     config_key="dataset.on_bad_example",
                     hint="skipped" if skip else "")
    _record_findings(record, cfg, data)


def record_class_weights(record: RunRecord, cfg: Config, data: Datasets, weights: list[float] | None) -> None:
    if not weights:
        return
    names_ = data.source.names()
    what = "positive_weights" if data.source.multi_label else "class_weights"  # multi-label: per label positives
    record.report.data[what] = dict(zip(names_, weights))
    how = cfg.dataset.class_weights if isinstance(cfg.dataset.class_weights, str) else "a list"
    log.info("%s (dataset.class_weights: %s): %s", what.replace("_", " "), how,
             ", ".join(f"{name} {w:.3g}" for name, w in zip(names_, weights)))


_FINDING_KEYS = {ErrorKind.duplicate: "dataset.near_duplicate_radius", ErrorKind.leakage: "dataset.on_leakage",
                 ErrorKind.missing_class: "dataset.allow_missing_classes"}


def _record_findings(record: RunRecord, cfg: Config, data: Datasets) -> None:
    """What an image folder's (or table's) scan found beyond bad examples: the scan's work, the
    table's rows, duplicates, groups kept whole, leakage."""
    for key in ("table", "labels", "scan", "duplicates", "groups", "selected"):
        if key in data.report:
            record.report.data[key] = data.report[key]
    record.report.data["splits"] = data.splits
    for i, event in enumerate(data.events):
        kind = ErrorKind(event.kind)
        record.event(phase=Phase.data, kind=kind, message=event.message, example=event.key, other_example=event.other,
                     config_key=_FINDING_KEYS[kind], sync=i == len(data.events) - 1)
    dup = data.report.get("duplicates")
    if dup and dup["cross_split"]:
        first = next(e.message for e in data.events if e.kind == ErrorKind.leakage)
        action = ("dropped from eval/test" if cfg.dataset.on_leakage.value == "drop_from_eval"
                  else "kept (dataset.on_leakage=warn: set drop_from_eval or error)")
        log.warning("warning: %d image(s) appear in two splits (leakage), %s; all in errors.jsonl; first: %s",
                    dup["cross_split"], action, first)
    cut = data.report.get("groups", {}).get("crossing_fixed")
    if cut:
        first = next(e.message for e in data.events if e.kind == ErrorKind.leakage and "in group" in e.message)
        log.warning("warning: %d group(s) have files in two of the splits you fixed (leakage); all in errors.jsonl; "
                    "first: %s", cut, first)
    if dup and dup["exact"] + dup["near"] - dup["cross_split"] - dup["conflicting_labels"] > 0:
        log.info("duplicates within a split: %d exact, %d near (pHash radius %s of 256, confirmed on the pixels), "
                 "listed in errors.jsonl", dup["exact"] - dup["conflicting_labels"], dup["near"], dup["near_radius"])


def record_plan(record: RunRecord, cfg: Config, plan: ModelPlan) -> None:
    log.info("model %s:\n%s", cfg.model.name, plan.table())
    record.text("model/summary", plan.table())


def record_model(record: RunRecord, cfg: Config, task: Task, policy: str, context: Context) -> None:
    params = task.model.count_params()  # counted on the built model: custom layers' are unknown to the plan
    record.report.model = {"name": cfg.model.name, "params": params, "flops_per_example": task.plan.total_flops}
    if task.plan.backbone is not None:
        b = task.plan.backbone
        record.report.model["backbone"] = {
            "name": b.entry.name, "weights": b.weights, "pooling": b.pooling, "state": b.state(),
            "preprocessing": b.entry.preprocessing, "normalization": cfg.dataset.image.normalization.value,
            "flops_note": "recorded at 224x224 (TensorFlow profiler), scaled by the input's area"}
    log.info("optimizer: %s", task.recipe)
    record.text("optimizer/recipe", task.recipe)
    context.params = params
    context.activation_bytes_per_example = _activation_bytes(task.plan, policy)
    context.layers = _layer_refs(task.plan, task.model)


def record_loop(record: RunRecord, loop: TrainLoop, evaluation, model, wall: WallTime) -> None:
    """What training ended with, stopped or not: position, metrics, throughput, the final weights."""
    report, r = record.report, loop.result
    report.model["weights_sha256"] = weights_digest(model)
    report.steps, report.epochs = r.steps, r.epochs
    report.time_to_first_step_s = r.time_to_first_step_s
    report.metrics.update({"train_loss": r.train_loss, f"train_{r.train_headline}": r.train_accuracy})
    if evaluation is not None:  # every eval metric, by name: eval_loss, eval_accuracy, eval_macro_f1, ...
        report.metrics.update({f"eval_{name}": value for name, value in evaluation.results.items()})
    report.throughput = loop.timer.summary()
    # What the user got: every example trained over the seconds of the training epochs (each epoch's
    # start, tracing, logging and periodic checkpoints included; evaluation and epoch-end saves not).
    report.throughput["effective_examples_per_sec"] = (
        round(r.examples / r.train_seconds, 1) if r.examples and r.train_seconds > 0 else None)
    parts = {"epoch_setup": r.epoch_setup_seconds, "first_calls": r.first_call_seconds,
             "steady_calls": r.steady_call_seconds, "actions": r.action_seconds}
    report.throughput["train_seconds"] = {**{k: round(v, 3) for k, v in parts.items()},
                                          "other": round(max(0.0, r.train_seconds - sum(parts.values())), 3)}
    report.throughput["steps_per_loop"] = r.steps_per_loop
    report.throughput["steps_per_loop_reason"] = r.steps_per_loop_reason
    wall.add("train", r.train_seconds)
    record_wall(record, wall)
    rate = report.throughput["examples_per_sec"]
    # Training costs about 3x the forward pass (forward + two backward matmuls per layer): an
    # estimate for comparing machines, not a measurement of the kernels.
    report.throughput["train_flops_per_sec"] = (
        round(3 * report.model["flops_per_example"] * rate) if rate and report.model else None)
    report.data["skipped_steps"] = r.skipped_steps


def record_wall(record: RunRecord, wall: WallTime) -> None:
    """report.json throughput.wall_seconds: where the run's time went so far. start_up is from the
    run's start to the first train call (scan included, which is also given alone); `other` is
    what the named phases leave (epoch-end checkpoints, TensorBoard writes, restoring)."""
    seconds = dict(wall.seconds)
    total = wall.since_start()
    named = sum(v for k, v in seconds.items() if k != "scan")
    out = {k: round(seconds.get(k, 0.0), 3) for k in ("start_up", "scan", "train", "eval", "test", "results", "export")}
    out.update(other=round(max(0.0, total - named), 3), total=round(total, 3))
    record.report.throughput["wall_seconds"] = out


def record_export(record: RunRecord, info: dict) -> None:
    record.report.export = info
    log.info("exported: %s (self-check on test images: max |diff| %s)", info["path"], info["self_check_max_abs_diff"])
    for fmt in ("tflite", "tflite_int8", "onnx"):
        if (info.get(fmt) or {}).get("path") is None and fmt in info:
            log.info("  %s: not exported (%s)", fmt, info[fmt].get("error"))
    for row in info.get("parity", []):
        log.info("  %-11s %8.1f KB  agreement %.4f  max |dp| %.2g  accuracy %.4f  worst class drop %.4f  "
                 "%.2f ms/image  %s", row["format"], row["bytes"] / 1e3, row["agreement"], row["max_abs_diff"],
                 row["accuracy"], row["worst_class_drop"], row["latency_ms"], "ok" if row["passed"] else "FAILED")
    if info.get("parity"):
        log.info("  (proven on %d test files through each format's serving path: report.json export.parity)",
                 info["parity"][0]["files"])
    if info.get("serving_resize_from") == "trainer.serving_resize":
        h, w = info["model_input"].split("x")[:2]
        log.info("serving: images of another size than %sx%s are %s (trainer.serving_resize; error refuses them)",
                 h, w, {"bilinear": "resized (bilinear)", "pad_or_crop": "padded or cropped",
                        "error": "refused, naming the file and its size"}[info["serving_resize"]])


def parity_error(failed: list[dict]) -> GraphError:
    """Exit 4 for exported formats that do not serve what was tested, naming the first files
    (formats that fail on the same files are named together)."""
    groups: dict[tuple, list[dict]] = {}
    for row in failed:
        groups.setdefault(tuple(row["differing_files"][:3]), []).append(row)
    said = "; ".join(f"{', '.join(r['format'] for r in rows)} ({'; '.join(sorted({r['gate'] for r in rows}))}) on "
                     f"{', '.join(files)}" for files, rows in groups.items())
    return GraphError(f"the exported model disagrees with the trained model on the test files: {said}. The training "
                      f"result, report.json (export.parity) and every export file are kept.",
                      hint="run `python -m safetrain.predict run_dir=RUN --format NAME FILE` on the files named to "
                           "see the difference; leave that format out of trainer.export_formats to export the rest",
                      kind=ErrorKind.export_parity, config_key="trainer.export_formats")


def final_summary(record: RunRecord) -> None:
    report = record.report
    m, tp = report.metrics, report.throughput
    if m.get("task") == "multi_label":
        scored = m.get("test_map") is not None
        acc = (f"mAP {m['test_map']:.4f}, micro F1 {m['test_micro_f1']:.4f}, subset accuracy "
               f"{m['test_subset_accuracy']:.4f} at the tuned thresholds (micro F1 {m['test_at_0.5']['micro_f1']:.4f} "
               f"at 0.5)") if scored else "n/a"
    else:
        acc = "accuracy " + (f"{m['test_accuracy']:.4f}" if m["test_accuracy"] is not None else "n/a")
        if m.get("test_macro_f1") is not None:
            acc += f" (macro F1 {m['test_macro_f1']:.4f})"
    effective = tp.get("effective_examples_per_sec")
    rate = f"{effective:,.0f} examples/s" if effective else "n/a examples/s"
    if tp["examples_per_sec"]:
        rate += f" (training epochs; {tp['examples_per_sec']:,.0f} median steady-state step)"
    skipped = report.data.get("skipped", 0)
    log.info("done: test %s | %s | %d step%s, %d epoch%s%s",
             acc, rate, report.steps, "" if report.steps == 1 else "s", report.epochs,
             "" if report.epochs == 1 else "s",
             f" | {skipped} bad examples skipped (errors.jsonl)" if skipped else "")
    if m.get("per_label"):
        rare = sorted(m["per_label"].items(), key=lambda item: (item[1]["support"], item[0]))[:3]
        log.info("rarest labels (test): %s", ", ".join(
            f"{name} F1 {r['f1']:.3f} at threshold {r['threshold']:.2f} ({r['support']} images)" for name, r in rare))
    if m.get("per_class"):
        worst = results.worst_classes(m["per_class"])
        log.info("worst classes (test F1): %s", ", ".join(
            f"{name} {r['f1']:.3f} (precision {r['precision']:.3f}, recall {r['recall']:.3f}, {r['support']} examples)"
            for name, r in worst))
    # The run dir, not its tb/: with tb/ itself as the logdir, the HParams table shows the run
    # with empty metric columns (its session and its scalars are then both the run ".").
    log.info("tensorboard --logdir %s", record.run_dir)


def weights_digest(model) -> str:
    """SHA-256 of every model variable's bytes, in order: equal digests mean identical weights
    (compares workers of one run, or an interrupted-and-resumed run with an uninterrupted one)."""
    digest = hashlib.sha256()
    for variable in model.variables:
        digest.update(variable.path.encode())
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable.value)).tobytes())
    return digest.hexdigest()


def _layer_refs(plan: ModelPlan, model) -> dict[str, LayerRef]:
    """Keras layer name -> the config entry it came from, for naming layers in diagnoses."""
    refs = {}
    specs = {layer_name(spec): spec for spec in plan.layers}
    for layer in model.layers[1:-1]:
        spec = specs.get(layer.name)
        if spec is not None:
            refs[layer.name] = LayerRef(spec.index, spec.label(), spec.key, type(layer).__name__)
        elif plan.backbone is not None:  # the one nested model: the backbone
            refs[layer.name] = LayerRef(-1, plan.backbone.label(), "model.backbone.name", type(layer).__name__)
    head = model.layers[-1]
    refs[head.name] = LayerRef(len(plan.layers), f"head dense {plan.num_classes}", "dataset.num_classes", "Dense")
    return refs


def _activation_bytes(plan: ModelPlan, policy: str) -> int:
    """Forward activations of one example, all kept for the backward pass (an estimate for OOM hints)."""
    width = 2 if policy.startswith("mixed") else 4
    return width * sum(math.prod(d for d in row.shape if d) for row in plan.rows)


def _hparams(cfg: Config, policy: str, replicas: int) -> dict:
    t, o = cfg.trainer, cfg.optimizer
    return {"experiment": cfg.name, "dataset": cfg.dataset.name, "model": cfg.model.name,
            "optimizer": o.name, "learning_rate": o.learning_rate, "schedule": o.schedule.value,
            "weight_decay": o.weight_decay, "label_smoothing": t.label_smoothing, "batch_size": t.batch_size,
            "epochs": t.epochs, "seed": t.seed, "precision": policy, "replicas": replicas,
            "jit_compile": t.jit_compile, "backbone": cfg.model.backbone.name or "none"}


def _strategy_name(strategy) -> str:
    name = type(strategy).__name__
    if name == "CollectiveAllReduceStrategy":  # the class behind tf.distribute.MultiWorkerMirroredStrategy
        return "MultiWorkerMirroredStrategy"
    return "default (one device)" if name.startswith("_Default") else name
