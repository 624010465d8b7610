"""Real TensorFlow failures, each turned into one diagnosis: kind, layer or key, fix, exit code.

The end-to-end cases use custom layers that pass the construction-time preflight (they behave
only when `training=True`, or fail only at run time), so the error really happens inside the
traced or running step, as in a user's project. Each asserts the kind, the layer named, the
exit code, the errors.jsonl record and the TensorBoard `errors/graph` text read back from the
event files. The unit cases raise the real error from TensorFlow ops and diagnose it directly.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import read_tensorboard
from safetrain.models.custom import custom_layer
from safetrain.diagnose.diagnosis import diagnose
from safetrain.diagnose.facts import is_safetrain_bug
from safetrain.core.run_state import Context, LayerRef
from safetrain.core.errors import DataError, GraphError


@custom_layer("numpy_when_training")
class NumpyWhenTraining(keras.layers.Layer):
    def call(self, x, training=None):
        return np.tanh(x) if training else x


@custom_layer("variable_when_training")
class VariableWhenTraining(keras.layers.Layer):
    def call(self, x, training=None):
        return x * tf.Variable(1.0, name="made_per_call") if training else x


@custom_layer("float64_when_training")
class Float64WhenTraining(keras.layers.Layer):
    def call(self, x, training=None):
        return x + tf.ones_like(x, dtype=tf.float64) if training else x


@custom_layer("string_roundtrip")
class StringRoundtrip(keras.layers.Layer):
    """Casts through tf.string: fine to build, no CPU kernel to run (straight-through gradient)."""

    def call(self, x):
        y = tf.cast(tf.strings.as_string(x), x.dtype)
        return x + tf.stop_gradient(y - x)


@custom_layer("reshape_batch_32", output_shape=lambda shape: (shape[0] * shape[1] * shape[2],))
class ReshapeBatch32(keras.layers.Layer):
    """Hard-codes the batch size: trains, then fails on the smaller last eval batch."""

    def call(self, x):
        return tf.reshape(x, [32, x.shape[1] * x.shape[2] * x.shape[3]])


@custom_layer("huge_when_batch_over_8")
class HugeWhenBatchOver8(keras.layers.Layer):
    """Asks for ~4 TB when training with batches over 8 (sized at run time: no constant folding)."""

    def call(self, x, training=None):
        if training and x.shape[0] is not None and x.shape[0] > 8:
            zero = tf.cast(tf.reduce_max(x) * 0.0, tf.int32)
            return x + tf.reduce_sum(tf.zeros(tf.stack([tf.shape(x)[0] * 2**15 + zero, 2**20])))
        return x


@custom_layer("log_of_minus_one")
class LogOfMinusOne(keras.layers.Layer):
    """Injects NaN (log of a negative number) only while training."""

    def call(self, x, training=None):
        return x + tf.math.log(-tf.ones_like(x)) if training else x


def _run_with(train, layer: str, *extra: str):
    return train("hardware.precision=float32", *extra,
                 f"model.layers=[{{type: conv2d, filters: 4, kernel_size: 3}}, {{type: {layer}}}, {{type: flatten}}]")


def _assert_diagnosed(result, *, code: int, kind: str, phase: str, key: str, says: list[str]) -> dict:
    assert result.code == code, result.err
    assert "Traceback" not in result.err and "Graph execution error" not in result.err
    report = result.report()
    assert report["error"]["kind"] == kind and report["error"]["config_key"] == key
    [record] = [e for e in result.errors() if e["kind"] == kind]
    assert record["phase"] == phase and record["config_key"] == key and record["hint"]
    _, texts = read_tensorboard(result.run_dir / "tb")
    board = texts["errors/graph"]
    assert kind in board and f"phase {phase}" in board
    for text in says:
        assert text in result.err and text in board and text in record["message"] + record["hint"], text
    return record


pytestmark = pytest.mark.e2e


def test_numpy_on_a_symbolic_tensor_at_trace_time_names_the_layer_and_the_source_line(train):
    import inspect

    result = _run_with(train, "numpy_when_training")
    line = inspect.getsourcelines(NumpyWhenTraining.call)[1] + 1
    _assert_diagnosed(result, code=4, kind="symbolic_tensor_numpy", phase="trace", key="model.layers.1",
                      says=["model layer 1 (numpy_when_training (custom NumpyWhenTraining)",
                            f"test_diagnosis.py:{line} in call", "keras.ops.tanh"])


def test_a_variable_created_while_tracing_names_the_layer_and_add_weight(train):
    result = _run_with(train, "variable_when_training")
    _assert_diagnosed(result, code=4, kind="variable_in_tf_function", phase="trace", key="model.layers.1",
                      says=["model layer 1 (variable_when_training", "self.add_weight"])


def test_a_float64_tensor_in_a_float32_model_is_a_dtype_mismatch(train):
    result = _run_with(train, "float64_when_training")
    _assert_diagnosed(result, code=4, kind="dtype_mismatch", phase="trace", key="model.layers.1",
                      says=["model layer 1 (float64_when_training", "float64", "keras.ops.cast"])


def test_an_op_without_a_cpu_kernel_for_its_dtype_names_op_and_layer(train):
    result = _run_with(train, "string_roundtrip")
    record = _assert_diagnosed(result, code=4, kind="unimplemented_kernel", phase="train",
                               key="model.layers.1", says=["Cast string to float is not supported",
                                                           "L1_string_roundtrip"])
    assert record["tf_error_class"] == "UnimplementedError" and record["op"].endswith("L1_string_roundtrip_1/Cast")
    assert result.report()["steps"] == 0  # the first step failed


def test_a_shape_that_breaks_only_on_the_last_eval_batch_is_a_shape_mismatch_in_eval(train):
    result = _run_with(train, "reshape_batch_32")
    _assert_diagnosed(result, code=4, kind="shape_mismatch", phase="eval", key="model.layers.1",
                      says=["Input to reshape is a tensor with", "model layer 1 (reshape_batch_32"])
    assert result.report()["steps"] == 4  # training ran; the eval at the epoch end failed


def test_out_of_memory_gives_batch_size_parameters_and_the_fix(train):
    result = _run_with(train, "huge_when_batch_over_8")
    record = _assert_diagnosed(result, code=4, kind="out_of_memory", phase="train", key="trainer.batch_size",
                               says=["trainer.batch_size=32", "OOM when allocating tensor",
                                     "set trainer.batch_size=16", "model layer 1 (huge_when_batch_over_8"])
    assert record["tf_error_class"] == "ResourceExhaustedError"


def test_an_injected_nan_is_replayed_with_check_numerics_to_the_op_and_line_that_made_it(train):
    import inspect

    result = _run_with(train, "log_of_minus_one")
    line = inspect.getsourcelines(LogOfMinusOne.call)[1] + 1
    record = _assert_diagnosed(result, code=5, kind="non_finite", phase="train", key="model.layers.1",
                               says=["Replayed with check_numerics", "model layer 1 (log_of_minus_one",
                                     f"test_diagnosis.py:{line} in call"])
    assert record["op"].endswith("L1_log_of_minus_one_1/Log")
    assert "the learning rate is the likely cause" not in record["message"]  # the weights were fine


def test_on_oom_halve_batch_retries_from_the_checkpoint_until_it_fits(train):
    result = _run_with(train, "huge_when_batch_over_8", "trainer.on_oom=halve_batch")
    assert result.code == 0, result.err
    report = result.report()
    assert report["status"] == "ok" and report["steps"] == 4 and report["hardware"]["global_batch_size"] == 8
    retries = [e for e in result.errors() if e["kind"] == "out_of_memory"]
    assert [e["message"].rsplit("trainer.batch_size=", 1)[1][:2] for e in retries] == ["16", "8 "]
    assert "retrying from the last checkpoint with 16 (trainer.on_oom=halve_batch)" in result.err


def test_on_oom_halve_batch_stops_at_min_batch_size_with_the_diagnosis(train):
    result = _run_with(train, "huge_when_batch_over_8", "trainer.on_oom=halve_batch",
                       "trainer.min_batch_size=16")
    assert result.code == 4, result.err
    assert result.report()["error"]["kind"] == "out_of_memory"
    assert "trainer.batch_size=16" in result.report()["error"]["message"]  # the last size tried
    assert len([e for e in result.errors() if e["kind"] == "out_of_memory"]) == 2  # one retry, then the stop


# --- real errors from TensorFlow ops, diagnosed directly ----------------------------------------

LAYERS = {"L0_dense": LayerRef(0, "dense 16", "model.layers.0", "Dense")}


def _raised(fn) -> BaseException:
    try:
        fn()
    except Exception as err:  # noqa: BLE001
        return err
    raise AssertionError("expected TensorFlow to raise")


def test_label_out_of_range_in_sparse_cross_entropy():
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    step = tf.function(lambda y, logits: loss(y, logits))
    err = _raised(lambda: step(tf.constant([1, 10, 3]), tf.zeros([3, 10])))
    error = diagnose(err, Context(phase="train", step=7, layers=LAYERS))
    assert error.kind == "label_out_of_range" and error.exit_code == 4
    assert error.config_key == "dataset.num_classes" and "dataset.num_classes=11" in error.hint
    assert "label value 10" in error.message and "10 classes" in error.message and "step 7" in error.message
    assert "SparseSoftmaxCrossEntropyWithLogits" in error.op


def test_one_hot_labels_with_sparse_cross_entropy_point_at_the_loss_key():
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    step = tf.function(lambda y, logits: loss(y, logits))
    err = _raised(lambda: step(tf.one_hot([1, 2, 3], 10), tf.zeros([3, 10])))
    error = diagnose(err, Context(phase="train", step=1))
    assert error.kind == "shape_mismatch" and error.config_key == "trainer.loss"
    assert "dataset.label_encoding" in error.hint and error.phase == "trace"


def test_an_undecodable_image_in_the_pipeline_is_a_data_error_exit_3():
    ds = tf.data.Dataset.from_tensor_slices([b"\x89PNG but not really"]).map(tf.io.decode_image)
    err = _raised(lambda: next(iter(ds)))
    error = diagnose(err, Context(phase="train", step=3))
    assert isinstance(error, DataError) and error.exit_code == 3 and error.phase == "data"
    assert error.kind == "data_decode" and error.config_key == "dataset.on_bad_example"
    assert "Unknown image file format" in error.message


def test_a_layer_is_found_from_the_node_path_of_a_runtime_error():
    """Keras puts each layer's ops under its name; safetrain names layers L<index>_<type>."""
    inputs = keras.Input((2, 2, 1))
    model = keras.Model(inputs, ReshapeBatch32(name="L3_reshape_batch_32")(inputs))
    run = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec([None, 2, 2, 1])])
    err = _raised(lambda: run(tf.zeros([16, 2, 2, 1])))
    ref = LayerRef(3, "reshape_batch_32 (custom ReshapeBatch32)", "model.layers.3", "ReshapeBatch32")
    error = diagnose(err, Context(phase="eval", step=9, layers={"L3_reshape_batch_32": ref}))
    assert error.kind == "shape_mismatch" and error.config_key == "model.layers.3" and error.phase == "eval"
    assert "L3_reshape_batch_32" in error.op and "model layer 3 (reshape_batch_32" in error.message


