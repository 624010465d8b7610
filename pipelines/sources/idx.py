"""MNIST-family IDX files (`train-images-idx3-ubyte[.gz]`, `t10k-labels-idx1-ubyte[.gz]`, ...).

Reads the four files of a folder into arrays (Fashion-MNIST's 60k+10k images: ~0.3 s) and
serves them through `array_source`. Debian's `dataset-fashion-mnist` package installs exactly
such a folder under /usr/share/datasets/fashion-mnist, which makes Fashion-MNIST trainable
offline. Splits are `train` and `test` (the `t10k` files).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from safetrain.pipelines.sources.base import Source, array_source
from safetrain.core.errors import DataError

_SPLITS = {"train": "train", "test": "t10k"}
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def find_idx_files(folder: Path) -> dict[str, tuple[Path, Path]] | None:
    """{split: (images, labels)} when the folder holds a complete set, else None."""
    found = {}
    for split, stem in _SPLITS.items():
        pair = []
        for kind, ndim in (("images", 3), ("labels", 1)):
            names = [f"{stem}-{kind}-idx{ndim}-ubyte", f"{stem}-{kind}.idx{ndim}-ubyte"]
            hits = [folder / (n + ext) for n in names for ext in (".gz", "") if (folder / (n + ext)).is_file()]
            if not hits:
                return None
            pair.append(hits[0])
        found[split] = (pair[0], pair[1])
    return found


def read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as err:
        raise DataError(f"IDX file {path} cannot be read: {err}", hint="re-download or reinstall the files",
                        config_key="dataset.path") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})",
                        hint="point dataset.path at a folder of MNIST-format IDX files", config_key="dataset.path")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_DTYPES[data[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim:]
    if len(body) != expected:
        raise DataError(f"IDX file {path} is truncated or padded: header says {dims} ({expected} bytes), "
                        f"file has {len(body)}", hint="re-download or reinstall the files",
                        config_key="dataset.path")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def idx_source(name: str, folder: str | Path, num_classes: int | None,
               value_range: tuple[float, float] | None = None) -> Source:
    folder = Path(folder).expanduser()
    files = find_idx_files(folder) if folder.is_dir() else None
    if files is None:
        raise DataError(f"{folder} does not hold MNIST-style IDX files (train-images-idx3-ubyte[.gz], "
                        f"train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])",
                        hint="point dataset.path at such a folder (Debian: apt-get install dataset-fashion-mnist "
                             "-> /usr/share/datasets/fashion-mnist)", config_key="dataset.path")
    arrays = {split: (read_idx(images), read_idx(labels)) for split, (images, labels) in files.items()}
    source = array_source(name, arrays, num_classes, value_range,
                          key_prefix={split: files[split][0].name for split in files})
    source.notes.append(f"IDX files in {folder}: " + ", ".join(
        f"{split} {len(arrays[split][1])}" for split in arrays))
    return source
