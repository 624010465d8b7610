"""Image folders as users have them: decoded once, cached outside the folder, checked for the
problems that cost accuracy (duplicates across splits, conflicting labels, missing classes), and
tidied (hidden/system entries, EXIF rotation, misnamed formats). Real files on disk throughout."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from safetrain.pipelines.build import build_datasets
from safetrain.pipelines.sources.image_folder import image_folder_source
from safetrain.config.schema import (BadExamplePolicy, ChannelPolicy, DatasetConfig, ExifOrientation, ImageConfig,
                                     OnLeakage, ResizePolicy, Source, SplitsConfig)
from safetrain.core.errors import DataError


def smooth(rng, h=24, w=32, channels=3) -> np.ndarray:
    """A photo-like image (smooth shapes, not noise): perceptual hashes behave on it as on photos."""
    small = rng.integers(0, 256, (4, 4, channels), dtype=np.uint8)
    big = Image.fromarray(small.squeeze() if channels == 1 else small).resize((w, h), Image.BILINEAR)
    return np.asarray(big)


def photo_crop(i: int, h=48, w=64) -> np.ndarray:
    """A crop of one of scikit-learn's two sample photos (real texture: pHash is stable on it)."""
    from sklearn.datasets import load_sample_images

    images = load_sample_images().images
    image = images[i % 2]
    y, x = (37 * i) % (image.shape[0] - h), (53 * i) % (image.shape[1] - w)
    return np.ascontiguousarray(image[y:y + h, x:x + w])


def save(path, array, fmt="PNG", **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, fmt, **kw)


def cfg_for(root, tmp_path, train="train", eval=None, test=None, **kw) -> DatasetConfig:
    kw.setdefault("image", ImageConfig(height=16, width=16, channels=3))
    kw.setdefault("resize", ResizePolicy.bilinear)
    kw.setdefault("channel_policy", ChannelPolicy.convert)
    return DatasetConfig(name="mine", source=Source.image_folder, path=str(root), cache_dir=str(tmp_path / "cache"),
                         splits=SplitsConfig(train=train, eval=eval, test=test), shuffle_buffer=1, **kw)


