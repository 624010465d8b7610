"""Duplicate images in a folder: exact (the same bytes) and near-duplicate *candidates* (perceptual
hashes within a radius that the folder's own images calibrate). Plain NumPy.

Why calibrated: a fixed pHash radius is right for photos and wrong for sparse line drawings.
On 545 real hand-drawn shapes (../shared/data/hand_drawn_shapes) a 64-bit pHash puts 16
pairs of *different people's* drawings within 4 bits; different drawings there come as close
as 30 of 256 bits. So the radius is derived from the data: the distances of pairs that are
unrelated by construction (files of different classes, sampled) give the 1st percentile `q`,
and the candidate radius is `min(cap, q // 2)` — half-way to where unrelated images begin.
When even that leaves less than `MIN_RADIUS` bits, the hash cannot separate this folder's
images and only exact duplicates are reported (and the report says why).

Candidates are not findings: the caller confirms each one on the pixels
(pipelines.sources.near_check), because the hash's tail of unrelated pairs grows with the
square of the folder.

The search is sub-quadratic: below `EXACT_LIMIT` distinct hashes every pair is compared
(vectorized XOR and bit count); above it, bit-sampling LSH (`TABLES` tables, each keyed on
`BITS_PER_TABLE` seeded bit positions) proposes pairs that share a key, and only those are
measured. A pair at Hamming distance d shares a table's key with probability
(1 - d/256)^BITS_PER_TABLE, so it is missed by every table with probability
(1 - that)^TABLES; `recall(d)` says it, and the report records it at the radius used.
Memory stays bounded: pairs are measured per table and only those within the radius are kept.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

HASH_BITS = 256          # imagehash pHash with hash_size=16 (pipelines.sources.folder_decode)
WORDS = HASH_BITS // 64
DEFAULT_CAP = 32         # "auto" never goes above 32 of 256 bits (12.5%)
MIN_RADIUS = 6           # below this the hash cannot tell copies from other images: exact only
CALIBRATION_PAIRS = 20_000
EXACT_LIMIT = 4096       # distinct hashes compared all against all below this (8 million pairs)
TABLES, BITS_PER_TABLE = 48, 20
_SMALL_RUN = 32          # LSH buckets up to this size are paired by offsets (vectorized)
_BLOCK = 512


@dataclass(frozen=True)
class Pair:
    a: int          # indices into the caller's file list, a < b
    b: int
    exact: bool     # the same bytes (else: perceptual hashes within the radius, confirmed by the caller)
    distance: int   # Hamming distance of the pHashes (0 for exact)


@dataclass
class Rule:
    """How near duplicates are searched in this folder (report.json data.duplicates)."""

    radius: int | None                  # bits of 256; None: exact duplicates only
    reason: str                         # why this radius, in words
    unrelated: dict = field(default_factory=dict)  # the calibration sample's distance percentiles
    search: str = ""                    # all pairs | LSH (with its recall at the radius)

    def to_json(self) -> dict:
        return {"radius": self.radius, "radius_from": self.reason, "unrelated_pairs": self.unrelated,
                "search": self.search}


def pack(phash: list[str]) -> np.ndarray:
    """(n, 4) uint64 words of the 64-hex-digit hashes (an unusable hash: all bits set, far from all)."""
    words = np.full((len(phash), WORDS), np.iinfo(np.uint64).max, dtype=np.uint64)
    for i, h in enumerate(phash):
        if h and len(h) == HASH_BITS // 4:
            words[i] = [int(h[16 * w:16 * (w + 1)], 16) for w in range(WORDS)]
    return words


def distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamming distances between rows of packed hashes (broadcasting)."""
    return np.bitwise_count(a ^ b).sum(-1, dtype=np.int64)


