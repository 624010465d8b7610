"""Confirming near-duplicate candidates on the pixels: is this pair really one image?

A perceptual-hash match is a candidate (pipelines.sources.duplicates); a pair becomes a near
duplicate only when the two files' 32x32 grey thumbnails (decoded upright, box-filtered) have a
normalized correlation of at least `dataset.near_duplicate_similarity` (0.98 by default).

Why NCC of 32x32 thumbnails at 0.98, measured on ../shared/data/hand_drawn_shapes (545 real
drawings, the hardest case: sparse lines on white): a JPEG re-encode (quality 70) of a drawing
scores >= 0.999, a brightness change >= 0.9999, a 2x up- or down-scale >= 0.96-0.97; the most
alike pair of *different* drawings in all 148,240 pairs scores 0.946 (random pairs: median 0.06).
0.98 keeps the margin on the side of precision: a line drawing shifted by one pixel, or rescaled
with a blur, is not called a copy (it scores like a different drawing), while photos, whose
thumbnails are smooth, keep >= 0.99 under re-encoding and resizing. Only the candidates' files
are decoded (Pillow), so the check costs nothing on folders without candidates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

THUMB = 32


def thumbnail(path: Path, exif: bool) -> np.ndarray | None:
    """The file's upright grey 32x32 thumbnail as float64, or None when Pillow cannot read it."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img) if exif else img
            grey = img.convert("L").resize((THUMB, THUMB), Image.BOX)
            return np.asarray(grey, dtype=np.float64)
    except (OSError, ValueError, SyntaxError):
        return None


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Normalized correlation; when one image is flat (one grey level) the correlation is
    undefined: two flat images within 2 levels of each other are alike (1.0), anything else is not."""
    mean_a, mean_b = a.mean(), b.mean()
    a, b = a - mean_a, b - mean_b
    norm = float(np.sqrt((a * a).sum() * (b * b).sum()))
    if norm < 1e-6:
        flat = float(np.abs(a).max()) < 1.0 and float(np.abs(b).max()) < 1.0
        return 1.0 if flat and abs(mean_a - mean_b) <= 2.0 else 0.0
    return float((a * b).sum() / norm)


def confirm(pairs: list[tuple[Path, Path]], exif: bool) -> list[float]:
    """The similarity of each pair of files (-1.0 where one cannot be read), each file decoded once."""
    cache: dict[Path, np.ndarray | None] = {}

    def thumb(path: Path):
        if path not in cache:
            cache[path] = thumbnail(path, exif)
        return cache[path]

    out = []
    for a, b in pairs:
        ta, tb = thumb(a), thumb(b)
        out.append(-1.0 if ta is None or tb is None else similarity(ta, tb))
    return out
