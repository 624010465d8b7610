"""Where an image folder's (or a table's) files are, before any of them is read.

A folder is read as a table built from its tree (`tree`), a table as the files of a folder
(`from_table`, over pipelines.sources.table's good rows); from the `Listing` on, both take the
same path through the scan, the cache, the duplicate search and the splits
(pipelines.sources.image_folder).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from pathlib import Path

from safetrain.config.schema import MAX_LABELS, DatasetConfig
from safetrain.core.errors import DataError
from safetrain.pipelines.sources.folder_files import FileInfo, class_name, dangling, is_hidden, list_files
from safetrain.pipelines.sources.folder_files import split_dirs as find_split_dirs
from safetrain.pipelines.spec import BadExample


@dataclass
class ImageFile:
    path: Path
    rel: str          # relative to the root: the scan cache's key
    split_dir: str    # the split folder (or a table's split column value); "train" without either
    label: int        # the class id; multi-label: the home label (its rarest; the cache's shard), 0 for none
    group: str | None = None  # a table's group column: kept whole by the splits safetrain carves
    info: FileInfo | None = None
    problem: str | None = None
    labels: tuple[int, ...] | None = None  # multi-label: the label set's ids (maybe empty); None: single-label

    @property
    def key(self) -> str:
        return str(self.path)

    @property
    def label_ids(self) -> tuple[int, ...]:
        """The ids this file counts for: its set (multi-label) or its one class."""
        return self.labels if self.labels is not None else (self.label,)

    @property
    def mask(self) -> int:
        """The label as the pipeline carries it: the class id, or the set as a bit mask (multi-label)."""
        return sum(1 << i for i in self.labels) if self.labels is not None else self.label

    def label_text(self, classes: list[str]) -> str:
        if self.labels is None:
            return repr(classes[self.label])
        return "{" + ", ".join(repr(classes[i]) for i in self.labels) + "}" if self.labels else "no label"


@dataclass
class Listing:
    """What the scan starts from, whichever way the labels came (a folder tree or a table): the
    files with their class, split folder and group, grouped into the cache's class shards."""

    root: Path                      # the image root: paths, keys and the cache are relative to it
    title: str                      # "image folder DIR" | "table FILE"
    classes: list[str]              # class id = position
    splits: list[str]               # split folders (or split column values), "train" first
    layout: bool                    # the user fixed splits: split folders or a split column
    files: list[ImageFile]
    shards: dict                    # (split, class name) -> its files, in class order
    ignored: int = 0                # non-image files
    hidden: list[Path] = field(default_factory=list)
    broken: list[tuple[str, Path]] = field(default_factory=list)
    bad: list[BadExample] = field(default_factory=list)   # refused before a file was read (table rows)
    report: dict = field(default_factory=dict)            # report.json data (table: data.table)
    multi_label: bool = False                             # files carry label sets (ImageFile.labels)


def tree(cfg: DatasetConfig, root: Path) -> Listing:
    """An image folder's files: class sub-folders of DIR, or of DIR/train/, DIR/val/, DIR/test/."""
    split_dirs, hidden = find_split_dirs(root)
    classes = _class_names(cfg, split_dirs["train"], hidden)
    broken: list[tuple[str, Path]] = []
    files, ignored, shards = _list(root, split_dirs, classes, hidden, broken)
    return Listing(root=root, title=f"image folder {root}", classes=classes, splits=list(split_dirs),
                   layout=split_dirs["train"] != root, files=files, shards=shards, ignored=ignored, hidden=hidden,
                   broken=broken)


