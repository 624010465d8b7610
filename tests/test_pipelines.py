"""Pipelines on real arrays and real image files: adapters, checks, bad examples, error or skip."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from safetrain.pipelines import checks
from safetrain.pipelines.build import build_datasets, from_arrays
from safetrain.pipelines.scan import bad_examples_error
from safetrain.pipelines.sources.idx import idx_source
from safetrain.config.schema import (BadExamplePolicy, ChannelPolicy, DatasetConfig, ImageConfig,
                                     Normalization, ResizePolicy, Source, SplitsConfig)
from safetrain.core.errors import DataError, SpecError

SPLITS = SplitsConfig(train="train", eval=None, test=None)


def config(height=8, width=8, channels=1, normalization=Normalization.scale_0_1, **kw) -> DatasetConfig:
    image = ImageConfig(height=height, width=width, channels=channels, normalization=normalization)
    return DatasetConfig(name="arrays", splits=SPLITS, image=image, shuffle_buffer=1, **kw)


def first_batch(datasets):
    images, labels = next(iter(datasets.train_epoch(1)))
    return images.numpy(), labels.numpy()


def arrays(n=8, shape=(8, 8), dtype=np.uint8, fill=None, labels=None):
    images = np.full((n, *shape), fill, dtype) if fill is not None else \
        np.random.default_rng(0).integers(0, 256, (n, *shape)).astype(dtype)
    return {"train": (images, np.arange(n) % 2 if labels is None else np.asarray(labels))}


# -- enforcement ops, eagerly and inside Dataset.map -------------------------------------------

CASES = [  # image, label, expected status
    (np.full((4, 4, 1), 7.0), 1, checks.OK),
    (np.full((4, 4, 1), np.nan), 1, checks.NON_FINITE),
    (np.full((4, 4, 1), 300.0), 1, checks.OUT_OF_RANGE),
    (np.full((4, 4, 1), -1.0), 1, checks.OUT_OF_RANGE),
    (np.full((4, 4, 1), 7.0), 10, checks.BAD_LABEL),
    (np.full((4, 4, 1), 7.0), -1, checks.BAD_LABEL),
    (np.full((5, 4, 1), 7.0), 1, checks.BAD_SIZE),
    (np.full((4, 4, 3), 7.0), 1, checks.BAD_CHANNELS),
]
ARGS = dict(value_range=(0.0, 255.0), num_classes=10, size=(4, 4), channels=1)


@pytest.mark.parametrize("image, label, expected", CASES)
def test_example_status_eagerly_and_inside_dataset_map(image, label, expected):
    eager = checks.example_status(tf.constant(image, tf.float32), tf.constant(label), **ARGS)
    assert int(eager) == expected
    ds = tf.data.Dataset.from_generator(lambda: iter([(image.astype(np.float32), label)]),
                                        output_signature=(tf.TensorSpec([None, None, None], tf.float32),
                                                          tf.TensorSpec([], tf.int64)))
    [mapped] = list(ds.map(lambda x, y: checks.example_status(x, y, **ARGS)).as_numpy_iterator())
    assert int(mapped) == expected


# -- adapters: declared spec vs what the data is -----------------------------------------------

def test_one_channel_data_into_a_three_channel_model():
    data = arrays(shape=(8, 8))
    with pytest.raises(SpecError, match=r"delivers 8x8x1 uint8 images but dataset\.image declares 3 channels") as info:
        from_arrays(config(channels=3), data, batch_size=4)
    assert "dataset.channel_policy=convert" in info.value.hint
    images, _ = first_batch(from_arrays(config(channels=3, channel_policy=ChannelPolicy.convert), data, 4))
    assert images.shape == (4, 8, 8, 3)
    assert np.array_equal(images[..., 0], images[..., 2])


def test_32px_images_into_a_64px_model():
    data = arrays(shape=(32, 32, 3))
    with pytest.raises(SpecError, match=r"delivers 32x32x3 uint8 images but dataset\.image declares 64x64x3") as info:
        from_arrays(config(64, 64, 3), data, batch_size=4)
    assert "dataset.resize=bilinear" in info.value.hint and "dataset.image.height=32" in info.value.hint
    images, _ = first_batch(from_arrays(config(64, 64, 3, resize=ResizePolicy.bilinear), data, 4))
    assert images.shape == (4, 64, 64, 3)
    padded, _ = first_batch(from_arrays(config(64, 64, 3, resize=ResizePolicy.pad_or_crop), data, 4))
    assert padded[:, :16].max() == 0 and padded[:, 16:48, 16:48].max() > 0  # centred, zero padding


@pytest.mark.parametrize("dtype, fill, value_range, expected", [
    (np.uint8, 255, None, 1.0),
    (np.uint8, 0, None, 0.0),
    (np.int8, -128, None, 0.0),      # int8's own range, not a silent cast of -128 to -128.0
    (np.int8, 127, None, 1.0),
    (np.int32, 1000, (0, 4000), 0.25),
    (np.float16, 0.5, (0, 1), 0.5),
    (np.float64, 0.5, (0, 1), 0.5),   # a 0..1 float image is not divided by 255
    (np.float64, 51.0, (0, 255), 0.2),
])
def test_dtypes_are_scaled_from_their_range(dtype, fill, value_range, expected):
    images, _ = first_batch(from_arrays(config(), arrays(dtype=dtype, fill=fill), 4, value_range=value_range))
    assert images.dtype == np.float32
    assert images == pytest.approx(np.full(images.shape, expected), abs=1e-3)


def test_float_arrays_need_a_declared_range():
    with pytest.raises(DataError, match=r"float64 pixels, whose range safetrain cannot know") as info:
        from_arrays(config(), arrays(dtype=np.float64, fill=0.5), 4)
    assert info.value.config_key == "dataset.pixel_range"


def test_minus_one_one_and_standardize():
    data = arrays(dtype=np.uint8)
    images, _ = first_batch(from_arrays(config(normalization=Normalization.minus_one_one), data, 8))
    assert images.min() >= -1.0 and images.max() <= 1.0 and images.min() < -0.9
    ds = from_arrays(config(normalization=Normalization.standardize), data, 8)
    images, _ = first_batch(ds)
    mean, std = ds.normalization_stats
    assert mean[0] == pytest.approx(data["train"][0].mean(), rel=1e-4)
    assert images.mean() == pytest.approx(0.0, abs=1e-4) and images.std() == pytest.approx(1.0, abs=1e-3)


# -- bad examples: NaN, out of range, labels ----------------------------------------------------

def test_nan_out_of_range_and_bad_labels_are_named_then_error_or_skip():
    images = np.full((8, 8, 8), 0.5)
    images[2, 3, 3] = np.nan
    images[5] = 1.5
    labels = [0, 1, 0, 1, 0, 1, 0, 3]  # 3 == num_classes
    data = {"train": (images, np.asarray(labels))}
    ds = from_arrays(config(num_classes=3), data, batch_size=2, value_range=(0, 1))
    reasons = {b.key: b.reason for b in ds.bad}
    assert reasons == {"train#2": "pixel values include NaN or Inf",
                       "train#5": "pixel values outside the source range [0, 1] (dataset.pixel_range)",
                       "train#7": "label outside [0, 3) (dataset.num_classes=3)"}
    assert ds.counts == {"train": 5}
    error = bad_examples_error(ds.bad, BadExamplePolicy.error)
    assert error.exit_code == 3 and "3 bad examples: train#2 (train): pixel values include NaN" in error.message
    assert bad_examples_error(ds.bad, BadExamplePolicy.skip) is None
    seen = np.concatenate([x.numpy() for x, _ in ds.train_epoch(1)])
    assert len(seen) == 4 and np.isfinite(seen).all() and seen.max() <= 1.0  # 5 good, batch 2, drop remainder


# -- image folders: real files on disk ----------------------------------------------------------

def _save(path, array, fmt, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, fmt, **kw)


@pytest.fixture
def messy_folder(tmp_path):
    """RGB JPEG/PNG/BMP/GIF files in two classes, plus the files users' folders really contain."""
    rng = np.random.default_rng(0)
    rgb = lambda: rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)  # noqa: E731
    root = tmp_path / "pets"
    for cls in ("cat", "dog"):
        for i in range(4):
            _save(root / cls / f"{i}.jpg", rgb(), "JPEG")
        _save(root / cls / "p.png", rgb(), "PNG")
        _save(root / cls / "b.bmp", rgb(), "BMP")
        _save(root / cls / "g.gif", rgb(), "GIF")
    _save(root / "cat" / "rgba.png", np.dstack([rgb(), np.full((24, 32), 128, np.uint8)]), "PNG")
    _save(root / "dog" / "gray.jpg", rng.integers(0, 256, (24, 32), dtype=np.uint8), "JPEG")
    good = io.BytesIO()  # big enough that half of it still has intact headers: only decoding finds it
    Image.fromarray(rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)).save(good, "JPEG")
    (root / "dog" / "corrupt.jpg").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def folder_config(root, policy=BadExamplePolicy.error, channels=ChannelPolicy.convert, **kw):
    kw.setdefault("cache_dir", str(root.parent / "cache"))  # outside the folder, per test
    return config(32, 32, 3, source=Source.image_folder, path=str(root), channel_policy=channels,
                  resize=ResizePolicy.bilinear, on_bad_example=policy, **kw)


