"""What every source hands the pipeline: a spec, a reader per split string, and what it refused.

A reader returns a tf.data.Dataset of `(image, label, key)`: the raw image (H, W, C) in the
source's dtype, an integer label, and a string key that finds the example again (a file path,
or `split#index`). Split strings use TFDS's syntax (`train[:90%]`, `train[10:20]+test`) for
every source, parsed by TFDS's own ReadInstruction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from safetrain.pipelines.spec import BadExample, DataEvent, SourceSpec
from safetrain.core.errors import DataError


@dataclass
class Source:
    spec: SourceSpec
    read: Callable[[str], tf.data.Dataset]
    bad: list[BadExample] = field(default_factory=list)   # refused by a scan, before decoding
    notes: list[str] = field(default_factory=list)        # scan findings for `pipeline/spec`
    sizes: dict[str, int] = field(default_factory=dict)   # examples per named split, where known
    report: dict = field(default_factory=dict)            # for report.json `data` (e.g. scan, duplicates)
    events: list[DataEvent] = field(default_factory=list)  # for errors.jsonl (duplicates, leakage, ...)
    # Examples per class id of a split string, from a source that has checked every example it
    # delivers (an image-folder cache: decoded, adapted and verified at its scan). The pipeline
    # then skips its own pass over that split (pipelines.scan), which would find nothing new.
    class_counts: Callable[[str], list[int]] | None = None
    # The split string per role (train, eval, test) when the source decides them (an image
    # folder's own train/, val/, test/ under dataset.splits.*=auto); None: dataset.splits as given.
    splits: dict[str, str | None] | None = None
    # Examples a split string delivers, where class_counts cannot say it (multi-label: an image
    # counts for each label of its set, or for none).
    examples: Callable[[str], int] | None = None

    def count(self, split: str) -> int | None:
        """Examples a split string selects, before bad ones are dropped; None when unknown."""
        if not self.sizes:
            return None
        return sum(end - start for _, start, end in slices(split, self.sizes, self.spec.name))


def slices(split: str, sizes: dict[str, int], dataset: str) -> list[tuple[str, int, int]]:
    """`train[:90%]+test` -> [("train", 0, 900), ("test", 0, 100)]; DataError on a bad string."""
    from tensorflow_datasets.core import splits as tfds_splits

    infos = {name: tfds_splits.SplitInfo(name=name, shard_lengths=[n], num_bytes=0)
             for name, n in sizes.items()}
    try:
        instructions = tfds.core.ReadInstruction.from_spec(split).to_absolute(infos)
    except (ValueError, AssertionError, KeyError) as err:
        raise DataError(f"dataset {dataset} cannot read split {split!r}: {str(err).splitlines()[0]}",
                        hint=f"use split names from {sorted(sizes)} with optional slices, e.g. "
                             f"train[:90%]", config_key="dataset.splits") from None
    return [(i.splitname, i.from_ or 0, sizes[i.splitname] if i.to is None else i.to) for i in instructions]


def dtype_range(dtype: np.dtype | str) -> tuple[float, float] | None:
    """The full range of an integer pixel dtype; None for floats (their range must be declared)."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return (0.0, 1.0)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return (float(info.min), float(info.max))
    return None


def array_source(name: str, splits: dict[str, tuple[np.ndarray, np.ndarray]], num_classes: int | None,
                 value_range: tuple[float, float] | None = None, key_prefix: dict[str, str] | None = None) -> Source:
    """In-memory arrays as a source: images (N, H, W[, C]) of any numeric dtype, integer labels.

    Integer images default to their dtype's range (uint8: 0..255, int8: -128..127); float images
    need `value_range`, because 0..1 and 0..255 floats look alike and normalizing the wrong one
    is the classic silent bug.
    """
    first = next(iter(splits.values()))[0]
    dtype = first.dtype
    for split, (images, labels) in splits.items():
        if images.dtype != dtype or images.shape[1:] != first.shape[1:]:
            raise DataError(f"dataset {name}: split {split} has {images.dtype} images of shape "
                            f"{images.shape[1:]}, others {dtype} of shape {first.shape[1:]}",
                            config_key="dataset.path")
        if len(images) != len(labels):
            raise DataError(f"dataset {name}: split {split} has {len(images)} images but {len(labels)} labels",
                            config_key="dataset.path")
    value_range = value_range or dtype_range(dtype)
    if value_range is None:
        raise DataError(f"dataset {name} has {dtype} pixels, whose range safetrain cannot know "
                        f"(0..1 and 0..255 floats look alike).",
                        hint="set dataset.pixel_range=[0,1] or dataset.pixel_range=[0,255]",
                        config_key="dataset.pixel_range")
    if first.ndim == 3:
        splits = {k: (v[0][..., None], v[1]) for k, v in splits.items()}
    if num_classes is None:
        num_classes = int(max(int(labels.max()) for _, labels in splits.values() if len(labels))) + 1
    height, width, channels = next(iter(splits.values()))[0].shape[1:4]
    spec = SourceSpec(name=name, height=int(height), width=int(width), channels=int(channels),
                      dtype=np.dtype(dtype).name, num_classes=int(num_classes),
                      value_range=(float(value_range[0]), float(value_range[1])))
    sizes = {k: len(v[1]) for k, v in splits.items()}
    prefix = key_prefix or {}

    def read(split: str) -> tf.data.Dataset:
        parts = []
        for name_, start, end in slices(split, sizes, name):
            images, labels = splits[name_]
            keys = np.char.add(f"{prefix.get(name_, name_)}#", np.arange(start, end).astype(str))
            parts.append(tf.data.Dataset.from_tensor_slices(
                (images[start:end], labels[start:end].astype(np.int64), keys)))
        ds = parts[0]
        for part in parts[1:]:
            ds = ds.concatenate(part)
        return ds

    return Source(spec=spec, read=read, sizes=sizes)
