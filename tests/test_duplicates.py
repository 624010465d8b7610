"""Duplicates with checked precision: on real line drawings by many people no pair of different
drawings is called a duplicate, while real copies (re-encoded, brightened, resized) are found; the
search is sub-quadratic (LSH) and finds what comparing every pair finds."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from safetrain.config.schema import ChannelPolicy, DatasetConfig, ImageConfig, ResizePolicy, Source, SplitsConfig
from safetrain.pipelines.sources import duplicates
from safetrain.pipelines.sources.duplicates import Rule, calibrate, find_pairs, recall
from safetrain.pipelines.sources.image_folder import image_folder_source
from safetrain.pipelines.sources.near_check import similarity


def cfg(root, tmp_path, **kw) -> DatasetConfig:
    return DatasetConfig(name="shapes", source=Source.image_folder, path=str(root), cache_dir=str(tmp_path / "cache"),
                         splits=SplitsConfig(train="train[:80%]", eval="train[80%:90%]", test="train[90%:]"),
                         image=ImageConfig(height=70, width=70, channels=1), resize=ResizePolicy.bilinear,
                         channel_policy=ChannelPolicy.convert, **kw)


def test_no_two_different_drawings_are_called_duplicates_on_real_hand_drawn_shapes(hand_drawn, tmp_path):
    source = image_folder_source(cfg(hand_drawn, tmp_path))
    dup = source.report["duplicates"]
    assert (dup["exact"], dup["near"], dup["cross_split"]) == (0, 0, 0)
    assert not [e for e in source.events if e.kind in ("duplicate", "leakage")]
    # The rule is stated: a calibrated radius, the sample it came from, the confirmation.
    assert dup["radius_from"].startswith("auto: min(32, half the 1st percentile") and 0 < dup["radius"] <= 32
    assert dup["unrelated_pairs"]["sampled"] > 10_000 and dup["unrelated_pairs"]["p1"] > 2 * dup["radius"] - 2
    assert dup["confirmation"] == "normalized correlation of the 32x32 grey thumbnails >= 0.98"
    assert dup["search"].startswith("all 148,240 pairs")
    # The old rule (64-bit pHash within 4 bits) called 16 pairs of different drawings the same here.


def test_real_copies_of_drawings_are_found_and_leak_across_splits(hand_drawn, tmp_path):
    root = tmp_path / "shapes"
    shutil.copytree(hand_drawn, root)
    originals = sorted((root / "triangle").glob("*.png"))[:3] + sorted((root / "ellipse").glob("*.png"))[:2]
    copies = []
    for i, path in enumerate(originals):
        image = Image.open(path).convert("RGB")
        if i % 2 == 0:  # re-encoded as JPEG: other bytes, the same drawing
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=85)
            copy = path.with_name("copy_" + path.stem + ".jpg")
            copy.write_bytes(buffer.getvalue())
        else:  # brightened and saved again
            copy = path.with_name("copy_" + path.name)
            ImageEnhance.Brightness(image).enhance(0.8).save(copy)
        copies.append(copy)
    source = image_folder_source(cfg(root, tmp_path))
    dup = source.report["duplicates"]
    assert dup["exact"] == 0 and dup["near"] == len(copies) and dup["confirmed"] == len(copies)
    found = {frozenset((e.key, e.other)) for e in source.events if e.kind in ("duplicate", "leakage")}
    assert found == {frozenset((str(o), str(c))) for o, c in zip(originals, copies)}
    assert all("thumbnail correlation" in e.message for e in source.events if e.kind in ("duplicate", "leakage"))


def test_images_the_hash_cannot_tell_apart_give_exact_duplicates_only_and_say_why():
    hashes = np.zeros((40, duplicates.WORDS), np.uint64)  # every file hashes alike (e.g. blank scans)
    rule = calibrate(hashes, [i % 2 for i in range(40)], "auto")
    assert rule.radius is None and "too alike for the perceptual hash" in rule.reason
    assert calibrate(hashes, [0] * 40, "auto").radius is None  # one class: nothing unrelated to sample
    assert calibrate(hashes, [i % 2 for i in range(40)], 10).radius == 10  # the user's radius is kept
    assert calibrate(hashes, [0, 1], None).reason.startswith("dataset.near_duplicate_radius=null")


def _planted(n: int, seed: int = 3):
    """Random 256-bit hashes with pairs planted at distances 0..16 (and one triple of one hash)."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**63, (n, duplicates.WORDS), dtype=np.int64).astype(np.uint64) * np.uint64(2) \
        + rng.integers(0, 2, (n, duplicates.WORDS)).astype(np.uint64)
    planted = {}
    for d, (a, b) in enumerate(zip(range(0, 34, 2), range(1, 34, 2))):
        h[b] = h[a]
        bits = rng.choice(256, d, replace=False)
        for bit in bits:
            h[b, bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
        planted[(a, b)] = d
    h[41] = h[40]
    h[42] = h[40]
    return h, planted


def test_the_lsh_search_finds_what_comparing_every_pair_finds():
    n = 6000
    h, planted = _planted(n)
    sha = [f"{i}" for i in range(n)]  # all bytes distinct
    exact_rule, lsh_rule = Rule(16, "test"), Rule(16, "test")
    everything = {(p.a, p.b, p.distance) for p in find_pairs(sha, h, exact_rule, exact_limit=10**9)}
    fast = {(p.a, p.b, p.distance) for p in find_pairs(sha, h, lsh_rule)}
    assert lsh_rule.search.startswith("LSH over 5,997 distinct hashes") and exact_rule.search.startswith("all ")
    assert fast == everything
    assert {(a, b) for a, b, _ in everything} >= set(planted) | {(40, 41), (40, 42), (41, 42)}
    assert all(d == planted[(a, b)] for a, b, d in everything if (a, b) in planted)
    assert recall(16) > 0.999999 and recall(32) > 0.96


@pytest.mark.parametrize("a,b,alike", [
    (np.full((32, 32), 255.0), np.full((32, 32), 255.0), True),     # two blank pages
    (np.full((32, 32), 255.0), np.full((32, 32), 0.0), False),      # white and black
    (np.full((32, 32), 255.0), np.eye(32) * 255, False),            # a blank page and a line
])
def test_flat_thumbnails_are_alike_only_when_they_have_one_level(a, b, alike):
    assert (similarity(a, b) >= 0.98) is alike
