"""A multi-label image set made from real Fashion-MNIST items, offline.

Each image is a 56x56 grey canvas with two or three Fashion-MNIST items (28x28, from Debian's
`dataset-fashion-mnist` IDX files) pasted at random places (they may overlap a little, as objects
in photos do); its labels are the set of the items' classes. Several items of one class give that
label once. Written as PNG files in one flat folder with a `labels.csv` (`path,labels`, labels
joined with `|`): the way labelling tools export multi-label sets.

    python scripts/fashion_pastes.py OUT_DIR [--images 6000] [--test-images 0] [--seed 0]

With `--test-images N`, N more canvases are made from Fashion-MNIST's own test part (seed + 1)
and the table gets a `split` column (train, test): no item is in both.

Generator: numpy's `default_rng(seed)`; items are drawn from the IDX file's images in order of
that generator, so a seed and a count always give the same images and labels.
"""

from __future__ import annotations

import argparse
import csv
import gzip
from pathlib import Path

import numpy as np

IDX_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot")
SIZE = 56


def _read(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load_items(part: str = "train", folder: Path = IDX_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,)) of Fashion-MNIST's `train` or `t10k` part."""
    prefix = "train" if part == "train" else "t10k"
    return (_read(folder / f"{prefix}-images-idx3-ubyte.gz"), _read(folder / f"{prefix}-labels-idx1-ubyte.gz"))


def compose(images: np.ndarray, labels: np.ndarray, count: int, seed: int,
            classes: int = len(CLASSES)) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """`count` canvases (count, 56, 56) uint8 and their label sets, items from the first `classes`
    classes only."""
    rng = np.random.default_rng(seed)
    pool = np.flatnonzero(labels < classes)
    canvases = np.zeros((count, SIZE, SIZE), np.uint8)
    sets = []
    for i in range(count):
        items = rng.choice(pool, size=int(rng.integers(2, 4)), replace=False)
        for item in items:
            y, x = (int(v) for v in rng.integers(0, SIZE - 28 + 1, size=2))
            patch = canvases[i, y:y + 28, x:x + 28]
            np.maximum(patch, images[item], out=patch)  # an item over another keeps the brighter pixel
        sets.append(tuple(sorted({int(labels[item]) for item in items})))
    return canvases, sets


def write(out: Path, count: int, seed: int, classes: int = len(CLASSES), test_count: int = 0) -> Path:
    """The images as PNG files in `out` and their `labels.csv` (with a split column when
    `test_count`); returns the table's path."""
    from PIL import Image

    parts = [("train", "img", count, seed)] + ([("t10k", "test", test_count, seed + 1)] if test_count else [])
    out.mkdir(parents=True, exist_ok=True)
    table = out / "labels.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels"] + (["split"] if test_count else []))
        for part, prefix, n, part_seed in parts:
            images, labels = load_items(part)
            canvases, sets = compose(images, labels, n, part_seed, classes)
            for i, (canvas, labels_) in enumerate(zip(canvases, sets)):
                name = f"{prefix}{i:05d}.png"
                Image.fromarray(canvas, "L").save(out / name)
                split = ["train" if part == "train" else "test"] if test_count else []
                writer.writerow([name, "|".join(CLASSES[c] for c in labels_)] + split)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--images", type=int, default=6000)
    parser.add_argument("--test-images", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write(args.out, args.images, args.seed, test_count=args.test_images))


if __name__ == "__main__":
    main()