def test_image_folder_names_the_corrupt_file_and_converts_rgba_and_gray(messy_folder):
    ds = build_datasets(folder_config(messy_folder), batch_size=4, eval_batch_size=4, seed=0)
    assert [(b.key.split("/")[-1], b.reason.split(" (")[0]) for b in ds.bad] == \
        [("corrupt.jpg", "corrupt or truncated JPEG")]
    error = bad_examples_error(ds.bad, BadExamplePolicy.error)
    assert str(messy_folder / "dog" / "corrupt.jpg") in error.message
    assert ds.counts == {"train": 16}  # 2 x (4 jpg + png + bmp + gif) + rgba + gray
    summary = ds.describe()
    assert "17 image files, 16 readable, 1 refused, 1 non-image files ignored" in summary
    assert "per class: cat 8, dog 8" in summary and "channels: 1 (1), 3 (14), 4 (1)" in summary
    images = np.concatenate([x.numpy() for x, _ in ds.train_epoch(1)])
    assert images.shape == (16, 32, 32, 3) and 0.0 <= images.min() and images.max() <= 1.0


def test_image_folder_channel_policy_error_makes_rgba_and_gray_bad_examples(messy_folder):
    ds = build_datasets(folder_config(messy_folder, BadExamplePolicy.skip, ChannelPolicy.error),
                        batch_size=4, eval_batch_size=4, seed=0)
    bad = sorted(b.key.split("/")[-1] for b in ds.bad)
    assert bad == ["corrupt.jpg", "gray.jpg", "rgba.png"]
    assert ds.counts == {"train": 14}
    assert "does not have the declared 3 channels" in next(b.reason for b in ds.bad if b.key.endswith("gray.jpg"))


