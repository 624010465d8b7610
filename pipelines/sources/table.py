"""A table of images and labels (CSV, TSV, JSON Lines) read into rows, every bad row named.

Kaggle's `train.csv` (`id,label` beside a flat folder of images), labelling-tool exports (a path
column and a label column, JSON Lines), a `split` column someone already decided, a `group`
column (one patient, one product, one burst of shots). Python's own `csv` and `json` parse them
(UTF-8, with or without a byte-order mark); this module only finds the columns and judges the
rows. What a row can be refused for (report.json `data.table.bad_rows`, each row in errors.jsonl):

    missing_file   the file does not exist (or the path is empty)
    outside_root   the path leaves the image root (`../x.png`, an absolute path elsewhere)
    empty_label    no label
    unknown_label  a label outside dataset.classes (when given)
    empty_split    a split column with no value in this row
    conflicting    one file listed with two labels: every row of it
    duplicate_row  one file listed again with the same label: the repeats (the first row is used)
    ragged         a row with more or fewer fields than the header; a JSON line that is not an object

Multi-label (dataset.task=multi_label): a row's label is a set, written in the label column with
a separator (`cat|dog`, dataset.label_separator; a JSON list too) or as one 0/1 column per label
(dataset.columns.labels). An image with no label is `empty_label` unless
dataset.allow_empty_labels (then it is a good row, counted: `empty_label_sets`); one file with
two different sets is `conflicting`. A single-label table whose labels hold the separator is
refused (exit 2): it has label sets, and dataset.task must say so.

A missing or misnamed column is a configuration error (exit 2) listing the columns the file has.
Windows separators (`cats\\001.png`) are read as folders and counted. The image folder machinery
(pipelines.sources.image_folder) takes the good rows from here: one scan, cache, duplicate search
and split plan for folders and tables alike.
"""

from __future__ import annotations

import collections
import csv
import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from safetrain.core.errors import ConfigError, DataError
from safetrain.pipelines.sources.folder_files import EXTENSIONS

FORMATS = {".csv": ",", ".tsv": "\t", ".jsonl": None, ".ndjson": None}
# Column names tried, in order, when dataset.columns.* is null (the common exports' spellings).
PATH_COLUMNS = ("path", "filepath", "file_path", "filename", "file_name", "file", "image", "image_path", "image_name",
                "image_id", "id", "img")
LABEL_COLUMNS = ("label", "labels", "class", "class_name", "category", "categories", "target", "tags")
GROUP_COLUMNS = ("group",)
SPLIT_COLUMNS = ("split",)
BAD_KINDS = ("missing_file", "outside_root", "empty_label", "unknown_label", "empty_split", "conflicting",
             "duplicate_row", "ragged")


@dataclass(frozen=True)
class Row:
    """One good row: where the image is (relative to the image root, '/'-separated) and what it is."""

    line: int                # the row's line in the file (the header is line 1 in CSV/TSV)
    rel: str
    label: str               # multi-label: the set, sorted and joined with the separator (one text per set)
    group: str | None
    split: str | None
    labels: tuple[str, ...] = ()  # multi-label: the set, sorted


@dataclass(frozen=True)
class BadRow:
    line: int
    kind: str                # one of BAD_KINDS
    reason: str
    split: str | None
    path: str                # as written ('' when there was none)


@dataclass
class Table:
    file: Path
    root: Path               # the image root the paths are relative to
    columns: dict[str, str | None]   # role (path, label, group, split) -> the file's column used
    rows: list[Row] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    total: int = 0           # data rows in the file
    windows_separators: int = 0
    extension_added: int = 0
    multi_label: bool = False

    def report(self) -> dict:
        """report.json data.table."""
        kinds = collections.Counter(b.kind for b in self.bad)
        out = {"file": str(self.file), "root": str(self.root), "columns": self.columns, "rows": self.total,
               "used": len(self.rows), "bad_rows": {k: kinds.get(k, 0) for k in BAD_KINDS},
               "windows_separators": self.windows_separators, "extension_added": self.extension_added}
        if self.multi_label:
            sizes = collections.Counter(len(r.labels) for r in self.rows)
            out.update(task="multi_label", empty_label_sets=sizes.get(0, 0),
                       labels_per_image={str(k): v for k, v in sorted(sizes.items())})
        return out


