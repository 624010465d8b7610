"""The one decode of an image folder's files: TensorFlow's decoder in a parallel tf.data map.

Per file, one graph call (no Python per pixel, no GIL): decode as serving does
(`tf.io.decode_image`), turn upright by the EXIF orientation the header gave, adapt to the declared
size and channels with the in-graph adapters' own ops (pipelines.ops.convert_channels,
`tf.image.resize`; rounded back to uint8), and make the 64x64 grey thumbnail the perceptual hash
is taken from. Python only hashes thumbnails and writes records while tf.data decodes the next
files on every core (scripts/bench_folder.py measures the scan against Keras' decoding epoch).

Files are decoded in chunks (at most `CHUNK_FILES` files and about `CHUNK_BYTES` of encoded bytes
in memory). A file TensorFlow cannot decode stops a tf.data iterator; its position in the ordered
(deterministic) map names the file, which becomes a bad example, and the chunk goes on after it.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np
import tensorflow as tf

from safetrain.pipelines.ops import convert_channels
from safetrain.pipelines.sources.folder_files import Adapt, FileInfo, Limits, adapt_problem, look

CHUNK_FILES, CHUNK_BYTES = 4096, 128 << 20
PARALLEL = max(2, os.cpu_count() or 2)  # decode on every core from each chunk's first file
THUMB = 64  # the grey thumbnail imagehash's 256-bit pHash transforms (its own resize is then a no-op)
BATCH = 32


def upright(image: tf.Tensor, orientation) -> tf.Tensor:
    """An (H, W, C) image turned as EXIF `orientation` (1-8) says, with the transposes of Pillow's
    `ImageOps.exif_transpose` (tested equal); other values leave it as stored."""
    image = tf.convert_to_tensor(image)
    branches = [lambda: image,                                                # 0: not an EXIF value
                lambda: image,                                                # 1: upright
                lambda: tf.reverse(image, [1]),                               # 2: mirrored
                lambda: tf.reverse(image, [0, 1]),                            # 3: upside down
                lambda: tf.reverse(image, [0]),                               # 4: flipped
                lambda: tf.transpose(image, [1, 0, 2]),                       # 5: transposed
                lambda: tf.reverse(tf.transpose(image, [1, 0, 2]), [1]),      # 6: rotate 90 clockwise
                lambda: tf.reverse(tf.transpose(image, [1, 0, 2]), [0, 1]),   # 7: transverse
                lambda: tf.reverse(tf.transpose(image, [1, 0, 2]), [0])]      # 8: rotate 90 anticlockwise
    index = tf.where((orientation >= 1) & (orientation <= 8), tf.cast(orientation, tf.int32), 0)
    return tf.cond(index > 1, lambda: tf.switch_case(index, branches), lambda: image)  # most files: as stored


@functools.lru_cache(maxsize=8)
def _graph(adapt: Adapt | None, exif: bool):
    """The tf.data map: (encoded bytes, orientation) -> (declared uint8, upright shape, thumbnail).
    One tf.function per (adapt, exif), traced once per process: each chunk's `Dataset.map` then
    only wraps it (tracing it per chunk cost 0.3 s a chunk)."""
    shape = (adapt.height, adapt.width, adapt.channels) if adapt else (1, 1, 1)

    def fn(data, orientation):
        pixels = tf.io.decode_image(data, channels=0, dtype=tf.uint8, expand_animations=False)
        if exif:
            pixels = upright(pixels, orientation)
        size = tf.shape(pixels)
        # The thumbnail: bilinear samples at 2x its size, then 2x2 averages (`area`): a cheap
        # antialiased reduction (an area resize of the whole photo doubled the decode's cost).
        small = tf.image.resize(pixels, (2 * THUMB, 2 * THUMB), method="bilinear")
        grey = tf.cond(size[2] >= 3, lambda: tf.image.rgb_to_grayscale(small[..., :3]), lambda: small[..., :1])
        thumb = tf.cast(tf.round(tf.image.resize(grey, (THUMB, THUMB), method="area")), tf.uint8)[..., 0]
        if adapt is None:
            return tf.zeros(shape, tf.uint8), size, thumb
        if adapt.channel_policy == "convert":  # float only where channels change: resize casts exactly itself
            image = tf.cond(tf.equal(size[2], adapt.channels), lambda: _sized(pixels, adapt),
                            lambda: _sized(convert_channels(tf.cast(pixels, tf.float32), adapt.channels), adapt))
        else:
            image = _sized(pixels, adapt)
        if adapt.channel_policy == "error" or adapt.resize == "error":
            # A mismatching image is refused (adapt_problem); zeros stand in for its pixels.
            ok = tf.reduce_all(tf.equal(tf.shape(image), shape))
            image = tf.cond(ok, lambda: tf.reshape(image, shape), lambda: tf.zeros(shape, tf.float32))
        image = tf.ensure_shape(image, shape)
        return tf.cast(tf.clip_by_value(tf.round(image), 0.0, 255.0), tf.uint8), size, thumb

    return tf.function(fn, autograph=False, input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32)])


def _sized(image: tf.Tensor, adapt: Adapt) -> tf.Tensor:
    """float32 of the declared size by dataset.resize: pipelines.ops.adapt's resize ops (tested bit
    for bit equal), on uint8 (resize casts exactly itself) and not failing under `error`, where
    the image stays as it is and adapt_problem refuses it."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    if adapt.resize == "bilinear":
        fits = tf.equal(height, adapt.height) & tf.equal(width, adapt.width)
        return tf.cond(fits, lambda: tf.cast(image, tf.float32),
                       lambda: tf.image.resize(image, (adapt.height, adapt.width), method="bilinear"))
    if adapt.resize == "pad_or_crop":
        return tf.cast(tf.image.resize_with_crop_or_pad(image, adapt.height, adapt.width), tf.float32)
    return tf.cast(image, tf.float32)


