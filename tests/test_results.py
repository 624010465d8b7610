"""Results people act on: the sweep summary (best job, the varied value plotted), the labelled
confusion matrix, top losses, per-class report and suspect labels, drawn with matplotlib and
computed with scikit-learn, read back from the files a run writes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import ROOT


def _sweep_module():
    spec = importlib.util.spec_from_file_location("sweep_report", ROOT / "scripts" / "sweep_report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _job(sweep: Path, i: int, overrides: list[str], eval_acc, test_acc, code: int = 0) -> None:
    job = sweep / str(i)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    report = {"status": "ok" if code == 0 else "failed", "exit_code": code,
              "error": None if code == 0 else {"kind": "numerics"}, "hardware": {}, "throughput": {},
              "metrics": {"eval_accuracy": eval_acc, "test_accuracy": test_acc}}
    (job / "report.json").write_text(json.dumps(report))


def test_the_sweep_summary_picks_the_best_job_on_eval_and_plots_the_one_varied_value(tmp_path):
    sweep = tmp_path / "sweep"
    # job 1 has the best *test* accuracy but not the best eval: the summary must not choose on test
    for i, (lr, ev, te, code) in enumerate([("0.0001", 0.80, 0.79, 0), ("0.001", 0.90, 0.95, 0),
                                            ("0.01", 0.93, 0.91, 0), ("0.1", None, None, 5)]):
        _job(sweep, i, ["+debug=tiny", f"optimizer.learning_rate={lr}"], ev, te, code)
    module = _sweep_module()
    found = module.rows(sweep)
    assert module.best(found)["job"] == 2
    assert module.varied(found) == {"optimizer.learning_rate": ["0.0001", "0.001", "0.01", "0.1"]}
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "sweep_report.py"), str(sweep)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1  # a job failed
    assert "best job: 2 (eval accuracy 0.9300, test accuracy 0.91, chosen on eval): +debug=tiny " \
           "optimizer.learning_rate=0.01" in out.stdout
    picture = sweep / "sweep_optimizer.learning_rate.png"
    assert f"plot: {picture}" in out.stdout
    import matplotlib.image

    pixels = matplotlib.image.imread(picture)
    assert pixels.shape[:2] == (400, 600) and pixels[..., :3].std() > 0.05  # a drawn plot, not a blank canvas
    # two varied keys: no plot (which one would the x axis be?)
    _job(sweep, 4, ["+debug=tiny", "optimizer.learning_rate=0.01", "trainer.batch_size=64"], 0.5, 0.5)
    assert module.plot(module.rows(sweep), sweep) is None


def _noisy_folder(root: Path) -> Path:
    """Three colour classes; six blue images filed under red (given label red, clearly blue)."""
    from PIL import Image

    rng = np.random.default_rng(3)
    colours = {"red": (210, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 210)}
    for name in colours:
        (root / name).mkdir(parents=True)
    for name, colour in colours.items():
        for i in range(40):
            pixels = rng.integers(0, 80, (24, 24, 3)).astype(np.uint8)
            y, x = rng.integers(0, 12, 2)
            pixels[y:y + 12, x:x + 12] = colour
            target = root / ("red" if name == "blue" and i < 6 else name)
            Image.fromarray(pixels).save(target / (f"mislabelled_blue_{i}.png" if target.name != name else f"{i}.png"))
    return root


@pytest.mark.e2e
def test_an_image_folder_run_lists_its_mislabelled_files_as_suspects_and_shows_its_mistakes(run_main, tmp_path):
    import csv

    from conftest import read_tensorboard

    root = _noisy_folder(tmp_path / "colours")
    result = run_main("dataset=image_folder", f"dataset.path={root}", "dataset.image.height=24",
                      "dataset.image.width=24", "trainer.epochs=12", "trainer.batch_size=16", "trainer.keep_best=false",
                      "dataset.splits.train='train[:50%]'", "dataset.splits.eval='train[50%:75%]'",
                      "dataset.splits.test='train[75%:]'")
    assert result.code == 0, result.err
    with open(result.run_dir / "suspect_labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows, "no suspects listed"
    assert all("mislabelled_blue_" in r["path"] for r in rows), rows  # only the planted mistakes, nothing else
    assert all(r["given_label"] == "red" and r["predicted_label"] == "blue" for r in rows)
    assert {r["split"] for r in rows} <= {"eval", "test"}
    assert [float(r["probability"]) for r in rows] == sorted((float(r["probability"]) for r in rows), reverse=True)
    assert all(float(r["probability"]) >= 0.8 for r in rows)
    report = result.report()
    assert report["metrics"]["suspect_labels"] == {"count": len(rows), "file": "suspect_labels.csv",
                                                   "min_probability": 0.8}
    assert report["metrics"]["per_class"]["classes"]["red"]["recall"] < 1.0  # the planted ones count as errors
    worst = next(line for line in result.err.splitlines() if "worst classes (test F1):" in line)
    assert worst.index("red") < worst.index("green") and worst.index("blue") < worst.index("green")
    assert "suspect labels: " in result.err
    _, texts = read_tensorboard(result.run_dir / "tb")
    assert "test/top_losses" in texts and "test/confusion_matrix" in texts  # images are tensor events too


def test_per_class_report_suspects_and_top_losses_from_known_predictions():
    from safetrain.experiment import results

    names = ["cat", "dog", "fox"]
    probabilities = np.array([[0.9, 0.05, 0.05],   # cat, right
                              [0.1, 0.85, 0.05],   # cat, called dog surely -> suspect
                              [0.2, 0.7, 0.1],     # dog, right
                              [0.6, 0.3, 0.1],     # dog, called cat unsurely -> not a suspect at 0.8
                              [0.05, 0.9, 0.05]])  # fox, called dog surely -> suspect; fox never predicted
    pred = results.Predictions("test", np.array([0, 0, 1, 1, 2]), probabilities, ["a", "b", "c", "d", "e"])
    report = results.per_class_report(pred, names)
    assert report["classes"]["cat"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert report["classes"]["fox"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}  # not NaN
    assert report["macro_avg"]["support"] == 5
    assert [name for name, _ in results.worst_classes(report)] == ["fox", "dog", "cat"]
    rows = results.suspects([pred], names, 0.8)
    assert [(r["path"], r["given_label"], r["predicted_label"], r["probability"]) for r in rows] == [
        ("e", "fox", "dog", 0.9), ("b", "cat", "dog", 0.85)]
    assert results.top_loss_indices(pred, 2).tolist() == [4, 1]  # -log 0.05 > -log 0.1
    picture = results.confusion_figure(results.confusion(pred, 3), names)
    assert picture.shape[2] == 3 and 0.0 <= picture.min() and picture.max() <= 1.0 and picture.std() > 0.05
    # A model whose weights overflowed predicts NaN: those examples are the worst, in one order
    # (the top-losses grid picks its images by that same order as the batches go).
    broken = results.Predictions("test", np.array([0, 1, 2]), np.array([[0.9, 0.05, 0.05], [np.nan] * 3,
                                                                        [0.2, 0.2, 0.6]]), ["a", "b", "c"])
    assert np.isfinite(broken.losses).all() and results.top_loss_indices(broken, 3).tolist() == [1, 2, 0]


def test_the_range_test_reads_a_known_curve_without_lag_and_stops_when_the_loss_blows_up():
    from safetrain.experiment import lr_find

    lrs = lr_find.rates(1e-6, 1.0, 100)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0)
    assert np.allclose(np.diff(np.log(lrs)), np.log(1e6) / 99)  # exponential
    # a valley in log(rate) with its bottom at 1e-2, plus noise
    rng = np.random.default_rng(0)
    losses = (np.log10(lrs) + 2.0) ** 2 / 4 + 1.0 + rng.normal(0, 0.02, len(lrs))
    points = lr_find.suggest(lrs, losses)
    assert 10 ** -2.3 < points["lowest"] < 10 ** -1.7  # the centered average does not lag
    assert points["suggested"] == pytest.approx(points["lowest"] / 10)
    assert points["steepest"] < points["lowest"]
    # the stop: a loss that explodes after step 30 ends the test there
    calls = []

    def step(rate):
        calls.append(rate)
        return 1.0 if len(calls) <= 30 else 50.0

    used, seen = lr_find.range_test(step, lrs)
    assert 30 < len(used) < 40 and len(calls) == len(used) and seen[:30] == [1.0] * 30
    assert lr_find.range_test(lambda rate: None, lrs) == ([], [])  # a non-finite first step: nothing to read


@pytest.mark.e2e
def test_lr_find_writes_its_curve_and_suggestion_and_puts_the_initial_weights_back(train):
    result = train("trainer.lr_find=true", "trainer.lr_find_steps=40", "trainer.max_steps=null")
    assert result.code == 0, result.err
    found = result.report()["lr_find"]
    assert 10 <= found["steps"] <= 40 and found["initial_weights_restored"] is True  # fewer: it diverged first
    assert 1e-7 <= found["suggested_learning_rate"] < found["lowest_loss_learning_rate"] <= 10
    assert found["override"] == f"optimizer.learning_rate={found['suggested_learning_rate']:.2g}"
    curve = json.loads((result.run_dir / "lr_find.json").read_text())
    assert len(curve["learning_rates"]) == len(curve["losses"]) == found["steps"]
    assert curve["epochs_read"] >= 2  # 8 batches an epoch: the test read on into the next epochs
    assert (result.run_dir / "lr_find.png").stat().st_size > 10_000
    assert "Suggested, a tenth of the lowest:\n  optimizer.learning_rate=" in result.err
    assert not (result.run_dir / "checkpoints").exists() or not any((result.run_dir / "checkpoints").iterdir())
    assert result.report()["steps"] == 0  # nothing was trained


def test_top_losses_show_a_grey_drawing_as_the_file_looks_not_its_standardized_tint(hand_drawn):
    """Standardized per channel, a grey RGBA drawing's model input is tinted (cyan, where the
    channels' statistics differ); the picture shows the file's own grey pixels."""
    from types import SimpleNamespace

    from PIL import Image

    from safetrain.experiment.analysis import as_it_looks

    path = sorted((hand_drawn / "triangle").glob("*.png"))[0]
    grey = np.asarray(Image.open(path).convert("L"), np.float32) / 255.0
    mean, std = [240.0, 200.0, 220.0], [40.0, 60.0, 50.0]
    model_input = (np.repeat(grey[..., None] * 255.0, 3, -1) - mean) / std
    data = SimpleNamespace(spec=SimpleNamespace(normalization="standardize"), normalization_stats=(mean, std),
                           source=SimpleNamespace(value_range=(0.0, 255.0)))
    shown = as_it_looks(model_input, str(path), data)
    assert shown.shape == grey.shape + (1,) and np.allclose(shown[..., 0], grey)
    undone = as_it_looks(model_input, "test#3", data)  # not a file: the normalization is undone
    assert np.allclose(undone[..., 0], undone[..., 1], atol=1e-5) and np.allclose(undone[..., 0], grey, atol=1e-5)
