"""A folder of class sub-folders of image files (PNG, JPEG, BMP, GIF) as a source.

    DIR/cat/001.jpg, DIR/dog/002.png, ...              -> one split, `train` (slice it in the config)
    DIR/train/cat/..., DIR/test/cat/...                -> splits `train` and `test` (and any other)
    train.csv (path,label[,group][,split]) + images    -> the same, from a table (dataset=image_table)

A folder is read as a table built from its tree, a table as the files of a folder
(pipelines.sources.folder_listing): from the `Listing` on, both take one path.

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
  folder's proportions, and whole units at a time: a group (a table's group column) and a
  cluster of copies never straddle the splits safetrain carves (pipelines.sources.groups); a
  split still lacking a class stops the run, naming it, unless dataset.allow_missing_classes.
  Class ids come from the sorted class folders of `train` (a table: its sorted labels, or
  dataset.classes).

The source delivers the declared (height, width, channels) as uint8: the adapters have run at
the scan, so the pipeline's adapter plan for it is empty (pipeline/spec lists what the scan did).
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path

from safetrain.pipelines.sources import folder_splits, groups
from safetrain.pipelines.sources.base import Source, slices
from safetrain.pipelines.sources.folder_cache import (Leases, PixelShards, ScanCache, fingerprint, folder_cache_dir,
                                                     parse, versions)
from safetrain.pipelines.sources.folder_files import Adapt, Limits, adapt_problem, link_problem
from safetrain.pipelines.sources.folder_listing import ImageFile, Listing, from_table, label_report, tree
from safetrain.pipelines.sources.folder_duplicates import Found, find_duplicates, leakage
from safetrain.pipelines.sources.stratify import class_range
from safetrain.pipelines.ops import plain
from safetrain.pipelines.spec import BadExample, DataEvent, ImageSpec, SourceSpec, plan_adapters
from safetrain.config.schema import DatasetConfig, TaskKind
from safetrain.core.errors import DataError

CACHE_FOLDER = "safetrain_image_folders"


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
    return root, _cache_outside(cfg, root)


def _cache_outside(cfg: DatasetConfig, root: Path) -> Path:
    caches = cache_root(cfg)
    if caches.resolve().is_relative_to(root.resolve()):
        raise DataError(f"the image cache {caches} is inside dataset.path={root}: safetrain never writes into "
                        f"a user's data folder", hint="set dataset.cache_dir to a folder outside the images",
                        config_key="dataset.cache_dir")
    return caches


def image_folder_source(cfg: DatasetConfig) -> Source:
    started = time.perf_counter()
    root, caches = _root_and_cache(cfg)
    return _source(cfg, tree(cfg, root), caches, started)


def image_table_source(cfg: DatasetConfig) -> Source:
    """dataset.table: the same scan, cache, checks and splits as a folder, from a table's rows."""
    from safetrain.pipelines.sources.table import LabelSets, read_table

    started = time.perf_counter()
    sets = LabelSets(cfg.label_separator, cfg.allow_empty_labels, tuple(cfg.columns.labels or ())) \
        if cfg.task is TaskKind.multi_label else None
    table = read_table(cfg.table, cfg.path, cfg.columns, cfg.extension, list(cfg.classes) if cfg.classes else None,
                       sets=sets, separator=cfg.label_separator)
    return _source(cfg, from_table(cfg, table), _cache_outside(cfg, table.root), started)


