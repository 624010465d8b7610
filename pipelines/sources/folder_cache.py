"""What an image folder's scan keeps between runs, outside the user's folder.

- **The scan cache** (`scan.json`): one entry per file, keyed on its path relative to the folder
  and reused while the file's size and mtime_ns are unchanged, under a fingerprint of everything
  that decides an entry (the limits, EXIF handling, and the versions of TensorFlow, Pillow and
  imagehash that decoded and hashed it). A rerun on an unchanged folder re-reads no file; a
  changed or new file is scanned alone.
- **The pixels** (`pixels/<split>/<class>-<fingerprint>.tfrecord`): the decoded, upright images
  adapted to the declared input, as uint8, one TFRecord shard per class folder (TensorFlow's
  own record format, read back by `tf.data.TFRecordDataset`). A shard's fingerprint covers its
  files' (path, size, mtime_ns), the declared input and the adapters; a shard whose files did not
  change is reused as it is, so later runs decode no image at all. A changed file rewrites its
  class's shard (the class's files are decoded again); other classes are untouched.

Writes go to a temporary name and are renamed into place, so a run killed mid-write, or two
runs on one folder at once, never leave a half-written cache that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from safetrain.pipelines.sources.folder_files import FileInfo

SCAN_FORMAT = 3  # bump when FileInfo's meaning changes


def versions() -> dict[str, str]:
    import imagehash
    import PIL
    import tensorflow as tf

    return {"tensorflow": tf.__version__, "pillow": PIL.__version__, "imagehash": imagehash.__version__,
            "format": str(SCAN_FORMAT)}


def fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def folder_cache_dir(cache_root: Path, folder: Path) -> Path:
    """One directory per image folder (by its absolute path), named so a person can tell which."""
    resolved = folder.resolve()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", resolved.name)[:40] or "root"
    return cache_root / f"{slug}-{fingerprint(str(resolved))[:12]}"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class ScanCache:
    """FileInfo per relative path, trusted only while (size, mtime_ns) and the settings match."""

    def __init__(self, path: Path, settings: dict) -> None:
        self.path = path
        self.key = fingerprint(settings, versions())
        self.entries: dict[str, dict] = {}
        try:
            data = json.loads(path.read_text())
            if data.get("key") == self.key:
                self.entries = data.get("files", {})
        except (OSError, ValueError):
            pass  # no cache yet, or an unreadable one: scan again
        self.changed = False

    def get(self, rel: str, stat: os.stat_result) -> FileInfo | None:
        entry = self.entries.get(rel)
        if entry is None or entry.get("size") != stat.st_size or entry.get("mtime_ns") != stat.st_mtime_ns:
            return None
        try:
            return FileInfo.from_json(entry)
        except TypeError:
            return None

    def put(self, rel: str, info: FileInfo) -> None:
        self.entries[rel] = info.to_json()
        self.changed = True

    def save(self, keep: set[str]) -> None:
        """Write the entries of the files that still exist (`keep`)."""
        stale = set(self.entries) - keep
        for rel in stale:
            del self.entries[rel]
        if self.changed or stale or not self.path.exists():
            _atomic_write(self.path, json.dumps({"key": self.key, "files": self.entries}).encode())


class PixelShards:
    """uint8 pixels of the declared shape, one TFRecord file per (split folder, class)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, split: str, cls: str, key: str) -> Path:
        return self.root / _safe(split) / f"{_safe(cls)}-{key[:16]}.tfrecord"

    def writer(self, path: Path) -> "ShardWriter":
        return ShardWriter(path)


class ShardWriter:
    """One shard being written: to a temporary file, renamed into place by `commit` (a crash
    leaves no half shard), which also deletes the class's older shards."""

    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self._writer = tf.io.TFRecordWriter(str(self.tmp))

    def write(self, key: str, label: int, pixels) -> None:
        self._writer.write(_example(key, label, pixels))

    def commit(self) -> None:
        self._writer.close()
        os.replace(self.tmp, self.path)
        for old in self.path.parent.glob(f"{self.path.name.rsplit('-', 1)[0]}-*.tfrecord"):  # older shards
            if old != self.path:
                old.unlink(missing_ok=True)

    def abandon(self) -> None:
        self._writer.close()
        self.tmp.unlink(missing_ok=True)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:60] + "_" + fingerprint(name)[:6]


def _example(key: str, label: int, pixels) -> bytes:
    import tensorflow as tf

    feature = {
        "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
        "pixels": tf.train.Feature(bytes_list=tf.train.BytesList(value=[pixels.tobytes()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def parse(shape: tuple[int, int, int]):
    """The tf.data map from a serialized record to (uint8 image, int64 label, key)."""
    import tensorflow as tf

    spec = {"key": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64),
            "pixels": tf.io.FixedLenFeature([], tf.string)}

    def fn(record):
        example = tf.io.parse_single_example(record, spec)
        image = tf.reshape(tf.io.decode_raw(example["pixels"], tf.uint8), shape)
        return image, example["label"], example["key"]

    return fn
