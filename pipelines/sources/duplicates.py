"""Duplicate images in a folder: exact (the same bytes) and near (perceptual hashes within a radius).

Exact duplicates group files by the SHA-256 of their bytes. Near duplicates compare imagehash's
64-bit pHash: two images whose hashes differ in at most `radius` bits look alike to a person (a
re-encode, a resize, a small crop or colour shift). Pairs are found with a vectorized XOR and
bit count over all hashes, block by block (50,000 files: 1.25 billion pairs, a few seconds).

What the pairs mean is the caller's (pipelines.sources.image_folder): the same image under two
labels is a conflict, the same image in two splits is leakage.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

_BLOCK = 256  # rows per block: 256 x 50,000 uint64 XORs = 100 MB


@dataclass(frozen=True)
class Pair:
    a: int          # indices into the caller's file list, a < b
    b: int
    exact: bool     # the same bytes (else: perceptual hashes within the radius)
    distance: int   # Hamming distance of the pHashes (0 for exact)


def find_pairs(sha256: list[str], phash: list[str], radius: int | None) -> list[Pair]:
    """Every duplicate pair; exact pairs are not listed again as near ones. radius None: exact only."""
    pairs: list[Pair] = []
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, digest in enumerate(sha256):
        groups[digest].append(i)
    exact = set()
    for members in groups.values():
        for x in range(len(members)):
            for y in range(x + 1, len(members)):
                pairs.append(Pair(members[x], members[y], True, 0))
                exact.add((members[x], members[y]))
    if radius is None or len(phash) < 2:
        return pairs
    hashes = np.array([int(h, 16) for h in phash], dtype=np.uint64)
    for start in range(0, len(hashes), _BLOCK):
        block = hashes[start:start + _BLOCK]
        # Compare the block with itself and everything after it (each pair once).
        rest = hashes[start:]
        distance = np.bitwise_count(block[:, None] ^ rest[None, :])
        rows, cols = np.nonzero(distance <= radius)
        for r, c in zip(rows.tolist(), cols.tolist()):
            a, b = start + r, start + c
            if a < b and (a, b) not in exact:
                pairs.append(Pair(a, b, False, int(distance[r, c])))
    return pairs