def calibrate(hashes: np.ndarray, labels: list[int], setting: int | str | None, seed: int = 0) -> Rule:
    """The radius for this folder: `setting` None = exact only; an int = that many bits (the
    calibration is still measured and reported); "auto" = min(DEFAULT_CAP, q // 2), q the 1st
    percentile of the distances of sampled pairs of files of different classes."""
    if setting is None:
        return Rule(None, "dataset.near_duplicate_radius=null: exact duplicates only")
    labels_ = np.asarray(labels)
    rng = np.random.default_rng(seed)
    n = len(labels_)
    a = rng.integers(0, max(n, 1), CALIBRATION_PAIRS) if n else np.zeros(0, int)
    b = rng.integers(0, max(n, 1), CALIBRATION_PAIRS) if n else np.zeros(0, int)
    keep = labels_[a] != labels_[b] if n else np.zeros(0, bool)
    sample = distance(hashes[a[keep]], hashes[b[keep]]) if keep.any() else np.zeros(0, np.int64)
    if len(sample) < 20:
        unrelated = {"sampled": int(len(sample))}
        if setting == "auto":
            return Rule(None, f"too few pairs of files of different classes ({len(sample)}) to calibrate a "
                              f"perceptual-hash radius: exact duplicates only", unrelated)
        return Rule(int(setting), f"dataset.near_duplicate_radius={setting} (too few files to calibrate)", unrelated)
    p = np.percentile(sample, [0.1, 1, 50])
    unrelated = {"sampled": int(len(sample)), "p0_1": float(p[0]), "p1": float(p[1]), "p50": float(p[2])}
    if setting != "auto":
        return Rule(int(setting), f"dataset.near_duplicate_radius={setting} (unrelated pairs: 1st percentile "
                                  f"{p[1]:g} bits)", unrelated)
    radius = min(DEFAULT_CAP, int(p[1]) // 2)
    if radius < MIN_RADIUS:
        return Rule(None, f"images of different classes are too alike for the perceptual hash (1st percentile "
                          f"{p[1]:g} of {HASH_BITS} bits over {len(sample)} sampled pairs): exact duplicates only",
                    unrelated)
    return Rule(radius, f"auto: min({DEFAULT_CAP}, half the 1st percentile ({p[1]:g} bits) of {len(sample)} "
                        f"sampled pairs of files of different classes)", unrelated)


def recall(d: int) -> float:
    """The chance that the LSH search proposes a pair at Hamming distance d."""
    share = (1 - d / HASH_BITS) ** BITS_PER_TABLE
    return 1 - (1 - share) ** TABLES


def find_pairs(sha256: list[str], hashes: np.ndarray, rule: Rule, exact_limit: int = EXACT_LIMIT) -> list[Pair]:
    """Every exact pair (same SHA-256) and every near candidate (distinct bytes, hashes within
    rule.radius); an exact pair is not listed again as a near one."""
    pairs: list[Pair] = []
    groups: dict[str, list[int]] = collections.defaultdict(list)
    for i, digest in enumerate(sha256):
        groups[digest].append(i)
    for members in groups.values():
        pairs += [Pair(members[x], members[y], True, 0) for x in range(len(members))
                  for y in range(x + 1, len(members))]
    if rule.radius is None or len(sha256) < 2:
        return pairs
    # One representative per distinct bytes; then one per distinct hash (all its members are
    # at distance 0 from each other: their pairs come from the representative's).
    first = [members[0] for members in groups.values()]
    reps = np.asarray(first)
    unique, inverse = np.unique(hashes[reps], axis=0, return_inverse=True)
    inverse = inverse.ravel()
    if len(unique) <= exact_limit:
        ua, ub, ud = _all_pairs(unique, rule.radius)
        rule.search = f"all {len(unique) * (len(unique) - 1) // 2:,} pairs of {len(unique):,} distinct hashes"
    else:
        ua, ub, ud = _lsh_pairs(unique, rule.radius)
        rule.search = (f"LSH over {len(unique):,} distinct hashes ({TABLES} tables of {BITS_PER_TABLE} bits): "
                       f"finds a pair at distance {rule.radius} with probability {recall(rule.radius):.3f}, "
                       f"at {rule.radius // 2} with {recall(rule.radius // 2):.5f}")
    members_of: dict[int, list[int]] = collections.defaultdict(list)
    for rep, u in zip(reps.tolist(), inverse.tolist()):
        members_of[u].append(rep)
    near = set()
    for members in members_of.values():  # distinct bytes, the same hash
        near.update((min(x, y), max(x, y), 0) for i, x in enumerate(members) for y in members[i + 1:])
    for u, v, d in zip(ua.tolist(), ub.tolist(), ud.tolist()):
        near.update((min(x, y), max(x, y), d) for x in members_of[u] for y in members_of[v])
    pairs += [Pair(a, b, False, d) for a, b, d in sorted(near)]
    return pairs


def _all_pairs(h: np.ndarray, radius: int):
    """Pairs (i < j) within the radius, blockwise over all pairs."""
    found = []
    for start in range(0, len(h), _BLOCK):
        block = h[start:start + _BLOCK]
        d = distance(block[:, None, :], h[None, start:, :])
        rows, cols = np.nonzero(d <= radius)
        keep = rows < cols  # cols index from `start`: the diagonal is rows == cols
        found.append((rows[keep] + start, cols[keep] + start, d[rows[keep], cols[keep]]))
    return _join(found)


def _lsh_pairs(h: np.ndarray, radius: int):
    """Pairs within the radius among those sharing a sampled-bits key in at least one table."""
    rng = np.random.default_rng(20240606)
    codes = set()
    found = []
    one = np.uint64(1)
    for _ in range(TABLES):
        chosen = rng.choice(HASH_BITS, BITS_PER_TABLE, replace=False)
        keys = np.zeros(len(h), np.uint64)  # the chosen bits, read from the packed words (no (n, 256) copy)
        for i, bit in enumerate(chosen.tolist()):
            keys |= ((h[:, bit // 64] >> np.uint64(bit % 64)) & one) << np.uint64(i)
        for a, b in _same_key(keys, h, radius):
            d = distance(h[a], h[b])
            ok = d <= radius
            a, b, d = np.minimum(a, b)[ok], np.maximum(a, b)[ok], d[ok]
            code = a.astype(np.int64) * len(h) + b
            new = np.array([c not in codes for c in code.tolist()], bool) if len(code) else np.zeros(0, bool)
            codes.update(code[new].tolist())
            found.append((a[new], b[new], d[new]))
    return _join(found)


def _same_key(keys: np.ndarray, h: np.ndarray, radius: int):
    """Index pairs (arrays) of rows sharing a key: small buckets by offsets within the sorted
    order, large ones all against all (only those within the radius: bounded memory)."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    run = np.repeat(np.arange(len(starts)), sizes)
    big = set(np.flatnonzero(sizes > _SMALL_RUN).tolist())
    small_max = int(sizes[sizes <= _SMALL_RUN].max()) if (sizes <= _SMALL_RUN).any() else 1
    for offset in range(1, small_max):
        same = np.flatnonzero((run[:-offset] == run[offset:]) & (sizes[run[:-offset]] <= _SMALL_RUN))
        yield order[same], order[same + offset]
    for r in sorted(big):
        members = order[starts[r]:starts[r] + sizes[r]]
        a, b, _ = _all_pairs(h[members], radius)
        yield members[a], members[b]


def _join(found):
    if not found:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return tuple(np.concatenate([f[i] for f in found]).astype(np.int64) for i in range(3))
