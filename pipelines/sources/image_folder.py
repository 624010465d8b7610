"""A folder of class sub-folders of image files (PNG, JPEG, BMP, GIF) as a source.

    DIR/cat/001.jpg, DIR/dog/002.png, ...              -> one split, `train` (slice it in the config)
    DIR/train/cat/..., DIR/test/cat/...                -> splits `train` and `test` (and any other)

Every file is looked at once (pipelines.sources.folder_files: header checks before decoding;
pipelines.sources.folder_decode: one decode, EXIF orientation, hashes) and its pixels, adapted to
the declared input, go to a uint8 TFRecord cache outside the folder
(pipelines.sources.folder_cache); a rerun on an unchanged folder reads neither a file nor a
header, only the cache. On what the scan found:

- refused files (corrupt, empty, oversized, animated, wrong size or channels under the `error`
  policies, and the same bytes under two class names) are bad examples (dataset.on_bad_example);
- duplicates (exact and near, pipelines.sources.duplicates) are counted; the same image in two
  of the configured splits is leakage (dataset.on_leakage: warn | error | drop_from_eval);
- split slices (`train[:80%]`) are taken per class, so every split holds every class in the
  folder's proportions; a split still lacking a class stops the run, naming it, unless
  dataset.allow_missing_classes. Class ids come from the sorted class folders of `train`.

The source delivers the declared (height, width, channels) as uint8: the adapters have run at
the scan, so the pipeline's adapter plan for it is empty (pipeline/spec lists what the scan did).
"""

from __future__ import annotations

import collections
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from safetrain.pipelines.sources import folder_splits
from safetrain.pipelines.sources.base import Source, slices
from safetrain.pipelines.sources.folder_cache import (Leases, PixelShards, ScanCache, fingerprint, folder_cache_dir,
                                                     parse, versions)
from safetrain.pipelines.sources.folder_files import (Adapt, FileInfo, Limits, adapt_problem, class_name, dangling,
                                                     is_hidden, link_problem, list_files)
from safetrain.pipelines.sources.folder_files import split_dirs as find_split_dirs
from safetrain.pipelines.sources.folder_duplicates import Found, find_duplicates, leakage
from safetrain.pipelines.sources.stratify import class_range
from safetrain.pipelines.ops import plain
from safetrain.pipelines.spec import BadExample, DataEvent, ImageSpec, SourceSpec, plan_adapters
from safetrain.config.schema import DatasetConfig
from safetrain.core.errors import DataError

CACHE_FOLDER = "safetrain_image_folders"


@dataclass
class _File:
    path: Path
    rel: str          # relative to the root: the scan cache's key
    split_dir: str
    label: int
    info: FileInfo | None = None
    problem: str | None = None

    @property
    def key(self) -> str:
        return str(self.path)


def cache_root(cfg: DatasetConfig) -> Path:
    """dataset.cache_dir, else `safetrain_image_folders` in the TFDS data dir."""
    if cfg.cache_dir:
        return Path(cfg.cache_dir).expanduser()
    data_dir = cfg.data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets"
    return Path(data_dir).expanduser() / CACHE_FOLDER


def _root_and_cache(cfg: DatasetConfig) -> tuple[Path, Path]:
    """dataset.path, and the cache folder, which must lie outside it (user files are never written)."""
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset.path={cfg.path} is not a folder", hint="point dataset.path at a folder of "
                        "class sub-folders of images", config_key="dataset.path")
    caches = cache_root(cfg)
    if caches.resolve().is_relative_to(root.resolve()):
        raise DataError(f"the image cache {caches} is inside dataset.path={root}: safetrain never writes into "
                        f"a user's data folder", hint="set dataset.cache_dir to a folder outside the images",
                        config_key="dataset.cache_dir")
    return root, caches


