"""Plain-Python specs: layer parsing, shape inference, adapter planning, precision choice."""

from __future__ import annotations

import pytest

from safetrain.models.presets import preset_layers
from safetrain.models.shapes import infer
from safetrain.models.parse import parse_layers
from safetrain.pipelines.spec import ImageSpec, SourceSpec, plan_adapters
from safetrain.config.schema import Precision
from safetrain.core.errors import ConfigError, HardwareError, SpecError
from safetrain.train.hardware import Device, choose_precision

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


# Fake device records (this machine has no GPU): the names say what each stands for.
CPU = Device("CPU", "cpu:0")
CPU_BF16 = Device("CPU", "cpu:0", features=frozenset({"avx512_bf16", "amx_bf16"}))  # Sapphire Rapids: AMX tiles
CPU_AVX512_BF16 = Device("CPU", "cpu:0", features=frozenset({"avx512_bf16"}))      # AVX512_BF16 without AMX
P100 = Device("GPU", "Tesla P100", (6, 0))
GTX1080 = Device("GPU", "GeForce GTX 1080", (6, 1))
V100 = Device("GPU", "Tesla V100", (7, 0))
T4 = Device("GPU", "Tesla T4", (7, 5))
GTX1660 = Device("GPU", "NVIDIA GeForce GTX 1660", (7, 5))
A100 = Device("GPU", "NVIDIA A100", (8, 0))
H100 = Device("GPU", "NVIDIA H100", (9, 0))
TPU = Device("TPU", "TPU v4")


@pytest.mark.parametrize("devices, requested, policy", [
    ([CPU], Precision.auto, "float32"),
    ([CPU_BF16], Precision.auto, "mixed_bfloat16"),
    ([CPU_AVX512_BF16], Precision.auto, "float32"),  # the table's fallback; the trial measures
    ([CPU_AVX512_BF16], Precision.mixed_bfloat16, "mixed_bfloat16"),  # requested: it runs natively
    ([CPU, P100], Precision.auto, "float32"),
    ([CPU, V100], Precision.auto, "mixed_float16"),
    ([CPU, T4], Precision.auto, "mixed_float16"),
    ([CPU, GTX1660], Precision.auto, "float32"),
    ([CPU, A100], Precision.auto, "mixed_bfloat16"),
    ([CPU, H100, H100], Precision.auto, "mixed_bfloat16"),
    ([CPU_BF16, GTX1080, A100], Precision.auto, "float32"),   # a mixed fleet runs at its weakest
    ([CPU, TPU], Precision.auto, "mixed_bfloat16"),
    ([CPU, V100], Precision.mixed_float16, "mixed_float16"),
    ([CPU_BF16], Precision.mixed_bfloat16, "mixed_bfloat16"),
    ([CPU, A100], Precision.float32, "float32"),
])
def test_precision_choice_on_fake_device_records(devices, requested, policy):
    chosen, reason = choose_precision(devices, requested)
    assert chosen == policy and reason.startswith(("auto:", "requested"))


def test_recurrent_models_stay_float32_on_a_bf16_cpu():
    policy, reason = choose_precision([CPU_BF16], Precision.auto, recurrent=True)
    assert policy == "float32" and "recurrent layers measured no faster" in reason
    assert choose_precision([CPU, A100], Precision.auto, recurrent=True)[0] == "mixed_bfloat16"


def test_gtx_1660_stays_float32_and_says_why():
    _, reason = choose_precision([CPU, GTX1660], Precision.auto)
    assert "GTX 1660 (compute capability 7.5) has no float16 tensor cores" in reason


@pytest.mark.parametrize("devices, requested, pattern", [
    ([CPU], Precision.mixed_float16, r"needs GPUs with float16 tensor cores .*CPU cpu:0.*12-200x slower"),
    ([CPU_BF16, GTX1660], Precision.mixed_float16, r"NVIDIA GeForce GTX 1660 \(compute capability 7\.5\)"),
    ([CPU, GTX1080, A100], Precision.mixed_float16, r"GeForce GTX 1080 \(compute capability 6\.1\)"),
    ([CPU], Precision.mixed_bfloat16, r"needs a TPU, GPUs with compute capability >= 8\.0, or a CPU with "
                                      r"AVX512_BF16/AMX; this machine has: CPU cpu:0"),
    ([CPU, V100], Precision.mixed_bfloat16, r"Tesla V100 \(compute capability 7\.0\)"),
])
def test_policies_the_hardware_cannot_honour_are_refused_naming_each_device(devices, requested, pattern):
    with pytest.raises(HardwareError, match=pattern) as info:
        choose_precision(devices, requested)
    assert info.value.exit_code == 2 and info.value.config_key == "hardware.precision"


def test_cpu_flags_are_read_from_cpuinfo_text():
    from safetrain.train.hardware import parse_cpu_flags

    text = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 amx_tile amx_bf16\n"
    assert parse_cpu_flags(text) == {"avx512_bf16", "amx_bf16"}
    assert parse_cpu_flags("flags\t: fpu sse avx512f\n") == frozenset()


def test_gpu_memory_is_read_from_nvidia_smi_csv_and_shown_per_device():
    """Fake nvidia-smi output and a fake A100 record: this machine has no GPU."""
    from safetrain.train.hardware import parse_gpu_memory

    assert parse_gpu_memory("81920\n40960\n") == [81920, 40960]
    assert parse_gpu_memory("No devices were found\n") == []
    a100_80gb = Device("GPU", "NVIDIA A100-SXM4-80GB", (8, 0), memory_mib=81920)
    assert a100_80gb.describe() == "GPU NVIDIA A100-SXM4-80GB (compute capability 8.0) 80 GiB"


def test_field_checks_apply_where_a_layer_declares_them_not_by_name():
    """Built-in layers declare their checks per field; a custom layer's own `axis: int = -1`,
    `offset: int = 0` or `rate` mean whatever that layer says and are checked for type only."""
    import keras

    from safetrain.models.custom import custom_layer

    @custom_layer("shift_along_axis")
    class ShiftAlongAxis(keras.layers.Layer):
        def __init__(self, axis: int = -1, offset: int = 0, rate: float = 2.0, **kwargs):
            super().__init__(**kwargs)
            self.axis, self.offset, self.rate = axis, offset, rate

    [spec] = parse_layers([{"type": "shift_along_axis", "axis": -1, "offset": 0, "rate": 1.5}])
    assert (spec.axis, spec.offset, spec.rate) == (-1, 0, 1.5)
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.axis='x' has the wrong type: expected int"):
        parse_layers([{"type": "shift_along_axis", "axis": "x"}])
    # The built-in checks still hold, on the fields that declare them (pairs included).
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.kernel_size=\(0, 3\) must be a positive integer"):
        parse_layers([{"type": "conv2d", "kernel_size": [0, 3]}])
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.layer\.recurrent_dropout=1\.0 must be in \[0, 1\)"):
        parse_layers([{"type": "bidirectional", "layer": {"type": "lstm", "recurrent_dropout": 1.0}}])
    with pytest.raises(ConfigError, match=r"model\.layers\.0\.merge_mode='stack' is not one of: concat, sum"):
        parse_layers([{"type": "bidirectional", "layer": {"type": "lstm"}, "merge_mode": "stack"}])
