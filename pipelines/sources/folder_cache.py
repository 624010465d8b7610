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
  change is reused as it is, so later runs decode no image at all. A changed file writes its
  class's shard anew (the class's files are decoded again); other classes are untouched.

Shards of different settings coexist (a sweep over image sizes on one folder keeps one set per
size), and a shard a run is reading is never removed: each run holds a **lease**
(`leases/<host>-<pid>-<n>.json`, listing the shards it reads, removed when the process ends).
Older shards are collected only when no live lease names them and they have not been written
or read for `KEEP_UNUSED_S` (a run that has scanned but not yet taken its lease is younger than
that). A lease is live while its process runs (same host) or, from another host, for a day.

Writes go to a temporary name and are renamed into place, so a run killed mid-write, or two
runs on one folder at once, never leave a half-written cache that a later run would trust.
"""

from __future__ import annotations

import atexit
import hashlib
import itertools
import json
import os
import re
import socket
import time
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
        os.replace(self.tmp, self.path)  # older shards of the class stay: Leases.collect decides

    def abandon(self) -> None:
        self._writer.close()
        self.tmp.unlink(missing_ok=True)


KEEP_UNUSED_S = 3600        # a shard no live lease names is collected after an hour unused
FOREIGN_LEASE_S = 86_400    # a lease from another host (a shared cache folder) counts for a day
_counter = itertools.count()


class Leases:
    """Which shards the runs on this folder are reading (see the module docstring)."""

    def __init__(self, home: Path) -> None:
        self.folder = home / "leases"
        self.pixels = home / "pixels"

    def take(self, shards: list[Path]) -> Path:
        """Hold these shards for as long as this process runs (and touch them: in use now)."""
        now = time.time()
        for shard in shards:
            try:
                os.utime(shard, (now, now))
            except OSError:
                pass
        host, pid = socket.gethostname(), os.getpid()
        lease = self.folder / f"{_safe(host)}-{pid}-{next(_counter)}.json"
        _atomic_write(lease, json.dumps({"host": host, "pid": pid, "time": now,
                                         "shards": sorted(str(p.relative_to(self.pixels)) for p in shards)}).encode())
        atexit.register(lease.unlink, missing_ok=True)
        return lease

    def held(self) -> set[str]:
        """Shards named by a live lease (relative to pixels/); dead leases are removed."""
        names: set[str] = set()
        for lease in self.folder.glob("*.json"):
            try:
                data = json.loads(lease.read_text())
            except (OSError, ValueError):
                continue  # being written, or not ours to judge: its shards stay by age anyway
            if _alive(data, lease):
                names.update(data.get("shards", []))
            else:
                lease.unlink(missing_ok=True)
        return names

    def collect(self) -> list[Path]:
        """Remove shards and temporary files that no run can be using; returns what was removed."""
        held, now, removed = self.held(), time.time(), []
        for path in self.pixels.glob("*/*"):
            if str(path.relative_to(self.pixels)) in held:
                continue
            try:
                age = now - path.stat().st_mtime
            except OSError:
                continue
            limit = FOREIGN_LEASE_S if path.name.endswith(".tmp") else KEEP_UNUSED_S
            if age > limit:
                path.unlink(missing_ok=True)
                removed.append(path)
        return removed


def _alive(lease: dict, path: Path) -> bool:
    if lease.get("host") == socket.gethostname():
        try:
            os.kill(int(lease.get("pid", -1)), 0)
            return True
        except ProcessLookupError:
            return False
        except (PermissionError, ValueError, OverflowError):
            return True  # someone else's process: alive
    try:
        return time.time() - path.stat().st_mtime < FOREIGN_LEASE_S
    except OSError:
        return False


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