@dataclass(frozen=True)
class LabelSets:
    """How a multi-label table writes its sets (dataset.task=multi_label)."""

    separator: str = "|"                 # dataset.label_separator
    allow_empty: bool = False            # dataset.allow_empty_labels
    columns: tuple[str, ...] = ()        # dataset.columns.labels: one 0/1 column per label


TRUE_VALUES, FALSE_VALUES = {"1", "1.0", "true", "yes", "y"}, {"0", "0.0", "false", "no", "n", ""}


def read_table(path: str, root: str | None, columns, extension: str | None, classes: list[str] | None,
               sets: LabelSets | None = None, separator: str = "|") -> Table:
    """The table at `path` (dataset.table), its paths relative to `root` (dataset.path; null: the
    table's folder), its columns named by `columns` (dataset.columns) or found by their common
    names, judged row by row. `sets`: the table holds label sets (multi-label); without it, a
    label holding `separator` is refused as a set."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise DataError(f"dataset.table={path} is not a file", hint="point dataset.table at a .csv, .tsv or .jsonl "
                        "file with a path and a label column", config_key="dataset.table")
    suffix = file.suffix.lower()
    if suffix not in FORMATS:
        raise ConfigError(f"dataset.table={path}: {suffix or 'no extension'} is not a table format safetrain reads "
                          f"(.csv, .tsv, .jsonl)", hint="save the table as CSV (comma-separated, with a header "
                          "row), TSV or JSON Lines (one object per line)", config_key="dataset.table")
    image_root = Path(root).expanduser() if root else file.parent
    if not image_root.is_dir():
        raise DataError(f"dataset.path={root} (the images' folder) is not a folder",
                        hint="set dataset.path to the folder the table's paths are relative to (null: the "
                             "table's own folder)", config_key="dataset.path")
    header, records, ragged = _records(file, FORMATS[suffix], sets.separator if sets else separator)
    used = _columns(file, header, columns, sets)
    table = Table(file=file, root=image_root, columns=used, multi_label=sets is not None)
    _judge(table, records, ragged, extension, classes, sets)
    if sets is None:
        _refuse_sets(table, separator)
    if not table.total:
        raise DataError(f"dataset.table={path} has no rows (only {'a header' if header else 'nothing'})",
                        hint="add one row per image: its path and its label", config_key="dataset.table")
    return table


def _refuse_sets(table: Table, separator: str) -> None:
    """A single-label table whose labels hold the separator has label sets: say so (exit 2)."""
    sets = [r for r in table.rows if separator in r.label]
    if sets:
        first = sets[0]
        raise ConfigError(f"dataset.table={table.file.name} has label sets: line {first.line} labels {first.rel} "
                          f"{first.label!r}" + (f" (and {len(sets) - 1} more rows)" if len(sets) > 1 else "")
                          + f", and dataset.task=single_label would train {first.label!r} as one class of its own",
                          hint=f"set dataset.task=multi_label trainer.loss=binary_crossentropy "
                               f"dataset.label_encoding=multi_hot (labels split at {separator!r}: "
                               f"dataset.label_separator)", config_key="dataset.task")


def _records(file: Path, delimiter: str | None,
             separator: str = "|") -> tuple[list[str], list[tuple[int, dict]], list[tuple[int, str]]]:
    """(the header, [(line, {column: value})], [(line, why)] for ragged rows)."""
    records, ragged = [], []
    with open(file, encoding="utf-8-sig", newline="") as handle:  # -sig: a byte-order mark is not a column name
        try:
            if delimiter is None:
                header: list[str] = []
                for line, text in enumerate(handle, start=1):
                    if not text.strip():
                        continue
                    try:
                        value = json.loads(text)
                    except json.JSONDecodeError as err:
                        ragged.append((line, f"not JSON ({err.msg})"))
                        continue
                    if not isinstance(value, dict):
                        ragged.append((line, f"a JSON {type(value).__name__}, not an object"))
                        continue
                    header += [k for k in value if k not in header]
                    records.append((line, {k: _text(v, separator) for k, v in value.items()}))
                return header, records, ragged
            reader = csv.reader(handle, delimiter=delimiter)
            header = [h.strip() for h in next(reader, [])]
            for fields in reader:
                line = reader.line_num
                if not any(f.strip() for f in fields):
                    continue
                if len(fields) != len(header):
                    ragged.append((line, f"{len(fields)} fields where the header has {len(header)}"))
                    continue
                records.append((line, dict(zip(header, fields))))
        except UnicodeDecodeError as err:
            raise DataError(f"dataset.table={file} is not UTF-8 text ({err.reason} at byte {err.start})",
                            hint="save the table as UTF-8 (most spreadsheet programs: 'CSV UTF-8')",
                            config_key="dataset.table") from None
        except csv.Error as err:
            kind = "TSV" if delimiter == "\t" else "CSV"
            raise DataError(f"dataset.table={file} could not be read as {kind} "
                            f"(line {reader.line_num}: {err})", hint="check the quoting on that line",
                            config_key="dataset.table") from None
    return header, records, ragged


def _text(value, separator: str = "|") -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # a label list in JSON: joined, for the multi-label reader to split
        return separator.join(str(v) for v in value)
    return str(value)


def _columns(file: Path, header: list[str], columns, sets: LabelSets | None = None) -> dict:
    """The column used for each role; a named column that is missing, or a required role with no
    column of a common name, is refused listing the columns the file has."""
    have = ", ".join(repr(h) for h in header) or "none"
    folded = {h.lower(): h for h in header}
    used: dict = {}
    if sets is not None and sets.columns:  # one 0/1 column per label, instead of a label column
        missing = [c for c in sets.columns if c not in header]
        if missing:
            raise ConfigError(f"dataset.columns.labels names {', '.join(map(repr, missing))}: {file.name} has no such "
                              f"column (its columns: {have})", hint="list the table's 0/1 label columns in "
                              "dataset.columns.labels", config_key="dataset.columns.labels")
        used["labels"] = list(sets.columns)
    for role, candidates, required in (("path", PATH_COLUMNS, True), ("label", LABEL_COLUMNS, "labels" not in used),
                                       ("group", GROUP_COLUMNS, False), ("split", SPLIT_COLUMNS, False)):
        named = getattr(columns, role, None) if columns is not None else None
        if named is not None:
            if named not in header:
                close = folded.get(str(named).lower())
                raise ConfigError(f"dataset.columns.{role}={named!r}: {file.name} has no such column (its columns: "
                                  f"{have})", hint=f"set dataset.columns.{role}={close!r}" if close else
                                  f"set dataset.columns.{role} to one of the file's columns",
                                  config_key=f"dataset.columns.{role}")
            used[role] = named
            continue
        used[role] = next((folded[c] for c in candidates if c in folded), None)
        if required and used[role] is None:
            raise ConfigError(f"{file.name} has no {role} column (its columns: {have}); safetrain looks for "
                              f"{', '.join(candidates)} unless dataset.columns.{role} names one",
                              hint=f"set dataset.columns.{role}=<the column with the image's {role}>",
                              config_key=f"dataset.columns.{role}")
    return used


def _label_set(record: dict, cols: dict, sets: LabelSets) -> tuple[tuple[str, ...], str | None]:
    """(a multi-label row's set, sorted; why the row is bad, or None)."""
    if "labels" in cols:
        found = []
        for column in cols["labels"]:
            value = record.get(column, "").strip().lower()
            if value not in TRUE_VALUES | FALSE_VALUES:
                return (), f"column {column!r} holds {record.get(column)!r}, not 0 or 1"
            if value in TRUE_VALUES:
                found.append(_name(column))
        return tuple(sorted(set(found))), None
    parts = (_name(p) for p in record.get(cols["label"], "").split(sets.separator))
    return tuple(sorted({p for p in parts if p})), None


def _judge(table: Table, records: list[tuple[int, dict]], ragged: list[tuple[int, str]], extension: str | None,
           classes: list[str] | None, sets: LabelSets | None = None) -> None:
    """Rows into good ones and bad ones, each bad one with its kind and reason."""
    cols, root = table.columns, table.root
    table.total = len(records) + len(ragged)
    for line, why in ragged:
        table.bad.append(BadRow(line, "ragged", f"line {line}: {why}", None, ""))
    allowed = set(classes) if classes else None
    listed: dict[str, list[Row]] = {}  # rows that passed the per-row checks, per file (in file order)
    for line, record in records:
        written = record.get(cols["path"], "").strip()
        label_set, unreadable = _label_set(record, cols, sets) if sets else ((), None)
        label = sets.separator.join(label_set) if sets else _name(record.get(cols["label"], ""))
        group = _name(record.get(cols["group"], "")) if cols["group"] else None
        split = _name(record.get(cols["split"], "")) if cols["split"] else None

        def bad(kind: str, reason: str) -> None:
            table.bad.append(BadRow(line, kind, f"line {line}: {reason}", split, written))

        if cols["split"] and not split:
            bad("empty_split", f"{written or '(no path)'} has no {cols['split']!r} value")
            continue
        if not written:
            bad("missing_file", f"no {cols['path']!r} value")
            continue
        rel, notes = _relative(written, root, extension)
        table.windows_separators += "windows" in notes
        table.extension_added += "extension" in notes
        if rel is None:
            bad("outside_root", f"{written} is outside the image root {root} (safetrain reads images under "
                                f"dataset.path only)")
            continue
        if not (root / rel).is_file():
            bad("missing_file", f"{written}: no such file under {root}")
            continue
        if unreadable:
            bad("unknown_label", f"{written}: {unreadable}")
            continue
        if not label and not (sets and sets.allow_empty):
            where = "no label column is 1" if "labels" in cols else f"no {cols['label']!r} value"
            bad("empty_label", f"{written} has {where}"
                + (" (an image with no label: dataset.allow_empty_labels=true makes it a good one)" if sets else ""))
            continue
        unknown = [x for x in (label_set if sets else (label,)) if allowed is not None and x not in allowed]
        if unknown:
            bad("unknown_label", f"{written} is labelled {', '.join(map(repr, unknown))}, not in dataset.classes "
                                 f"({', '.join(classes)})")
            continue
        listed.setdefault(rel, []).append(Row(line, rel, label, group or None, split, label_set))
    for rel, rows in listed.items():
        labels = sorted({r.label for r in rows})  # multi-label: one text per set
        if len(labels) > 1:  # one file, two labels: none of its rows can be trusted
            for r in rows:
                table.bad.append(BadRow(r.line, "conflicting", f"line {r.line}: {rel} is listed with "
                                        f"{len(labels)} labels ({', '.join(repr(x) for x in labels)}; lines "
                                        f"{', '.join(str(x.line) for x in rows)})", r.split, rel))
            continue
        table.rows.append(rows[0])
        for r in rows[1:]:
            table.bad.append(BadRow(r.line, "duplicate_row", f"line {r.line}: {rel} is listed again with the same "
                                    f"label {r.label!r} (first on line {rows[0].line}; that row is used)",
                                    r.split, rel))
    table.rows.sort(key=lambda r: r.line)
    table.bad.sort(key=lambda b: b.line)


def _name(value: str) -> str:
    """A label, group or split as written, trimmed, in Unicode NFC (as class folder names are)."""
    return unicodedata.normalize("NFC", value.strip())


def _relative(written: str, root: Path, extension: str | None) -> tuple[str | None, set[str]]:
    """(the path relative to the image root, '/'-separated, or None when it leaves the root;
    notes: 'windows' when backslashes were read as folders, 'extension' when dataset.extension
    completed an id: a path not ending in an image extension)."""
    notes = set()
    text = written
    if "\\" in text and not (root / text).exists():
        text = text.replace("\\", "/")
        notes.add("windows")
    if extension and PurePosixPath(text).suffix.lower() not in EXTENSIONS:  # an id ("img.0022" too)
        text += ("" if extension.startswith(".") else ".") + extension
        notes.add("extension")
    candidate = Path(text) if os.path.isabs(text) else root / text
    normal = Path(os.path.normpath(candidate))
    base = Path(os.path.normpath(root.absolute()))
    try:
        rel = normal.absolute().relative_to(base)
    except ValueError:
        return None, notes
    if not rel.parts:
        return None, notes
    return rel.as_posix(), notes
