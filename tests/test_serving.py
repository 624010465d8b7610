"""Serving any image size: a declared resize, or a refusal naming both sizes — never TensorFlow's
raw shape error from inside the export's map (what a model trained with dataset.resize=error
showed for a photo of another size)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from safetrain.pipelines.serving import prepare_encoded, serving_resize
from safetrain.pipelines.spec import ImageSpec
from safetrain.predict import _size_refused

SPEC = ImageSpec(96, 96, 3, "float32", "scale_0_1")


def served(resize: str, channel_policy: str = "error"):
    """The export's own structure: a tf.function mapping encoded files to the fixed model input."""
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def classify_input(images):
        return tf.map_fn(lambda e: tf.cast(prepare_encoded(e, SPEC, resize, channel_policy, None), tf.float32),
                         images, fn_output_signature=tf.TensorSpec(SPEC.shape, tf.float32))
    return classify_input


def png(height: int, width: int, channels: int = 3) -> bytes:
    pixels = np.random.default_rng(height).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return tf.io.encode_png(pixels).numpy()


@pytest.mark.parametrize("size", [(200, 200), (40, 30), (96, 300)])  # larger, smaller, another aspect
@pytest.mark.parametrize("resize", ["bilinear", "pad_or_crop"])
def test_any_size_is_served_by_the_declared_resize(size, resize):
    out = served(resize)(tf.constant([png(*size)])).numpy()
    assert out.shape == (1, 96, 96, 3) and 0.0 <= out.min() and out.max() <= 1.0


def test_a_model_trained_without_resizing_serves_other_sizes_by_bilinear_unless_asked_to_refuse():
    assert serving_resize("error", "bilinear") == ("bilinear", "trainer.serving_resize")
    assert serving_resize("pad_or_crop", "bilinear") == ("pad_or_crop", "dataset.resize")  # as training did
    with pytest.raises(tf.errors.InvalidArgumentError) as refused:
        served("error")(tf.constant([png(200, 150)]))
    message = refused.value.message
    assert ("assertion failed: [the image is 200x150 with 3 channel(s); the model takes 96x96 with 3 (exported with "
            "trainer.serving_resize=error and dataset.channel_policy=error)]") in message
    assert "is not compatible with expected shape" not in message
    assert served("error")(tf.constant([png(96, 96)])).shape == (1, 96, 96, 3)  # its own size passes


def test_predict_names_the_file_size_the_model_size_and_the_fix_before_serving():
    signature = {"serving_resize": "error", "model_input": "96x96x3 float32 (scale_0_1)"}
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((200, 120, 3), np.uint8)).save(buffer, "JPEG")
    said = _size_refused(buffer.getvalue(), signature, upright=True)
    assert said == ("the image is 200x120 (height x width) and the model takes 96x96; this export refuses other "
                    "sizes (trainer.serving_resize=error): resize the file to 96x96, or export with "
                    "trainer.serving_resize=bilinear")
    assert _size_refused(png(96, 96), signature, upright=True) is None
    assert _size_refused(buffer.getvalue(), {**signature, "serving_resize": "bilinear"}, upright=True) is None
