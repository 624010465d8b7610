"""What an exception says, pulled apart: the cause line, the op, the model layer, the user's line.

TensorFlow's run-time errors read "Graph execution error: Detected at node X defined at (most
recent call last): <frames>" and put the real cause on the last lines; Keras' trace-time errors
say "Exception encountered when calling Foo.call()" and often blame the layer after the culprit.
`facts` pulls out the cause line, the op, the model layer the op belongs to (safetrain names
layers `L<index>_<type>`, and the node path carries the name) and the user's source line when
TensorFlow kept the op's creation stack. The rule table that turns facts into a diagnosis is
safetrain.diagnosis.

Pure Python on the exception's class name, message and traceback: importable without TensorFlow.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from safetrain.core.run_state import Context, LayerRef

_SAFETRAIN = Path(__file__).resolve().parents[1]
# pipelines/ and models/ (safetrain.pipelines, safetrain.models): inside safetrain/ when installed
# from a wheel, beside it in a checkout.
_PACKAGE_DIRS = tuple(str(d) + os.sep for d in (_SAFETRAIN, _SAFETRAIN.parent / "pipelines",
                                                _SAFETRAIN.parent / "models"))


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
    layer = layer_from_op(op, ctx) or _layer_from_frames(chain, ctx) or _layer_from_text(raw, ctx)
    return Facts(tf_error_class=type(head).__name__, cause=cause[:600], op=op, layer=layer,
                 source=_user_source(message, chain, runtime=hasattr(head, "error_code")), raw=raw,
                 runtime=hasattr(head, "error_code"))


def layer_from_op(op: str | None, ctx: Context) -> LayerRef | None:
    """The config entry whose Keras layer created the node `op` (`.../L3_conv2d_1/Conv2D` -> layer 3)."""
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
