"""dataset.task=multi_label: label sets read from a table and checked, a sigmoid head with binary
cross-entropy, iteratively stratified splits, metric types against scikit-learn, thresholds tuned
on eval and served.

The images are real: two or three Fashion-MNIST items (Debian's dataset-fashion-mnist, MIT
licence) pasted on a 56x56 canvas by scripts/fashion_pastes.py, labels = the items' classes."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from safetrain.core.errors import ConfigError
from safetrain.pipelines.sources.table import LabelSets, read_table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import fashion_pastes  # noqa: E402

MULTI = ["dataset.task=multi_label", "trainer.loss=binary_crossentropy", "dataset.label_encoding=multi_hot"]


def _rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def _write(path: Path, rows: list[list[str]]) -> Path:
    with open(path, "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


@pytest.fixture(scope="module")
def pastes(tmp_path_factory) -> Path:
    """240 real composites of 4 Fashion-MNIST classes and their labels.csv (path,labels)."""
    return fashion_pastes.write(tmp_path_factory.mktemp("pastes"), 240, seed=1, classes=4)


def test_label_sets_from_a_separator_json_lists_and_0_1_columns_read_alike(pastes, tmp_path):
    rows = _rows(pastes)[1:11]
    sets = {path: tuple(sorted(labels.split("|"))) for path, labels in rows}
    names = sorted({x for s in sets.values() for x in s})
    root = pastes.parent
    jsonl = tmp_path / "sets.jsonl"
    jsonl.write_text("".join(json.dumps({"image": p, "tags": s.split("|")}) + "\n" for p, s in rows))
    wide = _write(tmp_path / "wide.csv", [["file", *names]] + [[p, *("1" if n in sets[p] else "0" for n in names)]
                                                                 for p, _ in rows])
    read = {
        "separator": read_table(str(pastes), None, None, None, None, sets=LabelSets()),
        "json": read_table(str(jsonl), str(root), None, None, None, sets=LabelSets()),
        "columns": read_table(str(wide), str(root), None, None, None, sets=LabelSets(columns=tuple(names))),
    }
    for how, table in read.items():
        got = {r.rel: r.labels for r in table.rows}
        assert {p: got[p] for p in sets} == sets, how
        assert table.report()["task"] == "multi_label" and table.report()["empty_label_sets"] == 0


def test_empty_unknown_conflicting_and_unreadable_label_sets_are_bad_rows_by_kind(pastes, tmp_path):
    (a, la), (b, lb), (c, _), (d, _), (e, _) = _rows(pastes)[1:6]
    other = next(x for x in ("t-shirt", "trouser", "pullover", "dress") if x not in lb.split("|"))
    table = _write(tmp_path / "t.csv", [["path", "labels"], [a, la], [b, lb], [b, f"{lb}|{other}"], [c, ""],
                                        [d, "t-shirt|unicorn"], [e, "t-shirt||trouser"]])
    read = read_table(str(table), str(pastes.parent), None, None, ["t-shirt", "trouser", "pullover", "dress"],
                      sets=LabelSets())
    kinds = {bad.line: bad.kind for bad in read.bad}
    assert kinds == {3: "conflicting", 4: "conflicting", 5: "empty_label", 6: "unknown_label"}, read.bad
    assert "dataset.allow_empty_labels=true" in next(b.reason for b in read.bad if b.kind == "empty_label")
    assert {r.rel: r.labels for r in read.rows}[e] == ("t-shirt", "trouser")  # an empty part between separators
    allowed = read_table(str(table), str(pastes.parent), None, None, None, sets=LabelSets(allow_empty=True))
    assert allowed.report()["empty_label_sets"] == 1 and {r.rel: r.labels for r in allowed.rows}[c] == ()
    wide = _write(tmp_path / "w.csv", [["path", "cat", "dog"], [a, "1", "maybe"]])
    odd = read_table(str(wide), str(pastes.parent), None, None, None, sets=LabelSets(columns=("cat", "dog")))
    assert [(b.kind, "'maybe'" in b.reason) for b in odd.bad] == [("unknown_label", True)]


def test_a_table_of_label_sets_under_single_label_is_refused_naming_the_task(pastes):
    with pytest.raises(ConfigError) as refused:
        read_table(str(pastes), None, None, None, None)
    assert refused.value.config_key == "dataset.task"
    assert "has label sets: line 2" in refused.value.message and "dataset.task=multi_label" in refused.value.hint


def test_multi_label_metric_types_agree_with_scikit_learn():
    import tensorflow as tf
    from sklearn.metrics import accuracy_score, average_precision_score, f1_score, hamming_loss

    from safetrain.train.metrics import Collection, Totals

    rng = np.random.default_rng(3)
    truth = (rng.random((300, 6)) < [0.5, 0.3, 0.2, 0.1, 0.05, 0.4]).astype(np.int64)
    logits = rng.normal(0, 1.5, truth.shape) + 2.0 * (truth - 0.5)
    collection = Collection(["loss", "map", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"], 6,
                            "multi_label")
    totals = Totals(collection)
    for lo in range(0, 300, 64):  # batches add up: the result comes from the totals
        y, z = tf.constant(truth[lo:lo + 64], tf.float32), tf.constant(logits[lo:lo + 64], tf.float32)
        out = collection.update(y, z, tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(y, z), axis=-1))
        totals.add({k: v.numpy() for k, v in out.items()})
    got = totals.results()
    predicted = (logits >= 0).astype(np.int64)
    assert got["micro_f1"] == pytest.approx(f1_score(truth, predicted, average="micro"))
    assert got["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro", zero_division=0))
    assert got["subset_accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert got["hamming_loss"] == pytest.approx(hamming_loss(truth, predicted))
    probabilities = 1 / (1 + np.exp(-logits))
    exact = np.mean([average_precision_score(truth[:, c], probabilities[:, c]) for c in range(6)])
    assert got["map"] == pytest.approx(exact, abs=0.01)  # 256 bins: scores within a bin count as ties
    with pytest.raises(ValueError, match="no meaning for dataset.task=multi_label"):
        Collection(["loss", "accuracy"], 6, "multi_label")


def test_binary_cross_entropy_is_keras_own_and_positive_weights_scale_the_positives():
    import keras
    import tensorflow as tf

    from safetrain.train.optimizers import binary_crossentropy

    y, z = tf.constant([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]), tf.constant([[0.3, -1.0, 2.0], [1.5, -0.5, 0.0]])
    for smoothing in (0.0, 0.1):
        ours = binary_crossentropy(smoothing)(y, z).numpy()
        theirs = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=smoothing, reduction="none")(y, z)
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)
    p = tf.sigmoid(z).numpy()
    by_hand = -(y.numpy() * np.array([3.0, 1.0, 1.0]) * np.log(p) + (1 - y.numpy()) * np.log(1 - p)).mean(axis=1)
    np.testing.assert_allclose(binary_crossentropy(positive_weights=[3.0, 1.0, 1.0])(y, z).numpy(), by_hand, rtol=1e-5)


def test_thresholds_tuned_on_eval_find_a_rare_label_that_0_5_misses():
    from safetrain.experiment import label_sets

    rng = np.random.default_rng(0)
    truth = np.zeros((400, 2), np.int64)
    truth[:200, 0] = 1
    truth[:20, 1] = 1  # rare: its scores stay low, as a rare label's do
    probabilities = np.stack([np.where(truth[:, 0], rng.uniform(0.5, 1, 400), rng.uniform(0, 0.5, 400)),
                              np.where(truth[:, 1], rng.uniform(0.2, 0.4, 400), rng.uniform(0, 0.25, 400))], 1)
    tuned = label_sets.tune(truth, probabilities)
    assert 0.2 < tuned.values[1] < 0.4 and tuned.how == ["best eval F1"] * 2
    at_half = label_sets.per_label(truth, probabilities, np.full(2, 0.5), ["common", "rare"])
    at_tuned = label_sets.per_label(truth, probabilities, tuned.values, ["common", "rare"])
    assert at_half["rare"]["f1"] == 0.0 and at_tuned["rare"]["f1"] > 0.8
    strict = label_sets.tune(truth, probabilities, target_precision=0.99)
    chosen = probabilities[:, 1] >= strict.values[1]
    assert truth[chosen, 1].mean() >= 0.99 and strict.how[1] == "eval precision >= 0.99"
    empty = label_sets.tune(np.zeros((5, 1), np.int64), np.full((5, 1), 0.3))
    assert empty.values[0] == 0.5 and empty.how == ["no eval positive: 0.5"]


def test_iterative_stratification_gives_every_carved_split_every_label_and_is_repeatable():
    from safetrain.pipelines.sources.folder_splits import carve_label_sets

    rng = np.random.default_rng(5)
    sets = [tuple(sorted(set(rng.choice(8, size=rng.integers(1, 4), p=[.3, .2, .15, .1, .1, .08, .05, .02]))))
            for _ in range(400)]
    bounds = [(0, 80), (80, 90), (90, 100)]
    parts = carve_label_sets(sets, 8, bounds)
    assert parts == carve_label_sets(sets, 8, bounds)
    assert [parts.count(p) for p in range(3)] == pytest.approx([320, 40, 40], abs=6)
    for label in range(8):
        per_part = [sum(1 for s, p in zip(sets, parts) if label in s and p == q) for q in range(3)]
        assert all(per_part), (label, per_part)  # even the rarest (2%: about 8 images)
        assert per_part[0] / sum(per_part) == pytest.approx(0.8, abs=0.1)


def _with_problems(pastes: Path, tmp_path: Path) -> Path:
    """The pastes' table with an image that has no label, a rare label (2 images) that the carve
    must still spread, and the test split fixed by a split column that lacks one label."""
    rows = _rows(pastes)
    header, body = rows[0], rows[1:]
    body[0][1] = ""                                         # no label
    body[1][1] += "|hat"
    body[2][1] += "|hat"                                    # a rare label: 2 images
    return _write(tmp_path / "sets.csv", [header] + body)


@pytest.mark.e2e
def test_a_new_user_with_label_sets_dry_run_then_train_then_predict(pastes, run_main, tmp_path):
    """As a new user would: a CSV of real images and label sets, one image without labels and a
    rare label. The dry run names the empty set (exit 3) and then the label missing from a
    split; a softmax loss is refused before TensorFlow; training reports per-label metrics at
    tuned thresholds; the export serves them and predict prints label sets."""
    table = _with_problems(pastes, tmp_path)
    args = ["dataset=image_table", f"dataset.table={table}", f"dataset.path={pastes.parent}", "dataset.image.height=56", "dataset.image.width=56",
            "dataset.image.channels=1", "model=cnn_small", "trainer.batch_size=16", "trainer.epochs=2",
            "hardware.precision=float32", *MULTI]  # the strict 1e-4 checks below are float32's (bfloat16: 1e-2)
    dry = run_main(*args, "dry_run=true", name="dry")  # one dry run names both problems
    message = dry.report()["error"]["message"]
    assert dry.code == 3 and "has no image of label 'hat'" in message, dry.err  # 2 images, 3 splits
    assert "1 bad table row(s) (empty_label 1; the first: line 2: img00000.png has no 'labels' value" in message
    assert dry.report()["data"]["table"]["bad_rows"]["empty_label"] == 1  # recorded though the source stopped
    softmax = run_main(*args, "trainer.loss=sparse_categorical_crossentropy", name="softmax")
    assert softmax.code == 2 and softmax.report()["error"]["config_key"] == "trainer.loss"

    trained = run_main(*args, "dataset.allow_empty_labels=true", "dataset.allow_missing_classes=true",
                       "dataset.class_weights=balanced", "trainer.export_formats=[saved_model,tflite]", name="trained")
    assert trained.code == 0, trained.err
    report = trained.report()
    metrics = report["metrics"]
    assert metrics["task"] == "multi_label" and report["data"]["table"]["empty_label_sets"] == 1
    weights = report["data"]["positive_weights"]  # negatives over positives on the training split
    assert weights["hat"] > 20 * weights["trouser"] > 0, weights
    for name in ("map", "micro_f1", "macro_f1", "subset_accuracy", "hamming_loss"):
        assert isinstance(metrics[f"test_{name}"], float) and name in metrics["test_at_0.5"], name
    assert set(metrics["per_label"]) == {"t-shirt", "trouser", "pullover", "dress", "hat"}
    assert {"support", "ap", "f1", "threshold"} <= set(metrics["per_label"]["trouser"])
    assert report["data"]["labels"]["cooccurrence_train"], report["data"]["labels"]
    assert (trained.run_dir / "results" / "precision_recall.png").stat().st_size > 0
    assert (trained.run_dir / "results" / "top_losses.png").stat().st_size > 0
    worst = metrics["per_label"]["trouser"]["top_losses"]  # the images it is most wrong about, per label
    assert len(worst) == 3 and all(Path(w["file"]).is_file() and w["given"] in (0, 1) for w in worst)
    signature = json.loads((trained.run_dir / "export" / "signature.json").read_text())
    assert signature["task"] == "multi_label"
    assert signature["thresholds"] == {k: pytest.approx(v["threshold"], abs=1e-4)
                                       for k, v in metrics["thresholds"].items()}
    assert report["export"]["self_check_max_abs_diff"] <= 1e-4  # the served sigmoid is the trained one
    rows = {row["format"]: row for row in report["export"]["parity"]}  # proven on the test files: the same sets
    assert rows["tflite"]["passed"] and rows["tflite"]["max_abs_diff"] <= 1e-4 and rows["tflite"]["agreement"] == 1.0
    assert rows["tflite"]["files"] == report["data"]["counts"]["test"]
    assert report["calibration"]["skipped"].startswith("multi-label")

    pictures = [pastes.parent / row[0] for row in _rows(pastes)[5:8]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for flag in ([], ["--tflite"]):
        proc = subprocess.run([sys.executable, "-m", "safetrain.predict", f"run_dir={trained.run_dir}", *flag,
                               *map(str, pictures)], capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        for picture, line in zip(pictures, proc.stdout.splitlines()):
            shown = line.removeprefix(f"{picture}: ")
            assert shown.startswith("none (most probable: ") or all(
                float(part.rsplit(" ", 1)[1]) >= signature["thresholds"][part.rsplit(" ", 1)[0]] - 1e-3
                for part in shown.split(" | ")), line


def test_the_scaffold_writes_a_multi_label_experiment_for_a_table_of_label_sets_and_its_dry_run_passes(
        pastes, tmp_path):
    """The scaffold proposes multi_label when it sees label sets, and never writes a config its own
    check refuses (`--check dry`: safetrain's dry run on the written experiment)."""
    import yaml

    table = _with_problems(pastes, tmp_path)  # an image with no label, a rare label
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "new_experiment.py"), str(table), "sets",
                           "--images", str(pastes.parent), "--configs", str(tmp_path / "configs"), "--check", "dry"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    written = (tmp_path / "configs" / "experiment" / "sets.yaml").read_text()
    assert "the table has label sets" in proc.stdout, proc.stdout + proc.stderr
    config = yaml.safe_load(written)
    assert config["dataset"]["task"] == "multi_label" and config["dataset"]["label_encoding"] == "multi_hot"
    assert config["dataset"]["allow_empty_labels"] is True and config["trainer"]["loss"] == "binary_crossentropy"
    assert "# labels (5; images per label): dress" in written
    # the rare label (2 images) cannot be in every carved split: allowed, and said
    assert config["dataset"]["allow_missing_classes"] is True and "hat (2)" in proc.stdout
    assert "1 image(s) have no label" in proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.e2e