def test_image_folder_refuses_empty_oversized_and_animated_files_before_decoding(tmp_path):
    rng = np.random.default_rng(1)
    root = tmp_path / "imgs"
    for cls in ("a", "b"):
        for i in range(3):
            _save(root / cls / f"{i}.png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "PNG")
    (root / "a" / "empty.jpg").write_bytes(b"")
    # 3000x3000: over a 1M-pixel limit; only its header is read
    _save(root / "a" / "huge.png", np.zeros((3000, 3000), np.uint8), "PNG")
    frames = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(3)]
    frames[0].save(root / "b" / "anim.gif", "GIF", save_all=True, append_images=frames[1:])
    _save(root / "b" / "deep.png", rng.integers(0, 65535, (16, 16), dtype=np.uint16), "PNG")  # 16-bit
    _save(root / "b" / "cmyk.jpg", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8), "JPEG")
    Image.open(root / "b" / "cmyk.jpg").convert("CMYK").save(root / "b" / "cmyk.jpg", "JPEG")
    ds = build_datasets(folder_config(root, BadExamplePolicy.skip, max_pixels=1_000_000),
                        batch_size=2, eval_batch_size=2, seed=0)
    reasons = {b.key.split("/")[-1]: b.reason for b in ds.bad}
    assert reasons["empty.jpg"] == "empty file (0 bytes)"
    assert reasons["huge.png"].startswith("3000x3000 = 9,000,000 pixels exceeds dataset.max_pixels=1,000,000")
    assert reasons["anim.gif"].startswith("animated GIF with 3 frames")
    assert set(reasons) == {"empty.jpg", "huge.png", "anim.gif"}
    assert ds.counts == {"train": 8}  # 6 PNGs + the 16-bit PNG + the CMYK JPEG, converted
    assert "16-bit PNG (scaled to 8 bits) (1)" in ds.describe() and "CMYK JPEG (decoded as RGB) (1)" in ds.describe()


