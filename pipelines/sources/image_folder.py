"""A folder of class sub-folders of image files (PNG, JPEG, BMP, GIF) as a source.

    DIR/cat/001.jpg, DIR/dog/002.png, ...              -> one split, `train` (slice it in the config)
    DIR/train/cat/..., DIR/test/cat/...                -> splits `train` and `test` (and any other)

Before any tf.data decoding, every file is scanned: its header (Pillow, no pixels decoded) gives
format, size, mode and frame count, so an oversized image is refused before it can take memory;
then TensorFlow's own decoder — the one the pipeline uses — decodes it once, so a corrupt or
truncated file is named here instead of killing the pipeline mid-epoch. Refused files become
bad examples (error or skip, per dataset.on_bad_example); the scan's counts per class, sizes,
channel counts and formats go to `pipeline/spec`.
"""

from __future__ import annotations

import collections
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tensorflow as tf

from pipelines.sources.base import Source, slices
from pipelines.spec import BadExample, SourceSpec
from safetrain.errors import DataError

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif"}
FORMATS = {"PNG", "JPEG", "BMP", "GIF"}
_SPLIT_ORDER_SEED = 0  # fixed: the same folder always splits the same way, whatever trainer.seed is


@dataclass(frozen=True)
class Scanned:
    path: Path
    split: str
    label: int
    shape: tuple[int, int, int] | None = None   # decoded (height, width, channels)
    note: str | None = None                     # e.g. "16-bit PNG", "CMYK JPEG"
    problem: str | None = None                  # set: a bad example


def image_folder_source(name: str, folder: str | Path, num_classes: int | None, max_pixels: int,
                        max_file_bytes: int) -> Source:
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset.path={folder} is not a folder", hint="point dataset.path at a folder of "
                        "class sub-folders of images", config_key="dataset.path")
    split_dirs = _split_dirs(root)
    classes = sorted(p.name for p in split_dirs["train"].iterdir() if p.is_dir())
    if len(classes) < 2:
        raise DataError(f"{split_dirs['train']} has {len(classes)} class sub-folders; classification needs "
                        f"at least 2 (one sub-folder per class)", config_key="dataset.path",
                        hint="arrange the images as DIR/<class name>/<image file>")
    if num_classes is not None and num_classes != len(classes):
        raise DataError(f"dataset.num_classes={num_classes} but {split_dirs['train']} has {len(classes)} "
                        f"class folders: {', '.join(classes)}", hint="set dataset.num_classes=null",
                        config_key="dataset.num_classes")

    candidates, ignored = [], 0
    for split, base in split_dirs.items():
        for label, cls in enumerate(classes):
            for path in sorted((base / cls).rglob("*")) if (base / cls).is_dir() else []:
                if path.is_file():
                    if path.suffix.lower() in EXTENSIONS:
                        candidates.append((path, split, label))
                    else:
                        ignored += 1
        unknown = sorted({p.name for p in base.iterdir() if p.is_dir()} - set(classes))
        if unknown:
            raise DataError(f"{base} has class folders {unknown} that {split_dirs['train']} lacks",
                            hint="use the same class folders in every split", config_key="dataset.path")
    if not candidates:
        raise DataError(f"no PNG/JPEG/BMP/GIF files under {root}", config_key="dataset.path",
                        hint="arrange the images as DIR/<class name>/<image file>")

    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None  # Pillow's bomb check off: dataset.max_pixels applies, from the header
    with ThreadPoolExecutor(max_workers=4) as pool:
        scanned = list(pool.map(lambda c: _scan(*c, max_pixels=max_pixels, max_file_bytes=max_file_bytes), candidates))

    good = [s for s in scanned if s.problem is None]
    bad = [BadExample(split=s.split, key=str(s.path), reason=s.problem) for s in scanned if s.problem]
    files: dict[str, list[Scanned]] = collections.defaultdict(list)
    for item in good:
        files[item.split].append(item)
    rng = np.random.default_rng(_SPLIT_ORDER_SEED)
    for split in files:  # mixed classes, so that `train[:80%]` is not "the first classes"
        files[split] = [files[split][i] for i in rng.permutation(len(files[split]))]

    heights = {s.shape[0] for s in good}
    widths = {s.shape[1] for s in good}
    channels = {s.shape[2] for s in good}
    spec = SourceSpec(name=name, height=_single(heights), width=_single(widths), channels=_single(channels),
                      dtype="uint8", num_classes=len(classes), value_range=(0.0, 255.0),
                      class_names=tuple(classes))
    sizes = {split: len(items) for split, items in files.items()}
    notes = _summary(root, classes, scanned, good, ignored)

    def read(split: str) -> tf.data.Dataset:
        paths, labels = [], []
        for name_, start, end in slices(split, sizes, name):
            paths += [str(s.path) for s in files[name_][start:end]]
            labels += [s.label for s in files[name_][start:end]]
        ds = tf.data.Dataset.from_tensor_slices((paths, np.asarray(labels, np.int64)))
        return ds.map(_decode, num_parallel_calls=tf.data.AUTOTUNE)

    return Source(spec=spec, read=read, bad=bad, notes=notes, sizes=sizes)


