"""Config mistakes exit 2 with one paragraph, no traceback, before TensorFlow is imported."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT

# Runs the real CLI and reports, on its last line, whether TensorFlow was ever imported.
_PROBE = (
    "import sys\n"
    "from safetrain.experiment.app import main\n"
    "try:\n"
    "    main(sys.argv[1:])\n"
    "finally:\n"
    "    print('TF_IMPORTED=' + str('tensorflow' in sys.modules), file=sys.stderr)\n"
)


def run_probe(tmp_path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _PROBE, f"hydra.run.dir={tmp_path / 'run'}", *overrides],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("overrides, expected", [
    (["trainer.batch_size=abc"], r"trainer\.batch_size: Value 'abc' .* Expected an integer"),
    (["trainer.bacth_size=64"], r"trainer\.bacth_size is not a config key \(did you mean trainer\.batch_size\?\)"),
    (["+trainer.foo=1"], r"trainer\.foo is not a config key\. Keys of trainer: epochs, batch_size"),
    (["hardware.precision=fp16"], r"hardware\.precision: Invalid value 'fp16'.*mixed_bfloat16"),
    (["+experiment=nope"], r"no experiment named 'nope'.*Known experiments: .*digits_cnn.*mnist_cnn"),
    (["optimizer.name=adamm"], r"optimizer\.name='adamm' is not a known optimizer \(did you mean 'adam'\?\)"
                               r"\. Known optimizers: adam, adamw, rmsprop, sgd"),
    (["+model.layers.0.filtres=8"], r"model\.layers\.0 \(conv2d\) has no argument 'filtres'\. Known arguments: filters"),
    (["model.layers.1.type=maxpool"], r"model\.layers\.1\.type='maxpool' is not a known layer type \(did you mean 'max_pool'\?\)"),
    (["trainer.epochs=0"], r"trainer\.epochs=0 must be greater than 0"),
    (["trainer.steps_per_loop=4"], r"(?s)trainer\.steps_per_loop=4 does not divide trainer\.log_every_steps=10: 4 "
                                   r"steps run in one graph call.*set trainer\.steps_per_loop=2 \(it divides both"),
    (["trainer.steps_per_loop=20"], r"trainer\.steps_per_loop=20 does not divide trainer\.log_every_steps=10"),
    (["trainer.steps_per_loop=16", "trainer.log_every_steps=16"],
     r"(?s)trainer\.steps_per_loop=16 does not divide trainer\.checkpoint_every_steps=200.*steps_per_loop=8 \(it"),
    (["trainer.steps_per_loop=0"], r"trainer\.steps_per_loop=0 must be a whole number of steps >= 1, or auto"),
    (["trainer.steps_per_loop=fast"], r"trainer\.steps_per_loop='fast' must be a whole number"),
    (["dataset.source=idx"], r"dataset\.source=idx reads files from dataset\.path, which is not set"),
    (["dataset.label_encoding=one_hot"], r"(?s)trainer\.loss=sparse_categorical_crossentropy expects sparse labels "
                                         r"but dataset\.label_encoding=one_hot.*trainer\.loss=categorical_crossentropy"),
    (["trainer.min_batch_size=0"], r"trainer\.min_batch_size=0 must be >= 1"),
    (["hardware.strategy=multi_worker"], r"hardware\.strategy=multi_worker needs TF_CONFIG"),
    (["dataset.pixel_range=[1,0]"], r"dataset\.pixel_range=\[1\.0, 0\.0\] must be \[min, max\] with min < max"),
    (["optimizer.schedule=one_cycle", "optimizer.warmup_epochs=1"],
     r"optimizer\.schedule=one_cycle warms up by itself .* optimizer\.warmup_epochs=1\.0 would add a second"),
    (["optimizer.milestones=[5]"], r"optimizer\.milestones=\[5\.0\] only applies to optimizer\.schedule=step"),
    (["optimizer.schedule=step"], r"optimizer\.schedule=step needs optimizer\.milestones"),
    (["optimizer.schedule=step", "optimizer.milestones=[20]"], r"must increase and lie .* before the end "
                                                                r"\(trainer\.epochs=15\)"),
    (["optimizer.min_learning_rate=0.01"], r"optimizer\.min_learning_rate=0\.01 must be >= 0 and below "
                                           r"optimizer\.learning_rate=0\.001"),
    (["trainer.label_smoothing=1.0"], r"trainer\.label_smoothing=1\.0 must be in \[0, 1\)"),
    (["optimizer.weight_decay=-1"], r"optimizer\.weight_decay=-1\.0 must be >= 0"),
    (["dataset.splits.eval=null", "trainer.keep_best=true"],
     r"trainer\.keep_best chooses on the eval split, and dataset\.splits\.eval is null; choosing on the test split"),
    (["dataset.splits.eval=null", "trainer.early_stopping.patience=2"],
     r"trainer\.early_stopping chooses on the eval split, and dataset\.splits\.eval is null"),
    (["trainer.early_stopping.patience=0"], r"trainer\.early_stopping\.patience=0 must be >= 1"),
    (["trainer.ema=1.0"], r"trainer\.ema=1\.0 must be in \(0, 1\)"),
    (["augment.mixup=0.2"], r"augment\.mixup=0\.2 mixes two images .* dataset\.label_encoding=sparse and "
                            r"trainer\.loss=sparse_categorical_crossentropy take one class id"),
    (["augment.rand_augment={num_ops: 2, magnitude: 0.5}"],
     r"augment\.rand_augment draws colour transforms .* dataset\.image\.channels=1"),
    (["augment.rotation=0.9"], r"augment\.rotation=0\.9 must be in \[0, 0\.5\]"),
    (["augment.crop=random_resized", "augment.crop_scale=[0.5,1.5]"],
     r"augment\.crop_scale=\[0\.5, 1\.5\] must be \[low, high\], a share of the image's area, with both in \(0, 1\] "
     r".*augment\.crop=random_resized"),
    (["augment.crop=random_resized", "augment.crop_ratio=[0.0,1.0]"], r"augment\.crop_ratio=\[0\.0, 1\.0\] must be"),
    (["dataset.sampling=balanced", "dataset.class_weights=balanced"],
     r"dataset\.sampling=balanced already shows the model every class equally often, and "
     r"dataset\.class_weights='balanced' would weight the rare classes up a second time"),
    (["dataset.class_weights=balancd"], r"dataset\.class_weights='balancd' is not none, balanced or a list"),
    (["dataset.class_weights=[1,-1]"], r"dataset\.class_weights=\[1, -1\] must be none, balanced or a list of "
                                       r"positive numbers"),
    (["optimizer.schedule=plateau", "dataset.splits.eval=null"],
     r"optimizer\.schedule=plateau lowers the rate when the eval split stops improving, and dataset\.splits\.eval "
     r"is null"),
    (["trainer.early_stopping.patience=2", "trainer.early_stopping.metric=loss", "trainer.early_stopping.mode=max"],
     r"trainer\.early_stopping\.mode=max contradicts trainer\.early_stopping\.metric=loss, which improves by "
     r"going down"),
    (["trainer.early_stopping.metric=f1"],
     r"trainer\.early_stopping\.metric='f1' is not a known metric\. Known metrics: accuracy, hamming_loss, loss, macro_f1, map"),
    (["dataset=image_table"], r"dataset\.source=image_table reads its labels from dataset\.table, which is not set"),
    # dataset.task decides the head: a loss or metric of the other task is refused before TensorFlow
    (["trainer.loss=binary_crossentropy", "dataset.label_encoding=multi_hot"],
     r"trainer\.loss=binary_crossentropy treats each class as its own yes/no question, and "
     r"dataset\.task=single_label says each image has exactly one class"),
    (["dataset.task=multi_label"], r"dataset\.task=multi_label reads each image's label set from a table, and "
                                   r"dataset\.source=digits gives one class per image"),
    (["trainer.metrics=[accuracy,map]"], r"trainer\.metrics\[1\]=map has no meaning for dataset\.task=single_label"),
    (["trainer.export_formats=[saved_model,coreml]"],
     r"trainer\.export_formats=\['saved_model', 'coreml'\] must list saved_model .* and any of keras, tflite, "
     r"tflite_int8, onnx, each once; unknown: coreml"),
    (["trainer.serving_target_accuracy=99"], r"trainer\.serving_target_accuracy=99\.0 must be in \(0, 1\]"),
    (["trainer.lr_find=true", "optimizer.schedule=plateau"],
     r"trainer\.lr_find cannot honour optimizer\.schedule=plateau: plateau lowers the rate after epochs"),
    # a backbone's input contract: before TensorFlow too (the default digits are 28x28x1 scale_0_1)
    (["model=backbone"], r"model\.backbone\.name=mobilenet_v3_small needs inputs of at least 32x32, and "
                         r"dataset\.image is 28x28"),
    (["model=backbone", "dataset.image.height=64", "dataset.image.width=64", "dataset.image.normalization=scale_0_1"],
     r"dataset\.image\.normalization=scale_0_1 conflicts with model\.backbone\.name=mobilenet_v3_small, which "
     r"expects scale_0_255"),
])
def test_config_error_exits_2_with_one_paragraph_before_tensorflow(tmp_path, overrides, expected):
    proc = run_probe(tmp_path, *overrides)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "TF_IMPORTED=False"
    import re
    assert re.search(expected, proc.stderr), proc.stderr
    assert "fix:" in proc.stderr


def test_a_softmax_loss_or_accuracy_on_label_sets_is_refused_before_tensorflow(tmp_path):
    """Multi-hot labels through a softmax train without a word in plain Keras and give a model that
    names one label per image: refused, naming the keys to set."""
    (tmp_path / "sets.csv").write_text("path,labels\na.png,cat|dog\n")
    table = ["dataset=image_table", f"dataset.table={tmp_path / 'sets.csv'}", "dataset.task=multi_label"]
    for extra, key, fix in (([], "trainer.loss", "set trainer.loss=binary_crossentropy dataset.label_encoding=multi_hot"),
                            (["trainer.loss=binary_crossentropy", "dataset.label_encoding=multi_hot",
                              "trainer.metrics=[accuracy]"], "trainer.metrics[0]", "use one of hamming_loss, loss, "),
                            (["trainer.loss=binary_crossentropy", "dataset.label_encoding=multi_hot",
                              "trainer.serving_target_accuracy=0.99"], "trainer.serving_target_accuracy",
                             "set trainer.serving_target_accuracy=null, and trainer.threshold_precision=0.9")):
        proc = run_probe(tmp_path, *table, *extra)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == "TF_IMPORTED=False"
        assert f"{key}=" in proc.stderr and f"fix: {fix}" in proc.stderr, proc.stderr


def test_shape_error_names_layer_and_fix_before_tensorflow(tmp_path):
    # 28 -> pool 14 -> 9x9 valid conv 6 -> pool 3 -> 5x5 valid conv: no pixels left.
    proc = run_probe(tmp_path, "model.layers.2.kernel_size=9", "model.layers.2.padding=valid",
                     "+model.layers.4={type: conv2d, filters: 8, kernel_size: 5}")
    assert proc.returncode == 2, proc.stderr
    assert "model layer 4 (conv2d 8, 5x5, strides=1x1, valid) leaves no pixels" in proc.stderr
    assert "input (None, 3, 3, 64)" in proc.stderr
    assert "fix: set model.layers.4.padding=same" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "TF_IMPORTED=False"


def test_config_error_still_writes_report(tmp_path):
    import json

    proc = run_probe(tmp_path, "optimizer.name=adamm")
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert proc.returncode == report["exit_code"] == 2
    assert report["status"] == "failed"
    assert report["error"]["config_key"] == "optimizer.name"
    errors = (tmp_path / "run" / "errors.jsonl").read_text().splitlines()
    assert json.loads(errors[0])["phase"] == "config"


def test_debug_true_shows_the_full_traceback_of_the_real_error(tmp_path):
    proc = run_probe(tmp_path, "trainer.batch_size=abc", "debug=true")
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "could not be converted to Integer" in proc.stderr
    assert "Config group override" not in proc.stderr  # `debug` is also a group; main() handles that


def test_debug_true_combines_with_the_debug_group(tmp_path):
    proc = run_probe(tmp_path, "+debug=tiny", "debug=true", "optimizer.name=adamm")
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "is not a known optimizer" in proc.stderr


def test_strides_3_then_pooling_collapse_is_refused_before_tensorflow_naming_which_pool(tmp_path):
    # Keras (baseline case 8b) names only the class "MaxPooling2D", not which of the two.
    proc = run_probe(tmp_path, "model.layers=[{type: conv2d, filters: 8, kernel_size: 3, strides: 3}, "
                               "{type: max_pool}, {type: conv2d, filters: 8, kernel_size: 3, strides: 3}, "
                               "{type: max_pool}, {type: flatten}]")
    assert proc.returncode == 2, proc.stderr
    assert ("model layer 3 (max_pool 2x2, valid) leaves no pixels: input (None, 1, 1, 8) -> output "
            "(None, 0, 0, 8)") in proc.stderr
    assert "fix: set model.layers.3.padding=same" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().splitlines()[-1] == "TF_IMPORTED=False"
