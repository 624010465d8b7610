"""Plain-Python specs: layer parsing, shape inference, adapter planning, precision choice."""

from __future__ import annotations

import pytest

from models.presets import preset_layers
from models.shapes import infer
from models.spec import parse_layers
from pipelines.spec import ImageSpec, SourceSpec, plan_adapters
from safetrain.config.schema import Precision
from safetrain.errors import ConfigError, HardwareError, SpecError
from safetrain.hardware import Device, choose_precision

CNN = preset_layers("cnn_small")


def test_cnn_shapes_params_and_flops_match_hand_computation():
    plan = infer(parse_layers(CNN), (28, 28, 1), 10)
    assert [r.shape for r in plan.rows] == [
        (28, 28, 1), (28, 28, 32), (14, 14, 32), (14, 14, 64), (7, 7, 64), (3136,), (128,), (128,), (10,)]
    # conv: 3*3*1*32+32, 3*3*32*64+64; dense: 3136*128+128; head: 128*10+10
    assert plan.total_params == 320 + 18_496 + 401_536 + 1_290
    assert plan.rows[1].flops == 2 * 28 * 28 * 32 * 9 * 1
    table = plan.table()
    assert "conv2d 32, 3x3, strides=1x1, same, relu" in table
    assert "(None, 7, 7, 64)" in table and "421,642" in table


def test_valid_conv_and_strides_follow_keras_formulas():
    plan = infer(parse_layers([{"type": "conv2d", "filters": 4, "kernel_size": [3, 5], "strides": 2},
                               {"type": "avg_pool", "pool_size": 2, "padding": "same"},
                               {"type": "global_max_pool"}]), (28, 28, 3), 2)
    # valid: (28-3)//2+1 = 13, (28-5)//2+1 = 12; same pool: ceil(13/2)=7, ceil(12/2)=6
    assert [r.shape for r in plan.rows[1:4]] == [(13, 12, 4), (7, 6, 4), (4,)]


def test_collapsing_feature_map_names_layer_shapes_and_fix():
    layers = parse_layers([{"type": "conv2d", "filters": 8, "kernel_size": 3, "strides": 3},
                           {"type": "max_pool"}, {"type": "conv2d", "filters": 8, "kernel_size": 3,
                                                  "strides": 3}, {"type": "max_pool"}, {"type": "flatten"}])
    with pytest.raises(SpecError, match=r"model layer 3 \(max_pool 2x2, valid\) leaves no pixels: "
                                        r"input \(None, 1, 1, 8\) -> output \(None, 0, 0, 8\)") as info:
        infer(layers, (28, 28, 1), 10)
    assert info.value.config_key == "model.layers.3.pool_size"
    assert "padding=same" in info.value.hint


def test_dense_on_an_image_and_missing_flatten_are_refused():
    with pytest.raises(SpecError, match=r"model layer 1 \(dense 10\) receives \(None, 26, 26, 4\)"):
        infer(parse_layers([{"type": "conv2d", "filters": 4}, {"type": "dense", "units": 10}]), (28, 28, 1), 10)
    with pytest.raises(SpecError, match=r"(?s)head needs a flat feature vector.*append \{type: flatten\}"):
        infer(parse_layers([{"type": "conv2d", "filters": 4}]), (28, 28, 1), 10)


