"""What an image folder's duplicates mean: conflicts, duplicates within a split, leakage across splits.

The pairs come from pipelines.sources.duplicates (exact: the same bytes; near candidates: a
perceptual-hash radius calibrated on the folder) and near candidates are kept only when the
pixels confirm them (pipelines.sources.near_check). Then:

- the same bytes under two class names makes both files bad examples (a conflicting label);
- a pair inside one configured split is a duplicate (an errors.jsonl event);
- a pair across two configured splits is leakage (dataset.on_leakage: warn | error | drop_from_eval).

report.json `data.duplicates` states the rule that was used (radius and where it came from, the
calibration sample, the search, the confirmation and its threshold) beside the counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from safetrain.config.schema import DatasetConfig, OnLeakage
from safetrain.core.errors import DataError
from safetrain.pipelines.sources.duplicates import calibrate, find_pairs, pack
from safetrain.pipelines.sources.near_check import THUMB, confirm
from safetrain.pipelines.spec import DataEvent

MAX_CONFIRM = 100_000  # candidate pairs confirmed on the pixels at most (the closest ones)


@dataclass
class Found:
    """Duplicate pairs sorted into what they mean."""

    report: dict = field(default_factory=dict)
    events: list[DataEvent] = field(default_factory=list)
    dropped: set[str] = field(default_factory=set)    # keys dropped from eval/test (drop_from_eval)
    pairs: list = field(default_factory=list)         # (file, file, Pair, words) to sort by split


def find_duplicates(good: list, classes: list[str], cfg: DatasetConfig) -> Found:
    """Exact pairs and confirmed near pairs of the readable files (`good`: image_folder's _File)."""
    hashes = pack([f.info.phash for f in good])
    rule = calibrate(hashes, [f.label for f in good], cfg.near_duplicate_radius)
    pairs = find_pairs([f.info.sha256 for f in good], hashes, rule)
    exact = [p for p in pairs if p.exact]
    candidates = sorted((p for p in pairs if not p.exact), key=lambda p: (p.distance, p.a, p.b))
    checked = candidates[:MAX_CONFIRM]
    scores = confirm([(good[p.a].path, good[p.b].path) for p in checked], cfg.exif_orientation.value == "apply")
    threshold = cfg.near_duplicate_similarity
    near = [(p, s) for p, s in zip(checked, scores) if s >= threshold]
    found = Found()
    dup = found.report["duplicates"] = {
        "exact": 0, "near": 0, "cross_split": 0, "conflicting_labels": 0, "dropped_from_eval": 0,
        "near_radius": rule.radius, "method": "exact: SHA-256 of the bytes; near: 256-bit pHash (imagehash) "
                                              "candidates confirmed on the pixels",
        **rule.to_json(),
        "confirmation": f"normalized correlation of the {THUMB}x{THUMB} grey thumbnails >= {threshold:g}",
        "candidates": len(candidates), "confirmed": len(near), "rejected": len(checked) - len(near),
        "unchecked": len(candidates) - len(checked)}
    for pair in exact:
        a, b = good[pair.a], good[pair.b]
        dup["exact"] += 1
        if a.label_ids != b.label_ids:  # multi-label: two different label sets
            dup["conflicting_labels"] += 1
            a.problem = f"the same image (identical bytes) as {b.key}, which is {_labelled(b, classes)}"
            b.problem = f"the same image (identical bytes) as {a.key}, which is {_labelled(a, classes)}"
            continue
        found.pairs.append((a, b, pair, "identical bytes"))
    for pair, score in near:
        dup["near"] += 1
        words = f"near duplicate: pHash distance {pair.distance}/256, thumbnail correlation {score:.3f}"
        found.pairs.append((good[pair.a], good[pair.b], pair, words))
    return found


def leakage(found: Found, membership: dict[str, list], policy: OnLeakage) -> None:
    """Pairs within one configured split are duplicates; across splits, leakage."""
    roles = {}
    order = {"train": 0, "eval": 1, "test": 2}
    for role, chosen in membership.items():
        for f in chosen:
            roles.setdefault(f.key, role)
    leaks = []
    for a, b, _pair, what in found.pairs:
        ra, rb = roles.get(a.key), roles.get(b.key)
        if ra and rb and ra != rb:
            keep, other = (a, b) if order[ra] < order[rb] else (b, a)
            leaks.append((keep, other, roles[keep.key], roles[other.key], what))
        else:
            found.events.append(DataEvent(kind="duplicate", split=ra or rb or a.split_dir, key=b.key, other=a.key,
                                          message=f"{b.key} duplicates {a.key} ({what})"))
    found.report["duplicates"]["cross_split"] = len(leaks)
    for keep, other, rk, ro, what in leaks:
        dropped = policy is OnLeakage.drop_from_eval
        if dropped:
            found.dropped.add(other.key)
        found.events.append(DataEvent(
            kind="leakage", split=ro, key=other.key, other=keep.key,
            message=f"{other.key} ({ro}) is the same image as {keep.key} ({rk}) ({what})"
                    + ("; dropped from " + ro if dropped else "")))
    found.report["duplicates"]["dropped_from_eval"] = len(found.dropped)
    if leaks and policy is OnLeakage.error:
        shown = "; ".join(f"{o.key} ({ro}) = {k.key} ({rk})" for k, o, rk, ro, _ in leaks[:3])
        raise DataError(f"{len(leaks)} image{'s' if len(leaks) > 1 else ''} appear in two splits (leakage: the "
                        f"eval/test score would count images the model trained on): {shown}"
                        + (f"; and {len(leaks) - 3} more" if len(leaks) > 3 else ""),
                        hint="remove the copies, or set dataset.on_leakage=drop_from_eval to keep only the "
                             "training copy (or warn to train anyway)", config_key="dataset.on_leakage")



def _labelled(f, classes: list[str]) -> str:
    return f"labelled {f.label_text(classes)}" if f.labels is not None else f"in class {classes[f.label]!r}"
