"""Pretrained backbones: a closed registry of Keras Applications and the input contract of each.

Plain Python (no TensorFlow), so `validate()` refuses a wrong channel count, an input below the
backbone's minimum or a normalization the weights were not trained with before TensorFlow is
imported, and the shape table can show the backbone as one row before any weights are read.

Each entry's numbers were measured once and recorded here by `scripts/bench_backbones.py
--record` (Keras 3.15, include_top=False): `params` is exact and independent of the input size;
`flops_224` is TensorFlow's profiler count of one forward pass at 224x224 (multiply-add = 2),
which the table scales by the input's area — an approximation, shown with "≈" (squeeze-excite and
pooling work does not scale with the area; strides round). `bf16_speedup` is mixed_bfloat16 over
float32 forward+backward examples/s at batch 32, 128x128, on the 2-vCPU Sapphire Rapids VM
(AMX-BF16), where `hardware.precision=auto` uses it to decide per backbone.

The expected input range is the one the *Keras* implementation wants: MobileNetV3, EfficientNetV2
and ConvNeXt carry their own preprocessing layers (Rescaling/Normalization) and take raw 0..255
pixels; ResNet50V2 has none and wants [-1, 1] ("tf" mode of `resnet_v2.preprocess_input`). Feeding
[0, 1] to any of them trains, silently a few points worse — the bug this contract exists to stop.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from safetrain.core.registry import Registry

CHANNELS = 3  # every registered backbone has an ImageNet RGB stem


@dataclass(frozen=True)
class Backbone:
    name: str              # the config name (model.backbone.name)
    keras_name: str        # the constructor in keras.applications
    features: int          # channels of the last feature map = the pooled vector's length
    params: int            # include_top=False, every variable (BatchNorm moving statistics included)
    flops_224: int         # one forward pass at 224x224, TensorFlow profiler count
    normalization: str     # what the weights expect from raw pixels: scale_0_255 | minus_one_one
    preprocessing: str     # in words, for pipeline/spec, the export and errors
    block_pattern: str     # regex over layer names; group 1 identifies a block (fine_tune_blocks)
    bf16_speedup: float    # measured mixed_bfloat16 / float32 train examples/s (see module docstring)
    min_size: int = 32     # Keras refuses smaller inputs ("Input size must be at least 32x32")
    preferred_size: int = 224  # the ImageNet training resolution

    def flops(self, height: int, width: int) -> int:
        """Forward FLOPs per example at height x width, scaled from the recorded 224x224 count."""
        return round(self.flops_224 * height * width / (224 * 224))

    def block_of(self, layer_name: str) -> str | None:
        match = re.match(self.block_pattern, layer_name)
        return match.group(1) if match else None


BACKBONES: Registry[Backbone] = Registry("backbone", "model.backbone.name")

_BUILT_IN = "its own Rescaling layer inside the model expects raw pixels in [0, 255]"


def _add(entry: Backbone) -> None:
    BACKBONES.register(entry.name)(entry)


# Numbers: scripts/bench_backbones.py --record (see the module docstring).
_add(Backbone("mobilenet_v3_small", "MobileNetV3Small", 576, 939_120, 116_010_184, "scale_0_255",
              f"MobileNetV3: {_BUILT_IN}", r"^(expanded_conv(?:_\d+)?)_", bf16_speedup=0.58))
_add(Backbone("mobilenet_v3_large", "MobileNetV3Large", 960, 2_996_352, 443_544_152, "scale_0_255",
              f"MobileNetV3: {_BUILT_IN}", r"^(expanded_conv(?:_\d+)?)_", bf16_speedup=0.64))
_add(Backbone("efficientnet_v2_b0", "EfficientNetV2B0", 1280, 5_919_312, 1_455_315_507, "scale_0_255",
              f"EfficientNetV2: {_BUILT_IN}", r"^(block\d+[a-z])_", bf16_speedup=0.81))
_add(Backbone("resnet50_v2", "ResNet50V2", 2048, 23_564_800, 6_988_373_632, "minus_one_one",
              "ResNet50V2: no preprocessing layer inside; the weights expect pixels scaled to [-1, 1] "
              "(resnet_v2.preprocess_input, 'tf' mode)", r"^(conv\d+_block\d+)_", bf16_speedup=1.36))
_add(Backbone("convnext_tiny", "ConvNeXtTiny", 768, 27_820_128, 8_757_039_959, "scale_0_255",
              "ConvNeXt: its own Normalization layer inside the model expects raw pixels in [0, 255] "
              "(ImageNet mean/std applied there)", r"^(convnext_tiny_stage_\d+_block_\d+)_", bf16_speedup=1.0))


@dataclass(frozen=True)
class BackboneSpec:
    """The backbone part of a model spec (model.backbone), as the shape table and the builder use it."""

    entry: Backbone
    weights: str | None          # "imagenet", a resolved file path, or None (random initialization)
    pooling: str                 # avg | max
    trainable: bool              # trains from the first step
    fine_tune_from_epoch: int | None
    fine_tune_blocks: int | None
    fine_tune_learning_rate: float | None = None

    def state(self) -> str:
        part = f"top {self.fine_tune_blocks} blocks" if self.fine_tune_blocks else "all"
        if self.trainable:
            return f"trainable ({part})"
        if self.fine_tune_from_epoch:
            return f"frozen, then {part} trained from epoch {self.fine_tune_from_epoch}"
        return "frozen"

    def weights_label(self) -> str:
        if self.weights is None:
            return "random init"
        return "imagenet" if self.weights == "imagenet" else f"weights {self.weights}"

    def label(self) -> str:
        return f"backbone {self.entry.name} ({self.weights_label()}; {self.state()}), {self.pooling} pool"

    def trains_ever(self) -> bool:
        return self.trainable or self.fine_tune_from_epoch is not None

    def trainable_in(self, epoch: int) -> bool:
        return self.trainable or (self.fine_tune_from_epoch is not None and epoch >= self.fine_tune_from_epoch)

    def output_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The pooled feature vector, for the real input (a source's own size when nothing resizes
        it); validate() has checked the declared one the same way (check_input)."""
        check_input(self.entry, shape, declared=False)
        return (self.entry.features,)


