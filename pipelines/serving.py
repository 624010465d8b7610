"""The serving path: one encoded image file to the model input, as training delivers it.

The export's signature (safetrain.experiment.export) runs this inside the SavedModel: decode, then the same
adapter and normalization ops as the training pipeline (pipelines.ops), with what the config's
policies refuse in training refused here too, by name.
"""

from __future__ import annotations

import tensorflow as tf

from safetrain.pipelines.ops import adapt, normalize
from safetrain.pipelines.spec import AdapterPlan, ImageSpec


def serving_resize(trained: str, asked: str) -> tuple[str, str]:
    """(how serving sizes an image, the key that decided it): as training did when training
    resized (dataset.resize), else trainer.serving_resize (bilinear by default): a model trained on
    96x96 images still classifies a 200x200 photo, by a resize the export declares."""
    return (trained, "dataset.resize") if trained != "error" else (asked, "trainer.serving_resize")


def prepare_encoded(data: tf.Tensor, spec: ImageSpec, resize: str, channel_policy: str, stats,
                    rounded: bool = False) -> tf.Tensor:
    """The serving path for one encoded image (PNG, JPEG, BMP, GIF bytes): decode, then the
    adapters (`resize`: serving_resize's; `channel_policy`: dataset.channel_policy) and the
    training normalization. What the policies refuse is refused by name, before any op could fail
    on the shape: every later op takes the checked image as its input. `rounded`: the adapted
    pixels are rounded to uint8 before normalizing, as an image folder's decode-once cache stores
    them (pipelines.sources.folder_decode): a resized file then serves exactly the pixels it
    trained on (unrounded, the probabilities of resized files moved by ~1e-3)."""
    image = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
    shape = tf.shape(image)
    ok = tf.constant(True)
    if channel_policy == "error":
        ok = ok & tf.equal(shape[-1], spec.channels)
    if resize == "error":
        ok = ok & tf.reduce_all(tf.equal(shape[:2], [spec.height, spec.width]))
    if channel_policy == "error" or resize == "error":
        keys = " and ".join(f"{k}=error" for k, v in (("trainer.serving_resize", resize),
                                                      ("dataset.channel_policy", channel_policy)) if v == "error")

        def refuse():
            said = tf.strings.format(f"the image is {{}}x{{}} with {{}} channel(s); the model takes "
                                     f"{spec.height}x{spec.width} with {spec.channels} (exported with {keys})",
                                     (shape[0], shape[1], shape[2]))
            with tf.control_dependencies([tf.debugging.Assert(False, [said])]):
                # Not the image itself: a branch that returns its input may be folded away.
                return tf.zeros(spec.shape, tf.uint8)

        image = tf.cond(ok, lambda: image, refuse)
    image = tf.cast(image, tf.float32)
    plan = AdapterPlan(resize=None if resize == "error" else resize,
                       channels=None if channel_policy == "error" else spec.channels, steps=())
    image = adapt(image, plan, spec)
    if rounded:
        image = tf.clip_by_value(tf.round(image), 0.0, 255.0)
    return normalize(image, spec, (0.0, 255.0), stats)


def upright_bytes(data: bytes) -> bytes:
    """A photo with an EXIF rotation, decoded by TensorFlow as in training, turned upright the way
    the scan does (pipelines.sources.folder_decode.upright) and re-encoded losslessly as PNG:
    exactly the pixels training saw (dataset.exif_orientation=apply). Any other file is passed on
    unchanged, so TensorFlow's decoder still reports what it cannot read."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            orientation = int(img.getexif().get(0x0112, 1) or 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return data
    if orientation == 1:
        return data
    from safetrain.pipelines.sources.folder_decode import upright

    try:
        pixels = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
    except tf.errors.OpError:
        return data
    return tf.io.encode_png(upright(pixels, orientation)).numpy()