def fingerprints(root) -> dict:
    return {str(p): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def pixels(source, split="train") -> dict[str, np.ndarray]:
    return {key.numpy().decode(): image.numpy() for image, _, key in source.read(split)}


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for cls in ("cat", "dog", "owl"):
        for i in range(6):
            save(root / cls / f"{i}.png", smooth(rng))
    return root


def test_a_rerun_on_an_unchanged_folder_reads_no_file_and_a_changed_file_rescans_its_class_alone(folder, tmp_path):
    before = fingerprints(folder)
    first = image_folder_source(cfg_for(folder, tmp_path))
    assert first.report["scan"]["scanned"] == 18 and first.report["scan"]["reused"] == 0
    cached = pixels(first)
    assert len(cached) == 18 and all(a.dtype == np.uint8 and a.shape == (16, 16, 3) for a in cached.values())

    # Same size and mtime, other bytes: a rerun trusts the cache and never opens the file, which is
    # what "reads no file" means (and why the key is size + mtime_ns, as make and rsync use).
    victim = folder / "cat" / "0.png"
    stat = victim.stat()
    victim.write_bytes(b"x" * stat.st_size)
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = image_folder_source(cfg_for(folder, tmp_path))
    assert again.report["scan"]["scanned"] == 0 and again.report["scan"]["reused"] == 18
    assert again.bad == [] and all(np.array_equal(cached[k], v) for k, v in pixels(again).items())

    # A real change (new mtime) is seen: that class is read again, the other two are not.
    save(victim, smooth(np.random.default_rng(9)))
    changed = image_folder_source(cfg_for(folder, tmp_path))
    assert changed.report["scan"]["scanned"] == 6 and changed.report["scan"]["reused"] == 12
    new = pixels(changed)
    assert not np.array_equal(new[str(victim)], cached[str(victim)])
    assert all(np.array_equal(new[k], v) for k, v in cached.items() if "/cat/" not in k)
    # The user's files were only read (the one this test rewrote aside).
    after = fingerprints(folder)
    assert {k: v for k, v in after.items() if k != str(victim)} == {k: v for k, v in before.items()
                                                                    if k != str(victim)}
    assert not any((folder / ".." / "photos").rglob("*.tfrecord")) and not any(folder.rglob("scan.json"))


def test_the_same_image_in_train_and_test_is_leakage_warned_refused_or_dropped(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "split"
    for split in ("train", "test"):
        for cls in ("a", "b"):
            for i in range(4):
                save(root / split / cls / f"{i}.png", smooth(rng))
    leaked = smooth(rng)
    save(root / "train" / "a" / "leak.png", leaked)
    save(root / "test" / "a" / "leak.png", leaked)  # the same bytes
    near = photo_crop(3, 96, 128)  # and a resized JPEG of it in test: other bytes, the same photo
    save(root / "train" / "b" / "near.png", near)
    save(root / "test" / "b" / "near.jpg", np.asarray(Image.fromarray(near).resize((120, 90))), "JPEG", quality=85)

    warned = image_folder_source(cfg_for(root, tmp_path, test="test"))
    dup = warned.report["duplicates"]
    assert (dup["exact"], dup["near"], dup["cross_split"]) == (1, 1, 2)
    leaks = [e for e in warned.events if e.kind == "leakage"]
    assert {(e.key, e.other) for e in leaks} == {(str(root / "test/a/leak.png"), str(root / "train/a/leak.png")),
                                                 (str(root / "test/b/near.jpg"), str(root / "train/b/near.png"))}
    assert all(e.split == "test" for e in leaks)
    assert warned.report["selected"]["test"] == 10  # warn keeps them

    with pytest.raises(DataError, match=r"appear in two splits \(leakage") as info:
        image_folder_source(cfg_for(root, tmp_path, test="test", on_leakage=OnLeakage.error))
    assert info.value.config_key == "dataset.on_leakage" and str(root / "test" / "a" / "leak.png") in info.value.message

    dropped = image_folder_source(cfg_for(root, tmp_path, test="test", on_leakage=OnLeakage.drop_from_eval))
    test_keys = set(pixels(dropped, "test"))
    assert str(root / "test" / "a" / "leak.png") not in test_keys and str(root / "test" / "b" / "near.jpg") \
        not in test_keys
    assert len(test_keys) == 8 and len(pixels(dropped, "train")) == 10  # the training copies stay


def test_the_same_bytes_under_two_class_names_are_two_bad_examples_naming_each_other(folder, tmp_path):
    (folder / "dog" / "stray.png").write_bytes((folder / "cat" / "1.png").read_bytes())
    data = build_datasets(cfg_for(folder, tmp_path, on_bad_example=BadExamplePolicy.skip), 4, 4, seed=0)
    reasons = {b.key: b.reason for b in data.bad}
    assert set(reasons) == {str(folder / "cat" / "1.png"), str(folder / "dog" / "stray.png")}
    assert reasons[str(folder / "dog" / "stray.png")] == (f"the same image (identical bytes) as {folder}/cat/1.png, "
                                                          f"which is in class 'cat'")
    assert data.counts["train"] == 17 and data.report["duplicates"]["conflicting_labels"] == 1


def test_slices_are_taken_per_class_so_a_small_class_is_in_every_split(tmp_path):
    rng = np.random.default_rng(2)
    root = tmp_path / "skewed"
    for cls, n in (("common", 95), ("rare", 5)):
        for i in range(n):
            save(root / cls / f"{i}.png", smooth(rng, 12, 12))
    cfg = cfg_for(root, tmp_path, train="train[:80%]", eval="train[80%:]", near_duplicate_radius=None)
    source = image_folder_source(cfg)
    train, held = pixels(source, "train[:80%]"), pixels(source, "train[80%:]")
    assert len(train) + len(held) == 100 and not set(train) & set(held)
    assert sum("/rare/" in k for k in held) == 1 and sum("/rare/" in k for k in train) == 4
    assert source.report["selected"] == {"train": 80, "eval": 20}


def test_a_fixed_test_folder_without_a_class_stops_naming_it_unless_allowed(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "folders"
    for cls in ("a", "b", "c"):
        for i in range(3):
            save(root / "train" / cls / f"{i}.png", smooth(rng))
    for cls in ("a", "b"):
        save(root / "test" / cls / "0.png", smooth(rng))
    with pytest.raises(DataError, match=r"split test \('test'\) has no image of class 'c'") as info:
        image_folder_source(cfg_for(root, tmp_path, test="test"))
    assert info.value.config_key == "dataset.allow_missing_classes"
    allowed = image_folder_source(cfg_for(root, tmp_path, test="test", allow_missing_classes=True))
    assert any("warning: split test ('test') has no image of class 'c'" in n for n in allowed.notes)
    assert [e.kind for e in allowed.events] == ["missing_class"]


def test_hidden_and_system_entries_are_ignored_and_reported_never_classes(folder, tmp_path):
    rng = np.random.default_rng(4)
    save(folder / ".ipynb_checkpoints" / "0-checkpoint.png", smooth(rng))
    save(folder / "cat" / ".ipynb_checkpoints" / "1-checkpoint.png", smooth(rng))
    save(folder / "__MACOSX" / "cat" / "._0.png", smooth(rng))
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (folder / "dog" / "Thumbs.db").write_bytes(b"thumbs")
    source = image_folder_source(cfg_for(folder, tmp_path))
    assert source.spec.class_names == ("cat", "dog", "owl") and source.bad == []
    assert len(pixels(source)) == 18
    note = next(n for n in source.notes if n.startswith("ignored"))
    assert note.startswith("ignored 5 hidden/system entries") and ".ipynb_checkpoints/ (2)" in note
    assert "__MACOSX/" in note and ".DS_Store" in note and "Thumbs.db" in note


def test_exif_orientation_turns_phone_photos_upright_like_pillow_and_can_be_ignored(tmp_path):
    from PIL import ImageOps

    rng = np.random.default_rng(5)
    root = tmp_path / "phone"
    stored = smooth(rng, 24, 40)  # landscape pixels, tagged "rotate 90 clockwise to view"
    exif = Image.Exif()
    exif[0x0112] = 6
    path = root / "a" / "portrait.jpg"
    save(path, stored, "JPEG", quality=95, exif=exif.tobytes())
    save(root / "a" / "plain.png", smooth(rng, 40, 24))
    save(root / "b" / "plain.png", smooth(rng, 40, 24))
    cfg = dict(image=ImageConfig(height=40, width=24, channels=3), resize=ResizePolicy.error)
    source = image_folder_source(cfg_for(root, tmp_path, **cfg))
    upright = pixels(source)[str(path)]
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    assert upright.shape == expected.shape == (40, 24, 3)
    assert np.abs(upright.astype(int) - expected.astype(int)).mean() < 3  # JPEG decoders differ slightly
    assert any("EXIF orientation: 1 photo(s) turned upright" in n for n in source.notes)
    # ignore: the stored 24x40 pixels, which the declared 40x24 with resize=error then refuses by name
    ignored = image_folder_source(cfg_for(root, tmp_path, exif_orientation=ExifOrientation.ignore,
                                          on_bad_example=BadExamplePolicy.skip, **cfg))
    assert [b.key for b in ignored.bad] == [str(path)] and "size differs" in ignored.bad[0].reason


def test_misnamed_formats_are_noted_grey_alpha_converts_and_tiny_images_are_refused(tmp_path):
    rng = np.random.default_rng(6)
    root = tmp_path / "odd"
    for cls in ("a", "b"):
        for i in range(2):
            save(root / cls / f"{i}.png", smooth(rng))
    save(root / "a" / "really_png.jpg", smooth(rng))  # a PNG named .jpg
    grey_alpha = np.dstack([smooth(rng, channels=1), np.full((24, 32), 255, np.uint8)])
    save(root / "b" / "la.png", grey_alpha)
    save(root / "b" / "icon.png", smooth(rng, 4, 4))
    source = image_folder_source(cfg_for(root, tmp_path, min_pixels=64, on_bad_example=BadExamplePolicy.skip))
    assert any("PNG file named .jpg (1)" in n for n in source.notes)
    assert [b.key.rsplit("/", 1)[-1] for b in source.bad] == ["icon.png"]
    assert "4x4 = 16 pixels is under dataset.min_pixels=64" in source.bad[0].reason
    la = pixels(source)[str(root / "b" / "la.png")]
    assert la.shape == (16, 16, 3) and (la[..., 0] == la[..., 1]).all()  # grey+alpha -> grey as RGB


def test_a_cache_inside_the_users_folder_is_refused(folder, tmp_path):
    cfg = cfg_for(folder, tmp_path)
    cfg.cache_dir = str(folder / "cache")
    with pytest.raises(DataError, match="safetrain never writes into a user's data folder") as info:
        image_folder_source(cfg)
    assert info.value.config_key == "dataset.cache_dir" and not (folder / "cache").exists()


def test_the_cached_pipeline_trains_on_uint8_pixels_and_the_scan_is_in_the_report(folder, tmp_path, train):
    # In-process run through the real training path: report.json data.scan and data.duplicates.
    run = train("dataset.source=image_folder", f"dataset.path={folder}", f"dataset.cache_dir={tmp_path / 'c'}",
                "dataset.image.height=16", "dataset.image.width=16", "dataset.image.channels=3",
                "dataset.resize=bilinear", "dataset.splits.train=train[:66%]", "dataset.splits.eval=train[66%:]",
                "dataset.splits.test=null", "trainer.batch_size=4", "trainer.max_steps=2", name="folder")
    assert run.code == 0, run.err
    data = run.report()["data"]
    assert data["scan"]["files"] == 18 and data["scan"]["scanned"] == 18 and data["selected"] == {"train": 12,
                                                                                                   "eval": 6}
    assert data["duplicates"]["cross_split"] == 0
    rerun = train("dataset.source=image_folder", f"dataset.path={folder}", f"dataset.cache_dir={tmp_path / 'c'}",
                  "dataset.image.height=16", "dataset.image.width=16", "dataset.image.channels=3",
                  "dataset.resize=bilinear", "dataset.splits.train=train[:66%]", "dataset.splits.eval=train[66%:]",
                  "dataset.splits.test=null", "trainer.batch_size=4", "trainer.max_steps=2", name="folder2")
    assert rerun.code == 0 and rerun.report()["data"]["scan"]["reused"] == 18
    assert "scan: 18 files, 18 from the cache, 0 read and decoded" in rerun.err
    assert json.loads((run.run_dir / "report.json").read_text())["status"] == "ok"



def test_predict_turns_an_exif_rotated_photo_upright_as_training_did(tmp_path):
    import tensorflow as tf

    from safetrain.pipelines.sources.folder_decode import upright
    from safetrain.pipelines.serving import upright_bytes

    stored = smooth(np.random.default_rng(8), 24, 40)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "portrait.jpg"
    save(path, stored, "JPEG", quality=95, exif=exif.tobytes())
    served = tf.io.decode_image(upright_bytes(path.read_bytes())).numpy()
    trained = upright(tf.io.decode_image(path.read_bytes()), 6).numpy()  # what the scan caches
    assert served.shape == (40, 24, 3) and np.array_equal(served, trained)  # exactly training's pixels
    plain = tmp_path / "plain.png"
    save(plain, stored)
    assert upright_bytes(plain.read_bytes()) == plain.read_bytes() and upright_bytes(b"not an image") == \
        b"not an image"


@pytest.mark.e2e
def test_twenty_thousand_files_scan_rescan_from_the_cache_and_train_an_epoch_in_bounded_memory(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    rng = np.random.default_rng(10)
    root = tmp_path / "many"
    for cls in range(4):
        (root / f"c{cls}").mkdir(parents=True)
    images = rng.integers(0, 256, (20_000, 16, 16, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        Image.fromarray(image).save(root / f"c{i % 4}" / f"{i:05d}.png", compress_level=1)
    # The run's peak RSS, measured by a parent whose only child is the run.
    measure = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
    run = [sys.executable, "-c", measure, sys.executable, "-m", "safetrain", "dataset=image_folder", "model=cnn_small",
           f"dataset.path={root}", f"dataset.cache_dir={tmp_path / 'cache'}", "dataset.image.height=16",
           "dataset.image.width=16", "trainer.epochs=1", "trainer.batch_size=256", "trainer.export=false",
           "trainer.checkpoint_every_steps=1000"]
    reports = []
    for name in ("first", "rerun"):
        done = subprocess.run([*run, f"hydra.run.dir={tmp_path / name}"], capture_output=True, text=True,
                              timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert done.returncode == 0, done.stderr[-3000:]
        reports.append((json.loads((tmp_path / name / "report.json").read_text()), int(done.stdout.split()[-1])))
    (first, first_kb), (rerun, rerun_kb) = reports
    assert first["data"]["scan"]["scanned"] == 20_000 and rerun["data"]["scan"]["reused"] == 20_000
    assert rerun["data"]["scan"]["seconds"] < first["data"]["scan"]["seconds"] / 3
    assert first["data"]["selected"] == {"train": 16_000, "eval": 2_000, "test": 2_000}
    assert first["steps"] == 16_000 // 256 and first["status"] == rerun["status"] == "ok"
    # 20,000 16x16 RGB images are 15 MB as uint8: the run's memory is TensorFlow's, not the data's.
    assert max(first_kb, rerun_kb) < 2_500_000, (first_kb, rerun_kb)


def test_upright_turns_every_exif_orientation_as_pillow_exif_transpose_does():
    from PIL import ImageOps

    from safetrain.pipelines.sources.folder_decode import upright

    stored = smooth(np.random.default_rng(11), 5, 9)  # not square: a wrong transpose changes the shape
    for orientation in range(0, 10):
        img = Image.fromarray(stored)
        exif = img.getexif()
        exif[0x0112] = orientation
        img.info["exif"] = exif.tobytes()
        expected = np.asarray(ImageOps.exif_transpose(img)) if 1 <= orientation <= 8 else stored
        assert np.array_equal(upright(stored, orientation).numpy(), expected), orientation


@pytest.mark.parametrize("resize,channels", [(ResizePolicy.bilinear, 3), (ResizePolicy.pad_or_crop, 3),
                                             (ResizePolicy.bilinear, 1)])
def test_the_cached_pixels_are_what_the_in_graph_adapters_make_of_the_decoded_file(tmp_path, resize, channels):
    """The scan adapts each file once (folder_decode); serving adapts with pipelines.ops.adapt. The
    two must agree to the last bit, or the exported model would see other pixels than training."""
    import tensorflow as tf

    from safetrain.pipelines.ops import adapt
    from safetrain.pipelines.spec import AdapterPlan, ImageSpec

    rng = np.random.default_rng(12)
    root = tmp_path / "mixed"
    save(root / "a" / "grey.png", smooth(rng, 30, 20, channels=1))
    save(root / "a" / "rgba.png", np.dstack([smooth(rng, 40, 40), np.full((40, 40), 200, np.uint8)]))
    save(root / "b" / "rgb.jpg", photo_crop(3, 50, 30), "JPEG", quality=90)
    save(root / "b" / "exact.png", photo_crop(4, 16, 16) if channels == 3 else smooth(rng, 16, 16, channels=1))
    cfg = cfg_for(root, tmp_path, image=ImageConfig(height=16, width=16, channels=channels), resize=resize)
    cached = pixels(image_folder_source(cfg))
    spec = ImageSpec(16, 16, channels)
    for path, got in cached.items():
        raw = tf.io.decode_image(open(path, "rb").read(), channels=0, expand_animations=False)
        plan = AdapterPlan(resize=resize.value, channels=channels, steps=())
        want = tf.cast(tf.clip_by_value(tf.round(adapt(tf.cast(raw, tf.float32), plan, spec)), 0, 255), tf.uint8)
        assert got.shape == (16, 16, channels) and np.array_equal(got, want.numpy()), path


def test_files_the_decoder_refuses_are_named_in_order_and_the_rest_still_decode(tmp_path):
    """Truncated JPEGs pass the header check (Pillow reads headers lazily) and stop TensorFlow's
    decoder mid-stream: each is found by its place in the ordered, batched map, and every other
    file keeps its own result, in order."""
    from safetrain.pipelines.sources.folder_decode import BATCH, inspect_many
    from safetrain.pipelines.sources.folder_files import Adapt, Limits

    paths = []
    for i in range(BATCH + 10):
        path = tmp_path / f"{i:03d}.jpg"
        save(path, photo_crop(i, 120 + i % 3, 160), "JPEG", quality=90)
        paths.append(path)
    for i in (5, 6, BATCH + 3):  # two in the first batch, one in the second
        data = paths[i].read_bytes()
        paths[i].write_bytes(data[: len(data) * 2 // 3])  # the header intact, the scan data cut
    limits = Limits(max_pixels=10**6, max_file_bytes=10**6, min_pixels=None, exif="apply")
    results = list(inspect_many(((p, None) for p in paths), limits, Adapt(16, 16, 3, "bilinear", "convert")))
    assert len(results) == len(paths)
    refused = [i for i, (info, _, _) in enumerate(results) if info.problem]
    assert refused == [5, 6, BATCH + 3]
    assert all("corrupt or truncated JPEG (decoder:" in results[i][0].problem for i in refused)
    for i, (info, pixels, problem) in enumerate(results):
        if i not in refused:
            assert problem is None and pixels.shape == (16, 16, 3) and info.height == 120 + i % 3 and info.phash
