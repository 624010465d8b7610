"""Augmentation: Keras' layers on training batches, a function of (seed, epoch, batch), checked; and
balanced sampling, the other stochastic piece of the training order."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from safetrain.pipelines.augment import Augmenter
from safetrain.pipelines.build import from_arrays
from safetrain.pipelines.spec import ImageSpec
from safetrain.config.schema import (AugmentConfig, Crop, DatasetConfig, Flip, ImageConfig, LabelEncoding,
                                     ResizePolicy, Sampling, SplitsConfig)

STANDARD = AugmentConfig(flip=Flip.horizontal, rotation=0.05, zoom=0.1, translate=0.1, contrast=0.1)


def _data(augment: AugmentConfig, encoding=LabelEncoding.sparse, seed: int = 0):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (96, 12, 12, 3), dtype=np.uint8)
    labels = rng.integers(0, 4, 96)
    cfg = DatasetConfig(image=ImageConfig(height=12, width=12, channels=3), resize=ResizePolicy.error,
                        splits=SplitsConfig(train="train", eval=None, test=None), label_encoding=encoding)
    return from_arrays(cfg, {"train": (images, labels)}, batch_size=16, seed=seed, augment=augment)


def _batches(ds) -> list[np.ndarray]:
    return [x.numpy() for x, _ in ds]


def test_each_batch_is_augmented_as_a_function_of_seed_epoch_and_batch_so_a_resume_sees_the_same():
    data = _data(STANDARD)
    epoch = _batches(data.train_epoch(1))
    assert len(epoch) == 6
    assert all(np.array_equal(a, b) for a, b in zip(epoch, _batches(data.train_epoch(1))))  # again: the same
    # A resume skips the batches done: the rest are augmented exactly as in the uninterrupted epoch.
    assert all(np.array_equal(a, b) for a, b in zip(epoch[2:], _batches(data.train_epoch(1).skip(2))))
    plain = _batches(data.train_plain(1))
    assert not any(np.array_equal(a, b) for a, b in zip(epoch, plain))  # it did augment
    assert not np.array_equal(_batches(_data(STANDARD, seed=1).train_epoch(1))[0], epoch[0])  # another seed
    for x in epoch:
        assert x.shape == (16, 12, 12, 3) and x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0


def test_mixup_gives_soft_one_hot_labels_that_sum_to_one():
    data = _data(AugmentConfig(mixup=0.4), encoding=LabelEncoding.one_hot)
    _, labels = next(iter(data.train_epoch(1)))
    labels = labels.numpy()
    assert labels.shape == (16, 4) and np.allclose(labels.sum(-1), 1.0, atol=1e-5)
    assert ((labels > 0) & (labels < 1)).any()  # mixed, not one-hot any more


def test_pixels_outside_the_source_range_after_augmentation_stop_the_run_naming_the_keys():
    # An augmenter told the wrong value range (0..255 pixels said to be in [0, 1]): a rotation keeps
    # the values it is given, and the check after it names the augment keys.
    augmenter = Augmenter(AugmentConfig(rotation=0.1), ImageSpec(4, 4, 1), (0.0, 1.0), seed=0)
    ds = tf.data.Dataset.from_tensors((tf.fill([2, 4, 4, 1], 200.0), tf.constant([0, 1])))
    ds = ds.enumerate().map(lambda i, xy: augmenter(xy[0], xy[1], 1, i))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"augment \(rotation 0\.1\) produced pixels above "
                                                             r"the source range \[0, 1\]"):
        next(iter(ds))


def test_rand_augment_and_erasing_are_reproducible_too():
    from safetrain.config.schema import RandAugmentConfig

    strong = AugmentConfig(rand_augment=RandAugmentConfig(num_ops=2, magnitude=0.5), erasing=0.5)
    data = _data(strong)
    first, again = _batches(data.train_epoch(2)), _batches(data.train_epoch(2))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert all(np.array_equal(a, b) for a, b in zip(first[3:], _batches(data.train_epoch(2).skip(3))))
    assert not any(np.array_equal(a, b) for a, b in zip(first, _batches(data.train_plain(2))))


def test_random_resized_crop_zooms_into_a_box_reproducibly_and_stays_in_range():
    crop = AugmentConfig(crop=Crop.random_resized, crop_scale=[0.2, 0.5])
    data = _data(crop)
    first = _batches(data.train_epoch(1))
    assert all(np.array_equal(a, b) for a, b in zip(first, _batches(data.train_epoch(1))))
    assert all(np.array_equal(a, b) for a, b in zip(first[2:], _batches(data.train_epoch(1).skip(2))))
    plain = _batches(data.train_plain(1))
    for x, p in zip(first, plain):
        assert x.shape == p.shape == (16, 12, 12, 3) and 0.0 <= x.min() and x.max() <= 1.0
        # A box of at most half the area resized back: smoother than the random pixels it came from.
        assert np.abs(np.diff(x, axis=2)).mean() < 0.8 * np.abs(np.diff(p, axis=2)).mean()
    assert data.augmentation == "random resized crop 0.2-0.5 of the area"


def test_a_full_area_crop_with_the_images_own_aspect_is_the_image_itself():
    # scale [1, 1] and ratio [1, 1] on square images: the box is the whole image, so the crop must
    # return the pixels unchanged (crop_and_resize's corner convention, checked).
    data = _data(AugmentConfig(crop=Crop.random_resized, crop_scale=[1.0, 1.0], crop_ratio=[1.0, 1.0]))
    for x, p in zip(_batches(data.train_epoch(1)), _batches(data.train_plain(1))):
        np.testing.assert_allclose(x, p, atol=1e-6)


def test_balanced_sampling_draws_every_class_equally_often_the_same_way_each_time():
    rng = np.random.default_rng(0)
    labels = np.array([0] * 160 + [1] * 24 + [2] * 8 + [3] * 0)
    images = rng.integers(0, 256, (192, 12, 12, 3), dtype=np.uint8)
    images[:, 0, 0, 0] = np.arange(192) % 256  # an id per example, to see the draws
    cfg = DatasetConfig(image=ImageConfig(height=12, width=12, channels=3), resize=ResizePolicy.error,
                        splits=SplitsConfig(train="train", eval=None, test=None), num_classes=4,
                        sampling=Sampling.balanced, shuffle_buffer=64)
    data = from_arrays(cfg, {"train": (images, labels)}, batch_size=16)

    def epoch(e: int, skip: int = 0):
        drawn = [(y.numpy(), np.rint(x.numpy()[:, 0, 0, 0] * 255).astype(int)) for x, y in
                 data.train_epoch(e).skip(skip)]
        return np.concatenate([y for y, _ in drawn]), np.concatenate([i for _, i in drawn])

    ys, ids = epoch(1)
    assert data.steps_per_epoch == 12 and len(ys) == 192  # the epoch keeps the split's size
    counts = np.bincount(ys, minlength=4)
    assert counts[3] == 0 and all(40 <= n <= 90 for n in counts[:3]), counts  # ~64 each, not 160/24/8
    assert set(ids[ys == 2]) == set(range(184, 192))  # the 8 rare examples, each repeated
    again_ys, again_ids = epoch(1)
    assert np.array_equal(ids, again_ids)
    assert np.array_equal(epoch(1, skip=5)[1], ids[5 * 16:])  # a resume's skip sees the same draws
    assert not np.array_equal(epoch(2)[1], ids)  # another epoch, other draws
    assert "sampling balanced" in data.describe()
