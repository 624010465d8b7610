"""From a TensorFlow or Keras exception to one diagnosis: kind, message, hint, config key.

TensorFlow's run-time errors read "Graph execution error: Detected at node X defined at (most
recent call last): <frames>" and put the real cause on the last lines; Keras' trace-time errors
say "Exception encountered when calling Foo.call()" and often blame the layer after the culprit.
`diagnose` pulls out the cause line, the op, the model layer the op belongs to (safetrain names
layers `L<index>_<type>`, and the node path carries the name), the user's source line when
TensorFlow kept the op's creation stack, and classifies the text against a table of patterns
taken from the real messages (shared/reference/keras-baseline.md and the tests that reproduce
each one). The result is an ordinary SafetrainError with the exit code of its kind.

Pure Python on the exception's class name, message and traceback: importable without
TensorFlow, so the table is unit-tested on recorded messages as well as on live errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from safetrain.errors import DataError, GraphError, NumericsError, SafetrainError

_PACKAGE_DIRS = tuple(str(Path(__file__).resolve().parent.parent / d) for d in ("safetrain", "pipelines", "models"))


def _is_ours(path: str) -> bool:
    """safetrain's own code; models/custom_layers.py is the user's (their custom layers live there)."""
    return path.startswith(_PACKAGE_DIRS) and not path.endswith("custom_layers.py")


def is_safetrain_bug(err: BaseException) -> bool:
    """A Python slip in safetrain's own code (not a TensorFlow/Keras complaint about the user's
    model or data): it must keep its traceback and not be dressed up as a diagnosis."""
    if not isinstance(err, (AttributeError, NameError, KeyError, IndexError, AssertionError, ImportError)):
        return False
    tb = err.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and _is_ours(tb.tb_frame.f_code.co_filename)


@dataclass(frozen=True)
class LayerRef:
    """A model layer as the user knows it."""

    index: int
    label: str          # e.g. "conv2d 32, 3x3, ..." (the shape table's wording)
    config_key: str     # e.g. "model.layers[3]"
    class_name: str = ""

    def describe(self) -> str:
        return f"model layer {self.index} ({self.label}, config {self.config_key})"


@dataclass
class Context:
    """What the run knew when the error happened; every field may be unknown."""

    phase: str = "train"                  # build | data | trace | train | eval
    step: int | None = None
    batch_size: int | None = None
    precision: str | None = None
    device: str | None = None
    input_spec: str | None = None         # what the pipeline delivers, e.g. "28x28x1 float32"
    params: int | None = None
    activation_bytes_per_example: int | None = None
    layers: dict[str, LayerRef] = field(default_factory=dict)  # Keras layer name -> LayerRef


@dataclass(frozen=True)
class Facts:
    """What the exception says, pulled apart."""

    tf_error_class: str
    cause: str                  # the line(s) that say what went wrong
    op: str | None              # the failing node (graph path), when named
    layer: LayerRef | None
    source: str | None          # "file.py:12 in call" of the user's code, when known
    raw: str
    runtime: bool = False       # a tf.errors.OpError from running a graph (not a trace-time exception)


def _chain(err: BaseException) -> list[BaseException]:
    out, seen = [], err
    while seen is not None and len(out) < 8:
        out.append(seen)
        seen = seen.__cause__ or seen.__context__
    return out


_FRAME = re.compile(r'^\s*File "([^"]+)", line (\d+), in (\S+)')
_NODE = re.compile(r"(?:Detected at node|\{\{node) '?([^\s'}]+)")
_CREATION_FRAME = re.compile(r"\+ (\S+) \(L(\d+)\) (\S+)")


def _is_library(path: str) -> bool:
    """Installed code. TensorFlow shortens long paths in creation stacks to '...tail'; those are
    library frames (its "->" user-code guess also marks Keras' own files)."""
    return path.startswith("...") or any(
        part in path for part in ("site-packages", "dist-packages", "/lib/python", "<frozen"))


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^\s*(?:\w+\.)*\w+(?:Error|Exception): ", re.M)


def _cause_text(message: str) -> str:
    """The sentence that states the cause, without TensorFlow's node/stack preamble, autograph's
    "in user code:" listing, Keras' "Exception encountered when calling" header and its
    "Arguments received by" trailer."""
    text = _ANSI.sub("", message).replace("<stack traces unavailable>", "")
    if "in user code:" in text:
        starts = list(_EXCEPTION_LINE.finditer(text))
        if starts:
            text = text[starts[-1].end():]
    text = text.split("Arguments received by", 1)[0]
    kept = []
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(("Graph execution error", "Detected at node", "[[", "Stack trace", "+ ", "|",
                                  "->", "Exception encountered when calling", "Hint: If you want to see")):
            continue
        if _FRAME.match(line):
            continue
        s = re.sub(r"\s*\[\[\{\{node [^}]+\}\}\]\].*$|\s*\[Op:[^\]]*\]\s*(name:.*)?$", "", s)
        if s:
            kept.append(s)
    return " ".join(kept[:3]).strip()


def facts(err: BaseException, ctx: Context) -> Facts:
    chain = _chain(err)
    raw = _ANSI.sub("", "\n".join(f"{type(e).__name__}: {getattr(e, 'message', None) or e}" for e in chain))
    head = next((e for e in chain if type(e).__module__.startswith("tensorflow")), chain[0])
    message = str(getattr(head, "message", None) or head)
    cause = _cause_text(message) or _cause_text(raw) or type(head).__name__
    op = getattr(getattr(head, "op", None), "name", None)
    node = _NODE.search(message)
    if op is None and node:
        op = node.group(1)
    layer = _layer_from_op(op, ctx) or _layer_from_frames(chain, ctx) or _layer_from_text(raw, ctx)
    return Facts(tf_error_class=type(head).__name__, cause=cause[:600], op=op, layer=layer,
                 source=_user_source(message, chain, runtime=hasattr(head, "error_code")), raw=raw,
                 runtime=hasattr(head, "error_code"))


def _layer_from_op(op: str | None, ctx: Context) -> LayerRef | None:
    for part in (op or "").split("/"):
        for name in (part, re.sub(r"_\d+$", "", part)):  # Keras suffixes a re-entered name scope: head_1
            if name in ctx.layers:
                return ctx.layers[name]
    return None


def _layer_from_frames(chain: list[BaseException], ctx: Context) -> LayerRef | None:
    """The innermost frame running a model layer's method (Keras would name the *next* layer
    when the culprit's output is wrong, but the failing frame is the culprit's)."""
    found = None
    for err in chain:
        tb = err.__traceback__
        while tb is not None:
            name = getattr(tb.tb_frame.f_locals.get("self"), "name", None)
            if isinstance(name, str) and name in ctx.layers:
                found = ctx.layers[name]
            tb = tb.tb_next
        if found:
            return found
    return None


def _layer_from_text(raw: str, ctx: Context) -> LayerRef | None:
    for name, ref in ctx.layers.items():
        if f"'{name}'" in raw or f"/{name}/" in raw:
            return ref
    m = re.search(r"when calling (\w+)\.call\(\)", raw)
    if m:
        matches = [ref for ref in ctx.layers.values() if ref.class_name == m.group(1)]
        if len(matches) == 1:
            return matches[0]
    return None


def _user_source(message: str, chain: list[BaseException], runtime: bool) -> str | None:
    """The user's line: from TensorFlow's creation stack ('->' marks user code) or the traceback.
    A run-time error's Python traceback is where the step was *called*, not where the op was
    written, so only the op's creation frames in the message count then."""
    created = [m for m in _CREATION_FRAME.finditer(message) if not _is_library(m.group(1))]
    if created:  # the innermost non-library frame of the op's creation: the user's, unless it is ours
        m = created[-1]
        return None if _is_ours(m.group(1)) else f"{Path(m.group(1)).name}:{m.group(2)} in {m.group(3)}"
    frames = [(f, ln, fn) for f, ln, fn in (fr.groups() for fr in map(_FRAME.match, message.splitlines()) if fr)
              if not _is_library(f) and not _is_ours(f)]
    for err in [] if runtime else chain:
        tb = err.__traceback__
        while tb is not None:
            code = tb.tb_frame.f_code
            if not _is_library(code.co_filename) and not _is_ours(code.co_filename):
                frames.append((code.co_filename, str(tb.tb_lineno), code.co_name))
            tb = tb.tb_next
    if frames:
        f, ln, fn = frames[-1]
        return f"{Path(f).name}:{ln} in {fn}"
    return None


# --- the table -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    kind: str
    pattern: str                                  # regex over "<class>: <cause>\n<raw>"
    explain: Callable[[Facts, Context, re.Match], tuple[str, str, str | None]]  # why, fix, config key
    error: type[SafetrainError] = GraphError


def _where(f: Facts) -> str:
    return f.layer.describe() if f.layer else "the model"


def _layer_key(f: Facts, default: str | None = None) -> str | None:
    return f.layer.config_key if f.layer else default


def _mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{max(1, round(n / 2**10)):,} KiB"


def _oom(f: Facts, ctx: Context, m) -> tuple[str, str, str | None]:
    if f.op and re.search(r"Decode(Image|Png|Jpeg|Gif|Bmp)", f.op):
        return ("decoding an image needed more memory than there is",
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
    return (f"the step needs more memory than the device has: {', '.join(sizes) or 'sizes unknown'}{culprit}",
            f"set trainer.batch_size={half} (or trainer.on_oom=halve_batch to retry smaller from the last "
            f"checkpoint automatically); mixed precision (hardware.precision=auto on a GPU) halves activations",
            "trainer.batch_size")


def _labels(f: Facts, ctx: Context, m) -> tuple[str, str, str | None]:
    value, classes = int(m.group(1)), int(m.group(2))
    return (f"a label value {value} reached the loss, which has {classes} classes (valid labels 0..{classes - 1})",
            f"set dataset.num_classes={max(value + 1, classes)} (or null to take it from the data), or fix "
            f"the labels; safetrain's pipeline check catches this before training when num_classes is right",
            "dataset.num_classes")


def _decode(f: Facts, ctx: Context, m) -> tuple[str, str, str | None]:
    return ("an image file could not be decoded (corrupt, truncated, empty or too large)",
            "set dataset.on_bad_example=skip to skip undecodable files (each is listed in errors.jsonl), or "
            "remove the file; the image_folder source names such files before training", "dataset.on_bad_example")


def _numpy(f: Facts, ctx: Context, m) -> tuple[str, str, str | None]:
    return (f"{_where(f)} calls NumPy on a symbolic tensor: the model is traced into a graph, where "
            f"tensors have no values yet",
            "use keras.ops / tf ops of the same name (np.tanh -> keras.ops.tanh) in the layer's call()",
            _layer_key(f))


def _variable(f: Facts, ctx: Context, m) -> tuple[str, str, str | None]:
    return (f"{_where(f)} creates a tf.Variable while the step is traced; tf.function allows that only "
            f"on the first call, and a variable created per call would never be trained",
            "create it once in the layer's build() with self.add_weight(...) and use it in call()",
            _layer_key(f))


def _non_finite(f: Facts, ctx: Context, m) -> tuple[str, str, str | None]:
    return (f"a NaN or Inf appeared in {_where(f)}",
            "lower optimizer.learning_rate (e.g. by 10x), set optimizer.clipnorm=1.0, or check "
            "dataset.image.normalization", "optimizer.learning_rate")


def _version(f: Facts, ctx: Context, m) -> tuple[str, str, str | None]:
    return ("installed libraries do not fit together (a package built for another NumPy, protobuf, Keras "
            "or TensorFlow version)",
            "run `python -m safetrain.doctor` to see the versions and the known-bad combinations, then "
            "reinstall in a fresh venv with `pip install -e .`", None)


def _dtype(f: Facts, ctx: Context, m) -> tuple[str, str, str | None]:
    policy = f" under the {ctx.precision} policy" if ctx.precision and ctx.precision != "float32" else ""
    return (f"{_where(f)} received a tensor of the wrong dtype{policy}",
            "cast inside the layer's call() (keras.ops.cast(x, self.compute_dtype))"
            + (", or set hardware.precision=float32" if policy else "")
            + "; the pipeline delivers dataset.image.dtype", _layer_key(f, "dataset.image.dtype"))


def _loss_shape(f: Facts, ctx: Context, m) -> tuple[str, str, str | None]:
    return ("the labels' shape does not fit the loss: sparse_categorical_crossentropy takes class ids "
            "(batch,), categorical_crossentropy one-hot rows (batch, num_classes)",
            "make trainer.loss and dataset.label_encoding agree (sparse <-> sparse_categorical_crossentropy, "
            "one_hot <-> categorical_crossentropy)", "trainer.loss")


def _shape(f: Facts, ctx: Context, m) -> tuple[str, str, str | None]:
    spec = f" (the pipeline delivers {ctx.input_spec})" if ctx.input_spec else ""
    return (f"tensor shapes do not fit in {_where(f)}{spec}",
            "fix the layer's output shape (custom layers: declare output_shape in @custom_layer) or the "
            "layer arguments in the config; the shape table printed before training shows what each "
            "layer should produce", _layer_key(f, "model.layers"))


def _kernel(f: Facts, ctx: Context, m) -> tuple[str, str, str | None]:
    if re.search(r"\bstring\b", f.cause):
        return ("a tf.string tensor reached an op that needs numbers",
                "decode or convert the strings in the pipeline; images must reach the model as "
                "dataset.image.dtype numbers", _layer_key(f, "dataset.image.dtype"))
    half = re.search(r"half|bfloat16|float16", f.cause)
    return (f"TensorFlow has no kernel for this op with these dtypes on {ctx.device or 'this device'}",
            "cast the tensor to a supported dtype (usually float32) before the op"
            + (", or set hardware.precision=float32" if half else ""),
            "hardware.precision" if half else _layer_key(f))


def _missing_grad(f: Facts, ctx: Context, m) -> tuple[str, str, str | None]:
    return ("no trainable variable received a gradient: the loss does not depend on the weights",
            "remove non-differentiable ops (argmax, round, sign, casts to int) between the layers and the loss",
            "model.layers")


RULES: tuple[Rule, ...] = (
    Rule("out_of_memory", r"ResourceExhaustedError|OOM when allocating|out of memory", _oom),
    Rule("label_out_of_range", r"label value of (-?\d+) which is outside the valid range of \[0, (\d+)\)", _labels),
    Rule("data_decode", r"Unknown image file format|jpeg::Uncompress failed|Input is empty|PNG size too large|"
                        r"Invalid PNG data|Invalid GIF data|Invalid JPEG data|not a valid BMP", _decode, DataError),
    Rule("symbolic_tensor_numpy", r"Cannot convert a symbolic|symbolic [tT]ensor .*numpy|__array__", _numpy),
    Rule("variable_in_tf_function", r"only supports singleton tf\.Variables|could not be lifted out of a "
                                    r"`tf\.function`|Tried to create variable", _variable),
    Rule("non_finite", r"Detected Infinity or NaN|Tensor had (NaN|Inf) values|CheckNumerics", _non_finite,
         NumericsError),
    Rule("version_mismatch", r"compiled using NumPy 1\.x|_ARRAY_API not found|Descriptors cannot be created "
                             r"directly|module 'keras' has no attribute|tf_keras|undefined symbol", _version),
    Rule("missing_gradient", r"No gradients provided for any variable", _missing_grad),
    Rule("dtype_mismatch", r"DataType \w+ not in list of allowed values|expected to be a \w+ tensor but is a \w+ "
                           r"tensor|Tensor conversion requested dtype|must have the same dtype|"
                           r"cannot compute \w+ as input #\d+|has type \w+ that does not match type \w+", _dtype),
    Rule("shape_mismatch", r"must have rank \(ndim\)|`target` and `output` must have the same", _loss_shape),
    Rule("shape_mismatch", r"Incompatible shapes|incompatible with the layer|Matrix size-incompatible|"
                           r"Dimensions must be equal|Shapes .* are incompatible|Input to reshape is a tensor|"
                           r"ConcatOp ?: Dimension|output size would be zero or negative|"
                           r"In\[0\] mismatch In\[1\]|must be evenly divisible by", _shape),
    Rule("unimplemented_kernel", r"UnimplementedError|No OpKernel was registered|Could not find device for node|"
                                 r"is not supported|Could not satisfy device specification|no registered kernel",
         _kernel),
)

_PHASE_WORDS = {"build": "building the model", "data": "reading the data", "trace": "tracing the train step",
                "train": "the train step", "eval": "evaluation"}


def diagnose(err: BaseException, ctx: Context) -> SafetrainError:
    f = facts(err, ctx)
    text = f"{f.tf_error_class}: {f.cause}\n{f.raw}"
    for rule in RULES:
        m = re.search(rule.pattern, text)
        if m:
            why, hint, key = rule.explain(f, ctx, m)
            return _error(rule.error, rule.kind, why, hint, key, f, ctx)
    return _error(GraphError, "unknown", f"TensorFlow stopped in {_where(f)}",
                  "rerun with debug=true for the full error; if the cause above is unclear, report it with "
                  "errors.jsonl", _layer_key(f), f, ctx)


def _error(cls: type[SafetrainError], kind: str, why: str, hint: str, key: str | None, f: Facts,
           ctx: Context) -> SafetrainError:
    phase = ctx.phase
    if cls is DataError or (f.op or "").endswith("IteratorGetNext"):
        phase = "data"
    elif phase in ("train", "eval") and not f.runtime:
        phase = "trace"  # a Python exception while the step function was being traced
    when = _PHASE_WORDS.get(phase, phase) + (f", step {ctx.step}" if ctx.step else "")
    located = [x for x in (f"op {f.op}" if f.op else "", f"your code {f.source}" if f.source else "") if x]
    message = (f"{why} ({when}). TensorFlow said ({f.tf_error_class}): {f.cause}"
               + (f" [at {'; '.join(located)}]" if located else ""))
    error = cls(message, hint=hint, config_key=key, kind=kind, op=f.op, tf_error_class=f.tf_error_class)
    error.phase = phase
    return error
