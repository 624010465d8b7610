"""The built Keras model has exactly the inferred shapes and parameter counts."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from safetrain.models.presets import layer_presets, preset_layers
from safetrain.models.shapes import infer
from safetrain.models.parse import parse_layers

PRESETS = layer_presets()  # the backbone preset: tests/test_backbones.py


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("input_shape", [(28, 28, 1), (32, 32, 3)])
def test_every_preset_builds_with_inferred_shapes(preset, input_shape):
    from safetrain.models.build import build_model

    plan = infer(parse_layers(preset_layers(preset)), input_shape, 10)
    model = build_model(plan)
    built = [tuple(layer.output.shape[1:]) for layer in model.layers]
    assert built == [row.shape for row in plan.rows]
    assert model.count_params() == plan.total_params
    assert model.layers[-1].dtype_policy.compute_dtype == "float32"


def test_every_layer_type_matches_keras():
    from safetrain.models.build import build_model

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


def test_sequence_layers_and_blocks_match_keras():
    from safetrain.models.build import build_model

    for raw, shape in (
        ([{"type": "rows_as_sequence"}, {"type": "lstm", "units": 8, "return_sequences": True},
          {"type": "bidirectional", "layer": {"type": "gru", "units": 5}, "merge_mode": "sum"}], (7, 6, 2)),
        ([{"type": "rows_as_sequence"}, {"type": "bidirectional", "layer": {"type": "lstm", "units": 4,
                                                                            "return_sequences": True}},
          {"type": "gru", "units": 3}], (9, 4, 1)),
        ([{"type": "separable_conv2d", "filters": 5, "kernel_size": 3, "depth_multiplier": 2},
          {"type": "depthwise_conv2d", "kernel_size": 2, "strides": 2, "padding": "same"},
          {"type": "residual", "filters": 6, "strides": 2}, {"type": "residual", "filters": 6},
          {"type": "flatten"}], (17, 15, 3)),
    ):
        plan = infer(parse_layers(raw), shape, 4)
        model = build_model(plan)
        assert [tuple(layer.output.shape[1:]) for layer in model.layers] == [row.shape for row in plan.rows]
        assert model.count_params() == plan.total_params


_IMAGE_LAYER = st.one_of(
    st.builds(lambda f, k, s, p: {"type": "conv2d", "filters": f, "kernel_size": k, "strides": s, "padding": p},
              st.integers(1, 6), st.integers(1, 5), st.integers(1, 3), st.sampled_from(["valid", "same"])),
    st.builds(lambda f, k, s, m: {"type": "separable_conv2d", "filters": f, "kernel_size": k, "strides": s,
                                  "depth_multiplier": m, "padding": "same"},
              st.integers(1, 6), st.integers(1, 4), st.integers(1, 2), st.integers(1, 2)),
    st.builds(lambda k, s, p: {"type": "depthwise_conv2d", "kernel_size": k, "strides": s, "padding": p},
              st.integers(1, 4), st.integers(1, 3), st.sampled_from(["valid", "same"])),
    st.builds(lambda t, k, p: {"type": t, "pool_size": k, "padding": p},
              st.sampled_from(["max_pool", "avg_pool"]), st.integers(1, 3), st.sampled_from(["valid", "same"])),
    st.builds(lambda f, s: {"type": "residual", "filters": f, "strides": s}, st.integers(1, 6), st.integers(1, 2)),
    st.just({"type": "batch_norm"}),
)


@settings(max_examples=25, deadline=None)
@given(body=st.lists(_IMAGE_LAYER, min_size=1, max_size=4),
       end=st.sampled_from(["flatten", "global_avg_pool", "global_max_pool"]),
       dense=st.one_of(st.none(), st.integers(1, 16)),
       size=st.tuples(st.integers(4, 33), st.integers(4, 33), st.sampled_from([1, 3])))
def test_random_valid_specs_build_with_the_inferred_shapes_and_params(body, end, dense, size):
    from safetrain.models.build import build_model
    from safetrain.core.errors import SpecError

    raw = body + [{"type": end}] + ([{"type": "dense", "units": dense}] if dense else [])
    try:
        plan = infer(parse_layers(raw), size, 3)
    except SpecError:
        assume(False)  # refusing is the inference's job (tested elsewhere); here: what it accepts builds
    model = build_model(plan)
    assert [tuple(layer.output.shape[1:]) for layer in model.layers] == [row.shape for row in plan.rows]
    assert model.count_params() == plan.total_params