def test_a_multi_label_run_stopped_and_resumed_ends_with_the_same_weights(pastes, tmp_path):
    """The recipe's stochastic pieces (shuffles, flips and shifts, dropout, EMA) keep exact resume
    for label sets too: 8 steps, then a rerun in the same run dir to 16, equal to 16 in one go (a
    constant rate: a cosine planned over 8 steps is another schedule than one over 16). In fresh
    processes: op determinism, once on, stays on in a process."""
    args = ["+experiment=multi_label_table", f"dataset.table={pastes}", f"dataset.cache_dir={tmp_path / 'cache'}",
            "dataset.allow_empty_labels=true", "dataset.allow_missing_classes=true", "trainer.deterministic=true",
            "trainer.batch_size=16", "trainer.export=false", "hardware.precision=float32",
            "trainer.checkpoint_every_steps=4", "trainer.log_every_steps=4", "trainer.steps_per_loop=1",
            "optimizer.schedule=constant", "optimizer.warmup_epochs=0", "trainer.hparams=false"]

    def run(name: str, steps: int) -> dict:
        proc = subprocess.run([sys.executable, "-m", "safetrain", f"hydra.run.dir={tmp_path / name}", *args,
                               f"trainer.max_steps={steps}"], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads((tmp_path / name / "report.json").read_text())

    whole = run("whole", 16)
    first, again = run("parts", 8), run("parts", 16)
    assert first["steps"] == 8 and again["steps"] == 16
    assert again["model"]["weights_sha256"] == whole["model"]["weights_sha256"]
