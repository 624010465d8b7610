"""Stratified slices: a split string's range, taken from each class in proportion (plain Python).

`train[80%:]` over a folder means "the last 20% of every class", not "the last 20% of a list":
TFDS turns the string into absolute boundaries over the whole split (`start`, `end` of `size`),
and each class of `n` files keeps the same share, its boundaries rounded half up. Adjacent slices
share a boundary, so they stay disjoint and together cover every file. Shared by the
image_folder source and the new-experiment scaffold (which checks its proposed splits with it).
"""

from __future__ import annotations


def class_range(n: int, start: int, end: int, size: int) -> tuple[int, int]:
    """The [lo, hi) of a class of n files for the slice [start, end) of a split of `size` files."""
    if size <= 0:
        return 0, 0
    return tuple((2 * b * n + size) // (2 * size) for b in (start, end))


def every_class_in_every_slice(counts: list[int], percents: list[tuple[int, int]]) -> bool:
    """Whether each percent slice [a%, b%) of a split with these class sizes holds every class,
    whichever way the absolute boundaries round (the check the scaffold makes before writing)."""
    size = sum(counts)
    for a, b in percents:
        for start in {size * a // 100, -(-size * a // 100)}:
            for end in {size * b // 100, -(-size * b // 100)}:
                if any(lo >= hi for lo, hi in (class_range(n, start, end, size) for n in counts)):
                    return False
    return True