def _source(cfg: DatasetConfig, listing: Listing, caches: Path, started: float) -> Source:
    root, classes, files, shards_in = listing.root, listing.classes, listing.files, listing.shards
    hidden, broken, ignored = listing.hidden, listing.broken, listing.ignored
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
    unit_of, found.report["groups"] = groups.units(good, found.pairs)
    configured = {"train": cfg.splits.train, "eval": cfg.splits.eval, "test": cfg.splits.test}
    split_plan = folder_splits.plan(configured, listing.splits, layout=listing.layout)
    selection = _Selection(good, split_plan, cfg.name, unit_of.of, len(classes) if listing.multi_label else None)
    select, sizes = selection.select, selection.sizes
    roles = {role: s for role, s in split_plan.roles.items() if s}
    try:
        membership = {role: select(s) for role, s in roles.items()}
    except DataError:
        membership = {}  # an unknown split name: the pipeline's own read() names it
    carved = [role for role, s in roles.items() if s in split_plan.carved]
    cut = groups.crossing(unit_of, membership, carved)
    found.report["groups"]["crossing_carved"] = len(cut)
    if cut:  # by construction never; checked, because a cut unit would be silent leakage
        raise RuntimeError(f"internal error: the carved splits cut {len(cut)} group(s)/copy cluster(s): {cut[:3]}")
    notes = _summary(listing.title, classes, files, good, ignored, hidden, listing.bad) + split_plan.notes \
        + selection.widened(classes)
    if broken:
        notes.append(f"dangling symbolic links: {len(broken)} (bad examples, each in errors.jsonl): "
                     + ", ".join(str(p) for _, p in broken[:3]) + (" ..." if len(broken) > 3 else ""))
    notes += _split_checks(cfg, listing, found, good, membership, roles)
    notes.append(_scan_note(stats, home))
    adapters = plan.steps[2:-2]  # between the source/check lines and normalize/model input (done per batch)
    if adapters:
        notes.append("adapted at the scan, cached as uint8: " + "; ".join(adapters))
    found.report["scan"] = {**stats, "seconds": round(time.perf_counter() - started, 3), "cache_dir": str(home)}

    bad = listing.bad + [BadExample(split=f.split_dir, key=f.key, reason=f.problem) for f in files if f.problem]
    bad += [BadExample(split=split, key=str(path), reason=link_problem(path)) for split, path in broken]
    spec = SourceSpec(name=cfg.name, height=declared.height, width=declared.width, channels=declared.channels,
                      dtype="uint8", num_classes=len(classes), value_range=(0.0, 255.0), class_names=tuple(classes),
                      multi_label=listing.multi_label)
    shard_paths = {name: [store.path(name, cls, key) for (n, cls), key in shards_in.items() if n == name]
                   for name in listing.splits}
    leases = Leases(home)
    leases.take([p for paths in shard_paths.values() for p in paths])  # never collected while this run reads
    found.report["scan"]["old_cache_files_removed"] = len(leases.collect())

    def delivered(split: str) -> list[ImageFile]:
        return [f for f in select(split) if f.key not in found.dropped]

    def class_counts(split: str) -> list[int]:
        """Examples per class (multi-label: images holding each label)."""
        per_class = collections.Counter(i for f in delivered(split) for i in f.label_ids)
        return [per_class[label] for label in range(len(classes))]

    def read(split: str):
        names = sorted({name_ for name_, _, _ in slices(split, sizes, cfg.name)})
        paths = [str(p) for name_ in names for p in shard_paths[name_] if p.exists()]
        return _read_shards(paths, delivered(split), sum(shard_sizes[name_] for name_ in names), declared.shape)

    counts = {role: len([f for f in chosen if f.key not in found.dropped]) for role, chosen in membership.items()}
    if listing.multi_label:
        found.report["labels"] = label_report({role: delivered(s) for role, s in roles.items()}, classes)
    return Source(spec=spec, read=read, bad=bad, notes=notes, sizes=sizes, class_counts=class_counts,
                  splits=split_plan.roles, report={**listing.report, **found.report, "selected": counts},
                  events=found.events, examples=lambda split: len(delivered(split)))


def _found_spec(name: str, scanned_ok: list[ImageFile], classes: list[str]) -> SourceSpec:
    """What the files are (one size and channel count, or None where they vary)."""
    return SourceSpec(name=name, height=_single({f.info.height for f in scanned_ok}),
                      width=_single({f.info.width for f in scanned_ok}),
                      channels=_single({f.info.channels for f in scanned_ok}), dtype="uint8",
                      num_classes=len(classes), value_range=(0.0, 255.0), class_names=tuple(classes))


