"""From a TensorFlow or Keras exception to one diagnosis: kind, message, hint, config key.

`safetrain.diagnose.facts` pulls the exception apart (cause line, op, layer, the user's source line); here
a table of patterns taken from the real messages (shared/reference/keras-baseline.md and the tests
that reproduce each one) classifies it and explains it. The result is an ordinary SafetrainError
with the exit code of its kind.

Pure Python: importable without TensorFlow, so the table is unit-tested on recorded messages as
well as on live errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from safetrain.core.errors import DataError, ErrorKind, Explanation, GraphError, NumericsError, Phase, SafetrainError
from safetrain.diagnose.facts import Facts, facts
from safetrain.core.run_state import Context


@dataclass(frozen=True)
class Rule:
    """One row of the table: errors whose text matches `pattern` are `kind`, explained by `explain`."""

    kind: ErrorKind
    pattern: str                                  # regex over "<class>: <cause>\n<raw>"
    explain: Callable[[Facts, Context, re.Match], Explanation]
    error: type[SafetrainError] = GraphError


def _where(f: Facts) -> str:
    return f.layer.describe() if f.layer else "the model"


def _layer_key(f: Facts, default: str | None = None) -> str | None:
    return f.layer.config_key if f.layer else default


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{max(1, round(n / 2**10)):,} KiB"


def _oom(f: Facts, ctx: Context, m) -> Explanation:
    if f.op and re.search(r"Decode(Image|Png|Jpeg|Gif|Bmp)", f.op):
        return Explanation(
            "decoding an image needed more memory than there is",
            "lower dataset.max_pixels so oversized images become bad examples (checked before decoding), "
            "with dataset.on_bad_example=skip", "dataset.max_pixels")
    sizes = []
    if ctx.batch_size:
        sizes.append(f"trainer.batch_size={ctx.batch_size}")
    if ctx.params:
        sizes.append(f"{ctx.params:,} parameters (~{_mib(ctx.params * 4 * 4)} with gradients and Adam's slots)")
    if ctx.activation_bytes_per_example and ctx.batch_size:
        sizes.append(f"~{_mib(ctx.activation_bytes_per_example * ctx.batch_size)} of activations per batch "
                     f"(kept for the backward pass)")
    half = max(1, (ctx.batch_size or 2) // 2)
    culprit = f"; the allocation that failed is in {_where(f)}" if f.layer else ""
    return Explanation(
        f"the step needs more memory than the device has: {', '.join(sizes) or 'sizes unknown'}{culprit}",
        f"set trainer.batch_size={half} (or trainer.on_oom=halve_batch to retry smaller from the last "
        f"checkpoint automatically); mixed precision (hardware.precision=auto on a GPU) halves activations",
        "trainer.batch_size")


def _labels(f: Facts, ctx: Context, m) -> Explanation:
    value, classes = int(m.group(1)), int(m.group(2))
    return Explanation(
        f"a label value {value} reached the loss, which has {classes} classes (valid labels 0..{classes - 1})",
        f"set dataset.num_classes={max(value + 1, classes)} (or null to take it from the data), or fix "
        f"the labels; safetrain's pipeline check catches this before training when num_classes is right",
        "dataset.num_classes")


def _decode(f: Facts, ctx: Context, m) -> Explanation:
    return Explanation(
        "an image file could not be decoded (corrupt, truncated, empty or too large)",
        "set dataset.on_bad_example=skip to skip undecodable files (each is listed in errors.jsonl), or "
        "remove the file; the image_folder source names such files before training", "dataset.on_bad_example")


def _numpy(f: Facts, ctx: Context, m) -> Explanation:
    return Explanation(
        f"{_where(f)} calls NumPy on a symbolic tensor: the model is traced into a graph, where "
        f"tensors have no values yet",
        "use keras.ops / tf ops of the same name (np.tanh -> keras.ops.tanh) in the layer's call()",
        _layer_key(f))


def _variable(f: Facts, ctx: Context, m) -> Explanation:
    return Explanation(
        f"{_where(f)} creates a tf.Variable while the step is traced; tf.function allows that only "
        f"on the first call, and a variable created per call would never be trained",
        "create it once in the layer's build() with self.add_weight(...) and use it in call()",
        _layer_key(f))


def _non_finite(f: Facts, ctx: Context, m) -> Explanation:
    return Explanation(
        f"a NaN or Inf appeared in {_where(f)}",
        "lower optimizer.learning_rate (e.g. by 10x), set optimizer.clipnorm=1.0, or check "
        "dataset.image.normalization", "optimizer.learning_rate")


def _version(f: Facts, ctx: Context, m) -> Explanation:
    return Explanation(
        "installed libraries do not fit together (a package built for another NumPy, protobuf, Keras "
        "or TensorFlow version)",
        "run `python -m safetrain.doctor` to see the versions and the known-bad combinations, then "
        "reinstall in a fresh venv with `pip install -e .`", None)


def _dtype(f: Facts, ctx: Context, m) -> Explanation:
    policy = f" under the {ctx.precision} policy" if ctx.precision and ctx.precision != "float32" else ""
    return Explanation(
        f"{_where(f)} received a tensor of the wrong dtype{policy}",
        "cast inside the layer's call() (keras.ops.cast(x, self.compute_dtype))"
        + (", or set hardware.precision=float32" if policy else "")
        + "; the pipeline delivers dataset.image.dtype", _layer_key(f, "dataset.image.dtype"))


def _loss_shape(f: Facts, ctx: Context, m) -> Explanation:
    return Explanation(
        "the labels' shape does not fit the loss: sparse_categorical_crossentropy takes class ids "
        "(batch,), categorical_crossentropy one-hot rows (batch, num_classes)",
        "make trainer.loss and dataset.label_encoding agree (sparse <-> sparse_categorical_crossentropy, "
        "one_hot <-> categorical_crossentropy)", "trainer.loss")


def _shape(f: Facts, ctx: Context, m) -> Explanation:
    spec = f" (the pipeline delivers {ctx.input_spec})" if ctx.input_spec else ""
    return Explanation(
        f"tensor shapes do not fit in {_where(f)}{spec}",
        "fix the layer's output shape (custom layers: declare output_shape in @custom_layer) or the "
        "layer arguments in the config; the shape table printed before training shows what each "
        "layer should produce", _layer_key(f, "model.layers"))


def _kernel(f: Facts, ctx: Context, m) -> Explanation:
    if re.search(r"\bstring\b", f.cause):
        return Explanation(
            "a tf.string tensor reached an op that needs numbers",
            "decode or convert the strings in the pipeline; images must reach the model as "
            "dataset.image.dtype numbers", _layer_key(f, "dataset.image.dtype"))
    half = re.search(r"half|bfloat16|float16", f.cause)
    return Explanation(
        f"TensorFlow has no kernel for this op with these dtypes on {ctx.device or 'this device'}",
        "cast the tensor to a supported dtype (usually float32) before the op"
        + (", or set hardware.precision=float32" if half else ""),
        "hardware.precision" if half else _layer_key(f))


def _missing_grad(f: Facts, ctx: Context, m) -> Explanation:
    return Explanation(
        "no trainable variable received a gradient: the loss does not depend on the weights",
        "remove non-differentiable ops (argmax, round, sign, casts to int) between the layers and the loss",
        "model.layers")


def _cache(f: Facts, ctx: Context, m) -> Explanation:
    return Explanation(
        f"the image folder's cached pixel file {m.group(1)} was removed or damaged while the run read it (the "
        f"model is not at fault)",
        "rerun the same command: the scan writes the file again and training resumes from the last checkpoint; if "
        "something cleans the cache folder while runs use it, point dataset.cache_dir at a folder of its own",
        "dataset.cache_dir")


RULES: tuple[Rule, ...] = (
    Rule(ErrorKind.out_of_memory, r"ResourceExhaustedError|OOM when allocating|out of memory", _oom),
    Rule(ErrorKind.label_out_of_range,
         r"label value of (-?\d+) which is outside the valid range of \[0, (\d+)\)", _labels),
    Rule(ErrorKind.data_decode,
         r"Unknown image file format|jpeg::Uncompress failed|Input is empty|PNG size too large|"
         r"Invalid PNG data|Invalid GIF data|Invalid JPEG data|not a valid BMP", _decode, DataError),
    Rule(ErrorKind.data_cache, r"(?s)(?:NotFoundError|DataLossError).*?([^\s;:'\"]+\.tfrecord)", _cache, DataError),
    Rule(ErrorKind.symbolic_tensor_numpy, r"Cannot convert a symbolic|symbolic [tT]ensor .*numpy|__array__", _numpy),
    Rule(ErrorKind.variable_in_tf_function,
         r"only supports singleton tf\.Variables|could not be lifted out of a `tf\.function`|"
         r"Tried to create variable", _variable),
    Rule(ErrorKind.non_finite, r"Detected Infinity or NaN|Tensor had (NaN|Inf) values|CheckNumerics", _non_finite,
         NumericsError),
    Rule(ErrorKind.version_mismatch,
         r"compiled using NumPy 1\.x|_ARRAY_API not found|Descriptors cannot be created directly|"
         r"module 'keras' has no attribute|tf_keras|undefined symbol", _version),
    Rule(ErrorKind.missing_gradient, r"No gradients provided for any variable", _missing_grad),
    Rule(ErrorKind.dtype_mismatch,
         r"DataType \w+ not in list of allowed values|expected to be a \w+ tensor but is a \w+ tensor|"
         r"Tensor conversion requested dtype|must have the same dtype|"
         r"cannot compute \w+ as input #\d+|has type \w+ that does not match type \w+", _dtype),
    Rule(ErrorKind.shape_mismatch, r"must have rank \(ndim\)|`target` and `output` must have the same", _loss_shape),
    Rule(ErrorKind.shape_mismatch,
         r"Incompatible shapes|incompatible with the layer|Matrix size-incompatible|"
         r"Dimensions must be equal|Shapes .* are incompatible|Input to reshape is a tensor|"
         r"ConcatOp ?: Dimension|output size would be zero or negative|"
         r"In\[0\] mismatch In\[1\]|must be evenly divisible by", _shape),
    Rule(ErrorKind.unimplemented_kernel,
         r"UnimplementedError|No OpKernel was registered|Could not find device for node|"
         r"is not supported|Could not satisfy device specification|no registered kernel", _kernel),
)

_PHASE_WORDS = {Phase.build: "building the model", Phase.data: "reading the data",
                Phase.trace: "tracing the train step", Phase.train: "the train step", Phase.eval: "evaluation"}


def diagnose(err: BaseException, ctx: Context) -> SafetrainError:
    f = facts(err, ctx)
    text = f"{f.tf_error_class}: {f.cause}\n{f.raw}"
    for rule in RULES:
        m = re.search(rule.pattern, text)
        if m:
            return _error(rule.error, rule.kind, rule.explain(f, ctx, m), f, ctx)
    return _error(GraphError, ErrorKind.unknown, Explanation(
        f"TensorFlow stopped in {_where(f)}",
        "rerun with debug=true for the full error; if the cause above is unclear, report it with errors.jsonl",
        _layer_key(f)), f, ctx)


def _error(cls: type[SafetrainError], kind: ErrorKind, explained: Explanation, f: Facts,
           ctx: Context) -> SafetrainError:
    phase = ctx.phase
    if cls is DataError or (f.op or "").endswith("IteratorGetNext"):
        phase = Phase.data
    elif phase in (Phase.train, Phase.eval) and not f.runtime:
        phase = Phase.trace  # a Python exception while the step function was being traced
    when = _PHASE_WORDS.get(phase, phase) + (f", step {ctx.step}" if ctx.step else "")
    located = [x for x in (f"op {f.op}" if f.op else "", f"your code {f.source}" if f.source else "") if x]
    message = (f"{explained.why} ({when}). TensorFlow said ({f.tf_error_class}): {f.cause}"
               + (f" [at {'; '.join(located)}]" if located else ""))
    error = cls(message, hint=explained.fix, config_key=explained.config_key, kind=kind, op=f.op,
                tf_error_class=f.tf_error_class)
    error.phase = phase
    return error