def from_table(cfg: DatasetConfig, table) -> Listing:
    """A table's good rows (pipelines.sources.table.Table) as the files of an image folder; its
    bad rows are bad examples, named by the table's file and line."""
    if not table.rows:
        kinds = table.report()["bad_rows"]
        raise DataError(f"dataset.table={table.file}: none of its {table.total} rows is usable ("
                        + ", ".join(f"{k} {n}" for k, n in kinds.items() if n) + f"); the first: {table.bad[0].reason}",
                        hint="check dataset.path (the folder the paths are relative to; null: the table's folder), "
                             "dataset.extension and dataset.columns.path", config_key="dataset.path")
    multi = table.multi_label
    found = {x for r in table.rows for x in r.labels} if multi else {r.label for r in table.rows}
    classes = list(cfg.classes) if cfg.classes else sorted(found)
    if multi and len(classes) > MAX_LABELS:
        raise DataError(f"dataset.table={table.file} has {len(classes)} labels; multi-label runs take at most "
                        f"{MAX_LABELS} (a label set travels as one 64-bit mask)", config_key="dataset.classes",
                        hint="list the labels to train in dataset.classes (rows with others are then refused)")
    if multi and not classes:
        raise DataError(f"dataset.table={table.file}: none of its {len(table.rows)} usable rows has a label",
                        config_key="dataset.table", hint="check dataset.columns.label (or dataset.columns.labels) "
                        "names the column with the label sets")
    if len(classes) < 2 and not multi:
        raise DataError(f"dataset.table={table.file} has {len(classes)} label{'s' if len(classes) != 1 else ''} "
                        f"among its {len(table.rows)} usable rows ({', '.join(map(repr, classes)) or 'none'}); "
                        f"classification needs at least 2", config_key="dataset.table",
                        hint="check dataset.columns.label names the label column")
    if cfg.num_classes is not None and cfg.num_classes != len(classes):
        raise DataError(f"dataset.num_classes={cfg.num_classes} but {table.file.name} has {len(classes)} labels: "
                        f"{', '.join(classes)}", hint="set dataset.num_classes=null", config_key="dataset.num_classes")
    ids = {name: i for i, name in enumerate(classes)}
    # Multi-label: a file's home (its shard in the cache, its class for slicing) is its rarest label.
    often = collections.Counter(x for r in table.rows for x in r.labels)

    def home(r) -> int:
        if not multi:
            return ids[r.label]
        return min((ids[x] for x in r.labels), key=lambda i: (often[classes[i]], i), default=0)

    splits = sorted({r.split for r in table.rows if r.split}, key=lambda name: (name != "train", name)) or ["train"]
    if "train" not in splits:
        raise DataError(f"the split column {table.columns['split']!r} of {table.file.name} has no 'train' row "
                        f"(its values: {', '.join(splits)})", config_key="dataset.columns.split",
                        hint="mark the training rows 'train' (val/valid/validation and test are the others)")
    shards: dict = {}
    files = []
    for r in sorted(table.rows, key=lambda r: (home(r), r.rel)):  # class order, then path: a folder's order
        f = ImageFile(table.root / r.rel, r.rel, r.split or "train", home(r), group=r.group,
                      labels=tuple(sorted(ids[x] for x in r.labels)) if multi else None)
        shards.setdefault((f.split_dir, classes[f.label]), []).append(f)
        files.append(f)
    shards = {(split, cls): shards[(split, cls)] for split in splits for cls in classes if (split, cls) in shards}
    bad = [BadExample(split=b.split or "train", key=f"{table.file.name}:{b.line}", reason=b.reason, kind=b.kind)
           for b in table.bad]
    return Listing(root=table.root, title=f"table {table.file} (images under {table.root})", classes=classes,
                   splits=splits, layout=bool(table.columns["split"]), files=files, shards=shards, bad=bad,
                   report={"table": table.report()}, multi_label=multi)


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


def _list(root: Path, split_dirs: dict[str, Path], classes: list[str], hidden: list[Path], broken: list):
    """The image files per (split folder, class); hidden entries and dangling links (as
    (split, path)) are added to `hidden` and `broken`."""
    files: list[ImageFile] = []
    ignored = 0
    shards: dict[tuple[str, str], list[ImageFile]] = {}
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
            shard = [ImageFile(p, str(p.relative_to(root)), split, label) for p in images]
            shards[(split, cls)] = shard
            files += shard
    if not files:
        raise DataError(f"no PNG/JPEG/BMP/GIF files under {root}", config_key="dataset.path",
                        hint="arrange the images as DIR/<class name>/<image file>")
    return files, ignored, shards


def label_report(per_role: dict[str, list[ImageFile]], classes: list[str], top: int = 10) -> dict:
    """Multi-label: images per label and empty sets per split, and the label pairs the training
    split shows together most often (what the model may learn to predict together)."""
    pairs: collections.Counter = collections.Counter()
    for f in per_role.get("train", []):
        pairs.update((a, b) for i, a in enumerate(f.labels) for b in f.labels[i + 1:])
    return {"per_label": {role: dict(zip(classes, (sum(1 for f in files if i in f.labels)
                                                   for i in range(len(classes)))))
                          for role, files in per_role.items()},
            "empty_sets": {role: sum(1 for f in files if not f.labels) for role, files in per_role.items()},
            "cooccurrence_train": [{"labels": [classes[a], classes[b]], "images": n}
                                   for (a, b), n in sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:top]]}