class _Selection:
    """Which good files a split string selects: per class, in an order stable under additions,
    whole units at a time (a group, a cluster of copies: pipelines.sources.groups).

    Files are ordered by their content's SHA-256 (then path), so the same images give the same
    splits whether they sit in class folders or in a flat folder listed by a table, and a
    renamed file keeps its split. A unit lives in the class of its first file in that order; a
    slice of a class takes the units whose first file falls in the slice's range of the class's
    files, so adjacent slices stay disjoint and cover everything, and a unit is never cut (the
    splits safetrain carves also see that each gets a unit of every class that has enough:
    folder_splits.carve_units). With no groups and no copies every unit is one file: the plain
    stratified slice."""

    def __init__(self, good: list[ImageFile], split_plan: folder_splits.SplitPlan, name: str, unit_of,
                 num_labels: int | None = None) -> None:
        grouped: dict[tuple[str, str], list[ImageFile]] = {}
        for f in sorted(good, key=lambda f: (f.info.sha256 or "", f.rel)):
            grouped.setdefault((f.split_dir, unit_of(f.key)), []).append(f)
        # split folder -> home class -> its units, each a list of files, in the order of their first file
        self.by_split: dict[str, dict[int, list[list[ImageFile]]]] = collections.defaultdict(
            lambda: collections.defaultdict(list))
        for (split, _), members in grouped.items():
            self.by_split[split][members[0].label].append(members)
        self.sizes = {split: sum(_count(units) for units in per_class.values())
                      for split, per_class in self.by_split.items()}
        self.plan, self.name = split_plan, name
        self.bounds = sorted(split_plan.carved.values())
        self.num_labels = num_labels  # multi-label: carved slices stratify label sets, not classes
        self._label_set_parts: list[tuple[list[ImageFile], int]] | None = None

    def widened(self, classes: list[str]) -> list[str]:
        """What the carve changed for small classes, in words (the console says it)."""
        if not self.bounds or self.num_labels is not None:
            return []
        out, short = [], []
        for label, units in sorted(self.by_split[self.plan.folder].items()):
            n = _count(units)
            if len(units) < len(self.bounds):
                short.append(f"{classes[label]!r} ({n}" + (f" files in {len(units)} group{'s' if len(units) > 1 else ''}"
                                                        if len(units) != n else "") + ")")
            elif folder_splits.carve(n, self.bounds) != [class_range(n, lo, hi, 100) for lo, hi in self.bounds]:
                out.append(f"{classes[label]!r} ({n})")
        notes = [f"small classes kept in every carved split (a file each, from training): {', '.join(out)}"] \
            if out else []
        if short:
            what = "files" if all("group" not in s for s in short) else "files (or groups kept together)"
            notes.append(f"warning: fewer {what} than the {len(self.bounds)} splits carved from {self.plan.folder}/: "
                         f"{', '.join(short)}; add files, or a val/ or test/ folder")
        return notes

    def select(self, split: str) -> list[ImageFile]:
        """A split string, sliced per class (stratified): each class keeps its share. A slice
        the folder plan carved is widened so that small classes are in every carved split."""
        chosen = []
        if split in self.plan.carved and self.num_labels is not None:
            part = self.bounds.index(self.plan.carved[split])
            return [f for members, p in self._label_set_carve() if p == part for f in members]
        if split in self.plan.carved:
            part = self.bounds.index(self.plan.carved[split])
            for label, units in sorted(self.by_split[self.plan.folder].items()):
                parts = folder_splits.carve_units([len(u) for u in units], self.bounds)
                chosen += [f for members, p in zip(units, parts) if p == part for f in members]
            return chosen
        for folder, start, end in slices(split, self.sizes, self.name):
            for label, units in sorted(self.by_split[folder].items()):
                lo, hi = class_range(_count(units), start, end, self.sizes[folder])
                chosen += _take(units, lo, hi)
        return chosen

    def _label_set_carve(self) -> list[tuple[list[ImageFile], int]]:
        """Multi-label: every unit of the folder carved from, with its slice (computed once)."""
        if self._label_set_parts is None:
            units = [u for _, per in sorted(self.by_split[self.plan.folder].items()) for u in per]
            sets = [tuple(sorted({i for f in u for i in f.label_ids})) for u in units]
            parts = folder_splits.carve_label_sets(sets, self.num_labels, self.bounds)
            self._label_set_parts = list(zip(units, parts))
        return self._label_set_parts


def _count(units: list[list[ImageFile]]) -> int:
    return sum(len(u) for u in units)


