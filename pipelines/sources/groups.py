"""What must stay together in one split: a group (a table's group column) and a cluster of copies.

Several photos of one patient, burst shots, a scene saved again as JPEG: a split that puts one of
them in training and another in test measures memory, not generalization. A *unit* is a set of
files joined by a shared group value or by an exact or near copy pair the duplicate search
confirmed (transitively: union-find). The splits safetrain carves place whole units
(pipelines.sources.image_folder's `_Selection`); a split the user fixed (split folders, a split
column) that cuts a group is leakage, named under dataset.on_leakage, as copies across splits are.
"""

from __future__ import annotations

import collections
from typing import Iterable

from safetrain.config.schema import OnLeakage
from safetrain.core.errors import DataError
from safetrain.pipelines.spec import DataEvent


class Units:
    """Union-find over file keys; `of(key)` is the unit's id (a member key)."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.parent = {k: k for k in keys}

    def of(self, key: str) -> str:
        root = key
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[key] != root:  # path compression
            self.parent[key], key = root, self.parent[key]
        return root

    def join(self, a: str, b: str) -> None:
        ra, rb = self.of(a), self.of(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)  # the smaller key: independent of the join order


def units(good: list, pairs: list) -> tuple[Units, dict]:
    """The units of the readable files (`good`: image_folder's _File, with `group`) joined by group
    and by the copy `pairs` ((file, file, ...) from the duplicate search), and report.json
    data.groups (crossing_carved is filled in once the splits are chosen)."""
    found = Units(f.key for f in good)
    first_of_group: dict[str, str] = {}
    for f in good:
        if f.group is not None:
            found.join(f.key, first_of_group.setdefault(f.group, f.key))
    copies = set()
    for a, b, *_ in pairs:
        if a.key in found.parent and b.key in found.parent:
            found.join(a.key, b.key)
            copies.add(a.key)
    sizes = collections.Counter(found.of(f.key) for f in good)
    with_copies = {found.of(k) for k in copies}
    report = {"groups": len(first_of_group), "largest": max(sizes.values(), default=0),
              "units": len(sizes), "copy_clusters": len(with_copies), "crossing_carved": 0}
    return found, report


def crossing(found: Units, membership: dict[str, list], roles: Iterable[str]) -> list[str]:
    """The units with members in more than one of `roles`' splits (their ids)."""
    where: dict[str, set[str]] = collections.defaultdict(set)
    for role in roles:
        for f in membership.get(role, []):
            where[found.of(f.key)].add(role)
    return sorted(unit for unit, placed in where.items() if len(placed) > 1)


def group_leakage(good: list, membership: dict[str, list], policy: OnLeakage, events: list[DataEvent],
                  dropped: set[str]) -> int:
    """A group whose files are in two of the splits (the user fixed them): leakage, named once per
    group; under drop_from_eval its eval/test files are dropped, under error the run stops.
    Returns how many groups cross."""
    order = {"train": 0, "eval": 1, "test": 2}
    placed: dict[str, dict[str, list]] = collections.defaultdict(lambda: collections.defaultdict(list))
    for role, chosen in membership.items():
        for f in chosen:
            if f.group is not None:
                placed[f.group][role].append(f)
    cut = {g: roles for g, roles in placed.items() if len(roles) > 1}
    for group, roles in sorted(cut.items()):
        first = min(roles, key=order.get)
        for role, members in sorted(roles.items(), key=lambda item: order[item[0]]):
            if role == first:
                continue
            drop = policy is OnLeakage.drop_from_eval
            for f in members:
                if drop:
                    dropped.add(f.key)
                events.append(DataEvent(
                    kind="leakage", split=role, key=f.key, other=roles[first][0].key,
                    message=f"{f.key} ({role}) is in group {group!r}, which also has {len(roles[first])} file(s) in "
                            f"{first} (a split that cuts a group measures memory)" + ("; dropped from " + role
                                                                                     if drop else "")))
    if cut and policy is OnLeakage.error:
        shown = "; ".join(f"{g!r} in {', '.join(sorted(r, key=order.get))}" for g, r in sorted(cut.items())[:3])
        raise DataError(f"{len(cut)} group{'s are' if len(cut) > 1 else ' is'} cut by the splits: {shown}"
                        + (f"; and {len(cut) - 3} more" if len(cut) > 3 else ""),
                        hint="put each group's rows in one split (or leave dataset.splits.* auto and drop the split "
                             "column: safetrain's carve keeps groups whole), or set dataset.on_leakage="
                             "drop_from_eval", config_key="dataset.on_leakage")
    return len(cut)