def perceptual_hash(thumb: np.ndarray) -> str:
    """imagehash's pHash with hash_size=16 (256 bits: the signs against the median of the 16x16
    lowest frequencies of the 64x64 grey image's DCT), as 64 hex digits. 256 bits, not the
    default 64: on sparse line drawings 64 bits put different drawings within 4 bits
    (pipelines.sources.duplicates)."""
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.fromarray(thumb), hash_size=16))


def inspect_many(items: Iterable[tuple], limits: Limits, adapt: Adapt | None
                 ) -> Iterator[tuple[FileInfo, np.ndarray | None, str | None]]:
    """(FileInfo, declared uint8 pixels or None, adapt problem or None) per (path, stat) item, in
    order, each as soon as it is decoded. `adapt=None`: look only (info and hashes, no pixels).

    A thread reads and checks the headers of the next chunk while tf.data decodes this one."""
    fn = _graph(adapt, limits.exif == "apply")
    with ThreadPoolExecutor(max_workers=1) as reader:
        batches = _chunks(items)
        pending = reader.submit(_look_all, next(batches, []), limits)
        while True:
            chunk = pending.result()
            if not chunk:
                return
            pending = reader.submit(_look_all, next(batches, []), limits)
            yield from _decode_chunk(chunk, fn, adapt)


def _chunks(items: Iterable[tuple]) -> Iterator[list]:
    """Lists of (path, stat): at most CHUNK_FILES files and about CHUNK_BYTES of them."""
    chunk, held = [], 0
    for path, stat in items:
        stat = stat or path.stat()
        chunk.append((path, stat))
        held += stat.st_size
        if len(chunk) >= CHUNK_FILES or held >= CHUNK_BYTES:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def _look_all(chunk: list, limits: Limits) -> list[tuple[FileInfo, bytes | None]]:
    return [look(path, limits, stat) for path, stat in chunk]


def _decode_chunk(chunk: list, fn, adapt: Adapt | None):
    """Yields each file's result in order, as soon as it and every file before it are done."""
    todo = [i for i, (info, data) in enumerate(chunk) if data is not None]
    kept: dict[int, np.ndarray] = {}
    ready = 0  # chunk[:ready] has been yielded

    def upto(end: int):
        nonlocal ready
        for i in range(ready, end):
            info = chunk[i][0]
            pixels = kept.pop(i, None)
            if pixels is None or adapt is None:
                yield info, None, None
            else:
                problem = adapt_problem(info, adapt)
                yield info, (None if problem else pixels), problem
        ready = max(ready, end)

    window = 0  # > 0: the next `window` files go one at a time (a batch holding them failed)
    while todo:
        take = min(window, len(todo)) if window else len(todo)
        ds = tf.data.Dataset.from_tensor_slices((tf.constant([chunk[i][1] for i in todo[:take]], tf.string),
                                                 tf.constant([chunk[i][0].orientation for i in todo[:take]],
                                                             tf.int32)))
        # Batched out of the map: the per-element cost of a Python iterator is then paid per batch.
        ds = ds.map(fn, num_parallel_calls=PARALLEL, deterministic=True).batch(1 if window else BATCH)
        done = 0
        try:
            for pixels, sizes, thumbs in ds.prefetch(2).as_numpy_iterator():  # hashed while tf.data decodes on
                for j in range(len(sizes)):
                    info = chunk[todo[done]][0]
                    info.height, info.width, info.channels = (int(d) for d in sizes[j])
                    info.phash = perceptual_hash(thumbs[j])
                    kept[todo[done]] = pixels[j]
                    done += 1
                yield from upto(todo[done - 1] + 1)
            window = 0
        except (tf.errors.InvalidArgumentError, tf.errors.UnknownError, tf.errors.DataLossError) as err:
            if not window:  # one of the next BATCH files cannot be decoded: find it, one at a time
                window = BATCH
            else:  # the ordered map stopped at this file
                info = chunk[todo[done]][0]
                first = str(err.message).strip().splitlines()[0][:160]
                info.problem = f"corrupt or truncated {info.format} (decoder: {first})"
                done += 1
                window = take - done
        todo = todo[done:]
    yield from upto(len(chunk))