def _take(units: list[list[ImageFile]], lo: int, hi: int) -> list[ImageFile]:
    """The whole units whose first file's position (in files, counted over `units`) is in [lo, hi)."""
    out, position = [], 0
    for members in units:
        if lo <= position < hi:
            out += members
        position += len(members)
    return out


def _read_shards(paths: list[str], chosen: list[ImageFile], records: int, shape: tuple[int, int, int]):
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


def _scan_and_cache(files: list[ImageFile], shards: dict, scan_cache: ScanCache, store: PixelShards,
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
        # A multi-label file's set is in its record (as a bit mask): a changed set is a new shard.
        key = fingerprint(adapt.__dict__, limits.__dict__, versions(),
                          [(f.rel, stat_of[f.rel].st_size, stat_of[f.rel].st_mtime_ns)
                           + ((f.mask,) if f.labels is not None else ()) for f in members])
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
                writer.write(f.key, f.mask, pixels)
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


def _split_checks(cfg: DatasetConfig, listing: Listing, found: Found, good: list[ImageFile], membership: dict,
                  roles: dict) -> list[str]:
    """Groups and copies across the splits (leakage), and splits without a class; a refusal carries
    what the scan found (a table's bad rows, the duplicates, the groups) for report.json `data`."""
    try:
        found.report["groups"]["crossing_fixed"] = groups.group_leakage(good, membership, cfg.on_leakage,
                                                                       found.events, found.dropped)
        leakage(found, membership, cfg.on_leakage)
        return _missing_classes(found, membership, roles, listing.classes, cfg.allow_missing_classes, listing.bad,
                                "label" if listing.multi_label else "class")
    except DataError as err:
        err.data = {**listing.report, **{k: v for k, v in found.report.items() if k in ("duplicates", "groups")}}
        raise


def _missing_classes(found: Found, membership: dict, roles: dict, classes: list[str], allow: bool,
                     refused_rows: list[BadExample] = (), word: str = "class") -> list[str]:
    notes = []
    for role, chosen in membership.items():
        have = {i for f in chosen if f.key not in found.dropped for i in f.label_ids}
        missing = [classes[i] for i in range(len(classes)) if i not in have]
        if not missing:
            continue
        plural = {"class": "classes", "label": "labels"}[word] if len(missing) > 1 else word
        message = f"split {role} ({roles[role]!r}) has no image of {plural} {', '.join(repr(m) for m in missing)}"
        if not allow:
            also = found.report["duplicates"]
            more = [f"{also['cross_split']} image(s) in two splits (leakage, dataset.on_leakage)"] \
                if also["cross_split"] else []
            more += [f"{also['exact']} exact and {also['near']} near duplicate pair(s)"] \
                if also["exact"] + also["near"] - also["cross_split"] > 0 else []
            kinds = collections.Counter(b.kind or "bad" for b in refused_rows)
            more += [f"{len(refused_rows)} bad table row(s) (" + ", ".join(f"{k} {n}" for k, n in kinds.items())
                     + f"; the first: {refused_rows[0].reason})"] if refused_rows else []
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


def _summary(title: str, classes: list[str], files: list[ImageFile], good: list[ImageFile], ignored: int,
             hidden: list[Path], refused_rows: list[BadExample]) -> list[str]:
    per_class = collections.Counter(classes[i] for f in good for i in f.label_ids)
    ok = [f for f in files if f.info.problem is None]
    sizes = collections.Counter(f"{f.info.height}x{f.info.width}" for f in ok)
    chans = collections.Counter(f.info.channels for f in ok)
    formats = collections.Counter(f.path.suffix.lower().lstrip(".") for f in files)
    notes = collections.Counter(part for f in ok if f.info.note for part in f.info.note.split("; "))
    rotated = sum(1 for f in ok if f.info.orientation not in (1, None))
    lines = [f"{title}: {len(files)} image files, {len(good)} readable, "
             f"{len(files) - len(good)} refused" + (f", {ignored} non-image files ignored" if ignored else "")
             + (f"; {len(refused_rows)} table rows refused before reading (errors.jsonl)" if refused_rows else ""),
             ("images per label: " if any(f.labels is not None for f in good) else "per class: ")
             + ", ".join(f"{c} {per_class[c]}" for c in classes)
             + (f"; {sum(1 for f in good if f.labels == ())} with no label" if any(f.labels == () for f in good) else ""),
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

