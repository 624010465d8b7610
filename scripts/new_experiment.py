"""Start a new project from a folder of images: scan it, propose the input spec, write the experiment.

    python scripts/new_experiment.py /data/pets pets            # writes configs/experiment/pets.yaml
    python scripts/new_experiment.py /data/pets pets --configs ~/my_configs   # your own config dir

The folder holds one sub-folder per class (or train/ and test/ each holding them). The scan
reads every file's header with Pillow (nothing is decoded but a sample): counts per class, image
sizes, channel modes, formats, unreadable files. From that it proposes the input spec — the
common size (or the median, rounded to a multiple of 8, between 16 and 224, resized bilinearly),
1 channel if every image is gray else 3, `standardize` normalization (per-channel mean and std
of a sample are shown; the pipeline recomputes them exactly from the training split) — writes
the experiment config with the findings as comments, and runs safetrain's checks on it without
training (`dry_run=true`: config, the full data scan, the shape table). Imbalanced classes, too
few images, mixed formats and unreadable files are reported with advice.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "P_gray"}
FEW_PER_CLASS = 20
IMBALANCE = 3.0
SAMPLE = 400


@dataclass
class Scan:
    counts: Counter = field(default_factory=Counter)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    modes: Counter = field(default_factory=Counter)
    formats: Counter = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)
    readable: list[Path] = field(default_factory=list)


def class_dirs(folder: Path) -> list[Path]:
    base = folder / "train" if (folder / "train").is_dir() else folder
    return sorted(p for p in base.iterdir() if p.is_dir())


def scan(folder: Path) -> Scan:
    from PIL import Image, UnidentifiedImageError

    found = Scan()
    for cls in class_dirs(folder):
        for path in sorted(cls.iterdir()):
            if path.suffix.lower() not in EXTENSIONS:
                continue
            try:
                with Image.open(path) as img:
                    mode = img.mode
                    if mode == "P":
                        mode = "P_gray" if img.convert("RGB").getextrema()[0] == img.convert("L").getextrema() else "P"
                    found.sizes.append(img.size)
                    found.modes[mode] += 1
                    found.formats[img.format] += 1
                    img.verify()
                found.counts[cls.name] += 1
                found.readable.append(path)
            except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
                found.unreadable.append(f"{path} ({err.__class__.__name__})")
    return found


def propose_size(sizes: list[tuple[int, int]]) -> tuple[int, int, bool]:
    """(height, width, resize needed)."""
    distinct = set(sizes)
    if len(distinct) == 1:
        width, height = sizes[0]
        if 8 <= min(width, height) and max(width, height) <= 512:
            return height, width, False
    side = lambda v: int(min(224, max(16, round(statistics.median(v) / 8) * 8)))  # noqa: E731
    return side([h for _, h in sizes]), side([w for w, _ in sizes]), True


def stats(paths: list[Path], height: int, width: int, channels: int) -> tuple[list[float], list[float]]:
    import numpy as np
    from PIL import Image

    arrays = []
    for path in paths[:SAMPLE]:
        with Image.open(path) as img:
            img = img.convert("L" if channels == 1 else "RGB").resize((width, height), Image.BILINEAR)
            arrays.append(np.asarray(img, np.float32).reshape(height, width, channels) / 255.0)
    data = np.stack(arrays)
    return ([round(float(v), 4) for v in data.mean(axis=(0, 1, 2))],
            [round(float(v), 4) for v in data.std(axis=(0, 1, 2))])


def advice(found: Scan) -> list[str]:
    notes = []
    counts = found.counts
    few = [f"{c} ({n})" for c, n in sorted(counts.items()) if n < FEW_PER_CLASS]
    if few:
        notes.append(f"too few images in {', '.join(few)}: under {FEW_PER_CLASS} per class the test split "
                     f"is too small to trust; collect more, or merge classes")
    if imbalanced(counts):
        big, small = max(counts, key=counts.get), min(counts, key=counts.get)
        notes.append(f"imbalanced classes: {big} has {counts[big]} images, {small} {counts[small]}; accuracy "
                     f"will flatter the big class — the experiment weights the loss per class "
                     f"(dataset.class_weights: balanced; dataset.sampling: balanced with class_weights: none "
                     f"draws the small classes more often instead); watch test_class_accuracy/* in TensorBoard, "
                     f"and collect "
                     f"more of the small ones")
    if len(found.formats) > 1:
        notes.append(f"mixed formats ({', '.join(f'{k} {v}' for k, v in found.formats.most_common())}): fine, "
                     f"each is decoded the same way; JPEG artefacts may differ from the PNGs'")
    if len(set(found.sizes)) > 1:
        notes.append(f"image sizes vary ({len(set(found.sizes))} different): every image is resized (bilinear) "
                     f"to the proposed size")
    if len(found.modes) > 1:
        notes.append(f"channel modes vary ({', '.join(f'{k} {v}' for k, v in found.modes.most_common())}): "
                     f"converted with dataset.channel_policy=convert (alpha dropped)")
    if found.unreadable:
        notes.append(f"{len(found.unreadable)} unreadable file(s), skipped with dataset.on_bad_example=skip and "
                     f"listed in errors.jsonl: " + "; ".join(found.unreadable[:5]))
    return notes


def imbalanced(counts) -> bool:
    return bool(counts) and max(counts.values()) > IMBALANCE * max(1, min(counts.values()))


def batch_size(images: int) -> int:
    """Small sets get small batches, so an epoch still has a few dozen steps."""
    return next(b for limit, b in ((1280, 32), (320, 16), (160, 8), (0, 4)) if images >= limit)


def render(name: str, folder: Path, found: Scan, command: str) -> str:
    height, width, resize = propose_size(found.sizes)
    gray = all(mode in GRAY_MODES for mode in found.modes)
    channels = 1 if gray else 3
    mean, std = stats(found.readable, height, width, channels)
    model = "cnn_small" if max(height, width) <= 64 else "cnn_residual"
    classes = sorted(found.counts)
    lines = [
        "# @package _global_",
        f"# Written by scripts/new_experiment.py from {folder}",
        f"#   {command}",
        f"# classes ({len(classes)}): " + ", ".join(f"{c} {found.counts[c]}" for c in classes),
        f"# sizes: {len(set(found.sizes))} distinct; median {statistics.median(h for _, h in found.sizes):.0f}x"
        f"{statistics.median(w for w, _ in found.sizes):.0f} (height x width)",
        f"# modes: {dict(found.modes)}; formats: {dict(found.formats)}",
        f"# sample mean {mean}, std {std} (0..1 scale; `standardize` recomputes them on the training split)",
    ]
    lines += [f"# advice: {note}" for note in advice(found)]
    lines += [
        "defaults:",
        "  - override /dataset: image_folder",
        f"  - override /model: {model}",
        "",
        f"name: {name}",
        "dataset:",
        f"  name: {name}",
        f"  path: {folder}",
        "  image:",
        f"    height: {height}",
        f"    width: {width}",
        f"    channels: {channels}",
        "    dtype: float32",
        "    normalization: standardize",
        f"  resize: {'bilinear' if resize else 'error'}",
        f"  channel_policy: {'convert' if len(found.modes) > 1 else 'error'}",
        f"  on_bad_example: {'skip' if found.unreadable else 'error'}",
        f"  class_weights: {'balanced' if imbalanced(found.counts) else 'none'}"
        + ("   # or class_weights: none with sampling: balanced" if imbalanced(found.counts) else ""),
        "trainer:",
        "  epochs: 10",
        f"  batch_size: {batch_size(sum(found.counts.values()))}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="one sub-folder per class (or train/ and test/ holding them)")
    parser.add_argument("name", help="experiment name: letters, digits, _ and -")
    parser.add_argument("--configs", type=Path, default=ROOT / "configs",
                        help="config dir to write experiment/NAME.yaml into (default: this repository's)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing experiment file")
    parser.add_argument("--no-check", action="store_true", help="write the file only; skip the dry run")
    args = parser.parse_args(argv)

    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.name):
        parser.error(f"name {args.name!r}: use letters, digits, _ and -")
    folder = args.folder.expanduser().resolve()
    if not folder.is_dir():
        parser.error(f"{folder} is not a folder")
    if len(class_dirs(folder)) < 2:
        parser.error(f"{folder} needs at least 2 class sub-folders (DIR/<class>/<image>)")
    target = args.configs.expanduser().resolve() / "experiment" / f"{args.name}.yaml"
    if target.exists() and not args.force:
        parser.error(f"{target} exists; pass --force to overwrite it")

    found = scan(folder)
    if not found.readable:
        parser.error(f"no readable images ({', '.join(sorted(EXTENSIONS))}) under {folder}")
    print(f"scanned {sum(found.counts.values()) + len(found.unreadable)} files in {len(found.counts)} classes: "
          + ", ".join(f"{c} {n}" for c, n in sorted(found.counts.items())))
    for note in advice(found):
        print(f"advice: {note}")
    run = [f"+experiment={args.name}"]
    if args.configs.expanduser().resolve() != (ROOT / "configs").resolve():
        run.insert(0, f"hydra.searchpath=[file://{args.configs.expanduser().resolve()}]")
    command = "python -m safetrain " + " ".join(run)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render(args.name, folder, found, command))
    print(f"wrote {target}")
    print(f"train it with:\n  {command}")
    if args.no_check:
        return 0
    print("checking it (config, every image, the model's shapes) without training:")
    # The check's run dir (report.json, the scan's errors.jsonl) goes to a temporary folder, not
    # into the config tree, where Hydra would see its .hydra/*.yaml as configs.
    check_dir = Path(tempfile.mkdtemp(prefix=f"safetrain-check-{args.name}-"))
    check = subprocess.run([sys.executable, "-m", "safetrain", *run, "dry_run=true", f"hydra.run.dir={check_dir}"],
                           env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    print(f"check's run directory (report.json, errors.jsonl): {check_dir}")
    return check.returncode


if __name__ == "__main__":
    sys.exit(main())
