"""Pretrained backbones: the recorded registry against the real Keras models, the input contract
refused before training, weights files loaded (or refused naming the layer), offline ImageNet
failing fast, frozen BatchNorm statistics, fine-tuning with exact resume, export and predict.

No ImageNet weights can be downloaded here: the loading code is tested with weights files the
tests write themselves from the real Keras Applications models."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, read_tensorboard

ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
BASE = ("model=backbone", "model.backbone.weights=null", "dataset.image.height=32", "dataset.image.width=32")


@pytest.fixture(scope="module")
def backbone_node(tfds_dir):
    """`+debug=tiny model=backbone` composed once (weights=null, 32x32: the backbone's minimum)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from safetrain.config import config_dir
    from safetrain.config.schema import register

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        node = compose("config", overrides=["+experiment=digits_cnn", "+debug=tiny", f"dataset.data_dir={tfds_dir}",
                                            *BASE])
    GlobalHydra.instance().clear()
    return node


def _validated(node, *values):
    from omegaconf import OmegaConf

    from safetrain.experiment.validate import resolve, validate

    node = copy.deepcopy(node)
    node.merge_with_dotlist(list(values))
    cfg = resolve(OmegaConf.to_object(node))
    return cfg, validate(cfg)


def _colour_folder(root: Path, per_class: int = 16, size: int = 40) -> Path:
    """Three classes of generated colour photos (a coloured square on dark noise), as JPEG files."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in {"red": (210, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 210)}.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 80, (size, size + 8, 3)).astype(np.uint8)
            y, x = rng.integers(0, size // 2, 2)
            pixels[y:y + size // 2, x:x + size // 2] = colour
            Image.fromarray(pixels).save(root / name / f"{i}.jpg", quality=95)
    return root


def _mobilenet(weights=None, **fields):
    from safetrain.models.backbones import parse_backbone
    from safetrain.config.schema import BackboneConfig

    return parse_backbone(BackboneConfig(name="mobilenet_v3_small", weights=weights, **fields))


# --- the registry is what Keras builds ----------------------------------------------------------

def test_every_registered_backbone_matches_its_recorded_contract_and_counts():
    """Params and feature width are recorded (the shape table is printed before any weights are
    read); here they are checked against the real Keras Applications model, and so is the input
    range: backbones recorded as taking 0..255 carry their own Rescaling/Normalization layer,
    ResNet50V2 (recorded [-1, 1]) has none. Every block pattern finds the blocks fine_tune_blocks
    counts."""
    import keras

    from safetrain.models.backbone_build import build_backbone
    from safetrain.models.backbones import BACKBONES, parse_backbone
    from safetrain.config.schema import BackboneConfig

    for name in BACKBONES.names():
        entry = BACKBONES.get(name)
        model = build_backbone(parse_backbone(BackboneConfig(name=name, weights=None)), (32, 32, 3))
        assert model.count_params() == entry.params, name
        assert tuple(model.output.shape) == (None, entry.features), name
        preprocessing = [layer for layer in model.layers[:4]
                         if isinstance(layer, (keras.layers.Rescaling, keras.layers.Normalization))]
        assert bool(preprocessing) == (entry.normalization == "scale_0_255"), name
        blocks = {entry.block_of(layer.name) for layer in model.layers} - {None}
        assert len(blocks) >= 11, (name, sorted(blocks))
        assert 0.3 < entry.bf16_speedup < 3 and entry.flops(224, 224) == entry.flops_224


# --- the input contract, refused before TensorFlow builds anything ------------------------------

@pytest.mark.parametrize("values, key, text", [
    (["dataset.image.channels=1"], "dataset.image.channels", "takes 3-channel RGB images"),
    (["dataset.image.height=28"], "dataset.image.height", "needs inputs of at least 32x32, and dataset.image is 28x32"),
    (["dataset.image.normalization=scale_0_1"], "dataset.image.normalization",
     "scale_0_1 conflicts with model.backbone.name=mobilenet_v3_small, which expects scale_0_255"),
    (["model.backbone.name=resnet50"], "model.backbone.name", "not a known backbone (did you mean 'resnet50_v2'?)"),
    (["model.backbone.weights=/no/such/weights.h5"], "model.backbone.weights", "is not a file"),
    (["model.backbone.fine_tune_from_epoch=1"], "model.backbone.fine_tune_from_epoch",
     "must be an epoch of this run after the first"),
    (["model.backbone.trainable=true", "model.backbone.fine_tune_from_epoch=2", "trainer.epochs=3"],
     "model.backbone.fine_tune_from_epoch", "says to keep it frozen until then"),
    (["model.backbone.fine_tune_blocks=2"], "model.backbone.fine_tune_blocks", "applies when the backbone trains"),
    (["model.backbone.name=null"], "dataset.image.normalization", "model.backbone.name is null (no backbone)"),
])
def test_each_contract_violation_is_one_message_naming_the_key(backbone_node, values, key, text):
    from safetrain.core.errors import SafetrainError

    with pytest.raises(SafetrainError) as caught:
        _validated(backbone_node, *values)
    assert text in caught.value.message and caught.value.config_key == key
    assert caught.value.exit_code == 2 and caught.value.hint


def test_a_weights_path_that_is_not_h5_is_refused(backbone_node, tmp_path):
    from safetrain.core.errors import ConfigError

    (tmp_path / "weights.pt").write_bytes(b"torch")
    with pytest.raises(ConfigError, match=r"\.h5 files .* or \.weights\.h5 files"):
        _validated(backbone_node, f"model.backbone.weights={tmp_path / 'weights.pt'}")


def test_normalization_backbone_becomes_what_each_backbones_weights_expect_and_the_table_shows_it(backbone_node):
    cfg, plan = _validated(backbone_node)
    assert cfg.dataset.image.normalization.value == "scale_0_255"
    row = plan.rows[1]
    assert row.label == "backbone mobilenet_v3_small (random init; frozen), avg pool"
    assert row.shape == (576,) and row.params == 939_120 and row.approx
    assert "≈" in plan.table() and "recorded in models/backbones.py" in plan.table()
    cfg, plan = _validated(backbone_node, "model.backbone.name=resnet50_v2", "model.backbone.pooling=max")
    assert cfg.dataset.image.normalization.value == "minus_one_one" and plan.rows[1].shape == (2048,)
    # an explicit normalization that agrees with the backbone is kept
    cfg, _ = _validated(backbone_node, "model.backbone.name=resnet50_v2", "dataset.image.normalization=minus_one_one")
    assert cfg.dataset.image.normalization.value == "minus_one_one"


def test_scale_0_255_maps_the_source_range_to_0_255():
    import tensorflow as tf

    from safetrain.pipelines.ops import normalize
    from safetrain.pipelines.spec import ImageSpec

    spec = ImageSpec(2, 1, 1, normalization="scale_0_255")
    out = normalize(tf.constant([[[0.0]], [[0.5]]]), spec, (0.0, 1.0), None).numpy().ravel()
    assert out.tolist() == [0.0, 127.5]


def test_a_one_channel_source_without_convert_names_the_backbone(train):
    result = train("model.backbone.name=mobilenet_v3_small", "model.backbone.weights=null", "model.layers=[]",
                   "dataset.image.height=32", "dataset.image.width=32", "dataset.image.channels=3",
                   "dataset.image.normalization=backbone", "dataset.channel_policy=error")
    assert result.code == 2, result.text
    assert ("dataset digits delivers 8x8x1 uint8 images but dataset.image declares 3 channels (model.backbone.name="
            "mobilenet_v3_small takes RGB: an ImageNet stem), and dataset.channel_policy=error") in result.text
    assert result.report()["error"]["config_key"] == "dataset.channel_policy"


# --- weights ------------------------------------------------------------------------------------

def test_a_weights_file_loads_into_a_new_model_in_both_keras_formats_and_a_wrong_one_names_the_layer(tmp_path):
    import h5py
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    from safetrain.models.backbone_build import build_backbone
    from safetrain.models.backbones import parse_backbone
    from safetrain.models.build import build_model
    from safetrain.models.backbone_build import backbone_of
    from safetrain.models.shapes import infer
    from safetrain.config.schema import BackboneConfig
    from safetrain.core.errors import SpecError

    source = build_backbone(_mobilenet(), (48, 48, 3))  # another input size: weights do not depend on it
    source.save_weights(tmp_path / "small.weights.h5")
    with h5py.File(tmp_path / "small_legacy.h5", "w") as f:  # the layout of Keras' ImageNet downloads
        save_weights_to_hdf5_group(f, source)
    for path in (tmp_path / "small.weights.h5", tmp_path / "small_legacy.h5"):
        plan = infer([], (32, 32, 3), 3, backbone=_mobilenet(str(path)))
        loaded = backbone_of(build_model(plan, seed=0))
        assert all(np.array_equal(a, b) for a, b in zip(source.get_weights(), loaded.get_weights())), path

    large = parse_backbone(BackboneConfig(name="mobilenet_v3_large", weights=None))
    build_backbone(large, (32, 32, 3)).save_weights(tmp_path / "large.weights.h5")
    with pytest.raises(SpecError) as caught:
        build_model(infer([], (32, 32, 3), 3, backbone=_mobilenet(str(tmp_path / "large.weights.h5"))))
    assert ("does not fit backbone mobilenet_v3_small: layer 'expanded_conv_squeeze_excite_conv' expects weights of "
            "shapes [(1, 1, 16, 8), (8,)], the file has [(1, 1, 16, 16)]") in caught.value.message
    assert caught.value.config_key == "model.backbone.weights" and caught.value.exit_code == 2

    (tmp_path / "broken.h5").write_bytes(b"not hdf5")
    with pytest.raises(SpecError, match="not a readable HDF5 file"):
        build_model(infer([], (32, 32, 3), 3, backbone=_mobilenet(str(tmp_path / "broken.h5"))))


@pytest.mark.e2e
def test_offline_imagenet_weights_fail_in_seconds_naming_the_cache_and_the_local_file_option(tmp_path):
    """A real process with Keras' cache in an empty folder and every HTTPS request sent to a closed
    port: the download fails at once, before the data is read, exit 3, one paragraph."""
    folder = _colour_folder(tmp_path / "photos", per_class=4)
    env = {**ENV, "KERAS_HOME": str(tmp_path / "keras"), "https_proxy": "http://127.0.0.1:9",
           "HTTPS_PROXY": "http://127.0.0.1:9"}
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "safetrain", "dataset=image_folder", f"dataset.path={folder}",
                           "model=backbone", f"hydra.run.dir={run_dir}", f"dataset.cache_dir={tmp_path / 'cache'}"],
                          capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    error = json.loads((run_dir / "report.json").read_text())["error"]
    assert "ImageNet weights of backbone mobilenet_v3_small could not be downloaded" in error["message"]
    assert str(tmp_path / "keras" / "models") in error["message"]
    assert "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5" in error["message"]
    assert "model.backbone.weights=/path/to/weights_mobilenet_v3_small" in error["hint"]
    assert error["config_key"] == "model.backbone.weights" and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists(), "the folder was scanned before the weights were fetched"


# --- freezing and fine-tuning -------------------------------------------------------------------

def test_fine_tune_blocks_unfreezes_the_top_blocks_and_every_layer_after_them():
    from safetrain.models.backbone_build import build_backbone, set_trainable, top_blocks_start
    from safetrain.core.errors import SpecError

    spec = _mobilenet(fine_tune_from_epoch=2, fine_tune_blocks=2)
    model = build_backbone(spec, (32, 32, 3))
    set_trainable(model, spec, True)
    cut = top_blocks_start(model, spec)
    assert model.layers[cut].name.startswith("expanded_conv_9_")  # MobileNetV3Small's blocks: 0..10
    assert all(layer.trainable for layer in model.layers[cut:])
    assert not any(layer.trainable for layer in model.layers[:cut] if layer.weights)
    assert 0 < len(model.trainable_variables) < len(_trainables(build_backbone(_mobilenet(), (32, 32, 3))))
    set_trainable(model, spec, False)
    assert not model.trainable_variables
    with pytest.raises(SpecError, match="has 11 blocks"):
        top_blocks_start(model, _mobilenet(fine_tune_from_epoch=2, fine_tune_blocks=12))


def _trainables(model):
    model.trainable = True
    return model.trainable_variables


def test_pretrained_batchnorm_statistics_never_change_while_the_backbone_fine_tunes(tmp_path):
    """The Keras guide's rule: the model calls a pretrained backbone with training=False, so
    BatchNorm uses and keeps the loaded moving statistics while its weights (and gamma/beta) train."""
    import keras
    import tensorflow as tf

    from safetrain.models.backbone_build import backbone_of, build_backbone
    from safetrain.models.build import build_model
    from safetrain.models.shapes import infer

    build_backbone(_mobilenet(), (32, 32, 3)).save_weights(tmp_path / "w.weights.h5")
    spec = _mobilenet(str(tmp_path / "w.weights.h5"), trainable=True)
    model = build_model(infer([], (32, 32, 3), 3, backbone=spec), seed=0)
    backbone = backbone_of(model)
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    before = [(n.moving_mean.numpy().copy(), n.moving_variance.numpy().copy()) for n in norms]
    kernel = backbone.layers[2].kernel.numpy().copy()
    optimizer = keras.optimizers.Adam(1e-2)
    x, y = tf.random.uniform((8, 32, 32, 3), 0, 255, seed=1), tf.constant([0, 1, 2, 0, 1, 2, 0, 1])
    for _ in range(3):
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True), from_logits=True)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
    assert not np.array_equal(kernel, backbone.layers[2].kernel.numpy()), "the backbone did not train"
    for n, (mean, var) in zip(norms, before):
        assert np.array_equal(mean, n.moving_mean.numpy()) and np.array_equal(var, n.moving_variance.numpy()), n.name


def test_auto_precision_follows_each_backbones_measured_bf16_speed_and_float16_is_refused_for_a_trained_one():
    from safetrain.models.backbones import parse_backbone
    from safetrain.config.schema import BackboneConfig, Precision
    from safetrain.core.errors import HardwareError
    from safetrain.train.hardware import Device, choose_precision

    cpu = [Device("CPU", "cpu:0", features=frozenset({"avx512_bf16", "amx_bf16"}))]  # a fake only for the flags
    v100 = [Device("GPU", "Tesla V100", (7, 0))]
    small, resnet = _mobilenet(), parse_backbone(BackboneConfig(name="resnet50_v2", weights=None))
    policy, reason = choose_precision(cpu, Precision.auto, backbone=small)
    assert policy == "float32" and "measured 0.58x" in reason and "mobilenet_v3_small" in reason
    assert choose_precision(cpu, Precision.auto, backbone=resnet)[0] == "mixed_bfloat16"
    assert choose_precision(v100, Precision.auto, backbone=small)[0] == "mixed_float16"  # frozen: one optimizer
    tuned = _mobilenet(trainable=True)
    assert choose_precision(v100, Precision.auto, backbone=tuned)[0] == "float32"
    with pytest.raises(HardwareError, match="loss scaling"):
        choose_precision(v100, Precision.mixed_float16, backbone=tuned)


# --- end to end ---------------------------------------------------------------------------------

def _cmd(run_dir: Path, folder: Path, *values: str) -> list[str]:
    return [sys.executable, "-m", "safetrain", "dataset=image_folder", f"dataset.path={folder}",
            f"dataset.cache_dir={folder.parent / 'cache'}", *BASE, "trainer.batch_size=8", "trainer.log_every_steps=1",
            f"hydra.run.dir={run_dir}", *values]


@pytest.mark.e2e
def test_a_backbone_run_on_a_colour_folder_trains_exports_and_predicts_a_photo(tmp_path):
    folder = _colour_folder(tmp_path / "photos", per_class=20)
    run_dir = tmp_path / "run"
    done = subprocess.run(_cmd(run_dir, folder, "model.backbone.trainable=true", "trainer.epochs=8",
                               "optimizer.learning_rate=0.003"),
                          capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "backbone mobilenet_v3_small (random init; trainable (all)), avg pool  (None, 576)" in done.stderr
    assert "preprocessing: for backbone mobilenet_v3_small" in done.stderr
    scalars, texts = read_tensorboard(run_dir / "tb")
    losses = [v for _, v in scalars["train/loss"]]
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses
    assert "scale_0_255" in texts["pipeline/spec"] and "backbone mobilenet_v3_small" in texts["model/summary"]
    signature = json.loads((run_dir / "export" / "signature.json").read_text())
    assert "mobilenet_v3_small" in signature["preprocessing"] and "(scale_0_255)" in signature["model_input"]
    import tensorflow as tf

    described = tf.saved_model.load(str(run_dir / "export")).signatures["describe"]()
    assert described["preprocessing"].numpy().decode() == signature["preprocessing"]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["export"]["self_check_max_abs_diff"] <= report["export"]["self_check_tolerance"]
    photo = folder / "red" / "0.jpg"
    predicted = subprocess.run([sys.executable, "-m", "safetrain.predict", f"run_dir={run_dir}", str(photo)],
                               capture_output=True, text=True, env=ENV, timeout=120, cwd=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    assert str(photo) in predicted.stdout and any(c in predicted.stdout for c in ("red", "green", "blue"))


@pytest.mark.e2e
def test_fine_tuning_from_a_weights_file_resumes_bitwise_across_the_unfreeze(tmp_path):
    """Frozen in epoch 1, the top blocks trained from epoch 2 with their own optimizer, the
    weights' moving average and the best epoch on. A SIGTERM inside epoch 2 (after the unfreeze)
    and one inside epoch 1 (before it), each resumed, end with bitwise the weights of an
    uninterrupted run."""
    from safetrain.models.backbone_build import build_backbone

    folder = _colour_folder(tmp_path / "photos", per_class=16)
    weights = tmp_path / "pretrained.weights.h5"
    build_backbone(_mobilenet(), (32, 32, 3)).save_weights(weights)
    same = (f"model.backbone.weights={weights}", "model.backbone.fine_tune_from_epoch=2",
            "model.backbone.fine_tune_blocks=3", "trainer.epochs=3", "trainer.deterministic=true", "trainer.ema=0.9",
            "optimizer.weight_decay=0.01",
            "trainer.checkpoint_every_steps=1000", "trainer.export=false")
    straight = tmp_path / "straight"
    done = subprocess.run(_cmd(straight, folder, *same), capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "epoch 2: backbone mobilenet_v3_small unfrozen" in done.stderr
    expected = json.loads((straight / "report.json").read_text())

    for epoch in (2, 1):  # after the unfreeze, and before it (the rerun goes through the unfreeze itself)
        run_dir = tmp_path / f"signalled_in_epoch_{epoch}"
        proc = subprocess.Popen(_cmd(run_dir, folder, *same), stderr=subprocess.PIPE, text=True, env=ENV)
        deadline = time.monotonic() + 240
        for line in proc.stderr:
            if f"epoch {epoch}/3 step 2/" in line:
                proc.send_signal(signal.SIGTERM)
                break
            assert time.monotonic() < deadline, f"training never reached epoch {epoch}"
        assert proc.wait(timeout=120) == 143
        resumed = subprocess.run(_cmd(run_dir, folder, *same), capture_output=True, text=True, env=ENV, timeout=300)
        assert resumed.returncode == 0, resumed.stderr
        assert "resuming from checkpoint" in resumed.stderr
        report = json.loads((run_dir / "report.json").read_text())
        assert report["steps"] == expected["steps"]
        assert report["model"]["weights_sha256"] == expected["model"]["weights_sha256"], run_dir.name
