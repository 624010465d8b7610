"""Open a TFDS builder, preparing it if needed, and fail fast and clearly when that cannot work.

Offline, TFDS's own retries take about 3.5 minutes to give up on `mnist` and then raise a
`requests` ConnectionError naming a host. We check that the builder's download hosts are
reachable (a few seconds at most) before asking TFDS to download, and turn any download failure
into a DataError that says how to train offline.

Preparing is serialized by a file lock in the data dir: the workers of a multi-worker run, or
the jobs of a parallel sweep, often start together on the same data dir, and two concurrent
`download_and_prepare` calls race on TFDS's temporary directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from safetrain.pipelines.sources.base import Source, dtype_range
from safetrain.pipelines.spec import SourceSpec
from safetrain.core.errors import DataError

# TFDS first looks for a prepared copy on its GCS bucket, then the dataset's own URLs.
_TFDS_GCS_HOST = "storage.googleapis.com"
_PROBE_TIMEOUT_S = 5.0

_OFFLINE_HINT = (
    "train offline with the embedded set (python -m safetrain, i.e. +experiment=digits_cnn), "
    "or prepare the dataset on a machine with network access and point dataset.data_dir at a "
    "copy of its TFDS data dir"
)


def open_builder(name: str, data_dir: str | None, download: bool,
                 builder_cls: type | None = None) -> tfds.core.DatasetBuilder:
    """Return a prepared builder for `name` (or for `builder_cls`, for the embedded sets)."""
    def make() -> tfds.core.DatasetBuilder:
        try:
            return builder_cls(data_dir=data_dir) if builder_cls else tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as err:
            raise DataError(
                f"dataset.name={name!r} is not in the TFDS catalog ({err.__class__.__name__}).",
                hint="use a name from `tfds.list_builders()`, e.g. mnist, fashion_mnist, cifar10",
                config_key="dataset.name",
            ) from None

    builder = make()
    if builder.is_prepared() or (not download and builder_cls is None):
        return builder  # with download=false, missing data is reported when it is read
    with _prepare_lock(Path(builder.data_dir).parent.parent, name):
        builder = make()  # another process may have prepared it while we waited
        if builder.is_prepared():
            return builder
        if builder_cls is None:
            _check_reachable(name, builder)
        try:
            builder.download_and_prepare()
        except OSError as err:  # requests' ConnectionError is an OSError
            raise DataError(
                f"downloading TFDS dataset {name!r} failed: {err.__class__.__name__}: {_first_line(err)}",
                hint=_OFFLINE_HINT, config_key="dataset.name",
            ) from err
    return builder


@contextlib.contextmanager
def _prepare_lock(root: Path, name: str) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.safetrain-prepare.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        yield


def tfds_source(builder: tfds.core.DatasetBuilder, name: str, num_classes: int | None) -> Source:
    """A prepared (or mock) TFDS builder as a Source; keys are `split#index` within the split read."""
    keys = builder.info.supervised_keys
    if not keys or len(keys) != 2 or not all(isinstance(k, str) for k in keys):
        raise DataError(f"TFDS dataset {name} has no (image, label) supervised keys",
                        hint="pick an image-classification dataset", config_key="dataset.name")
    image, label = builder.info.features[keys[0]], builder.info.features[keys[1]]
    num_classes = num_classes or getattr(label, "num_classes", None)
    if not num_classes:
        raise DataError(f"dataset {name} does not say how many classes it has",
                        hint="set dataset.num_classes", config_key="dataset.num_classes")
    height, width, channels = (tuple(image.shape) + (None, None, None))[:3]
    dtype = np.dtype(getattr(image, "np_dtype", np.uint8))
    spec = SourceSpec(name=name, height=height, width=width, channels=channels, dtype=dtype.name,
                      num_classes=int(num_classes), value_range=dtype_range(dtype) or (0.0, 1.0),
                      class_names=tuple(getattr(label, "names", None) or ()))

    def read(split: str):
        ds = _as_dataset(builder, split)
        return ds.enumerate().map(lambda i, ex: (ex[0], ex[1], tf.strings.join([split, "#", tf.strings.as_string(i)])))

    return Source(spec=spec, read=read, sizes=_split_sizes(builder))


def _split_sizes(builder) -> dict[str, int]:
    try:
        sizes = {name: info.num_examples for name, info in builder.info.splits.items()}
    except (AttributeError, TypeError):
        return {}
    # Under tfds.testing.mock_data the split info is a stand-in without real numbers.
    return sizes if all(isinstance(n, int) for n in sizes.values()) else {}


def _as_dataset(builder: tfds.core.DatasetBuilder, split: str):
    """`builder.as_dataset`, with "not prepared" and bad split strings as DataError."""
    try:
        # Files in a fixed order so `split#index` keys name the same example on every run;
        # the pipeline shuffles after caching.
        # No TFDS autocache: the pipeline caches itself, after checks and adapters.
        return builder.as_dataset(split=split, as_supervised=True, shuffle_files=False,
                                  read_config=tfds.ReadConfig(try_autocache=False))
    except AssertionError as err:  # TFDS: "Dataset X: could not find data in DIR"
        raise DataError(
            f"TFDS dataset {builder.name!r} has no prepared data in {builder.data_dir} and "
            f"dataset.download=false forbids downloading it ({_first_line(err)}).",
            hint=f"set dataset.download=true on a machine with network access, or {_OFFLINE_HINT}",
            config_key="dataset.download") from None
    except ValueError as err:  # bad split names / slices
        raise DataError(f"TFDS dataset {builder.name!r} cannot read split {split!r}: {_first_line(err)}",
                        hint="fix dataset.splits (e.g. train[:90%], test)",
                        config_key="dataset.splits") from None


def _check_reachable(name: str, builder: tfds.core.DatasetBuilder) -> None:
    hosts = sorted({urlparse(url).hostname for url in builder.url_infos or {}} - {None})
    for host in hosts or [_TFDS_GCS_HOST]:
        try:
            socket.create_connection((host, 443), timeout=_PROBE_TIMEOUT_S).close()
        except OSError as err:
            raise DataError(
                f"TFDS dataset {name!r} is not prepared in {builder.data_dir} and downloading it "
                f"failed: {host} is unreachable ({err.__class__.__name__}: {err}). "
                f"safetrain checked this before TFDS's own retries (minutes) would run.",
                hint=_OFFLINE_HINT, config_key="dataset.name",
            ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:300] if text else ""