def _class_names(cfg: DatasetConfig, train_dir: Path, hidden: list[Path]) -> list[str]:
    """The class sub-folders of the training folder, sorted (class id = position); hidden ones
    are added to `hidden`."""
    classes = sorted(class_name(p.name) for p in train_dir.iterdir() if p.is_dir() and not is_hidden(p.name))
    hidden += [p for p in sorted(train_dir.iterdir()) if is_hidden(p.name)]
    if len(classes) < 2:
        raise DataError(f"{train_dir} has {len(classes)} class sub-folders; classification needs "
                        f"at least 2 (one sub-folder per class)", config_key="dataset.path",
                        hint="arrange the images as DIR/<class name>/<image file>")
    if cfg.num_classes is not None and cfg.num_classes != len(classes):
        raise DataError(f"dataset.num_classes={cfg.num_classes} but {train_dir} has {len(classes)} "
                        f"class folders: {', '.join(classes)}", hint="set dataset.num_classes=null",
                        config_key="dataset.num_classes")
    return classes


def image_folder_source(cfg: DatasetConfig) -> Source:
    started = time.perf_counter()
    root, caches = _root_and_cache(cfg)
    split_dirs, hidden = find_split_dirs(root)
    classes = _class_names(cfg, split_dirs["train"], hidden)

    broken: list[tuple[str, Path]] = []
    files, ignored, shards_in = _list(root, split_dirs, classes, hidden, broken)
    limits = Limits(cfg.max_pixels, cfg.max_file_bytes, cfg.min_pixels, cfg.exif_orientation.value)
    adapt = Adapt(cfg.image.height, cfg.image.width, cfg.image.channels, cfg.resize.value, cfg.channel_policy.value)
    home = folder_cache_dir(caches, root)
    scan_cache = ScanCache(home / "scan.json", {"limits": limits.__dict__})
    store = PixelShards(home / "pixels")
    stats = _scan_and_cache(files, shards_in, scan_cache, store, limits, adapt)
    shard_sizes = collections.Counter(f.split_dir for f in files if f.problem is None)  # records per split folder
    scan_cache.save({f.rel for f in files})

    declared = ImageSpec(cfg.image.height, cfg.image.width, cfg.image.channels)
    spec_found = _found_spec(cfg.name, [f for f in files if f.info.problem is None], classes)
    plan = plan_adapters(spec_found, declared, cfg.resize.value, cfg.channel_policy.value)  # refuses by name

    good = [f for f in files if f.problem is None]
    found = find_duplicates(good, classes, cfg)
    good = [f for f in good if f.problem is None]  # conflicting labels are bad examples now
    configured = {"train": cfg.splits.train, "eval": cfg.splits.eval, "test": cfg.splits.test}
    split_plan = folder_splits.plan(configured, list(split_dirs), layout=split_dirs["train"] != root)
    selection = _Selection(good, split_plan, cfg.name)
    select, sizes = selection.select, selection.sizes
    roles = {role: s for role, s in split_plan.roles.items() if s}
    try:
        membership = {role: select(s) for role, s in roles.items()}
    except DataError:
        membership = {}  # an unknown split name: the pipeline's own read() names it
    leakage(found, membership, cfg.on_leakage)
    notes = _summary(root, classes, files, good, ignored, hidden) + split_plan.notes + selection.widened(classes)
    if broken:
        notes.append(f"dangling symbolic links: {len(broken)} (bad examples, each in errors.jsonl): "
                     + ", ".join(str(p) for _, p in broken[:3]) + (" ..." if len(broken) > 3 else ""))
    notes += _missing_classes(found, membership, roles, classes, cfg.allow_missing_classes)
    notes.append(_scan_note(stats, home))
    adapters = plan.steps[2:-2]  # between the source/check lines and normalize/model input (done per batch)
    if adapters:
        notes.append("adapted at the scan, cached as uint8: " + "; ".join(adapters))
    found.report["scan"] = {**stats, "seconds": round(time.perf_counter() - started, 3), "cache_dir": str(home)}

    bad = [BadExample(split=f.split_dir, key=f.key, reason=f.problem) for f in files if f.problem]
    bad += [BadExample(split=split, key=str(path), reason=link_problem(path)) for split, path in broken]
    spec = SourceSpec(name=cfg.name, height=declared.height, width=declared.width, channels=declared.channels,
                      dtype="uint8", num_classes=len(classes), value_range=(0.0, 255.0), class_names=tuple(classes))
    shard_paths = {name: [store.path(name, cls, key) for (n, cls), key in shards_in.items() if n == name]
                   for name in split_dirs}
    leases = Leases(home)
    leases.take([p for paths in shard_paths.values() for p in paths])  # never collected while this run reads
    found.report["scan"]["old_cache_files_removed"] = len(leases.collect())

    def delivered(split: str) -> list[_File]:
        return [f for f in select(split) if f.key not in found.dropped]

    def class_counts(split: str) -> list[int]:
        per_class = collections.Counter(f.label for f in delivered(split))
        return [per_class[label] for label in range(len(classes))]

    def read(split: str):
        names = sorted({name_ for name_, _, _ in slices(split, sizes, cfg.name)})
        paths = [str(p) for name_ in names for p in shard_paths[name_] if p.exists()]
        return _read_shards(paths, delivered(split), sum(shard_sizes[name_] for name_ in names), declared.shape)

    counts = {role: len([f for f in chosen if f.key not in found.dropped]) for role, chosen in membership.items()}
    return Source(spec=spec, read=read, bad=bad, notes=notes, sizes=sizes, class_counts=class_counts,
                  splits=split_plan.roles, report={**found.report, "selected": counts}, events=found.events)