# -- IDX files ----------------------------------------------------------------------------------

def _write_idx(path, array):
    import gzip

    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with (gzip.open(path, "wb") if path.suffix == ".gz" else open(path, "wb")) as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def test_idx_folder_reads_raw_uncompressed_files(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (5, 28, 28))
    for stem in ("train", "t10k"):
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte", images)
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte", np.arange(5) % 3)
    source = idx_source("raw_idx", tmp_path, num_classes=None)
    assert source.spec.num_classes == 3 and source.sizes == {"train": 5, "test": 5}
    first = next(source.read("train").as_numpy_iterator())
    np.testing.assert_array_equal(first[0][..., 0], images[0])


def test_idx_folder_reads_gzipped_files_and_refuses_a_truncated_one(tmp_path):
    rng = np.random.default_rng(2)
    for stem, n in (("train", 20), ("t10k", 6)):
        _write_idx(tmp_path / f"{stem}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{stem}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    source = idx_source("tiny_idx", tmp_path, num_classes=10)
    assert (source.spec.height, source.spec.width, source.spec.channels) == (28, 28, 1)
    assert source.sizes == {"train": 20, "test": 6} and source.count("train[:50%]") == 10
    keys = [k.decode() for _, _, k in source.read("test[2:4]").as_numpy_iterator()]
    assert keys == ["t10k-images-idx3-ubyte.gz#2", "t10k-images-idx3-ubyte.gz#3"]
    import gzip
    data = gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(data[:-100])
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz is truncated or padded"):
        idx_source("tiny_idx", tmp_path, num_classes=10)


@pytest.mark.parametrize("channels_in, channels_out", [(1, 3), (2, 3), (4, 3), (3, 1), (4, 1), (2, 1)])
def test_channel_and_size_adapters_eagerly_and_inside_dataset_map(channels_in, channels_out):
    from safetrain.pipelines.ops import adapt
    from safetrain.pipelines.spec import AdapterPlan, ImageSpec

    spec = ImageSpec(12, 10, channels_out)
    plan = AdapterPlan(resize="bilinear", channels=channels_out, steps=())
    image = np.random.default_rng(3).uniform(0, 255, (6, 5, channels_in)).astype(np.float32)
    eager = adapt(tf.constant(image), plan, spec).numpy()
    ds = tf.data.Dataset.from_tensors(image).map(lambda x: adapt(x, plan, spec))
    mapped = next(iter(ds)).numpy()
    assert eager.shape == mapped.shape == (12, 10, channels_out)
    np.testing.assert_allclose(eager, mapped, rtol=1e-6)
    if channels_in == 4 and channels_out == 3:  # alpha dropped, colour kept
        small = adapt(tf.constant(image), AdapterPlan(None, 3, ()), ImageSpec(6, 5, 3)).numpy()
        np.testing.assert_array_equal(small, image[..., :3])


def test_one_hot_labels_are_encoded_for_categorical_loss():
    from safetrain.config.schema import LabelEncoding

    ds = from_arrays(config(num_classes=3, label_encoding=LabelEncoding.one_hot),
                     arrays(labels=[0, 1, 2, 0, 1, 2, 0, 1]), batch_size=4)
    _, labels = first_batch(ds)
    assert labels.shape == (4, 3) and labels.sum(axis=1).tolist() == [1, 1, 1, 1]
