"""The built Keras model has exactly the inferred shapes and parameter counts."""

from __future__ import annotations

import pytest

from models.presets import preset_layers
from models.shapes import infer
from models.spec import parse_layers
from safetrain.config import config_dir

PRESETS = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3)])
def test_every_preset_builds_with_inferred_shapes(preset, input_shape):
    from models.build import build_model

    plan = infer(parse_layers(preset_layers(preset)), input_shape, 10)
    model = build_model(plan)
    built = [tuple(layer.output.shape[1:]) for layer in model.layers]
    assert built == [row.shape for row in plan.rows]
    assert model.count_params() == plan.total_params
    assert model.layers[-1].dtype_policy.compute_dtype == "float32"


def test_every_layer_type_matches_keras():
    from models.build import build_model

    layers = parse_layers([
        {"type": "conv2d", "filters": 6, "kernel_size": [3, 5], "strides": 2, "padding": "valid"},
        {"type": "batch_norm"},
        {"type": "avg_pool", "pool_size": 3, "strides": 1, "padding": "same"},
        {"type": "max_pool", "pool_size": 2, "padding": "same"},
        {"type": "conv2d", "filters": 8, "kernel_size": 1, "use_bias": False},
        {"type": "global_avg_pool"},
        {"type": "dense", "units": 16, "activation": "gelu"},
        {"type": "dropout", "rate": 0.1},
    ])
    plan = infer(layers, (31, 29, 3), 7)
    model = build_model(plan)
    assert [tuple(layer.output.shape[1:]) for layer in model.layers] == [row.shape for row in plan.rows]
    assert model.count_params() == plan.total_params
    assert [layer.name for layer in model.layers[1:3]] == ["L0_conv2d", "L1_batch_norm"]
