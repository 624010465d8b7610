"""Which files of an image folder each split gets, when the config leaves it to the folder.

`dataset.splits.* = auto` (configs/dataset/image_folder.yaml) means: the user's own split folders.

    DIR/train/, DIR/val/ (or valid/, validation/), DIR/test/   -> train, eval, test as they are
    DIR/train/ and DIR/test/                                   -> eval carved from train/ (10%)
    DIR/train/ and DIR/val/                                    -> test carved from train/ (10%)
    DIR/<class>/ (no split folders)                            -> 80% / 10% / 10% of each class

Carved slices are taken per class, and widened where a class is small: every carved split gets
at least one file of every class that has a file for each (a class of 5 files gets 3/1/1, where
10% slices would give eval or test none of it); a class with fewer files than the splits carved
from it is refused by name (the caller's missing-class check) unless allowed. A split folder that
ends up in no split is a warning naming it — never silently unused. Explicit split strings are
used as written (the same warning names a folder they leave out).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from safetrain.pipelines.sources.stratify import class_range

AUTO = "auto"
VAL_NAMES = ("val", "valid", "validation")
ROLES = ("train", "eval", "test")


@dataclass
class SplitPlan:
    roles: dict[str, str | None]                     # role -> split string (TFDS syntax) or None
    carved: dict[str, tuple[int, int]] = field(default_factory=dict)  # carved split string -> [lo%, hi%)
    folder: str = "train"                            # the folder carved from
    notes: list[str] = field(default_factory=list)


def plan(configured: dict[str, str | None], folders: list[str], layout: bool) -> SplitPlan:
    """The split strings per role: `configured` as given where not auto, else from the folders
    (`layout`: DIR/train/<class>/ exists; `folders`: the split folders found)."""
    if not any(v == AUTO for v in configured.values()):
        out = SplitPlan(dict(configured))
    else:
        val = next((name for name in VAL_NAMES if name in folders), None)
        test = "test" if "test" in folders else None
        parts = [r for r, given in (("eval", val), ("test", test)) if not given]
        bounds = {0: [], 1: [(0, 90), (90, 100)], 2: [(0, 80), (80, 90), (90, 100)]}[len(parts)]
        strings = {"train": "train"}
        carved = {}
        for role, (lo, hi) in zip(["train"] + parts, bounds):
            strings[role] = f"train[{'' if lo == 0 else f'{lo}%'}:{'' if hi == 100 else f'{hi}%'}]"
            carved[strings[role]] = (lo, hi)
        strings.setdefault("eval", val)
        strings.setdefault("test", test)
        roles = {r: (strings[r] if configured.get(r) == AUTO else configured.get(r)) for r in ROLES}
        out = SplitPlan(roles, {s: b for s, b in carved.items() if s in roles.values()})
        if layout:
            words = []
            for role in ROLES:
                s = roles[role]
                if s is None:
                    continue
                source = (f"{s} (carved per class: no {'val' if role == 'eval' else role}/ folder)"
                          if s in out.carved and role != "train" else f"{s}/" if s in folders else s)
                words.append(f"{role} <- {source}")
            out.notes.append("split folders: " + ", ".join(words))
    used = {part.split("[")[0] for s in out.roles.values() if s for part in s.split("+")}
    for name in folders:
        if layout and name not in used:
            out.notes.append(f"warning: folder {name}/ is in no split (its files are scanned, never trained or "
                             f"scored); name it in dataset.splits (e.g. dataset.splits.test={name}) or move it out")
    return out


def carve(members: int, bounds: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[lo, hi) per carved slice (percent bounds, in order) of a class of `members` files: the
    stratified slices, widened so each slice has a file when the class has one for each (the
    first, training, slice gives them up)."""
    ranges = [class_range(members, lo, hi, 100) for lo, hi in bounds]
    counts = [hi - lo for lo, hi in ranges]
    if members >= len(bounds):
        for i in range(1, len(counts)):
            while counts[i] == 0:
                donor = max(range(len(counts)), key=lambda j: (counts[j], j == 0))
                counts[donor] -= 1
                counts[i] += 1
    out, start = [], 0
    for c in counts:
        out.append((start, start + c))
        start += c
    return out


def carve_units(sizes: list[int], bounds: list[tuple[int, int]]) -> list[int]:
    """The carved slice (index into `bounds`) of each unit of a class — a group or a cluster of
    copies, `sizes` files each, in the class's order — so that no unit is cut. A unit goes to the
    slice its first file falls in (the files' stratified, widened ranges: with one file per unit
    this is exactly `carve`); then a slice left without a unit, while the class has a unit for
    each slice, takes one from the slice that has the most (the neighbour in order)."""
    ranges = carve(sum(sizes), bounds)
    parts, position = [], 0
    for size in sizes:
        parts.append(next(i for i, (lo, hi) in enumerate(ranges) if lo <= position < hi))
        position += size
    if len(sizes) >= len(bounds):
        for empty in range(len(bounds)):
            while empty not in parts:
                held = [parts.count(q) for q in range(len(bounds))]
                donor = max(range(len(bounds)), key=lambda q: (held[q], q == 0))
                mine = [i for i, q in enumerate(parts) if q == donor]
                parts[mine[-1] if donor < empty else mine[0]] = empty
    return parts


def carve_label_sets(label_sets: list[tuple[int, ...]], num_labels: int, bounds: list[tuple[int, int]]) -> list[int]:
    """The carved slice (index into `bounds`) of each unit (a file, a group, a cluster of copies)
    of a multi-label folder, from the units' label sets (the union over a unit's files): iterative
    stratification (Sechidis et al., 2011, the `iterative-stratification` package), which gives
    each slice its share of every label — rare ones first — where slicing by one class cannot.
    Slices are cut one at a time (train from the rest, then eval from what is left, ...), with a
    fixed random state: the same units in the same order give the same slices. Then a slice left
    without a label that has a unit for each slice takes one unit with it from the slice that has
    the most such units. Units are counted as one each, whatever their size."""
    import numpy as np
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    count = len(label_sets)
    y = np.zeros((count, max(num_labels, 1)), np.int64)
    for i, labels in enumerate(label_sets):
        y[i, list(labels)] = 1
    shares = [hi - lo for lo, hi in bounds]
    parts = np.full(count, len(bounds) - 1, np.int64)
    remaining = np.arange(count)
    for k in range(len(bounds) - 1):
        share = shares[k] / sum(shares[k:])
        if len(remaining) < 2:
            parts[remaining] = k
            break
        cut = MultilabelStratifiedShuffleSplit(n_splits=1, train_size=share, test_size=1.0 - share, random_state=0)
        taken, rest = next(cut.split(np.zeros((len(remaining), 1)), y[remaining]))
        parts[remaining[taken]] = k
        remaining = remaining[rest]
    out = [int(p) for p in parts]
    for label in range(num_labels):
        holders = [i for i in range(count) if y[i, label]]
        if len(holders) < len(bounds):
            continue
        for empty in range(len(bounds)):
            if any(out[i] == empty for i in holders):
                continue
            held = [sum(out[i] == q for i in holders) for q in range(len(bounds))]
            donor = max(range(len(bounds)), key=lambda q: (held[q], q == 0))
            out[next(i for i in holders if out[i] == donor)] = empty
    return out
