"""One image folder, many runs: cached pixels of different settings coexist, a shard a run is
reading is never removed, old ones are collected once no run can use them, and a cache file
that vanishes mid-run is a data error naming it — never "unknown" in the model."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from safetrain.config.schema import ChannelPolicy, DatasetConfig, ImageConfig, ResizePolicy, Source, SplitsConfig
from safetrain.core.errors import DataError, ErrorKind
from safetrain.core.run_state import Context
from safetrain.diagnose.diagnosis import diagnose
from safetrain.pipelines.sources import folder_cache
from safetrain.pipelines.sources.image_folder import image_folder_source


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(5)
    for cls in ("cat", "dog"):
        (tmp_path / "pets" / cls).mkdir(parents=True)
        for i in range(12):
            small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
            Image.fromarray(small).resize((24, 24), Image.BILINEAR).save(tmp_path / "pets" / cls / f"{i}.png")
    return tmp_path / "pets"


def cfg(root, tmp_path, size=16, **kw) -> DatasetConfig:
    return DatasetConfig(name="pets", source=Source.image_folder, path=str(root), cache_dir=str(tmp_path / "cache"),
                         splits=SplitsConfig(train="train", eval=None, test=None),
                         image=ImageConfig(height=size, width=size, channels=3), resize=ResizePolicy.bilinear,
                         channel_policy=ChannelPolicy.convert, **kw)


def shards(tmp_path) -> set:
    return {p.name for p in (tmp_path / "cache").rglob("*.tfrecord")}


def test_runs_with_other_sizes_and_radii_meanwhile_never_remove_what_a_run_reads(folder, tmp_path):
    long_run = image_folder_source(cfg(folder, tmp_path, size=16))
    reading = iter(long_run.read("train"))
    next(reading)  # the long run is mid-epoch
    mine = shards(tmp_path)
    assert len(mine) == 2
    other_size = image_folder_source(cfg(folder, tmp_path, size=20))
    other_radius = image_folder_source(cfg(folder, tmp_path, size=16, near_duplicate_radius=9))
    assert other_radius.report["scan"]["shards_written"] == 0  # the radius does not key the pixels
    assert mine < shards(tmp_path) and len(shards(tmp_path)) == 4  # both sizes kept side by side
    assert len(list(reading)) == 23  # the long run reads on to the end of its epoch
    assert len(list(other_size.read("train"))) == 24 and len(list(other_radius.read("train"))) == 24


def test_old_shards_are_collected_only_when_no_live_run_holds_them(folder, tmp_path):
    image_folder_source(cfg(folder, tmp_path, size=16))
    image_folder_source(cfg(folder, tmp_path, size=20))
    leases = tmp_path / "cache"
    old = time.time() - 2 * folder_cache.KEEP_UNUSED_S
    for shard in leases.rglob("*.tfrecord"):
        os.utime(shard, (old, old))
    # Still held by this (live) process's leases: nothing goes.
    again = image_folder_source(cfg(folder, tmp_path, size=16))
    assert again.report["scan"]["old_cache_files_removed"] == 0 and len(shards(tmp_path)) == 4
    # The runs end (their leases become dead: a finished process's pid) and an hour passes.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    for lease in leases.rglob("leases/*.json"):
        text = lease.read_text().replace(f'"pid": {os.getpid()}', f'"pid": {int(dead.stdout)}')
        lease.write_text(text)
    for shard in leases.rglob("*.tfrecord"):
        os.utime(shard, (old, old))
    last = image_folder_source(cfg(folder, tmp_path, size=16))
    assert last.report["scan"]["old_cache_files_removed"] == 2  # the 20x20 shards; the 16x16 ones are in use
    assert len(shards(tmp_path)) == 2 and len(list(last.read("train"))) == 24
    assert not [p for p in leases.rglob("leases/*.json") if str(int(dead.stdout)) in p.read_text()]


def test_a_cache_file_removed_mid_run_is_a_data_error_naming_it(folder, tmp_path):
    import tensorflow as tf

    image_folder_source(cfg(folder, tmp_path))
    victim = sorted((tmp_path / "cache").rglob("*.tfrecord"))[0]
    victim.unlink()  # what an outside cleaner (or an old safetrain) did to a sweep's jobs
    ds = tf.data.TFRecordDataset([str(victim)])  # the reader the source uses, on the vanished file
    with pytest.raises(tf.errors.NotFoundError) as raised:
        next(iter(ds))
    error = diagnose(raised.value, Context(phase="eval", step=690))
    assert isinstance(error, DataError) and error.exit_code == 3 and error.kind == ErrorKind.data_cache
    assert str(victim) in error.message and "model is not at fault" in error.message
    assert error.config_key == "dataset.cache_dir" and error.hint.startswith("rerun the same command")
