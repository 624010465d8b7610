"""Image specs and the static check that a source plus its adapters gives the declared spec.

Plain Python (no TensorFlow) so the check runs before anything is built: a size or channel
mismatch is a SpecError naming both specs and the key to change, not a shape error inside the
first step.
"""

from __future__ import annotations

from dataclasses import dataclass

from safetrain.errors import SpecError


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
    """What a source yields before adapters; None where images vary (e.g. a folder of files)."""

    name: str
    height: int | None
    width: int | None
    channels: int | None
    dtype: str
    num_classes: int

    def describe(self) -> str:
        dim = lambda d: "?" if d is None else str(d)  # noqa: E731
        return f"{dim(self.height)}x{dim(self.width)}x{dim(self.channels)} {self.dtype}"


@dataclass(frozen=True)
class AdapterPlan:
    """The adapters a pipeline applies, in order; `steps` is what `pipeline/spec` shows."""

    resize: str | None        # None | "bilinear" | "pad_or_crop"
    channels: tuple[int, int] | None  # (from, to) or None
    steps: tuple[str, ...]


_CONVERTIBLE = {(1, 3), (4, 3), (3, 1), (4, 1)}


def plan_adapters(source: SourceSpec, declared: ImageSpec, resize: str,
                  channel_policy: str) -> AdapterPlan:
    """Check `source` + adapters == `declared`; raise SpecError naming both specs and the fix."""
    steps: list[str] = [f"source {source.name}: {source.describe()}"]

    resize_mode = None
    same_size = (source.height, source.width) == (declared.height, declared.width)
    if not same_size:
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
    if source.channels != declared.channels:
        if source.channels is not None and (source.channels, declared.channels) not in _CONVERTIBLE:
            raise SpecError(
                f"dataset {source.name} delivers {source.channels}-channel images; "
                f"dataset.image.channels={declared.channels} cannot be made from them.",
                hint=f"set dataset.image.channels={source.channels}", config_key="dataset.image.channels",
            )
        if channel_policy == "error":
            raise SpecError(
                f"dataset {source.name} delivers {source.describe()} images but dataset.image "
                f"declares {declared.channels} channels, and dataset.channel_policy=error "
                f"forbids converting them.",
                hint=(f"set dataset.channel_policy=convert, or dataset.image.channels="
                      f"{source.channels}" if source.channels else "set dataset.channel_policy=convert"),
                config_key="dataset.channel_policy",
            )
        channel_change = (source.channels or 0, declared.channels)
        steps.append(f"channels {source.channels or '?'} -> {declared.channels}")

    steps.append(f"normalize ({declared.normalization}) and cast -> {declared.dtype}")
    steps.append(f"model input: {declared.describe()}")
    return AdapterPlan(resize=resize_mode, channels=channel_change, steps=tuple(steps))
