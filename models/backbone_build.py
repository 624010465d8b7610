"""Build a registered backbone with Keras Applications, read its weights, set what trains.

`keras.applications.<Name>(include_top=False, pooling=...)` builds it; weights come from Keras' own
download-and-cache (`imagenet`, with its hash check, cached in $KERAS_HOME/models, default
~/.keras/models) or from a local file. Offline, Keras' download fails with "URL fetch failure"
(no retries); a socket timeout bounds a network that accepts and then stalls, and the failure
becomes a DataError (exit 3) that says where Keras caches weights and how to point
`model.backbone.weights` at a file. A local file is checked layer by layer against the built
backbone with h5py before Keras reads it (Keras' own mismatch report is a list of every object
that failed plus a warning per nested container), so the error names the first layer that does
not fit.
"""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import h5py
import keras
from keras.src.utils.naming import to_snake_case  # the naming saving_lib itself uses (see _stored_names)

from safetrain.models.backbones import BackboneSpec
from safetrain.core.errors import DataError, SpecError

DOWNLOAD_TIMEOUT_S = 30.0  # per socket operation; Keras' urlretrieve itself has none


def keras_cache_dir() -> Path:
    """Where Keras caches downloaded weights: keras.utils.get_file's cache_subdir 'models' under
    Keras' home (read from $KERAS_HOME when Keras was imported; /tmp/.keras if that is not writable)."""
    from keras.src.backend import config

    home = Path(config.keras_home()).expanduser()
    if not os.access(home, os.W_OK):  # get_file's own fallback
        home = Path("/tmp/.keras")
    return home / "models"


def build_backbone(spec: BackboneSpec, input_shape: tuple[int, int, int]) -> keras.Model:
    ctor = getattr(keras.applications, spec.entry.keras_name)
    # Keras' own model name stays: EfficientNetV2 looks its block table up by it.
    kwargs = dict(include_top=False, input_shape=tuple(input_shape), pooling=spec.pooling)
    if spec.weights == "imagenet":
        return _with_imagenet(ctor, kwargs, spec)
    model = ctor(weights=None, **kwargs)
    if spec.weights is not None:
        load_weights_file(model, spec, Path(spec.weights))
    else:
        _scratch_momentum(model)
    return model


SCRATCH_BN_MOMENTUM = 0.9


def _scratch_momentum(model: keras.Model) -> None:
    """From scratch (weights=null) BatchNorm's moving statistics start at mean 0, variance 1 and must
    learn the data's; Keras Applications set momentum 0.99-0.999 (for fine-tuning ImageNet
    statistics), at which a few hundred steps leave evaluation at chance while training accuracy
    is high. Measured on 120 generated 3-class colour images, mobilenet_v3_small, Adam 1e-3,
    batch 32: inference-mode accuracy after 30/60/90/120 steps was 0.33/0.33/0.33/0.33 at Keras'
    momentum and 0.33/0.99/1.00/1.00 at 0.9."""
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.momentum > SCRATCH_BN_MOMENTUM:
            layer.momentum = SCRATCH_BN_MOMENTUM


def fetch_imagenet(spec: BackboneSpec, input_shape: tuple[int, int, int]) -> None:
    """Download (or find in Keras' cache) the ImageNet weights now, by building the backbone once:
    called before the data is read, so an offline run fails in seconds, not after a folder scan."""
    if spec.weights == "imagenet":
        build_backbone(spec, input_shape)


