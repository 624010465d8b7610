"""One image file of a class folder: found, looked at once, and turned into the pixels training uses.

`list_files` walks the folder and leaves out what is not a user's image: hidden entries (any name
starting with a dot: `.ipynb_checkpoints`, `.DS_Store`, `.git`), `__MACOSX` and OS thumbnails
(`Thumbs.db`, `desktop.ini`); they are reported, never classes. `look` reads a file's bytes
once and from them takes everything the pipeline and the data checks need:

- the header (Pillow, nothing decoded): format, size, mode, frame count, EXIF orientation — an
  oversized, animated or unsupported file is refused before it is decoded;
- a SHA-256 of the bytes (exact duplicates);
- then (pipelines.sources.folder_decode, TensorFlow) one decode with TensorFlow's decoder (the one
  serving uses), turned upright by the EXIF orientation (TensorFlow ignores it, so phone portraits
  would otherwise train sideways), adapted to the declared size and channels and kept as uint8:
  the pixels the cache stores; and from them a perceptual hash (imagehash's pHash: near duplicates).

A file is never written: the user's folder is read-only to safetrain.
"""

from __future__ import annotations

import hashlib
import io
import os
import unicodedata
from dataclasses import dataclass
from pathlib import Path


EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF"}
FORMATS = {"PNG", "JPEG", "BMP", "GIF"}
SYSTEM_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini", "ehthumbs.db", "$RECYCLE.BIN", "System Volume Information"}
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class Adapt:
    """How a decoded image becomes the declared input (dataset.image, resize, channel_policy)."""

    height: int
    width: int
    channels: int
    resize: str             # error | bilinear | pad_or_crop
    channel_policy: str     # error | convert


@dataclass
class FileInfo:
    """What one look at a file found; stored in the scan cache (plain JSON types only)."""

    size: int
    mtime_ns: int
    format: str | None = None
    height: int | None = None      # decoded and turned upright
    width: int | None = None
    channels: int | None = None
    orientation: int = 1           # EXIF orientation (1 = upright)
    note: str | None = None        # e.g. "16-bit PNG (scaled to 8 bits)"; "PNG file named .jpg"
    problem: str | None = None     # set: a bad example
    sha256: str | None = None
    phash: str | None = None       # 64 hex digits (256-bit pHash)

    def to_json(self) -> dict:
        return dict(vars(self))  # flat fields: 10x cheaper than dataclasses.asdict, per file

    @staticmethod
    def from_json(data: dict) -> "FileInfo":
        return FileInfo(**data)


def is_hidden(name: str) -> bool:
    return name.startswith(".") or name in SYSTEM_NAMES


def split_dirs(root: Path) -> tuple[dict[str, Path], list[Path]]:
    """`train` (+ any sibling split folders) when DIR/train/<class>/ exists, else DIR itself is
    `train`; and the hidden/system entries of DIR skipped in the split layout."""
    train = root / "train"
    hidden = [p for p in sorted(root.iterdir()) if is_hidden(p.name)]
    if train.is_dir() and any(p.is_dir() and not is_hidden(p.name) for p in train.iterdir()):
        return {p.name: p for p in sorted(root.iterdir()) if p.is_dir() and not is_hidden(p.name)}, hidden
    return {"train": root}, []


def class_name(folder_name: str) -> str:
    """A class folder's name as safetrain records and compares it: exactly as written, in Unicode
    NFC. macOS writes names decomposed (NFD: "e" + combining accent), other systems composed; the
    same class copied between them must stay one class."""
    return unicodedata.normalize("NFC", folder_name)


def dangling(path: Path) -> bool:
    """A symbolic link whose target does not exist (a moved or unmounted folder)."""
    return path.is_symlink() and not path.exists()


def list_files(folder: Path) -> tuple[list[Path], list[Path], list[Path], list[Path]]:
    """(image files, other files, hidden/system entries skipped, dangling links), each sorted;
    hidden folders are not entered."""
    images, others, hidden, broken = [], [], [], []
    for path in sorted(folder.iterdir()):
        if is_hidden(path.name):
            hidden.append(path)
        elif dangling(path):
            broken.append(path)
        elif path.is_dir():
            sub = list_files(path)
            images += sub[0]
            others += sub[1]
            hidden += sub[2]
            broken += sub[3]
        elif path.is_file():
            (images if path.suffix.lower() in EXTENSIONS else others).append(path)
    return images, others, hidden, broken