def check_input(entry: Backbone, shape: tuple[int, ...], declared: bool) -> None:
    """The backbone's input contract (3 channels, at least min_size): a ConfigError naming
    dataset.image when `declared` (validate(), before TensorFlow), else a SpecError naming the
    model input the data gives."""
    from safetrain.core.errors import ConfigError, SpecError

    height, width, channels = shape
    who = f"model.backbone.name={entry.name}" if declared else f"backbone {entry.name}"
    error = ConfigError if declared else SpecError
    if channels != CHANNELS:
        got = f"dataset.image.channels={channels}." if declared else f"the model input is {height}x{width}x{channels}"
        fix = "set dataset.image.channels=3 dataset.channel_policy=convert (gray images are repeated to RGB)"
        raise error(f"{who} takes {CHANNELS}-channel RGB images (an ImageNet stem), and {got}", hint=fix,
                    config_key="dataset.image.channels")
    if min(height, width) < entry.min_size:
        got = f"dataset.image is {height}x{width}." if declared else f"the model input is {height}x{width}"
        raise error(f"{who} needs inputs of at least {entry.min_size}x{entry.min_size}, and {got}",
                    hint=f"set dataset.image.height={entry.min_size * 2} dataset.image.width={entry.min_size * 2} "
                         f"dataset.resize=bilinear (its weights were trained at "
                         f"{entry.preferred_size}x{entry.preferred_size})",
                    config_key="dataset.image.height")


def parse_backbone(cfg) -> BackboneSpec | None:
    """model.backbone (safetrain.config.schema.BackboneConfig) to a spec; None when no name is set."""
    if cfg is None or cfg.name is None:
        return None
    entry = BACKBONES.get(cfg.name)
    pooling = getattr(cfg.pooling, "value", cfg.pooling)
    return BackboneSpec(entry=entry, weights=cfg.weights, pooling=pooling, trainable=cfg.trainable,
                        fine_tune_from_epoch=cfg.fine_tune_from_epoch, fine_tune_blocks=cfg.fine_tune_blocks,
                        fine_tune_learning_rate=cfg.fine_tune_learning_rate)