def _found_spec(name: str, scanned_ok: list[_File], classes: list[str]) -> SourceSpec:
    """What the files are (one size and channel count, or None where they vary)."""
    return SourceSpec(name=name, height=_single({f.info.height for f in scanned_ok}),
                      width=_single({f.info.width for f in scanned_ok}),
                      channels=_single({f.info.channels for f in scanned_ok}), dtype="uint8",
                      num_classes=len(classes), value_range=(0.0, 255.0), class_names=tuple(classes))


class _Selection:
    """Which good files a split string selects: per class, in an order stable under additions."""

    def __init__(self, good: list[_File], split_plan: folder_splits.SplitPlan, name: str) -> None:
        self.by_split: dict[str, dict[int, list[_File]]] = collections.defaultdict(
            lambda: collections.defaultdict(list))
        for f in sorted(good, key=lambda f: hashlib.sha256(f.rel.encode()).digest()):
            self.by_split[f.split_dir][f.label].append(f)
        self.sizes = {split: sum(len(v) for v in per_class.values()) for split, per_class in self.by_split.items()}
        self.plan, self.name = split_plan, name
        self.bounds = sorted(split_plan.carved.values())

    def widened(self, classes: list[str]) -> list[str]:
        """What the carve changed for small classes, in words (the console says it)."""
        if not self.bounds:
            return []
        out, short = [], []
        for label, members in sorted(self.by_split[self.plan.folder].items()):
            n = len(members)
            if n < len(self.bounds):
                short.append(f"{classes[label]!r} ({n})")
            elif folder_splits.carve(n, self.bounds) != [class_range(n, lo, hi, 100) for lo, hi in self.bounds]:
                out.append(f"{classes[label]!r} ({n})")
        notes = [f"small classes kept in every carved split (a file each, from training): {', '.join(out)}"] \
            if out else []
        if short:
            notes.append(f"warning: fewer files than the {len(self.bounds)} splits carved from {self.plan.folder}/: "
                         f"{', '.join(short)}; add files, or a val/ or test/ folder")
        return notes

    def select(self, split: str) -> list[_File]:
        """A split string, sliced per class (stratified): each class keeps its share. A slice
        the folder plan carved is widened so that small classes are in every carved split."""
        chosen = []
        if split in self.plan.carved:
            part = self.bounds.index(self.plan.carved[split])
            for label, members in sorted(self.by_split[self.plan.folder].items()):
                lo, hi = folder_splits.carve(len(members), self.bounds)[part]
                chosen += members[lo:hi]
            return chosen
        for folder, start, end in slices(split, self.sizes, self.name):
            for label, members in sorted(self.by_split[folder].items()):
                lo, hi = class_range(len(members), start, end, self.sizes[folder])
                chosen += members[lo:hi]
        return chosen