@dataclass(frozen=True)
class Limits:
    """What decides a file's FileInfo (so the scan cache is keyed on it)."""

    max_pixels: int
    max_file_bytes: int
    min_pixels: int | None
    exif: str               # apply | ignore


def link_problem(path: Path) -> str:
    """What a dangling link is, as a bad example's reason."""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    return f"dangling symbolic link to {target} (the file it points at does not exist)"


def look(path: Path, limits: Limits, stat=None) -> tuple[FileInfo, bytes | None]:
    """(FileInfo from the file's size, bytes and header; the bytes to decode, or None when the
    file is refused before decoding). pipelines.sources.folder_decode decodes what passes."""
    stat = stat or path.stat()
    info = FileInfo(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    if info.size == 0:
        info.problem = "empty file (0 bytes)"
        return info, None
    if info.size > limits.max_file_bytes:  # before a byte of it is read
        info.problem = f"{info.size:,} bytes exceeds dataset.max_file_bytes={limits.max_file_bytes:,} (not opened)"
        return info, None
    data = path.read_bytes()
    info.sha256 = hashlib.sha256(data).hexdigest()
    if not _header(info, data, path, limits.max_pixels, limits.min_pixels):
        return info, None
    return info, data


def _header(info: FileInfo, data: bytes, path: Path, max_pixels: int, min_pixels: int | None) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height), mode = img.format, img.size, img.mode
            frames = getattr(img, "n_frames", 1)
            info.orientation = int(img.getexif().get(_ORIENTATION_TAG, 1) or 1) if fmt in ("JPEG", "PNG") else 1
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        info.problem = f"unreadable, corrupt or truncated image file ({err.__class__.__name__}: {err})"
        return False
    info.format = fmt
    if fmt not in FORMATS:
        info.problem = f"{fmt} image; supported: PNG, JPEG, BMP, GIF"
        return False
    if width * height > max_pixels:
        info.problem = (f"{width}x{height} = {width * height:,} pixels exceeds dataset.max_pixels={max_pixels:,} "
                        f"(read from the header; not decoded)")
        return False
    if min_pixels and width * height < min_pixels:
        info.problem = (f"{width}x{height} = {width * height:,} pixels is under dataset.min_pixels={min_pixels:,} "
                        f"(a thumbnail or icon?)")
        return False
    if frames > 1:
        info.problem = f"animated {fmt} with {frames} frames; safetrain does not pick a frame (save one frame as PNG)"
        return False
    notes = [{"CMYK": f"CMYK {fmt} (decoded as RGB)", "I;16": "16-bit PNG (scaled to 8 bits)",
              "I;16B": "16-bit PNG (scaled to 8 bits)", "I": f"32-bit {fmt} (scaled to 8 bits)"}.get(mode)]
    named = EXTENSIONS.get(path.suffix.lower())
    if named != fmt:
        notes.append(f"{fmt} file named {path.suffix}")
    info.note = "; ".join(n for n in notes if n) or None
    return True


def adapt_problem(info: FileInfo, adapt: Adapt) -> str | None:
    """Why the policies forbid making this image the declared input (dataset.resize=error /
    channel_policy=error), in the in-graph checks' own words (pipelines.checks.reason); None: fine.
    From the scanned shape alone, so a cached file needs no decode to know it."""
    from safetrain.pipelines import checks

    if info.channels != adapt.channels and adapt.channel_policy == "error":
        return checks.reason(checks.BAD_CHANNELS, value_range=(0, 255), num_classes=0, channels=adapt.channels)
    if (info.height, info.width) != (adapt.height, adapt.width) and adapt.resize == "error":
        return checks.reason(checks.BAD_SIZE, value_range=(0, 255), num_classes=0, size=(adapt.height, adapt.width))
    return None
