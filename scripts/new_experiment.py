"""Start a new project from a folder of images: scan it, propose the input spec, write the experiment.

    python scripts/new_experiment.py /data/pets pets            # writes configs/experiment/pets.yaml
    python scripts/new_experiment.py /data/pets pets --configs ~/my_configs   # your own config dir
    python scripts/new_experiment.py /data/leaves/train.csv leaves            # a table of images and labels

A table (.csv, .tsv, .jsonl) is read as `dataset=image_table` reads it (pipelines.sources.table:
columns found by their common names, ids completed by the extension its files have, every bad
row named); its usable rows are scanned like a folder's files and the experiment names the table.
A table whose labels are sets (`bag|sneaker`) gets a multi-label experiment (dataset.task=
multi_label, binary cross-entropy, images without a label allowed and counted), and its learning
check reads the eval mAP against chance (the mean label prevalence) instead of the accuracy.

The folder holds one sub-folder per class (or train/ and test/ each holding them). The scan
reads every file's header with Pillow (nothing is decoded but a sample): counts per class, image
sizes, channel modes, formats, unreadable files. From that it proposes the input spec — the
common size (or the median, rounded to a multiple of 8, between 16 and 224, resized bilinearly),
1 channel if every image is gray else 3, `standardize` normalization (per-channel mean and std
of a sample are shown; the pipeline recomputes them exactly from the training split) — the
model that fits the time budget (each candidate's steady training rate measured on the folder's
input size for a few seconds; the budget raised, and said, when none trains enough epochs in
it) and a recipe (scripts/scaffold_recipe.py: AdamW with a warmup and cosine decay, label
smoothing, the best eval epoch, augmentation from what the sample looks like), writes the
experiment config with the findings as comments, and then proves it (`--check`):

- `learn` (default): a learning check — about a minute of training on up to 2,000 images per
  split; it learns when the training loss falls and the eval accuracy is above chance (the
  largest class's share; a binomial test) before "train it with" is printed. Too few steps, or
  an eval split too small to tell, is said so ("cannot tell", exit 0); a failed run prints its
  own output (exit 3); a check that does not learn is tried once more with a third of the
  learning rate, and the result (and what was tried) is said either way (exit 4);
- `dry`: safetrain's checks without training (`dry_run=true`: config, the full data scan, the
  shape table); `none`: write the file only.

Imbalanced classes, too few images, mixed formats and unreadable files are reported with advice.
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
sys.path.insert(0, str(ROOT))

from safetrain.pipelines.sources.folder_files import EXTENSIONS, is_hidden, list_files  # noqa: E402  (no TensorFlow)
from safetrain.pipelines.sources.folder_files import split_dirs as find_split_dirs  # noqa: E402
from safetrain.pipelines.sources.stratify import every_class_in_every_slice  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
import scaffold_recipe as recipe  # noqa: E402

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "P_gray"}
MODE_CHANNELS = {"1": 1, "L": 1, "I": 1, "I;16": 1, "I;16B": 1, "P_gray": 1, "LA": 2, "RGB": 3, "P": 3,
                 "YCbCr": 3, "CMYK": 3, "RGBA": 4}
ORIENTATION = 0x0112
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
    hidden: list[Path] = field(default_factory=list)     # hidden/system entries the source ignores too
    missing: list[tuple[str, str]] = field(default_factory=list)  # (split folder, class) without images
    rotated: int = 0                                     # EXIF-rotated photos (sizes counted upright)
    gray_color: bool = False                             # RGB/RGBA files that hold grey images
    notes_extra: list[str] = field(default_factory=list)  # what choosing the splits decided
    split_lines: list[str] = field(default_factory=list)  # the config's dataset.splits lines, if not the default
    bad_rows: list[str] = field(default_factory=list)     # a table's refused rows: "kind (line N)"
    split_names: list[str] = field(default_factory=list)  # split folders, or a table's split column values
    table: object = None                                 # pipelines.sources.table.Table, for a table
    images: int = 0                                      # readable training images (a label set counts once)
    empty_sets: int = 0                                  # multi-label: training images with no label

    @property
    def multi_label(self) -> bool:
        """A table of label sets: `counts` are images per label."""
        return bool(self.table is not None and self.table.multi_label)


def split_dirs(folder: Path) -> dict[str, Path]:
    """As the image_folder source reads it (pipelines.sources.folder_files.split_dirs)."""
    return find_split_dirs(folder)[0]


def class_dirs(folder: Path) -> list[Path]:
    base = split_dirs(folder)["train"]
    return sorted(p for p in base.iterdir() if p.is_dir() and not is_hidden(p.name))


def scan(folder: Path) -> Scan:
    classes = [c.name for c in class_dirs(folder)]
    found = Scan()
    entries = []
    for split, base in split_dirs(folder).items():
        for cls in classes:
            images, _, hidden, _ = list_files(base / cls) if (base / cls).is_dir() else ([], [], [], [])
            found.hidden += hidden
            if split != "train" and not images:
                found.missing.append((split, cls))
            entries += [(split, cls, path) for path in images]
    look(found, entries)
    found.hidden += [p for p in folder.iterdir() if is_hidden(p.name)]
    found.gray_color = gray_stored_as_color(found)
    found.split_lines = splits_lines(split_dirs(folder), found)
    found.split_names = list(split_dirs(folder))
    return found


def scan_table(table) -> Scan:
    """A table's usable rows (pipelines.sources.table: every bad row is named there) as the folder
    scan sees files; its split column, when it has one, as split folders."""
    found = Scan(table=table)
    look(found, [(r.split or "train", r.labels if table.multi_label else r.label, table.root / r.rel)
                 for r in table.rows])
    splits = {r.split for r in table.rows if r.split}
    for split in sorted(splits - {"train"}):
        have = {x for r in table.rows if r.split == split for x in (r.labels if table.multi_label else (r.label,))}
        found.missing += [(split, cls) for cls in sorted(found.counts) if cls not in have]
    found.bad_rows = [f"{b.kind} (line {b.line})" for b in table.bad]
    found.split_names = sorted(splits or {"train"})
    found.split_lines = splits_lines({name: table.root for name in found.split_names}, found)
    found.gray_color = gray_stored_as_color(found)
    return found


def look(found: Scan, entries: list[tuple[str, str, Path]]) -> None:
    """Each (split, class, file)'s header (Pillow; nothing decoded): size upright, mode, format."""
    from PIL import Image, UnidentifiedImageError

    for split, cls, path in entries:
        try:
            with Image.open(path) as img:
                img.verify()  # must come first: a verified image cannot be used further
            with Image.open(path) as img:
                mode = img.mode
                if mode == "P":
                    mode = "P_gray" if img.convert("RGB").getextrema()[0] == img.convert("L").getextrema() \
                        else "P"
                width, height = img.size
                if int(img.getexif().get(ORIENTATION, 1) or 1) in (5, 6, 7, 8):  # turned upright: swapped
                    width, height = height, width
                    found.rotated += 1
                found.sizes.append((width, height))
                found.modes[mode] += 1
                found.formats[img.format] += 1
            if split == "train":  # a label set (a tuple) counts for each of its labels
                for label in (cls if isinstance(cls, tuple) else (cls,)):
                    found.counts[label] += 1
                found.images += 1
                found.empty_sets += cls == ()
            found.readable.append(path)
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            found.unreadable.append(f"{path} ({err.__class__.__name__})")


