"""Custom layers that break tracing or cut gradients, caught before or at the first step.

Each reproduces a failure measured with plain Keras in ../shared/reference/keras-baseline.md and
asserts the exit code, the layer named (index, type, config path) and that no traceback is shown.
The layers are registered here, in-process, so the runs are in-process too (the `train` fixture).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from safetrain.models.custom import custom_layer

pytestmark = pytest.mark.e2e


@custom_layer("np_tanh")
class NpTanh(keras.layers.Layer):
    def call(self, x):
        return np.tanh(x)


@custom_layer("scale_in_call")
class ScaleInCall(keras.layers.Layer):
    def call(self, x):
        scale = tf.Variable(2.0, name="scale")
        return x * scale


@custom_layer("sign_act")
class SignAct(keras.layers.Layer):
    def call(self, x):
        return tf.math.sign(x)


@custom_layer("argmax_feature", output_shape=lambda shape: (1,))
class ArgmaxFeature(keras.layers.Layer):
    def call(self, x):
        return tf.cast(tf.argmax(x, axis=-1)[:, None], tf.float32)


@custom_layer("take_first")
class TakeFirst(keras.layers.Layer):
    def call(self, x):
        return x[:, 0]


@custom_layer("to_text")
class ToText(keras.layers.Layer):
    def call(self, x):
        return tf.strings.as_string(x)


@custom_layer("scaled_tanh", output_shape=lambda shape, scale: shape)
class ScaledTanh(keras.layers.Layer):
    def __init__(self, scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def call(self, x):
        return keras.ops.tanh(x) * self.scale


@custom_layer("bessel_features")
class BesselFeatures(keras.layers.Layer):
    """Trains fine in TensorFlow; TFLite has no builtin kernel for BesselI1e."""

    def call(self, x):
        return tf.math.special.bessel_i1e(x)


RNN = "{type: rows_as_sequence}, {type: lstm, units: 8}"


def assert_clean(result, code):
    assert result.code == code, result.err
    assert "Traceback" not in result.text
    assert (result.report()["error"] or {}).get("kind") != "internal"


def test_a_good_custom_layer_trains_and_shows_in_the_table(train):
    result = train("model.layers=[{type: flatten}, {type: dense, units: 16}, {type: scaled_tanh, scale: 2.0}]")
    assert_clean(result, 0)
    assert "scaled_tanh (custom ScaledTanh)" in result.err
    assert result.report()["model"]["params"] == 28 * 28 * 16 + 16 + 16 * 10 + 10


def test_numpy_in_call_exits_4_naming_the_layer_and_the_tf_op(train):
    result = train("model.layers=[{type: flatten}, {type: dense, units: 16}, {type: np_tanh}]")
    assert_clean(result, 4)
    assert ("model layer 2 (np_tanh (custom NpTanh), config model.layers.2) calls NumPy on a symbolic tensor "
            "in NpTanh.call()") in result.err
    assert "np.tanh -> keras.ops.tanh (or tf.math.tanh)" in result.err
    assert result.report()["error"]["kind"] == "symbolic_tensor_numpy"


def test_variable_created_in_call_exits_4_with_the_right_fix(train):
    result = train("model.layers=[{type: flatten}, {type: scale_in_call}, {type: dense, units: 8}]")
    assert_clean(result, 4)
    assert "model layer 1 (scale_in_call (custom ScaleInCall), config model.layers.1) creates a variable" in result.err
    assert "create it once in ScaleInCall.build() with self.add_weight(...)" in result.err


def test_slicing_away_the_feature_axis_names_the_culprit_not_the_next_layer(train):
    result = train("model.layers=[{type: flatten}, {type: take_first}, {type: dense, units: 8}]")
    assert_clean(result, 2)
    assert ("model layer 1 (take_first (custom TakeFirst), config model.layers.1) returns (None,) but the spec "
            "expects (None, 784) — it drops an axis") in result.err
    assert "inputs[:, :1] instead of inputs[:, 0]" in result.err


def test_strings_into_an_lstm_are_refused_naming_both_layers(train):
    result = train("model.layers=[{type: rows_as_sequence}, {type: to_text}, {type: lstm, units: 8}]")
    assert_clean(result, 2)
    assert ("model layer 1 (to_text (custom ToText), config model.layers.1) outputs string tensors, but model "
            "layer 2 (lstm 8) needs numbers") in result.err


def test_sign_before_the_head_zeroes_the_lstm_gradients_and_is_reported(train):
    # Plain Keras trains this "fine" while the LSTM's weights change by exactly 0.0, silently.
    result = train(f"model.layers=[{RNN}, {{type: sign_act}}]")
    assert_clean(result, 0)
    assert "got an exactly zero gradient in every one of the first steps" in result.err
    assert "L1_lstm/lstm_cell/kernel" in result.err
    assert "stops at model layer 2 (sign_act (custom SignAct), config model.layers.2)" in result.err
    [event] = [e for e in result.errors() if e["kind"] == "zero_gradient"]
    assert event["config_key"] == "model.layers.2"

    stopped = train(f"model.layers=[{RNN}, {{type: sign_act}}]", "trainer.on_dead_gradient=error",
                       name="stopped")
    assert_clean(stopped, 4)
    assert stopped.report()["error"]["kind"] == "zero_gradient"


def test_argmax_cuts_gradients_exit_4_naming_variables_and_layer(train):
    result = train("model.layers=[{type: flatten}, {type: dense, units: 16}, {type: argmax_feature}]")
    assert_clean(result, 4)
    assert "2 trainable variables get no gradient at all (None): L1_dense/kernel, L1_dense/bias" in result.err
    assert "stops at model layer 2 (argmax_feature (custom ArgmaxFeature), config model.layers.2)" in result.err
    assert result.report()["steps"] == 1  # found by the first step, before any checkpoint


def test_a_layer_tflite_and_onnx_cannot_run_is_named_and_the_rest_of_the_export_stands(train):
    result = train("model.layers=[{type: flatten}, {type: dense, units: 16}, {type: bessel_features}]",
                   "trainer.export=true", "trainer.export_formats=[saved_model,keras,tflite,onnx]",
                   "hardware.precision=float32")  # BesselI1e has no bfloat16 kernel on CPU (diagnosed, exit 4)
    assert_clean(result, 0)
    export = result.report()["export"]
    assert export["tflite"]["path"] is None
    assert export["tflite"]["error"].startswith("TFLite has no builtin kernel for BesselI1e in model layer 2 "
                                                "(bessel_features (custom BesselFeatures), config model.layers.2)")
    assert "no model.tflite in the export" in result.err and "Traceback" not in result.err
    assert (result.run_dir / "export" / "saved_model.pb").exists() and export["self_check_max_abs_diff"] is not None
    assert not (result.run_dir / "export" / "model.tflite").exists()
    assert "BesselI1e" in (result.run_dir / "export" / "tflite_converter.log").read_text()  # its own words, kept
    assert export["onnx"]["path"] is None and not (result.run_dir / "export" / "model.onnx").exists()
    assert export["onnx"]["error"].startswith("ONNX has no builtin kernel for BesselI1e in model layer 2 ")
    assert export["keras_file"] is None  # a custom layer without get_config: its own reason, recorded
    assert [row["format"] for row in export["parity"]] == ["saved_model"]  # the formats written, proven
