"""Which devices we have, which precision they can honour, and which strategy to run.

`choose_precision` is a pure function of device records so every branch is unit-tested without
the hardware; `detect_devices` is the only part that asks TensorFlow.
"""

from __future__ import annotations

from dataclasses import dataclass

from safetrain.config.schema import Precision, StrategyKind
from safetrain.errors import HardwareError


@dataclass(frozen=True)
class Device:
    kind: str                                   # CPU | GPU | TPU
    name: str
    compute_capability: tuple[int, int] | None = None

    def describe(self) -> str:
        cc = f" (compute capability {self.compute_capability[0]}.{self.compute_capability[1]})" \
            if self.compute_capability else ""
        return f"{self.kind} {self.name}{cc}"


def detect_devices() -> list[Device]:
    import tensorflow as tf

    devices = []
    for dev in tf.config.list_physical_devices():
        if dev.device_type not in ("CPU", "GPU", "TPU"):
            continue
        details = tf.config.experimental.get_device_details(dev) if dev.device_type == "GPU" else {}
        devices.append(Device(kind=dev.device_type, name=details.get("device_name", dev.name),
                              compute_capability=details.get("compute_capability")))
    return devices


def choose_precision(devices: list[Device], requested: Precision) -> tuple[str, str]:
    """Return (keras policy name, reason). Refuse explicit policies the devices cannot run."""
    gpus = [d for d in devices if d.kind == "GPU"]
    tpus = [d for d in devices if d.kind == "TPU"]
    caps = [d.compute_capability or (0, 0) for d in gpus]
    listing = "; ".join(d.describe() for d in devices) or "no devices"

    if requested is Precision.float32:
        return "float32", "requested hardware.precision=float32"
    if requested is Precision.mixed_float16:
        if gpus and min(caps) >= (7, 0):
            return "mixed_float16", "requested; every GPU has compute capability >= 7.0"
        raise HardwareError(
            f"hardware.precision=mixed_float16 needs GPUs with compute capability >= 7.0 (tensor "
            f"cores); this machine has: {listing}. On CPU float16 runs about 12-200x slower and "
            f"Adam's epsilon underflows to NaN.",
            hint="set hardware.precision=auto (or float32; mixed_bfloat16 on CPUs with AMX/AVX512_BF16)",
            config_key="hardware.precision")
    if requested is Precision.mixed_bfloat16:
        if tpus or (gpus and min(caps) >= (8, 0)) or not gpus:
            return "mixed_bfloat16", "requested; supported by " + ("TPU" if tpus else "GPU >= 8.0" if gpus else "CPU")
        raise HardwareError(
            f"hardware.precision=mixed_bfloat16 needs GPUs with compute capability >= 8.0; "
            f"this machine has: {listing}.",
            hint="set hardware.precision=auto", config_key="hardware.precision")
    # auto
    if tpus:
        return "mixed_bfloat16", "auto: TPU present"
    if gpus and min(caps) >= (8, 0):
        return "mixed_bfloat16", "auto: every GPU has compute capability >= 8.0"
    if gpus and min(caps) >= (7, 0):
        return "mixed_float16", "auto: every GPU has compute capability >= 7.0"
    if gpus:
        return "float32", f"auto: a GPU has compute capability {min(caps)[0]}.{min(caps)[1]} < 7.0"
    return "float32", "auto: no GPU (float32 on CPU; mixed_bfloat16 can be requested explicitly)"


def make_strategy(kind: StrategyKind, devices: list[Device]):
    import tensorflow as tf

    gpus = [d for d in devices if d.kind == "GPU"]
    if kind is StrategyKind.mirrored or (kind is StrategyKind.auto and len(gpus) > 1):
        return tf.distribute.MirroredStrategy()
    if kind is StrategyKind.one_device:
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    return tf.distribute.get_strategy()  # the default strategy: one device, no wrapping cost
