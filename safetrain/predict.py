"""`python -m safetrain.predict run_dir=RUN FILE... [top_k=3] [--format NAME]`: classify image files with a run's export.

Loads <run dir>/export (the SavedModel written at the end of training) and classifies each file
on its own, so one bad file (not an image, truncated, the wrong size or channels for a model
trained with resize/channel_policy=error) gets its own error line and the others are still
classified. Prints one line per file:

    digit.png: 7 0.982 | 1 0.011 | 9 0.004
    blurry.png: unsure (best guess: 3 0.61, below 0.83: the threshold for 0.99 accuracy) | 3 0.610 | 5 0.301 | 8 0.042
    notes.txt: error: not an image TensorFlow can decode (Unknown image file format...)

The probabilities are calibrated (the temperature fitted on eval, signature.json `temperature`);
"unsure" appears when the run set trainer.serving_target_accuracy and the top probability is below
the threshold that reached it on eval (signature.json `unsure`).

A multi-label run prints the label set instead: every label at or above its threshold (tuned on
eval, in signature.json), most probable first, or "none" and the most probable label:

    shop.png: bag 0.941 | sneaker 0.702
    empty.png: none (most probable: coat 0.212, threshold 0.384)

`--format tflite|tflite_int8|onnx|keras` classifies with that export file instead (LiteRT's
interpreter, ONNX Runtime, Keras), each file prepared by the SavedModel's own `prepare_images` —
the enforcement `classify` applies — through safetrain.experiment.runtimes, the same code that
proved each format on the test files at export (report.json export.parity). `--tflite` is
`--format tflite`.

Exit 0 when every file was classified, 3 when any could not be (data error), 2 for bad arguments
or a run without an export.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from safetrain.core.errors import EXIT_CONFIG, EXIT_DATA, Phase
from safetrain.record import names as run_files

USAGE = ("usage: python -m safetrain.predict run_dir=RUN_DIR [top_k=3] [--format saved_model|keras|tflite|"
         "tflite_int8|onnx] FILE [FILE...]")
FORMATS = ("saved_model", "keras", "tflite", "tflite_int8", "onnx")


def parse(args: list[str]) -> tuple[Path, int, list[Path], str]:
    run_dir, top_k, files, fmt = None, 3, [], "saved_model"
    args = list(args)
    while args:
        arg = args.pop(0)
        key, eq, value = arg.partition("=")
        if arg == "--tflite":  # the older spelling of --format tflite
            fmt = "tflite"
        elif key == "--format":
            fmt = value if eq else (args.pop(0) if args else "")
            if fmt not in FORMATS:
                raise ValueError(f"--format {fmt or '(nothing)'} is not an export format; give one of "
                                 f"{', '.join(FORMATS)}")
        elif eq and key == "run_dir":
            run_dir = Path(value).expanduser()
        elif eq and key == "top_k":
            if not value.isdigit() or int(value) < 1:
                raise ValueError(f"top_k={value} must be a positive integer")
            top_k = int(value)
        else:
            files.append(Path(arg))
    if run_dir is None or not files:
        raise ValueError("give run_dir=... and at least one image file")
    export = run_dir / run_files.EXPORT
    if not (export / run_files.SAVED_MODEL).exists():
        raise ValueError(f"{run_dir} has no export/ (trained with trainer.export=false, or not finished); "
                         f"train with trainer.export=true")
    from safetrain.experiment.runtimes import FILES

    if not (export / FILES[fmt]).exists():
        raise ValueError(f"{run_dir}/export has no {FILES[fmt]} (trainer.export_formats without {fmt}, or it was left "
                         f"out: report.json export.{fmt} says why); train with trainer.export_formats=[saved_model,"
                         f"{fmt}]")
    return run_dir, top_k, files, fmt


def _reason(err: Exception) -> str:
    from safetrain.diagnose.facts import facts
    from safetrain.core.run_state import Context

    cause = facts(err, Context(phase=Phase.data)).cause
    refused = re.search(r"assertion failed: \[(.*?)\]", cause)
    if refused:
        return refused.group(1).replace("\\'", "'")
    if "Unknown image file format" in cause or "Input is empty" in cause:
        return f"not an image TensorFlow can decode ({cause})"
    return cause


def main(argv: list[str] | None = None) -> int:
    try:
        run_dir, top_k, files, fmt = parse(sys.argv[1:] if argv is None else argv)
    except ValueError as err:
        print(f"safetrain.predict: {err}\n{USAGE}", file=sys.stderr)
        return EXIT_CONFIG
    tf, served = _load(run_dir)
    from safetrain.experiment.runtimes import runner
    from safetrain.pipelines.serving import upright_bytes

    signature = json.loads((run_dir / run_files.EXPORT / run_files.SIGNATURE).read_text())
    names, upright = signature["classes"], signature.get("exif_orientation", "ignore") == "apply"
    classify = runner(run_dir / run_files.EXPORT, fmt, served)
    failed = 0
    for path in files:
        try:
            data = path.read_bytes()
            refused = _size_refused(data, signature, upright)
            if refused:
                failed += 1
                print(f"{path}: error: {refused}")
                continue
            probabilities = classify([upright_bytes(data) if upright else data])[0]
        except (OSError, tf.errors.OpError) as err:
            failed += 1
            reason = err.strerror if isinstance(err, OSError) else _reason(err)
            print(f"{path}: error: {reason}")
            continue
        print(f"{path}: {answer(probabilities, names, signature, top_k)}")
    if failed:
        print(f"safetrain.predict: {failed} of {len(files)} files could not be classified", file=sys.stderr)
    return EXIT_DATA if failed else 0


def answer(probabilities, names: list[str], signature: dict, top_k: int) -> str:
    """One file's line: the top_k classes with their probabilities; multi-label: every label at
    or above its threshold (signature.json, tuned on eval), most probable first, or "none" with
    the most probable label when no label reaches its threshold."""
    order = probabilities.argsort()[::-1]
    if signature.get("task") != "multi_label":
        below = (signature.get("unsure") or {}).get("below")
        if below is not None and probabilities[order[0]] < below:
            return (f"unsure (best guess: {names[order[0]]} {probabilities[order[0]]:.2f}, below {below:.2f}: the "
                    f"threshold for {signature['unsure']['target_accuracy']:g} accuracy) | "
                    + " | ".join(f"{names[i]} {probabilities[i]:.3f}" for i in order[:top_k]))
        return " | ".join(f"{names[i]} {probabilities[i]:.3f}" for i in order[:top_k])
    cut = signature["thresholds"]
    chosen = [i for i in order if probabilities[i] >= cut[names[i]]]
    if not chosen:
        best = order[0]
        return f"none (most probable: {names[best]} {probabilities[best]:.3f}, threshold {cut[names[best]]:.3f})"
    return " | ".join(f"{names[i]} {probabilities[i]:.3f}" for i in chosen)


def _size_refused(data: bytes, signature: dict, upright: bool) -> str | None:
    """Why an export that refuses other sizes (trainer.serving_resize=error) refuses this file,
    from its header: its size, the model's, and the fix; None when it fits or is resized."""
    if signature.get("serving_resize", signature.get("resize")) != "error":
        return None
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if upright and int(img.getexif().get(0x0112, 1) or 1) in (5, 6, 7, 8):
                width, height = height, width
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None  # TensorFlow's decoder names what it cannot read
    want_h, want_w = (int(v) for v in signature["model_input"].split(" ")[0].split("x")[:2])
    if (height, width) == (want_h, want_w):
        return None
    return (f"the image is {height}x{width} (height x width) and the model takes {want_h}x{want_w}; this export "
            f"refuses other sizes (trainer.serving_resize=error): resize the file to {want_h}x{want_w}, or export "
            f"with trainer.serving_resize=bilinear")


def _load(run_dir: Path):
    """TensorFlow (imported quietly) and the run's exported SavedModel."""
    from safetrain.core.tf_import import import_tensorflow

    tf = import_tensorflow()
    return tf, tf.saved_model.load(str(run_dir / run_files.EXPORT))


def probabilities_of(run_dir: Path, files: list[Path]) -> list[list[float]]:
    """For tests and scripts: the probability rows for `files` (all must be readable)."""
    from safetrain.pipelines.serving import upright_bytes

    tf, served = _load(run_dir)
    signature = json.loads((run_dir / run_files.EXPORT / run_files.SIGNATURE).read_text())
    upright = signature.get("exif_orientation") == "apply"
    return [served.classify(tf.constant([upright_bytes(p.read_bytes()) if upright else p.read_bytes()]))
            ["probabilities"].numpy()[0].tolist() for p in files]


if __name__ == "__main__":
    sys.exit(main())
