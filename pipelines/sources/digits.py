"""The embedded default dataset: scikit-learn's bundled 8x8 handwritten digits as a TFDS builder.

Serving it through TFDS (rather than a NumPy array) keeps the default run on the same code path
as every catalog dataset: prepared TFRecords in the TFDS data dir, split strings with slicing,
`DatasetInfo` with features and split sizes. It prepares offline in under a second.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

# Fixed, seeded split so every machine gets the same test set.
_TEST_FRACTION = 0.2
_SPLIT_SEED = 1234


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's `load_digits`: 1797 8x8 grayscale digits, 10 classes, 80/20 train/test."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "8x8 uint8 images scaled from scikit-learn's 0..16 to 0..255."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="scikit-learn's bundled UCI ML handwritten digits (8x8, 10 classes).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the data ships with scikit-learn: nothing to download
        from sklearn.datasets import load_digits

        digits = load_digits()
        # 0..16 intensities -> 0..255 so the images look like every other uint8 image source.
        images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
        labels = digits.target.astype(np.int64)
        order = np.random.default_rng(_SPLIT_SEED).permutation(len(labels))
        n_test = int(round(len(labels) * _TEST_FRACTION))
        return {
            "train": self._generate_examples(images, labels, order[n_test:]),
            "test": self._generate_examples(images, labels, order[:n_test]),
        }

    def _generate_examples(self, images, labels, indices):
        for i in indices:
            yield int(i), {"image": images[i], "label": int(labels[i])}