def _read_shards(paths: list[str], chosen: list[_File], records: int, shape: tuple[int, int, int]):
    """The chosen files' cached pixels from the split folders' shards (`records` in all), as
    (uint8 image, label, key)."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(tf.constant(paths or [""], tf.string))
    if not paths or not chosen:
        return ds.take(0).map(lambda p: (tf.zeros(shape, tf.uint8), tf.constant(0, tf.int64), p))
    # Round robin over the class shards: the classes come mixed, not one after another.
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=len(paths), block_length=1)
    ds = ds.map(plain(parse(shape)), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    if len(chosen) == records:
        return ds  # every record of these shards is selected: no per-example lookup
    keys = tf.constant([f.key for f in chosen], tf.string)
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        keys, tf.constant([1] * len(chosen), tf.int32)), default_value=0)
    return ds.filter(plain(lambda image, label, key: table.lookup(key) > 0))


def _list(root: Path, split_dirs: dict[str, Path], classes: list[str], hidden: list[Path], broken: list):
    """The image files per (split folder, class); hidden entries and dangling links (as
    (split, path)) are added to `hidden` and `broken`."""
    files: list[_File] = []
    ignored = 0
    shards: dict[tuple[str, str], list[_File]] = {}
    for split, base in split_dirs.items():
        present = {class_name(p.name): p for p in base.iterdir() if p.is_dir() and not is_hidden(p.name)}
        hidden += [p for p in base.iterdir() if is_hidden(p.name)] if base != split_dirs["train"] else []
        broken += [(split, p) for p in sorted(base.iterdir()) if dangling(p)]  # a linked class folder gone
        unknown = sorted(set(present) - set(classes))
        if unknown:
            raise DataError(f"{base} has class folders {unknown} that {split_dirs['train']} lacks",
                            hint="use the same class folders in every split", config_key="dataset.path")
        for label, cls in enumerate(classes):
            if cls not in present:
                continue
            images, others, skipped, links = list_files(present[cls])
            ignored += len(others)
            hidden += skipped
            broken += [(split, p) for p in links]
            shard = [_File(p, str(p.relative_to(root)), split, label) for p in images]
            shards[(split, cls)] = shard
            files += shard
    if not files:
        raise DataError(f"no PNG/JPEG/BMP/GIF files under {root}", config_key="dataset.path",
                        hint="arrange the images as DIR/<class name>/<image file>")
    return files, ignored, shards


def _scan_and_cache(files: list[_File], shards: dict, scan_cache: ScanCache, store: PixelShards,
                    limits: Limits, adapt: Adapt) -> dict:
    """Fill every file's info and every class shard's pixels, reading only what the caches lack.
    Replaces `shards` values by the shard keys (fingerprints) the source reads. Each file read is
    decoded once (pipelines.sources.folder_decode: a parallel tf.data map), straight into its
    class shard."""
    from PIL import Image

    from safetrain.pipelines.sources.folder_decode import inspect_many

    Image.MAX_IMAGE_PIXELS = None  # Pillow's bomb check off: dataset.max_pixels applies, from the header
    stats = {"files": len(files), "scanned": 0, "reused": 0, "shards_written": 0}
    stat_of = {f.rel: f.path.stat() for f in files}
    for f in files:
        f.info = scan_cache.get(f.rel, stat_of[f.rel])
    keys, to_write = {}, {}
    for (split, cls), members in shards.items():
        key = fingerprint(adapt.__dict__, limits.__dict__, versions(),
                          [(f.rel, stat_of[f.rel].st_size, stat_of[f.rel].st_mtime_ns) for f in members])
        keys[(split, cls)] = key
        path = store.path(split, cls, key)
        if not path.exists():
            to_write[path] = members
            continue
        # Pixels cached: only scan entries that are missing (a deleted scan.json).
        missing = [f for f in members if f.info is None]
        for f, (info, _, _) in zip(missing, inspect_many(((f.path, stat_of[f.rel]) for f in missing), limits, None)):
            f.info = info
            scan_cache.put(f.rel, info)
        stats["scanned"] += len(missing)
        for f in members:
            f.problem = f.info.problem or adapt_problem(f.info, adapt)
    # Every file of a shard to write is read and decoded (again): one decode stream over all of
    # them, so tf.data never waits between classes; each result goes to its class's shard.
    writers = {}
    try:
        for path in to_write:
            writers[path] = store.writer(path)
        queue = [(f, writers[path]) for path, members in to_write.items() for f in members]
        looked = inspect_many(((f.path, stat_of[f.rel]) for f, _ in queue), limits, adapt)
        for (f, writer), (info, pixels, problem) in zip(queue, looked):
            f.info, f.problem = info, info.problem or problem
            scan_cache.put(f.rel, info)
            if f.problem is None:
                writer.write(f.key, f.label, pixels)
        for writer in writers.values():
            writer.commit()
    except BaseException:
        for writer in writers.values():
            writer.abandon()
        raise
    stats["scanned"] += sum(len(members) for members in to_write.values())
    stats["shards_written"] = len(to_write)
    shards.clear()
    shards.update(keys)
    stats["reused"] = stats["files"] - stats["scanned"]
    return stats


def _missing_classes(found: Found, membership: dict, roles: dict, classes: list[str], allow: bool) -> list[str]:
    notes = []
    for role, chosen in membership.items():
        have = {f.label for f in chosen if f.key not in found.dropped}
        missing = [classes[i] for i in range(len(classes)) if i not in have]
        if not missing:
            continue
        message = (f"split {role} ({roles[role]!r}) has no image of class{'es' if len(missing) > 1 else ''} "
                   f"{', '.join(repr(m) for m in missing)}")
        if not allow:
            also = found.report["duplicates"]
            more = [f"{also['cross_split']} image(s) in two splits (leakage, dataset.on_leakage)"] \
                if also["cross_split"] else []
            more += [f"{also['exact']} exact and {also['near']} near duplicate pair(s)"] \
                if also["exact"] + also["near"] - also["cross_split"] > 0 else []
            raise DataError(message + ": its scores would say nothing about that class"
                            + (f" (the scan also found: {'; '.join(more)}; all listed once this passes)"
                               if more else ""),
                            hint="add images of it to that split's folder, or set dataset.allow_missing_classes=true "
                                 "to train anyway", config_key="dataset.allow_missing_classes")
        found.events.append(DataEvent(kind="missing_class", split=role, key=roles[role], other=None,
                                      message=message + " (dataset.allow_missing_classes=true)"))
        notes.append("warning: " + message)
    return notes


def _single(values: set) -> int | None:
    return next(iter(values)) if len(values) == 1 else None


def _scan_note(stats: dict, home: Path) -> str:
    return (f"scan: {stats['files']} files, {stats['reused']} from the cache, {stats['scanned']} read and decoded; "
            f"cache {home}")


def _summary(root: Path, classes: list[str], files: list[_File], good: list[_File], ignored: int,
             hidden: list[Path]) -> list[str]:
    per_class = collections.Counter(classes[f.label] for f in good)
    ok = [f for f in files if f.info.problem is None]
    sizes = collections.Counter(f"{f.info.height}x{f.info.width}" for f in ok)
    chans = collections.Counter(f.info.channels for f in ok)
    formats = collections.Counter(f.path.suffix.lower().lstrip(".") for f in files)
    notes = collections.Counter(part for f in ok if f.info.note for part in f.info.note.split("; "))
    rotated = sum(1 for f in ok if f.info.orientation not in (1, None))
    lines = [f"image folder {root}: {len(files)} image files, {len(good)} readable, "
             f"{len(files) - len(good)} refused" + (f", {ignored} non-image files ignored" if ignored else ""),
             "per class: " + ", ".join(f"{c} {per_class[c]}" for c in classes),
             "sizes: " + ", ".join(f"{k} ({v})" for k, v in sizes.most_common(5))
             + (f", ... {len(sizes) - 5} more" if len(sizes) > 5 else ""),
             "channels: " + ", ".join(f"{k} ({v})" for k, v in sorted(chans.items())),
             "formats: " + ", ".join(f"{k} ({v})" for k, v in sorted(formats.items()))]
    if notes:
        lines.append("noted: " + ", ".join(f"{k} ({v})" for k, v in notes.items()))
    if rotated:
        lines.append(f"EXIF orientation: {rotated} photo(s) turned upright (dataset.exif_orientation)")
    if hidden:
        names = collections.Counter(p.name + ("/" if p.is_dir() else "") for p in hidden)
        lines.append(f"ignored {len(hidden)} hidden/system entries: "
                     + ", ".join(f"{k} ({v})" if v > 1 else k for k, v in names.most_common(6)))
    return lines