def test_version_mismatch_on_a_recorded_numpy_abi_message():
    """Recorded text (this machine's libraries fit together, so the error cannot be produced here)."""
    err = ImportError("A module that was compiled using NumPy 1.x cannot be run in NumPy 2.1.0 as it may "
                      "crash. To support both 1.x and 2.x versions of NumPy, modules must be compiled with "
                      "NumPy 2.0.")
    error = diagnose(err, Context(phase="build"))
    assert error.kind == "version_mismatch" and "safetrain.doctor" in error.hint


def test_an_unrecognised_error_keeps_the_raw_message_and_op():
    @tf.function
    def fn(x):
        with tf.control_dependencies([tf.debugging.assert_equal(x, 0.0, message="custom invariant broke")]):
            return tf.identity(x)

    err = _raised(lambda: fn(tf.ones([2])))
    error = diagnose(err, Context(phase="train", step=2))
    assert isinstance(error, GraphError) and error.kind == "unknown" and error.exit_code == 4
    assert "custom invariant broke" in error.message and error.op and "debug=true" in error.hint


def test_a_slip_in_safetrain_itself_is_not_dressed_up_as_a_diagnosis():
    from safetrain.diagnose import facts

    def buggy():
        return facts.facts(None, None)  # AttributeError inside safetrain/diagnose/facts.py

    assert is_safetrain_bug(_raised(buggy))
    # pipelines/ and models/ are safetrain's own too (they install as safetrain.pipelines/.models)
    from safetrain.pipelines.spec import plan_adapters
    assert is_safetrain_bug(_raised(lambda: plan_adapters(None, None, "error", "error")))
    assert not is_safetrain_bug(_raised(lambda: tf.reshape(tf.zeros([3]), [2])))