@pytest.mark.parametrize("raw, pattern", [
    ({"type": "conv2d", "filtres": 3}, r"model\.layers\.0 \(conv2d\) has no argument 'filtres'"),
    ({"type": "conv2d", "filters": "many"}, r"model\.layers\.0\.filters='many' has the wrong type: expected int"),
    ({"type": "conv2d", "filters": 0}, r"model\.layers\.0\.filters=0 must be a positive integer"),
    ({"type": "conv2d", "padding": "full"}, r"model\.layers\.0\.padding='full' is not one of: valid, same"),
    ({"type": "dense", "activation": "rleu"}, r"model\.layers\.0\.activation='rleu' is not one of"),
    ({"type": "dropout", "rate": 1.5}, r"model\.layers\.0\.rate=1\.5 must be in \[0, 1\)"),
    ({"type": "lstmm"}, r"model\.layers\.0\.type='lstmm' is not a known layer type"),
    ({"filters": 3}, r"model\.layers\.0 must be a mapping with a 'type'"),
])
def test_layer_parse_errors_name_the_config_path(raw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        parse_layers([raw])


def test_adapter_plan_refuses_size_and_channel_mismatch_unless_allowed():
    digits = SourceSpec("digits", 8, 8, 1, "uint8", 10)
    declared = ImageSpec(28, 28, 1)
    with pytest.raises(SpecError, match=r"delivers 8x8x1 uint8 images but dataset\.image declares 28x28x1") as info:
        plan_adapters(digits, declared, resize="error", channel_policy="error")
    assert "dataset.resize=bilinear" in info.value.hint and "dataset.image.height=8" in info.value.hint
    plan = plan_adapters(digits, declared, resize="bilinear", channel_policy="error")
    assert plan.resize == "bilinear" and plan.channels is None

    rgb = ImageSpec(28, 28, 3)
    with pytest.raises(SpecError, match=r"declares 3 channels, and dataset\.channel_policy=error"):
        plan_adapters(SourceSpec("mnist", 28, 28, 1, "uint8", 10), rgb, "error", "error")
    assert plan_adapters(SourceSpec("mnist", 28, 28, 1, "uint8", 10), rgb, "error", "convert").channels == 3


GPU_V100 = Device("GPU", "Tesla V100", (7, 0))
GPU_A100 = Device("GPU", "A100", (8, 0))
GPU_K80 = Device("GPU", "Tesla K80", (3, 7))
CPU = Device("CPU", "cpu:0")


@pytest.mark.parametrize("devices, requested, policy", [
    ([CPU], Precision.auto, "float32"),
    ([CPU, GPU_V100], Precision.auto, "mixed_float16"),
    ([CPU, GPU_A100], Precision.auto, "mixed_bfloat16"),
    ([CPU, GPU_A100, GPU_K80], Precision.auto, "float32"),
    ([CPU, GPU_V100], Precision.mixed_float16, "mixed_float16"),
    ([CPU], Precision.mixed_bfloat16, "mixed_bfloat16"),
    ([CPU, GPU_A100], Precision.float32, "float32"),
])
def test_precision_choice_on_fake_device_records(devices, requested, policy):
    chosen, reason = choose_precision(devices, requested)
    assert chosen == policy and reason


def test_float16_on_cpu_or_old_gpu_is_refused_naming_devices():
    with pytest.raises(HardwareError, match=r"needs GPUs with compute capability >= 7\.0.*cpu:0"):
        choose_precision([CPU], Precision.mixed_float16)
    with pytest.raises(HardwareError, match=r"Tesla K80 \(compute capability 3\.7\)"):
        choose_precision([CPU, GPU_K80], Precision.mixed_float16)


def test_recurrent_layers_refuse_non_sequences_naming_the_fix():
    with pytest.raises(SpecError, match=r"model layer 0 \(lstm 8\) needs a sequence \(timesteps, features\) "
                                        r"but receives an image \(None, 28, 28, 1\)") as info:
        infer(parse_layers([{"type": "lstm", "units": 8}]), (28, 28, 1), 10)
    assert info.value.hint == "insert {type: rows_as_sequence} before model.layers.0"
    with pytest.raises(SpecError, match=r"model layer 2 \(gru 4\) needs a sequence .* a flat vector \(None, 8\)"):
        infer(parse_layers([{"type": "rows_as_sequence"}, {"type": "lstm", "units": 8}, {"type": "gru", "units": 4}]),
              (28, 28, 1), 10)
    with pytest.raises(SpecError, match=r"model layer 0 \(bidirectional\) wraps a dense; it can only wrap lstm or gru"):
        parse_layers([{"type": "bidirectional", "layer": {"type": "dense", "units": 3}}])
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.layer\.type='lsmt' is not a known layer type"):
        parse_layers([{"type": "bidirectional", "layer": {"type": "lsmt"}}])


def test_sequence_params_and_flops_follow_keras_formulas():
    plan = infer(parse_layers([{"type": "rows_as_sequence"},
                               {"type": "bidirectional", "layer": {"type": "gru", "units": 4, "return_sequences": True}},
                               {"type": "lstm", "units": 3}]), (5, 6, 2), 2)
    assert [r.shape for r in plan.rows[1:4]] == [(5, 12), (5, 8), (3,)]
    assert plan.rows[2].params == 2 * 3 * 4 * (12 + 4 + 2)   # GRU, reset_after: two bias sets
    assert plan.rows[3].params == 4 * 3 * (8 + 3 + 1)        # LSTM
    assert plan.rows[3].flops == 2 * 5 * 4 * 3 * (8 + 3)


def test_strides_3_then_pooling_collapse_names_which_pool():
    # Keras says only "MaxPooling2D"; the spec names which one, its index and the key to change.
    layers = parse_layers([{"type": "conv2d", "filters": 8, "kernel_size": 3, "strides": 3},
                           {"type": "max_pool"}, {"type": "conv2d", "filters": 8, "kernel_size": 3, "strides": 3},
                           {"type": "max_pool"}, {"type": "flatten"}])
    with pytest.raises(SpecError) as info:
        infer(layers, (28, 28, 1), 10)
    assert info.value.config_key == "model.layers.3.pool_size" and "model layer 3 (max_pool" in info.value.message
