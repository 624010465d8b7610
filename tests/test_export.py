"""The trained model in use: export with input enforcement, predict, and the pictures in TensorBoard."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT
from safetrain.experiment import visuals

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def test_mosaic_confusion_matrix_and_per_class_accuracy():
    images = np.stack([np.full((4, 5, 1), i, np.float32) for i in range(10)])
    images[:, 0, 0, 0] = -1.0  # each image gets its own display range
    grid = visuals.mosaic(images, columns=4)
    assert grid.shape == (3 * 5 + 1, 4 * 6 + 1, 3) and grid.min() >= 0 and grid.max() <= 1
    from safetrain.experiment import results

    pred = results.Predictions("test", np.array([0, 0, 1, 1, 2]), np.eye(3)[[0, 1, 1, 1, 0]], ["k"] * 5)
    matrix = results.confusion(pred, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert visuals.per_class_accuracy(matrix).tolist() == [0.5, 1.0, 0.0]
    assert "| **b** | 0 | 2 | 0 | 1.000 |" in visuals.matrix_text(matrix, ["a", "b", "c"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tfds_dir):
    run_dir = tmp_path_factory.mktemp("export") / "run"
    proc = subprocess.run([sys.executable, "-m", "safetrain", "+debug=tiny", "trainer.export=true",
                           "trainer.export_formats=[saved_model,keras,tflite]",
                           "trainer.max_steps=24", "trainer.epochs=3", f"hydra.run.dir={run_dir}",
                           f"dataset.data_dir={tfds_dir}"], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return run_dir


@pytest.mark.e2e
def test_the_export_agrees_with_training_when_loaded_in_a_fresh_process(trained):
    report = json.loads((trained / "report.json").read_text())
    tolerance = report["export"]["self_check_tolerance"]  # 1e-4 in float32, 1e-2 under bfloat16
    assert report["export"]["self_check_max_abs_diff"] <= tolerance
    assert report["export"]["classes"] == [str(i) for i in range(10)]
    expected = json.loads((trained / "export" / "samples" / "expected.json").read_text())
    files = [str(trained / "export" / "samples" / f) for f in expected["files"]]
    fresh = subprocess.run([sys.executable, "-c", "import json, sys; from pathlib import Path; "
                            "from safetrain.predict import probabilities_of; "
                            "print(json.dumps(probabilities_of(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])))",
                            str(trained), *files], capture_output=True, text=True, env=ENV, timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    served = np.array(json.loads(fresh.stdout.strip().splitlines()[-1]))
    assert len(files) == 8
    np.testing.assert_allclose(served, np.array(expected["probabilities"]), atol=tolerance)


@pytest.mark.e2e
def test_the_keras_file_loads_in_safe_mode_with_the_exported_weights(trained):
    report = json.loads((trained / "report.json").read_text())["export"]
    assert report["keras_file"] == str(trained / "export" / "model.keras")
    fresh = subprocess.run([sys.executable, "-c", "import sys, keras; from safetrain.experiment.export import arrays_digest; "
                            "m = keras.saving.load_model(sys.argv[1], safe_mode=True, compile=False); "
                            "print(arrays_digest(m.get_weights()))", report["keras_file"]],
                           capture_output=True, text=True, env=ENV, timeout=120)
    assert fresh.returncode == 0, fresh.stderr
    assert fresh.stdout.strip().splitlines()[-1] == report["keras_weights_sha256"]


@pytest.mark.e2e
def test_predict_classifies_good_files_and_names_each_bad_one(trained, tmp_path):
    from PIL import Image

    good = trained / "export" / "samples" / "test_0.png"
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    rgb = tmp_path / "color.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(rgb)
    big = tmp_path / "big.png"  # any size is resized (the digits config allows bilinear)
    Image.fromarray(np.zeros((50, 30), np.uint8)).save(big)
    proc = subprocess.run([sys.executable, "-m", "safetrain.predict", f"run_dir={trained}", "top_k=2",
                           str(good), str(text), str(rgb), str(big), str(tmp_path / "missing.png")],
                          capture_output=True, text=True, env=ENV, timeout=120)
    assert proc.returncode == 3, proc.stderr
    lines = dict(line.split(": ", 1) for line in proc.stdout.strip().splitlines())
    assert lines[str(good)].count("|") == 1 and "error" not in lines[str(good)]
    assert "error" not in lines[str(big)]
    assert lines[str(text)].startswith("error: not an image TensorFlow can decode")
    assert lines[str(rgb)] == ("error: the image is 8x8 with 3 channel(s); the model takes 28x28 with 1 (exported "
                               "with dataset.channel_policy=error)")
    assert lines[str(tmp_path / "missing.png")] == "error: No such file or directory"
    assert "3 of 5 files could not be classified" in proc.stderr


def test_predict_without_an_export_is_a_clear_usage_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "safetrain.predict", f"run_dir={tmp_path}", "x.png"],
                          capture_output=True, text=True, env=ENV, timeout=60)
    assert proc.returncode == 2 and "has no export/" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.e2e
def test_tensorboard_shows_the_inputs_the_labelled_confusion_matrix_top_losses_and_the_per_class_report(trained):
    import tensorflow as tf
    from tensorboard.backend.event_processing.event_accumulator import TENSORS, EventAccumulator

    acc = EventAccumulator(str(trained / "tb"), size_guidance={TENSORS: 0})
    acc.Reload()
    # matplotlib figures: 10 classes -> two 7.5-inch panels at 80 dpi; 15 top losses in 3 rows of 5
    for tag, size in (("inputs/after_enforcement", None), ("test/confusion_matrix", (600, 1200)),
                      ("test/top_losses", (864, 1280))):
        width, height, png = tf.make_ndarray(acc.Tensors(tag)[-1].tensor_proto)
        image = tf.io.decode_png(png).numpy()
        assert image.shape[2] == 3 and image.std() > 0
        if size:
            assert (int(height), int(width)) == size
    table = tf.make_ndarray(acc.Tensors("test/confusion_table")[-1].tensor_proto).item().decode()
    assert table.startswith("| true \\ predicted | 0 | 1 |") and table.count("\n") == 11
    classes = [t for t in acc.Tags()["tensors"] if t.startswith("test_class_accuracy/")]
    assert len(classes) == 10
    report = json.loads((trained / "report.json").read_text())
    assert set(report["metrics"]["test_class_accuracy"]) == {str(i) for i in range(10)}
    per_class = report["metrics"]["per_class"]
    assert set(per_class["classes"]) == {str(i) for i in range(10)}
    assert sum(r["support"] for r in per_class["classes"].values()) == per_class["macro_avg"]["support"]
    for name, r in per_class["classes"].items():  # recall is the per-class accuracy
        assert r["recall"] == round(report["metrics"]["test_class_accuracy"][name] or 0.0, 4)
    text = tf.make_ndarray(acc.Tensors("test/per_class")[-1].tensor_proto).item().decode()
    assert text.startswith("| class | precision | recall | F1 | support |") and "**macro avg**" in text
    assert (trained / "results" / "confusion_matrix.png").stat().st_size > 10_000
    assert (trained / "results" / "top_losses.png").stat().st_size > 10_000
    assert not (trained / "suspect_labels.csv").exists()  # digits: no files to point at


@pytest.mark.e2e
def test_the_tflite_export_agrees_with_the_training_model_and_predict_runs_it(trained):
    """The converted model, checked in the run against the training model (mixed_bfloat16 here, float32 in
    the TFLite copy), and classified again here through `safetrain.predict --tflite` in a fresh process:
    the same top class and probabilities within the recorded tolerance as the SavedModel's."""
    tflite = json.loads((trained / "report.json").read_text())["export"]["tflite"]
    assert tflite["path"] == str(trained / "export" / "model.tflite") and tflite["bytes"] > 1_000_000
    assert tflite["compared_images"] == 32 and tflite["max_abs_diff"] <= tflite["tolerance"]
    samples = sorted((trained / "export" / "samples").glob("test_*.png"))

    def classify(*flags):
        out = subprocess.run([sys.executable, "-m", "safetrain.predict", f"run_dir={trained}", "top_k=10", *flags,
                              *map(str, samples)], capture_output=True, text=True, env=ENV, timeout=120)
        assert out.returncode == 0, out.stderr
        return [dict((cell.split()[0], float(cell.split()[1])) for cell in line.split(": ", 1)[1].split(" | "))
                for line in out.stdout.splitlines()]

    saved, lite = classify(), classify("--tflite")
    assert len(saved) == len(lite) == len(samples)
    for a, b in zip(saved, lite):
        assert max(a, key=a.get) == max(b, key=b.get)
        assert max(abs(a[k] - b[k]) for k in a) <= tflite["tolerance"] + 2e-3  # printed to 3 decimals
