"""Image specs and the static check that a source plus its adapters gives the declared spec.

Plain Python (no TensorFlow) so the check runs before anything is built: a size or channel
mismatch is a SpecError naming both specs and the key to change, not a shape error inside the
first step.
"""

from __future__ import annotations

from dataclasses import dataclass

from safetrain.core.errors import SpecError


@dataclass(frozen=True)
class ImageSpec:
    """What the pipeline delivers to the model, per example: (height, width, channels) of dtype."""

    height: int
    width: int
    channels: int
    dtype: str = "float32"
    normalization: str = "scale_0_1"

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def describe(self) -> str:
        return f"{self.height}x{self.width}x{self.channels} {self.dtype} ({self.normalization})"


@dataclass(frozen=True)
class SourceSpec:
    """What a source yields before adapters; None where images vary (e.g. a folder of files).

    `value_range` is the raw pixel range: normalization maps it (not a guessed 0..255) to the
    declared range, and values outside it make an example bad.
    """

    name: str
    height: int | None
    width: int | None
    channels: int | None
    dtype: str
    num_classes: int
    value_range: tuple[float, float] = (0.0, 255.0)
    class_names: tuple[str, ...] = ()   # label id -> name, when the source knows them
    multi_label: bool = False           # labels are sets, carried as int64 bit masks (bit i: label i)

    def names(self) -> list[str]:
        """A name per class: the source's, else the label id as text."""
        if len(self.class_names) == self.num_classes:
            return list(self.class_names)
        return [str(i) for i in range(self.num_classes)]

    def describe(self) -> str:
        dim = lambda d: "?" if d is None else str(d)  # noqa: E731
        return f"{dim(self.height)}x{dim(self.width)}x{dim(self.channels)} {self.dtype}"


@dataclass(frozen=True)
class BadExample:
    """One example the pipeline refused: where it is (`split`, `key`: file path or index) and why."""

    split: str
    key: str
    reason: str
    kind: str | None = None  # a table row's kind of problem (pipelines.sources.table.BAD_KINDS); None: a file's

    def describe(self) -> str:
        return f"{self.key} ({self.split}): {self.reason}"


@dataclass(frozen=True)
class DataEvent:
    """Something the data checks found that is not a bad example (a duplicate, leakage, a missing
    class): one errors.jsonl record; `other` is the second file of a pair."""

    kind: str       # duplicate | leakage | missing_class (safetrain.core.errors.ErrorKind)
    split: str
    key: str
    other: str | None
    message: str


@dataclass(frozen=True)
class AdapterPlan:
    """The adapters a pipeline applies, in order; `steps` is what `pipeline/spec` shows."""

    resize: str | None        # None | "bilinear" | "pad_or_crop"
    channels: int | None      # convert every image to this many channels, or None
    steps: tuple[str, ...]
    check_size: bool = False      # sizes vary and may not be resized: mismatches are bad examples
    check_channels: bool = False  # channels vary and may not be converted: likewise


_CONVERTIBLE = {(1, 3), (2, 3), (4, 3), (3, 1), (2, 1), (4, 1)}


def plan_adapters(source: SourceSpec, declared: ImageSpec, resize: str,
                  channel_policy: str, channels_why: str = "") -> AdapterPlan:
    """Check `source` + adapters == `declared`; raise SpecError naming both specs and the fix.
    `channels_why`: why the model needs its channel count (a backbone's RGB stem), said in the error."""
    lo, hi = source.value_range
    steps: list[str] = [f"source {source.name}: {source.describe()} (pixels in [{lo:g}, {hi:g}])",
                        f"check finite, pixel values in [{lo:g}, {hi:g}], labels in [0, {source.num_classes})"]

    resize_mode = None
    varies = source.height is None or source.width is None
    same_size = (source.height, source.width) == (declared.height, declared.width)
    if varies and resize == "error":
        steps.append(f"sizes vary: images not {declared.height}x{declared.width} are bad examples "
                     f"(dataset.resize=error)")
    elif not same_size:
        if resize == "error":
            size_fix = ("set dataset.resize=bilinear (or pad_or_crop)"
                        + ("" if source.height is None else
                           f", or dataset.image.height={source.height} "
                           f"dataset.image.width={source.width}"))
            raise SpecError(
                f"dataset {source.name} delivers {source.describe()} images but dataset.image "
                f"declares {declared.describe()}, and dataset.resize=error forbids resizing.",
                hint=size_fix, config_key="dataset.resize",
            )
        resize_mode = resize
        steps.append(f"resize ({resize}) -> {declared.height}x{declared.width}")

    channel_change = None
    if source.channels is None and channel_policy == "error":
        steps.append(f"channels vary: images without {declared.channels} channels are bad examples "
                     f"(dataset.channel_policy=error)")
    elif source.channels != declared.channels:
        if source.channels is not None and (source.channels, declared.channels) not in _CONVERTIBLE:
            raise SpecError(
                f"dataset {source.name} delivers {source.channels}-channel images; "
                f"dataset.image.channels={declared.channels} cannot be made from them.",
                hint=f"set dataset.image.channels={source.channels}", config_key="dataset.image.channels",
            )
        if channel_policy == "error":
            raise SpecError(
                f"dataset {source.name} delivers {source.describe()} images but dataset.image "
                f"declares {declared.channels} channels{channels_why}, and dataset.channel_policy=error "
                f"forbids converting them.",
                hint=(f"set dataset.channel_policy=convert, or dataset.image.channels="
                      f"{source.channels}" if source.channels and not channels_why
                      else "set dataset.channel_policy=convert"),
                config_key="dataset.channel_policy",
            )
        channel_change = declared.channels
        steps.append(f"channels {source.channels or '?'} -> {declared.channels}")

    steps.append(f"normalize ({declared.normalization}) from [{lo:g}, {hi:g}] and cast -> {declared.dtype}")
    steps.append(f"model input: {declared.describe()}")
    return AdapterPlan(resize=resize_mode, channels=channel_change, steps=tuple(steps),
                       check_size=varies and resize == "error",
                       check_channels=source.channels is None and channel_policy == "error")
