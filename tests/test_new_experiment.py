"""From a folder of real PNG/JPEG files (some bad) to a checked experiment, a trained model and predictions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _folder(root):
    rng = np.random.default_rng(0)
    for cls, n, channel in (("red", 24, 0), ("green", 24, 1), ("blue", 6, 2)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            size = (40, 48) if i % 2 else (36, 44)
            image = rng.integers(0, 90, (*size, 3), dtype=np.uint8)
            image[..., channel] = 220  # a learnable class signal
            name, fmt = (f"{i}.jpg", "JPEG") if i % 3 == 0 else (f"{i}.png", "PNG")
            Image.fromarray(image).save(root / cls / name, format=fmt)
    (root / "green" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a whole JPEG")
    return root


@pytest.mark.e2e
def test_scan_write_check_train_and_predict_a_new_project(tmp_path):
    images, configs = _folder(tmp_path / "images"), tmp_path / "my_configs"
    scaffold = subprocess.run([sys.executable, str(ROOT / "scripts" / "new_experiment.py"), str(images), "colors",
                               "--configs", str(configs), "--check", "dry"], capture_output=True, text=True, env=ENV,
                              timeout=300)
    assert scaffold.returncode == 0, scaffold.stdout + scaffold.stderr
    out = scaffold.stdout + scaffold.stderr
    assert "scanned 55 files in 3 classes: blue 6, green 24, red 24" in out
    assert "too few images in blue (6)" in out and "imbalanced classes" in out
    assert "mixed formats" in out and f"{images / 'green' / 'broken.jpg'}" in out
    assert "dry run: the config, the data (every example scanned) and the model" in out  # checked, not trained
    written = configs / "experiment" / "colors.yaml"
    config = yaml.safe_load(written.read_text())
    assert config["dataset"]["image"] == {"height": 40, "width": 48, "channels": 3, "dtype": "float32",
                                          "normalization": "standardize"}
    assert config["dataset"]["resize"] == "bilinear" and config["dataset"]["on_bad_example"] == "skip"
    assert config["dataset"]["class_weights"] == "balanced"  # blue has 6 images, green and red 24
    assert written.read_text().startswith("# @package _global_")

    run_dir = tmp_path / "run"
    train = subprocess.run([sys.executable, "-m", "safetrain", f"hydra.searchpath=[file://{configs}]",
                            "+experiment=colors", "trainer.epochs=4", "trainer.time_budget=null",
                            f"hydra.run.dir={run_dir}"],
                           capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    report = json.loads((run_dir / "report.json").read_text())
    assert report["data"]["skipped"] == 1 and report["export"]["classes"] == ["blue", "green", "red"]
    weights = report["data"]["class_weights"]  # scikit-learn's balanced: n / (classes * n_class) on train
    assert list(weights) == ["blue", "green", "red"] and weights["blue"] > 2 * weights["green"]

    new = tmp_path / "new_red.png"
    image = np.random.default_rng(1).integers(0, 90, (60, 70, 3), dtype=np.uint8)
    image[..., 0] = 220
    Image.fromarray(image).save(new)
    predict = subprocess.run([sys.executable, "-m", "safetrain.predict", f"run_dir={run_dir}", str(new)],
                             capture_output=True, text=True, env=ENV, timeout=120)
    assert predict.returncode == 0, predict.stderr
    assert predict.stdout.startswith(f"{new}: red ")


def _scaffold(images, configs, name, check="dry"):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "new_experiment.py"), str(images), name,
                           "--configs", str(configs), "--check", check], capture_output=True, text=True, env=ENV,
                          timeout=300)
    return done.returncode, done.stdout + done.stderr, yaml.safe_load((configs / "experiment" / f"{name}.yaml")
                                                                      .read_text())


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["RGBA", "RGB"])
def test_grey_drawings_saved_as_colour_get_one_channel_and_a_config_whose_check_passes(tmp_path, mode):
    rng = np.random.default_rng(2)
    for cls in ("circle", "square"):
        (tmp_path / "art" / cls).mkdir(parents=True)
        for i in range(6):
            grey = rng.integers(0, 256, (20, 20), dtype=np.uint8)
            planes = [grey, grey, grey] + ([np.full_like(grey, 255)] if mode == "RGBA" else [])
            Image.fromarray(np.dstack(planes), mode).save(tmp_path / "art" / cls / f"{i}.png")
    code, out, config = _scaffold(tmp_path / "art", tmp_path / "configs", "art")
    assert code == 0, out  # the scaffold's own dry run accepted what it wrote
    assert config["dataset"]["image"]["channels"] == 1 and config["dataset"]["channel_policy"] == "convert"
    assert "hold grey images (R = G = B, alpha opaque" in out


@pytest.mark.e2e
def test_a_messy_photo_folder_gets_a_config_whose_check_passes_and_advice_for_each_problem(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "messy"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 32x24 (w x h), shown 24x32
    for split, classes in (("train", ("a", "b", "c")), ("test", ("a", "b"))):  # test/ lacks c
        for cls in classes:
            (root / split / cls).mkdir(parents=True)
            for i in range(4):
                image = rng.integers(0, 256, (32, 24, 3), dtype=np.uint8)
                if i == 0:
                    Image.fromarray(image).save(root / split / cls / f"{i}.png")
                elif i == 1:
                    Image.fromarray(image).convert("CMYK").save(root / split / cls / f"{i}.jpg", "JPEG")
                elif i == 2:  # a phone photo: stored landscape, tagged to be shown upright
                    Image.fromarray(image.transpose(1, 0, 2)).save(root / split / cls / f"{i}.jpg", "JPEG",
                                                                 exif=exif.tobytes())
                else:
                    Image.fromarray(image).save(root / split / cls / f"{i}.bmp", "BMP")
    (root / "train" / "a" / ".ipynb_checkpoints").mkdir()
    Image.fromarray(rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)).save(
        root / "train" / "a" / ".ipynb_checkpoints" / "x-checkpoint.png")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    code, out, config = _scaffold(root, tmp_path / "configs", "messy")
    assert code == 0, out
    assert "scanned 20 files in 3 classes: a 4, b 4, c 4" in out
    d = config["dataset"]
    # Every image is 32x24 once upright: one size, no resize; CMYK decodes as RGB: 3 channels as they are.
    assert (d["image"]["height"], d["image"]["width"], d["image"]["channels"]) == (32, 24, 3)
    assert d["resize"] == "error" and d["channel_policy"] == "error"
    # 4 images per class: 10% of each is no image, so eval takes 20% (one per class) and says why
    assert d["splits"] == {"train": "train[:80%]", "eval": "train[80%:]", "test": "test"}
    assert "small classes: eval is the last 20% of each class of train/" in out
    assert d["allow_missing_classes"] is True and "the test/ folder has no images of class 'c'" in out
    assert "5 photo(s) carry an EXIF rotation" in out and "ignored 2 hidden/system entries" in out
    assert "mixed formats" in out


@pytest.mark.e2e
def test_on_real_drawings_the_scaffold_proposes_a_recipe_and_its_learning_check_shows_it_learns(hand_drawn, tmp_path):
    code, out, config = _scaffold(hand_drawn, tmp_path / "configs", "shapes", check="learn")
    assert code == 0, out
    assert config["defaults"][1] == {"override /model": "cnn_small"}  # not cnn_residual for 70 px drawings
    assert config["optimizer"]["schedule"] == "cosine" and config["trainer"]["time_budget"] == "10m"
    assert config["augment"]["rotation"] > 0  # drawings: rotations (and the comments name the bolder flags)
    assert "the sample looks like drawings" in (tmp_path / "configs" / "experiment" / "shapes.yaml").read_text()
    check = next(line for line in out.splitlines() if line.startswith("learning check"))
    assert check.endswith(": it learns") and "chance 0.275)" in check
    assert out.index("learning check") < out.index("train it with:")
    assert "model: cnn_small: the most capable model that trains 10+ epochs" in out  # the rule and its numbers
    assert "All log messages before absl::InitializeLog" not in out and "cudart_stub" not in out


@pytest.mark.e2e
def test_on_too_little_data_the_learning_check_says_it_cannot_tell_and_the_experiment_stands(tmp_path):
    """2 classes x 30 grey photos: an eval split of 6 images can neither show learning nor deny it."""
    rng = np.random.default_rng(4)
    for cls, level in (("dark", 70), ("light", 150)):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(30):
            grey = np.clip(rng.normal(level, 60, (32, 32)), 0, 255).astype(np.uint8)
            Image.fromarray(grey, "L").save(tmp_path / "photos" / cls / f"{i}.png")
    code, out, config = _scaffold(tmp_path / "photos", tmp_path / "configs", "few", check="learn")
    assert code == 0, out
    check = [line for line in out.splitlines() if line.startswith("learning check")]
    assert check and ("it learns" in check[-1] or "cannot tell" in check[-1]), out
    assert "the run failed" not in out and "learning check failed" not in out
    assert "train it with:" in out


def _recipe():
    sys.path.insert(0, str(ROOT / "scripts"))
    import scaffold_recipe

    return scaffold_recipe


def test_the_model_is_the_most_capable_that_trains_enough_epochs_and_the_budget_grows_when_none_does():
    recipe = _recipe()
    rates = {"cnn_small": 346.0, "cnn_residual": 69.0}  # images/s, as measured on 70x70 drawings (2-core Xeon)
    small = recipe.size_model(rates, 436, "5m")
    assert small.model == "cnn_residual" and small.budget == "5m"
    assert "10+ epochs" in small.why and "cnn_small 346 images/s" in small.why
    big = recipe.size_model(rates, 21_800, "10m")  # 8 epochs for cnn_small in 80% of 10 minutes
    assert big.model == "cnn_small" and big.budget == "14m"
    assert "no model trains 10 epochs of the 21,800 training images in 10m" in big.why
    huge = recipe.size_model({"cnn_small": 10.0}, 1_000_000, "10m")
    assert huge.budget == "120m" and "capped at 120 minutes" in huge.why
    # trainer.epochs is a ceiling the budget never reaches: twice the epochs expected, at least 300
    assert big.expected >= 10 and small.ceiling() == big.ceiling() == 300
    fast = recipe.size_model({"cnn_small": 578.0}, 436, "10m")  # the 545 drawings on a Xeon with AMX
    assert fast.expected == pytest.approx(636, abs=1) and fast.ceiling() == 1300
    assert "  epochs: 1300 " in "\n".join(recipe.propose("cnn_small", "drawing", "10m", None,
                                                         max_epochs=fast.ceiling()).lines(16))
    assert recipe.candidates(545, 70, 70) == ("cnn_small",)  # small folders: cnn_small only
    assert recipe.candidates(27_292, 70, 70) == ("cnn_small", "cnn_residual")


@pytest.mark.parametrize("result,code,said", [
    ("learning check run (exit 3, run directory X):\nsafetrain: data error (exit 3): the file is gone", 3,
     "safetrain: data error (exit 3): the file is gone"),
    (dict(losses=[1.4, 1.39], accuracy=0.3, eval_images=2000, steps=4, plan="1331 ms a step, first plan 4 steps"), 0,
     "cannot tell: the 60s check trained 4 steps (1331 ms a step, first plan 4 steps)"),
    (dict(losses=[0.765, 0.701], accuracy=4 / 6, eval_images=6, steps=120, plan=""), 0,
     "an eval split of 6 images cannot tell learning from chance"),
    (dict(losses=[1.4, 1.0], accuracy=0.65, eval_images=55, steps=600, plan=""), 0, ": it learns"),
    (dict(losses=[1.4, 1.39], accuracy=0.27, eval_images=400, steps=600, plan=""), 4, "learning check failed"),
])
def test_the_learning_check_says_what_it_saw(monkeypatch, capsys, result, code, said):
    """The verdicts, from what a check run showed (the run itself is replaced by its results: the
    real runs are the e2e tests above)."""
    recipe = _recipe()
    shown = result if isinstance(result, str) else recipe.CheckRun(**result)
    monkeypatch.setattr(recipe, "_check_run", lambda run, name, rate: shown)
    text = "optimizer: {learning_rate: 0.001}\n"
    got, _ = recipe.learning_check(["+experiment=x"], "x", {"a": 30, "b": 30, "c": 25, "d": 25}, text)
    out = capsys.readouterr().out
    assert got == code and said in out, out
    assert "the run failed" not in out or code == 3


@pytest.mark.e2e
def test_a_table_of_images_gets_an_image_table_experiment_whose_check_passes(tmp_path, hand_drawn):
    """`new_experiment.py train.csv NAME`: a Kaggle-style flat folder of real drawings and a CSV of
    ids (no extension) with a missing file and a repeated row: the extension is found, the bad rows
    are advice, and the experiment it writes passes its own dry run."""
    import csv
    import shutil

    flat = tmp_path / "flat"
    flat.mkdir()
    rows = []
    for folder in sorted(p for p in hand_drawn.iterdir() if p.is_dir()):
        for image in sorted(folder.glob("*.png"))[:15]:
            shutil.copy(image, flat / image.name)
            rows.append([image.stem, folder.name])
    rows += [["not_there", "ellipse"], rows[0]]
    with open(flat / "train.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["id", "label"], *rows])
    code, out, config = _scaffold(flat / "train.csv", tmp_path / "configs", "table_shapes")
    assert code == 0, out
    assert "its files are .png (--extension png)" in out
    assert "2 table row(s) refused" in out and "missing_file (line 62)" in out and "duplicate_row (line 63)" in out
    dataset = config["dataset"]
    assert dataset["table"] == str(flat / "train.csv") and dataset["path"] == str(flat)
    assert dataset["columns"] == {"path": "id", "label": "label"} and dataset["extension"] == "png"
    assert dataset["on_bad_example"] == "skip" and dataset["image"]["channels"] == 1
    assert "override /dataset: image_table" in (tmp_path / "configs" / "experiment" / "table_shapes.yaml").read_text()