@keras.saving.register_keras_serializable(package="safetrain")
class InferenceMode(keras.layers.Layer):
    """A pretrained backbone that always runs in inference mode: BatchNorm normalizes with the
    pretrained moving statistics and never updates them, dropout (EfficientNetV2's stochastic
    depth) is off — frozen or fine-tuned, the Keras transfer-learning guide's rule. The guide's
    `base_model(x, training=False)` does not hold in Keras 3: a functional model passes the outer
    call's `training=True` to every nested layer, overriding the recorded False
    (keras-team/keras#20285; tests/test_backbones.py shows the statistics moving without this).
    Registered and configurable, so an exported `model.keras` loads with `safe_mode=True`."""

    def __init__(self, inner: keras.Model, **kwargs) -> None:
        super().__init__(**kwargs)
        self.inner = inner

    def call(self, x, training=None):
        return self.inner(x, training=False)

    def compute_output_shape(self, input_shape):
        return self.inner.compute_output_shape(input_shape)

    def get_config(self) -> dict:
        return {**super().get_config(), "inner": keras.saving.serialize_keras_object(self.inner)}

    @classmethod
    def from_config(cls, config: dict) -> "InferenceMode":
        config = dict(config)
        return cls(keras.saving.deserialize_keras_object(config.pop("inner")), **config)


def backbone_of(model: keras.Model) -> keras.Model | None:
    """The backbone inside a safetrain model (the Keras Applications model itself)."""
    for layer in model.layers:
        if isinstance(layer, InferenceMode):
            return layer.inner
        if isinstance(layer, keras.Model):
            return layer
    return None


def _with_imagenet(ctor, kwargs: dict, spec: BackboneSpec) -> keras.Model:
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        with warnings.catch_warnings():  # "weights for input shape (224, 224) will be loaded": expected
            warnings.simplefilter("ignore", UserWarning)
            return ctor(weights="imagenet", **kwargs)
    except Exception as err:  # noqa: BLE001 - Keras wraps every download failure in a plain Exception
        text = str(err)
        if "URL fetch failure" not in text and not isinstance(err, (OSError, socket.timeout)):
            raise
        marker = "URL fetch failure on "  # Keras' message: "URL fetch failure on {origin}: {code} -- {reason}"
        url = text.split(marker, 1)[1].split(": ", 1)[0] if marker in text else "(not named by Keras)"
        raise DataError(
            f"the ImageNet weights of backbone {spec.entry.name} could not be downloaded ({_reason(text)}); Keras "
            f"caches them in {keras_cache_dir()} after the first download, and this machine has no copy. The file "
            f"is {url}",
            hint=f"download that file on a machine with network access and set model.backbone.weights=/path/to/"
                 f"{url.rsplit('/', 1)[-1] if '/' in url else 'file.h5'} (or copy it into {keras_cache_dir()}), or "
                 f"train from scratch with model.backbone.weights=null", config_key="model.backbone.weights") from None
    finally:
        socket.setdefaulttimeout(previous)


def _reason(text: str) -> str:
    for known in ("Name or service not known", "Temporary failure in name resolution", "timed out",
                  "Connection refused", "Network is unreachable"):
        if known in text:
            return known
    return text.rsplit(" -- ", 1)[-1][:160]


def load_weights_file(model: keras.Model, spec: BackboneSpec, path: Path) -> None:
    """Check `path` against `model` (SpecError naming the first mismatching layer), then load it."""
    problem = weights_mismatch(model, path)
    if problem is not None:
        raise SpecError(f"model.backbone.weights={path} does not fit backbone {spec.entry.name}: {problem}",
                        hint=f"use a weights file saved from keras.applications.{spec.entry.keras_name}"
                             f"(include_top=False) — or set model.backbone.name to the backbone it was saved from",
                        config_key="model.backbone.weights")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model.load_weights(str(path))


def weights_mismatch(model: keras.Model, path: Path) -> str | None:
    """What does not fit, in words, or None. Reads both layouts Keras loads: `.weights.h5`
    (Keras 3 `save_weights`: layers/<name>/vars/<i>, by layer name) and legacy `.h5` (the ImageNet
    downloads: `layer_names` and per-layer `weight_names`, matched in order)."""
    try:
        with h5py.File(path, "r") as f:
            if "layers" in f:
                return _mismatch_by_name(model, f["layers"])
            group = f["model_weights"] if "model_weights" in f else f
            if "layer_names" in group.attrs:
                return _mismatch_in_order(model, group)
            return "it holds neither Keras 3 weights (a 'layers' group) nor legacy Keras weights ('layer_names')"
    except OSError as err:
        return f"it is not a readable HDF5 file ({err})"