def gray_stored_as_color(found: Scan) -> bool:
    """Whether the RGB/RGBA images (in a sample, decoded) are grey drawings saved as colour: every
    pixel R = G = B and alpha fully opaque, as many apps save them."""
    import numpy as np
    from PIL import Image

    colour = [p for p in found.readable if _mode(p) in ("RGB", "RGBA")][:SAMPLE]
    if not colour:
        return False
    for path in colour:
        with Image.open(path) as img:
            pixels = np.asarray(img)
        if not ((pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()):
            return False
        if pixels.shape[-1] == 4 and (pixels[..., 3] != 255).any():
            return False
    return True


def _mode(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as img:
        return img.mode


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
    if imbalanced(counts) and found.multi_label:
        big, small = max(counts, key=counts.get), min(counts, key=counts.get)
        notes.append(f"imbalanced labels: {big} is on {counts[big]} images, {small} on {counts[small]}; the "
                     f"experiment weighs each label's positives by its negatives (dataset.class_weights: balanced) "
                     f"and tunes each label's threshold on eval; report.json per_label shows each label's F1")
    elif imbalanced(counts):
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
    notes += found.notes_extra
    if found.gray_color:
        notes.append("the colour (RGB/RGBA) files hold grey images (R = G = B, alpha opaque, in every one "
                     "sampled): the experiment uses 1 channel and dataset.channel_policy=convert, a third of "
                     "the input and the same information")
    if found.rotated:
        notes.append(f"{found.rotated} photo(s) carry an EXIF rotation: they are turned upright "
                     f"(dataset.exif_orientation=apply), their sizes counted upright")
    if found.hidden:
        names = sorted({p.name for p in found.hidden})
        notes.append(f"ignored {len(found.hidden)} hidden/system entries ({', '.join(names[:5])}"
                     f"{', ...' if len(names) > 5 else ''}): never classes, never trained on")
    for split, cls in found.missing:
        notes.append(f"the {split}/ folder has no images of class {cls!r}: its scores will say nothing about it; "
                     f"the experiment sets dataset.allow_missing_classes=true so it runs — better, add some")
    if rare_labels(found):
        notes.append(f"labels on fewer images than the splits: {', '.join(rare_labels(found))}; some split will lack "
                     f"them and its scores say nothing about them: the experiment sets "
                     f"dataset.allow_missing_classes=true so it runs — better, label more images with them")
    if found.empty_sets:
        notes.append(f"{found.empty_sets} image(s) have no label: kept as images with an empty set "
                     f"(dataset.allow_empty_labels=true); if they were left unlabelled by mistake, label them")
    if found.bad_rows:
        notes.append(f"{len(found.bad_rows)} table row(s) refused, skipped with dataset.on_bad_example=skip and "
                     f"listed in errors.jsonl: " + ", ".join(found.bad_rows[:6])
                     + (", ..." if len(found.bad_rows) > 6 else ""))
    if found.unreadable:
        notes.append(f"{len(found.unreadable)} unreadable file(s), skipped with dataset.on_bad_example=skip and "
                     f"listed in errors.jsonl: " + "; ".join(found.unreadable[:5]))
    return notes


SLICES = ((80, 10), (70, 15), (60, 20), (50, 25))  # train %, then eval % and test % each


def splits_lines(splits: dict[str, Path], found: Scan) -> list[str]:
    """Fixed split folders are used as such (DIR/train, DIR/val or DIR/validation, DIR/test);
    slices of the training folder are the image_folder dataset's stratified 80/10/10, or wider
    eval/test shares when a class is too small for every slice to hold it (the source refuses a
    split without a class; the scaffold must not write what its check refuses)."""
    counts = [found.counts[c] for c in sorted(found.counts)]
    val = next((name for name in ("val", "validation", "eval") if name in splits), None)
    if val:
        test = "test" if "test" in splits else "null"
        return ["  splits:", "    train: train", f"    eval: {val}", f"    test: {test}"]
    if "test" in splits:  # eval from the training folder: 10%, or more when a class is too small for it
        cut = next((t for t in (90, 80, 70, 60, 50) if every_class_in_every_slice(counts, [(0, t), (t, 100)])), 90)
        if cut != 90:
            found.notes_extra.append(f"small classes: eval is the last {100 - cut}% of each class of train/ so that "
                                     f"it holds every class; with more images per class 10% would do")
        return ["  splits:", f"    train: 'train[:{cut}%]'", f"    eval: 'train[{cut}%:]'", "    test: test"]
    cut = next(((t, e) for t, e in SLICES if every_class_in_every_slice(counts, [(0, t), (t, t + e), (t + e, 100)])),
               None)
    if cut is None or cut == SLICES[0]:
        return []  # the dataset's own 80/10/10 (and, for classes too small for any, the source's refusal)
    t, e = cut
    found.notes_extra.append(f"small classes: splits {t}/{e}/{100 - t - e}% (train/eval/test) so that each holds "
                             f"every class; with more images per class the default 80/10/10 applies")
    return ["  splits:", f"    train: 'train[:{t}%]'", f"    eval: 'train[{t}%:{t + e}%]'",
            f"    test: 'train[{t + e}%:]'"]


def rare_labels(found: Scan) -> list[str]:
    """Multi-label: labels on fewer images than the three splits carved from the table (such a
    label cannot be in all of them: the experiment allows it, and the advice says so)."""
    if not found.multi_label:
        return []
    return [f"{c} ({n})" for c, n in sorted(found.counts.items()) if n < 3]


def imbalanced(counts) -> bool:
    return bool(counts) and max(counts.values()) > IMBALANCE * max(1, min(counts.values()))


def batch_size(images: int) -> int:
    """Small sets get small batches, so an epoch still has a few dozen steps."""
    return next(b for limit, b in ((1280, 32), (320, 16), (160, 8), (0, 4)) if images >= limit)


def input_spec(found: Scan) -> tuple[int, int, int, bool]:
    """(height, width, channels, resize needed) the experiment declares."""
    height, width, resize = propose_size(found.sizes)
    gray = found.gray_color or all(mode in GRAY_MODES for mode in found.modes)
    return height, width, 1 if gray else 3, resize


def sizing(found: Scan, budget: str) -> "recipe.Sizing":
    """The model that fits the budget on this folder, from each candidate's measured rate."""
    height, width, channels, _ = input_spec(found)
    images = found.images or sum(found.counts.values())
    # the training split's share of train/: all of it beside a val/ folder, 90% beside test/ alone
    # (eval carved from it), else 80%
    splits = found.split_names
    share = 1.0 if {"val", "validation", "eval"} & set(splits) else 0.9 if "test" in splits else 0.8
    train_images = round(share * images)
    rates = recipe.measure_rates(height, width, channels, len(found.counts), batch_size(images),
                                 recipe.candidates(images, height, width))
    return recipe.size_model(rates, train_images, budget)


def _table_lines(table, extension: str | None) -> list[str]:
    """dataset.table, the images' root and the columns the reader chose (named, so the config says it)."""
    lines = [f"  table: {table.file.resolve()}", f"  path: {table.root.resolve()}", "  columns:"]
    lines += [f"    {role}: {column!r}" for role, column in table.columns.items() if column is not None]
    if extension:
        lines.append(f"  extension: {extension}")
    return lines


def render(name: str, folder: Path, found: Scan, command: str, chosen_model: str, budget: str,
           learning_rate: float | None = None, extension: str | None = None,
           max_epochs: int = recipe.MIN_CEILING) -> str:
    height, width, channels, resize = input_spec(found)
    convert = any(MODE_CHANNELS.get(mode, 0) != channels for mode in found.modes)
    mean, std = stats(found.readable, height, width, channels)
    chosen = recipe.propose(chosen_model, recipe.looks(found.readable, channels), budget, learning_rate,
                            multi_label=found.multi_label, max_epochs=max_epochs)
    classes = sorted(found.counts)
    what = "labels" if found.multi_label else "classes"
    lines = [
        "# @package _global_",
        f"# Written by scripts/new_experiment.py from {folder}",
        f"#   {command}",
        f"# {what} ({len(classes)}{'; images per label' if found.multi_label else ''}): " + ", ".join(f"{c} {found.counts[c]}" for c in classes),
        f"# sizes: {len(set(found.sizes))} distinct; median {statistics.median(h for _, h in found.sizes):.0f}x"
        f"{statistics.median(w for w, _ in found.sizes):.0f} (height x width)",
        f"# modes: {dict(found.modes)}; formats: {dict(found.formats)}",
        f"# sample mean {mean}, std {std} (0..1 scale; `standardize` recomputes them on the training split)",
    ]
    lines += [f"# advice: {note}" for note in advice(found)]
    lines += [
        "defaults:",
        f"  - override /dataset: {'image_table' if found.table is not None else 'image_folder'}",
        f"  - override /model: {chosen.model}",
        "  - override /optimizer: adamw",
        "",
        f"name: {name}",
        "dataset:",
        f"  name: {name}",
        *(_table_lines(found.table, extension) if found.table is not None else [f"  path: {folder}"]),
        "  image:",
        f"    height: {height}",
        f"    width: {width}",
        f"    channels: {channels}",
        "    dtype: float32",
        "    normalization: standardize",
        f"  resize: {'bilinear' if resize else 'error'}",
        f"  channel_policy: {'convert' if convert else 'error'}",
        f"  on_bad_example: {'skip' if found.unreadable or found.bad_rows else 'error'}",
        f"  class_weights: {'balanced' if imbalanced(found.counts) else 'none'}"
        + ("   # or class_weights: none with sampling: balanced" if imbalanced(found.counts)
           and not found.multi_label else "   # label sets: each label's positives weighed" if
           imbalanced(found.counts) else ""),
    ]
    if found.multi_label:
        lines += ["  task: multi_label      # each image has a set of labels: a sigmoid per label, thresholds "
                  "tuned on eval", "  label_encoding: multi_hot"]
        lines += [f"  allow_empty_labels: true   # {found.empty_sets} training image(s) have no label"] \
            if found.empty_sets else []
    scarce = rare_labels(found)
    if found.missing:
        lines.append("  allow_missing_classes: true   # a split folder lacks a class (see the advice above)")
    elif scarce:
        lines.append(f"  allow_missing_classes: true   # {', '.join(scarce)}: too few images for every split")
    lines += found.split_lines
    lines += chosen.lines(batch_size(found.images or sum(found.counts.values())))
    return "\n".join(lines) + "\n"


def read_table_arg(parser, path: Path, extension: str | None):
    """The table the user named, its ids completed by the extension its files have when none is
    given and no path has one; bad rows are kept for the advice, a bad table stops here."""
    from safetrain.config.schema import TableColumns
    from safetrain.core.errors import SafetrainError
    from safetrain.pipelines.sources.table import read_table

    from safetrain.pipelines.sources.table import LabelSets

    root = str(parser.images) if getattr(parser, "images", None) else None

    def read(ext: str | None, sets):
        return read_table(str(path), root, TableColumns(), ext, None, sets=sets)

    try:
        try:
            sets = None
            table = read(extension, sets)
        except SafetrainError as err:
            if err.config_key != "dataset.task":
                raise
            # Label sets (`bag|sneaker`): a multi-label experiment; images with no label are kept
            # (counted, and the experiment allows them), as a labelling tool's export has them.
            sets = LabelSets(allow_empty=True)
            table = read(extension, sets)
            print("the table has label sets (labels joined by '|'): a multi-label experiment (dataset.task="
                  "multi_label: a sigmoid per label, thresholds tuned on eval)")
        if extension is None and sum(b.kind == "missing_file" for b in table.bad) > len(table.rows):
            for guess in ("png", "jpg", "jpeg"):
                tried = read(guess, sets)
                if len(tried.rows) > len(table.rows):
                    print(f"the table's paths have no extension; its files are .{guess} (--extension {guess})")
                    return tried, guess
    except SafetrainError as err:
        parser.error(f"{err.message}" + (f" ({err.hint})" if err.hint else ""))
    return table, extension


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="one sub-folder per class (or train/ and test/ holding them), or a "
                        "table of images and labels (.csv, .tsv, .jsonl; paths relative to its folder)")
    parser.add_argument("name", help="experiment name: letters, digits, _ and -")
    parser.add_argument("--configs", type=Path, default=ROOT / "configs",
                        help="config dir to write experiment/NAME.yaml into (default: this repository's)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing experiment file")
    parser.add_argument("--budget", default="10m", help="trainer.time_budget of the experiment (default 10m; raised "
                        "when no model trains enough epochs of the folder in it, and said so)")
    parser.add_argument("--check", choices=("learn", "dry", "none"), default="learn",
                        help="learn: a one-minute learning check (default); dry: checks without training; none")
    parser.add_argument("--no-check", action="store_true", help="the same as --check none")
    parser.add_argument("--images", type=Path, default=None, help="a table's image folder, when not the table's own")
    parser.add_argument("--extension", default=None, help="a table's ids are file names without this extension "
                        "(Kaggle: png); found by itself when every path lacks one")
    args = parser.parse_args(argv)
    parser.images = args.images

    if not re.fullmatch(r"[A-Za-z0-9_-]+", args.name):
        parser.error(f"name {args.name!r}: use letters, digits, _ and -")
    from safetrain.train.budget import parse_budget  # no TensorFlow

    try:
        parse_budget(args.budget)
    except ValueError as err:
        parser.error(f"--budget: {err}")
    folder = args.folder.expanduser().resolve()
    extension = args.extension
    if folder.is_file():  # a table of images and labels
        table, extension = read_table_arg(parser, folder, extension)
        found = scan_table(table)
    else:
        if not folder.is_dir():
            parser.error(f"{folder} is not a folder or a table (.csv, .tsv, .jsonl)")
        if len(class_dirs(folder)) < 2:
            parser.error(f"{folder} needs at least 2 class sub-folders (DIR/<class>/<image>)")
    target = args.configs.expanduser().resolve() / "experiment" / f"{args.name}.yaml"
    if target.exists() and not args.force:
        parser.error(f"{target} exists; pass --force to overwrite it")

    if not folder.is_file():
        found = scan(folder)
    elif len(found.counts) < (1 if found.multi_label else 2):
        parser.error(f"{folder} has {len(found.counts)} label(s) among its usable training rows "
                     f"({', '.join(sorted(found.counts)) or 'none'}); classification needs at least 2")
    if not found.readable:
        parser.error(f"no readable images ({', '.join(sorted(EXTENSIONS))}) under {folder}")
    print(f"scanned {len(found.readable) + len(found.unreadable)} files in {len(found.counts)} "
          f"{'labels (images per label)' if found.multi_label else 'classes'}: "
          + ", ".join(f"{c} {n}" for c, n in sorted(found.counts.items())))
    for note in advice(found):
        print(f"advice: {note}")
    run = [f"+experiment={args.name}"]
    if args.configs.expanduser().resolve() != (ROOT / "configs").resolve():
        run.insert(0, f"hydra.searchpath=[file://{args.configs.expanduser().resolve()}]")
    command = "python -m safetrain " + " ".join(run)
    target.parent.mkdir(parents=True, exist_ok=True)
    sized = sizing(found, args.budget)
    print(f"model: {sized.why}")
    budget = sized.budget
    target.write_text(render(args.name, folder, found, command, sized.model, budget, extension=extension,
                             max_epochs=sized.ceiling()))
    print(f"wrote {target}")
    print(recipe.summary(target.read_text()))
    check = "none" if args.no_check else args.check
    if check == "learn":
        code, learning_rate = recipe.learning_check(run, args.name, found.counts, target.read_text(),
                                                    images=found.images if found.multi_label else None)
        if learning_rate is not None:  # the lower rate learned: the experiment keeps it
            target.write_text(render(args.name, folder, found, command, sized.model, budget, learning_rate,
                                     extension=extension, max_epochs=sized.ceiling()))
        if code:
            return code
    print(f"train it with:\n  {command}   # trainer.time_budget={budget}: the most training that fits it")
    if check != "dry":
        return 0
    print("checking it (config, every image, the model's shapes) without training:")
    # The check's run dir (report.json, the scan's errors.jsonl) goes to a temporary folder, not
    # into the config tree, where Hydra would see its .hydra/*.yaml as configs.
    check_dir = Path(tempfile.mkdtemp(prefix=f"safetrain-check-{args.name}-"))
    done = subprocess.run([sys.executable, "-m", "safetrain", *run, "dry_run=true", f"hydra.run.dir={check_dir}"],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    print(f"check's run directory (report.json, errors.jsonl): {check_dir}")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