def _decode(path, label):
    image = tf.io.decode_image(tf.io.read_file(path), channels=0, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, None])
    return image, label, path


def _split_dirs(root: Path) -> dict[str, Path]:
    """`train` (+ any sibling split folders) when DIR/train/<class>/ exists, else DIR itself is `train`."""
    train = root / "train"
    if train.is_dir() and any(p.is_dir() for p in train.iterdir()):
        return {p.name: p for p in sorted(root.iterdir()) if p.is_dir()}
    return {"train": root}


def _scan(path: Path, split: str, label: int, max_pixels: int, max_file_bytes: int) -> Scanned:
    from PIL import Image, UnidentifiedImageError

    try:
        size = path.stat().st_size
        if size == 0:
            return Scanned(path, split, label, problem="empty file (0 bytes)")
        if size > max_file_bytes:  # before Pillow reads a byte of it
            return Scanned(path, split, label, problem=f"{size:,} bytes exceeds dataset.max_file_bytes="
                                                       f"{max_file_bytes:,} (not opened)")
        with Image.open(path) as img:
            fmt, (width, height), mode = img.format, img.size, img.mode
            frames = getattr(img, "n_frames", 1)
    except (UnidentifiedImageError, OSError, ValueError) as err:
        return Scanned(path, split, label,
                       problem=f"unreadable, corrupt or truncated image file ({err.__class__.__name__}: {err})")
    if fmt not in FORMATS:
        return Scanned(path, split, label, problem=f"{fmt} image; supported: PNG, JPEG, BMP, GIF")
    if width * height > max_pixels:
        return Scanned(path, split, label, problem=(
            f"{width}x{height} = {width * height:,} pixels exceeds dataset.max_pixels={max_pixels:,} "
            f"(read from the header; not decoded)"))
    if frames > 1:
        return Scanned(path, split, label, problem=f"animated {fmt} with {frames} frames; "
                                                   f"safetrain does not pick a frame (save one frame as PNG)")
    note = {"CMYK": f"CMYK {fmt} (decoded as RGB)", "I;16": "16-bit PNG (scaled to 8 bits)",
            "I;16B": "16-bit PNG (scaled to 8 bits)", "I": f"32-bit {fmt} (scaled to 8 bits)"}.get(mode)
    try:
        decoded = tf.io.decode_image(tf.io.read_file(str(path)), channels=0, dtype=tf.uint8,
                                     expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, tf.errors.DataLossError) as err:
        first = str(err.message).strip().splitlines()[0][:160]
        return Scanned(path, split, label, problem=f"corrupt or truncated {fmt} (decoder: {first})")
    return Scanned(path, split, label, shape=tuple(int(d) for d in decoded.shape), note=note)


def _single(values: set[int]) -> int | None:
    return next(iter(values)) if len(values) == 1 else None


def _summary(root: Path, classes: list[str], scanned: list[Scanned], good: list[Scanned], ignored: int) -> list[str]:
    per_class = collections.Counter(classes[s.label] for s in good)
    sizes = collections.Counter(f"{s.shape[0]}x{s.shape[1]}" for s in good)
    chans = collections.Counter(s.shape[2] for s in good)
    formats = collections.Counter(s.path.suffix.lower().lstrip(".") for s in scanned)
    notes = collections.Counter(s.note for s in good if s.note)
    lines = [f"image folder {root}: {len(scanned)} image files, {len(good)} readable, "
             f"{len(scanned) - len(good)} refused" + (f", {ignored} non-image files ignored" if ignored else ""),
             "per class: " + ", ".join(f"{c} {per_class[c]}" for c in classes),
             "sizes: " + ", ".join(f"{k} ({v})" for k, v in sizes.most_common(5))
             + (f", ... {len(sizes) - 5} more" if len(sizes) > 5 else ""),
             "channels: " + ", ".join(f"{k} ({v})" for k, v in sorted(chans.items())),
             "formats: " + ", ".join(f"{k} ({v})" for k, v in sorted(formats.items()))]
    if notes:
        lines.append("converted by the decoder: " + ", ".join(f"{k} ({v})" for k, v in notes.items()))
    return lines
