"""An image folder's own split folders are the splits: train/, val/ and test/ are used as the user
made them, what is missing is carved from train/ per class (widened for small classes), and a
folder that ends up in no split is named. Real PNG files on disk."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from safetrain.config.schema import (ChannelPolicy, Config, DatasetConfig, ImageConfig, ResizePolicy, Source,
                                     SplitsConfig)
from safetrain.core.errors import ConfigError, DataError
from safetrain.pipelines.sources.folder_splits import carve
from safetrain.pipelines.sources.image_folder import image_folder_source

AUTO = SplitsConfig(train="auto", eval="auto", test="auto")


def make(root, counts: dict[str, dict[str, int]], seed: int = 0):
    """root/<split>/<class>/i.png (split "" = flat), distinct random images."""
    rng = np.random.default_rng(seed)
    for split, classes in counts.items():
        for cls, n in classes.items():
            folder = root / split / cls if split else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def cfg(root, tmp_path, splits=AUTO, **kw) -> DatasetConfig:
    return DatasetConfig(name="mine", source=Source.image_folder, path=str(root), cache_dir=str(tmp_path / "cache"),
                         splits=splits, image=ImageConfig(height=8, width=8, channels=3), resize=ResizePolicy.bilinear,
                         channel_policy=ChannelPolicy.convert, **kw)


def test_a_train_and_test_folder_are_the_splits_and_eval_is_carved_from_train(tmp_path):
    root = make(tmp_path / "d", {"train": {"a": 30, "b": 30}, "test": {"a": 24, "b": 24}})
    source = image_folder_source(cfg(root, tmp_path))
    assert source.splits == {"train": "train[:90%]", "eval": "train[90%:]", "test": "test"}
    assert source.report["selected"] == {"train": 54, "eval": 6, "test": 48}  # every file of test/ is tested
    assert ("split folders: train <- train[:90%], eval <- train[90%:] (carved per class: no val/ folder), "
            "test <- test/") in source.notes
    keys = {k.numpy().decode() for _, _, k in source.read("test")}
    assert len(keys) == 48 and all("/test/" in k for k in keys)


def test_train_val_test_folders_are_used_as_they_are_and_an_unused_folder_is_named(tmp_path):
    root = make(tmp_path / "d", {"train": {"a": 6, "b": 6}, "valid": {"a": 2, "b": 2}, "test": {"a": 3, "b": 3},
                                 "extra": {"a": 1, "b": 1}})
    source = image_folder_source(cfg(root, tmp_path))
    assert source.splits == {"train": "train", "eval": "valid", "test": "test"}
    assert source.report["selected"] == {"train": 12, "eval": 4, "test": 6}
    warning = next(n for n in source.notes if "extra/" in n)
    assert warning.startswith("warning: folder extra/ is in no split") and "dataset.splits.test=extra" in warning
    # Explicit split strings are used as written, and the folder they leave out is named too.
    explicit = image_folder_source(cfg(root, tmp_path, splits=SplitsConfig(train="train+valid", eval=None,
                                                                           test="test")))
    assert explicit.report["selected"] == {"train": 16, "test": 6}
    assert any(n.startswith("warning: folder extra/ is in no split") for n in explicit.notes)


def test_small_classes_are_in_every_carved_split_and_too_small_ones_are_refused_by_name(tmp_path):
    root = make(tmp_path / "flat", {"": {"common": 40, "rare": 5}})
    source = image_folder_source(cfg(root, tmp_path))
    assert source.splits == {"train": "train[:80%]", "eval": "train[80%:90%]", "test": "train[90%:]"}
    for split, rare in (("train[:80%]", 3), ("train[80%:90%]", 1), ("train[90%:]", 1)):
        keys = [k.numpy().decode() for _, _, k in source.read(split)]
        assert sum("/rare/" in k for k in keys) == rare
    assert "small classes kept in every carved split (a file each, from training): 'rare' (5)" in source.notes
    tiny = make(tmp_path / "tiny", {"": {"common": 40, "scarce": 2}})
    with pytest.raises(DataError, match=r"has no image of class 'scarce'") as info:
        image_folder_source(cfg(tiny, tmp_path))
    assert info.value.config_key == "dataset.allow_missing_classes"
    allowed = image_folder_source(cfg(tiny, tmp_path, allow_missing_classes=True))
    assert ("warning: fewer files than the 3 splits carved from train/: 'scarce' (2); add files, or a val/ or "
            "test/ folder") in allowed.notes


@given(members=st.integers(0, 400), parts=st.sampled_from([[(0, 90), (90, 100)], [(0, 80), (80, 90), (90, 100)]]))
def test_carved_slices_cover_each_class_once_and_hold_it_wherever_it_has_enough_files(members, parts):
    ranges = carve(members, parts)
    assert ranges[0][0] == 0 and ranges[-1][1] == members
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))  # disjoint, adjacent: every file once
    if members >= len(parts):
        assert all(hi > lo for lo, hi in ranges)
    if members >= 100:  # large classes keep their proportions
        assert abs((ranges[-1][1] - ranges[-1][0]) - members // 10) <= 1


def test_auto_splits_are_only_for_image_folders():
    from safetrain.experiment.validate import validate

    config = Config()
    config.dataset.splits = SplitsConfig(train="train", eval="auto", test="test")
    with pytest.raises(ConfigError, match="dataset.splits.eval=auto") as info:
        validate(config)
    assert info.value.config_key == "dataset.splits.eval"