def _stored_names(model: keras.Model) -> list[str]:
    """The key of each layer in a `.weights.h5` file. Keras' saving_lib addresses a model's layers by
    class name in order (conv2d, conv2d_1, ...), not by layer name, which may be auto-generated."""
    used: dict[str, int] = {}
    names = []
    for layer in model.layers:
        name = to_snake_case(type(layer).__name__)
        used[name] = used.get(name, -1) + 1
        names.append(f"{name}_{used[name]}" if used[name] else name)
    return names


def _mismatch_by_name(model: keras.Model, layers) -> str | None:
    for layer, key in zip(model.layers, _stored_names(model)):
        expected = [tuple(w.shape) for w in layer.weights]
        if not expected:
            continue
        if key not in layers:
            return f"layer {layer.name!r} ({type(layer).__name__}, {len(expected)} weights) is not in the file"
        found = []  # a nested layer (ConvNeXt's stem is a Sequential) keeps its weights in sub-groups
        layers[key].visititems(lambda _, item: found.append(tuple(item.shape)) if isinstance(item, h5py.Dataset)
                               else None)
        if sorted(found) != sorted(expected):
            return f"layer {layer.name!r} expects weights of shapes {expected}, the file has {sorted(found)}"
    return None


def _mismatch_in_order(model: keras.Model, group) -> str | None:
    names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["layer_names"]]
    stored = []
    for name in names:
        weight_names = [w.decode() if isinstance(w, bytes) else w for w in group[name].attrs["weight_names"]]
        if weight_names:
            stored.append((name, [tuple(group[name][w].shape) for w in weight_names]))
    layers = [layer for layer in model.layers if layer.weights]
    if len(layers) != len(stored):
        return f"the backbone has {len(layers)} layers with weights and the file {len(stored)}"
    for layer, (name, shapes) in zip(layers, stored):
        expected = [tuple(w.shape) for w in layer.weights]
        if sorted(expected) != sorted(shapes):
            return (f"layer {layer.name!r} expects weights of shapes {expected}, and the file's layer {name!r} "
                    f"in that position has {shapes}")
    return None


def set_trainable(backbone: keras.Model, spec: BackboneSpec, trainable: bool) -> None:
    """Freeze the backbone, or unfreeze it (only from the top `fine_tune_blocks` blocks on, with the
    layers after the last block). A pretrained backbone's BatchNorm layers keep running in
    inference mode either way (InferenceMode), so fine-tuning never replaces the pretrained moving
    statistics with one small dataset's."""
    backbone.trainable = trainable
    if not trainable or not spec.fine_tune_blocks:
        return
    cut = top_blocks_start(backbone, spec)
    for layer in backbone.layers[:cut]:
        layer.trainable = False


def top_blocks_start(backbone: keras.Model, spec: BackboneSpec) -> int:
    """Index of the first layer of the top `fine_tune_blocks` blocks (SpecError if there are fewer)."""
    blocks: list[tuple[str, int]] = []
    for i, layer in enumerate(backbone.layers):
        block = spec.entry.block_of(layer.name)
        if block is not None and (not blocks or blocks[-1][0] != block):
            blocks.append((block, i))
    k = spec.fine_tune_blocks
    if k > len(blocks):
        raise SpecError(f"model.backbone.fine_tune_blocks={k}, and backbone {spec.entry.name} has {len(blocks)} blocks",
                        hint=f"set model.backbone.fine_tune_blocks to 1..{len(blocks)} (or null: all)",
                        config_key="model.backbone.fine_tune_blocks")
    return blocks[-k][1]
