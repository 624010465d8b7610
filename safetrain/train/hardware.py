"""Which devices we have, which precision they can honour, and which strategy to run.

`choose_precision` is a pure function of device records so every branch is unit-tested with
fake device sets; `detect_devices` and `cpu_features` are the only parts that ask the machine.
For `auto` it is the table the precision trial (safetrain.train.precision_trial) falls back on
(hardware.precision_trial=false, a multi-worker run, a smoke run, a TPU); the trial measures.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from safetrain.train.cluster import ClusterTask
from safetrain.config.schema import Precision, StrategyKind
from safetrain.core.errors import HardwareError

# CPU flags (from /proc/cpuinfo) that give bfloat16 matmuls/convolutions native speed in oneDNN.
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@dataclass(frozen=True)
class Device:
    kind: str                                   # CPU | GPU | TPU
    name: str
    compute_capability: tuple[int, int] | None = None
    features: frozenset[str] = field(default_factory=frozenset)  # CPU: bf16-relevant flags
    memory_mib: int | None = None               # GPU: total memory (nvidia-smi), when known

    @property
    def tensor_cores(self) -> bool:
        """float16 tensor cores: compute capability >= 7.0, except Turing's GTX 16xx (7.5 without them)."""
        return (self.kind == "GPU" and (self.compute_capability or (0, 0)) >= (7, 0)
                and "GTX 16" not in self.name.upper())

    def describe(self) -> str:
        cc = f" (compute capability {self.compute_capability[0]}.{self.compute_capability[1]})" \
            if self.compute_capability else ""
        flags = f" [{', '.join(sorted(self.features))}]" if self.features else ""
        memory = f" {self.memory_mib / 1024:.0f} GiB" if self.memory_mib else ""
        return f"{self.kind} {self.name}{cc}{memory}{flags}"


def _field(cpuinfo: str, name: str) -> str | None:
    """The value of the first `name` line of /proc/cpuinfo text."""
    return next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith(name)), None)


def parse_cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The bf16-relevant flags of the first `flags` line of /proc/cpuinfo text."""
    return frozenset((_field(cpuinfo, "flags") or "").split()) & CPU_BF16_FLAGS


def read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""  # not Linux: no claim


_CPU_MATH_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")  # what oneDNN's kernels can use
_CPU_ENV = ("TF_ENABLE_ONEDNN_OPTS", "TF_SET_ONEDNN_FPMATH_MODE", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS")


def describe_cpu(cpuinfo: str, cores: int, env: dict[str, str]) -> list[str]:
    """Doctor's CPU lines (pure; unit-tested): model, usable cores, the math extensions oneDNN can
    use, and the environment variables that change how TensorFlow computes on it."""
    model = _field(cpuinfo, "model name") or "unknown model"
    flags = set((_field(cpuinfo, "flags") or "").split())
    math = [flag for flag in _CPU_MATH_FLAGS if flag in flags]
    extensions = ", ".join(math) or "none of " + "/".join(_CPU_MATH_FLAGS)
    if "amx_bf16" in flags:
        native = "bfloat16 on AMX tiles (amx_bf16, amx_tile) and AVX512_BF16"
    elif "avx512_bf16" in flags:
        native = ("bfloat16 dot products on AVX-512 (AVX512_BF16) but no AMX tiles: bfloat16 is often no faster "
                  "than float32 here, so auto measures it")
    else:
        native = "no native bfloat16: bfloat16 would be emulated, slower than float32"
    lines = [f"cpu: {model}, {cores} cores usable; math extensions: {extensions} ({native})"]
    settings = [f"{key}={env[key]}" for key in _CPU_ENV if key in env]
    lines.append("cpu settings: " + (", ".join(settings) if settings else
                                     "TensorFlow's defaults (oneDNN on, float32 math, thread pools per core count)"))
    return lines


def cpu_features() -> frozenset[str]:
    return parse_cpu_flags(read_cpuinfo())


def cpu_device_key(cpuinfo: str) -> str:
    """The CPU as precision decisions are keyed (safetrain.train.precision_cache): model and the
    math extensions oneDNN can use. Read from /proc/cpuinfo, so the run can look a decision up
    before TensorFlow starts."""
    flags = set((_field(cpuinfo, "flags") or "").split())
    return f"CPU {_field(cpuinfo, 'model name') or 'unknown'} [{', '.join(f for f in _CPU_MATH_FLAGS if f in flags)}]"


def device_key(devices: list[Device], cpuinfo: str) -> str:
    """The devices a run trains on, as precision decisions are keyed: the GPUs (name and compute
    capability) when there are any, else the CPU."""
    gpus = [d for d in devices if d.kind in ("GPU", "TPU")]
    return " + ".join(d.describe() for d in gpus) if gpus else cpu_device_key(cpuinfo)


def parse_gpu_memory(csv: str) -> list[int]:
    """Total MiB per GPU from `nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits`."""
    return [int(line.strip()) for line in csv.splitlines() if line.strip().isdigit()]


def gpu_memory_mib() -> list[int]:
    """TensorFlow reports a GPU's compute capability but not its size; nvidia-smi knows it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_gpu_memory(out.stdout) if out.returncode == 0 else []


def detect_devices() -> list[Device]:
    import tensorflow as tf

    devices = []
    physical = [d for d in tf.config.list_physical_devices() if d.device_type in ("CPU", "GPU", "TPU")]
    memory = gpu_memory_mib() if any(d.device_type == "GPU" for d in physical) else []
    gpu_index = 0
    for dev in physical:
        details, mib = {}, None
        if dev.device_type == "GPU":
            details = tf.config.experimental.get_device_details(dev)
            # Visible GPUs are in nvidia-smi's order unless CUDA_VISIBLE_DEVICES reorders them.
            if len(memory) > gpu_index and not os.environ.get("CUDA_VISIBLE_DEVICES"):
                mib = memory[gpu_index]
            gpu_index += 1
        devices.append(Device(kind=dev.device_type, name=details.get("device_name", dev.name),
                              compute_capability=details.get("compute_capability"),
                              features=cpu_features() if dev.device_type == "CPU" else frozenset(),
                              memory_mib=mib))
    return devices


def choose_precision(devices: list[Device], requested: Precision, recurrent: bool = False,
                     backbone=None) -> tuple[str, str]:
    """Return (keras policy name, reason). Refuse explicit policies the devices cannot run.

    `recurrent`: the model has LSTM/GRU layers, which measured no faster and less accurate in
    bfloat16 on CPU, so `auto` keeps them in float32 there. `backbone` (models.backbones.
    BackboneSpec): on a CPU, `auto` follows its measured bfloat16 speedup; a backbone that trains
    cannot share float16's loss scaling with the head's optimizer (each optimizer would scale on
    its own), so float16 is refused for it and `auto` does not pick it."""
    gpus = [d for d in devices if d.kind == "GPU"]
    tpus = [d for d in devices if d.kind == "TPU"]
    cpu_bf16 = any(d.features & CPU_BF16_FLAGS for d in devices if d.kind == "CPU")
    caps = [d.compute_capability or (0, 0) for d in gpus]
    listing = "; ".join(d.describe() for d in devices) or "no devices"

    if requested is Precision.float32:
        return "float32", "requested hardware.precision=float32"
    trains_backbone = backbone is not None and backbone.trains_ever()
    if requested is Precision.mixed_float16 and trains_backbone:
        raise HardwareError(
            f"hardware.precision=mixed_float16 needs loss scaling, and the backbone {backbone.entry.name} trains "
            f"with its own optimizer (model.backbone.trainable / fine_tune_from_epoch), which safetrain does not "
            f"loss-scale.", hint="set hardware.precision=mixed_bfloat16 (GPUs >= 8.0) or float32, or keep the "
            "backbone frozen", config_key="hardware.precision")
    if requested is Precision.mixed_float16:
        if gpus and all(d.tensor_cores for d in gpus):
            return "mixed_float16", "requested; every GPU has float16 tensor cores (compute capability >= 7.0)"
        raise HardwareError(
            f"hardware.precision=mixed_float16 needs GPUs with float16 tensor cores (compute capability "
            f">= 7.0, not a GTX 16xx); this machine has: {listing}. Elsewhere float16 runs slower than "
            f"float32 — on a CPU about 12-200x slower — and Adam's epsilon underflows to NaN.",
            hint="set hardware.precision=auto (or float32; mixed_bfloat16 on CPUs with AVX512_BF16/AMX)",
            config_key="hardware.precision")
    if requested is Precision.mixed_bfloat16:
        if tpus or (gpus and min(caps) >= (8, 0)) or (not gpus and cpu_bf16):
            where = "TPU" if tpus else "every GPU has compute capability >= 8.0" if gpus else \
                "the CPU has native bfloat16 (AVX512_BF16/AMX)"
            return "mixed_bfloat16", f"requested; {where}"
        raise HardwareError(
            f"hardware.precision=mixed_bfloat16 needs a TPU, GPUs with compute capability >= 8.0, or a "
            f"CPU with AVX512_BF16/AMX; this machine has: {listing}. Without them bfloat16 is emulated "
            f"and slower than float32.",
            hint="set hardware.precision=auto", config_key="hardware.precision")
    # auto
    if tpus:
        return "mixed_bfloat16", "auto: TPU present"
    if gpus and min(caps) >= (8, 0):
        return "mixed_bfloat16", "auto: every GPU has compute capability >= 8.0 (bfloat16 needs no loss scaling)"
    if gpus and all(d.tensor_cores for d in gpus) and trains_backbone:
        return "float32", ("auto: the GPUs' float16 needs loss scaling, which a fine-tuned backbone's own optimizer "
                           "does not get, and bfloat16 needs compute capability >= 8.0")
    if gpus and all(d.tensor_cores for d in gpus):
        return "mixed_float16", "auto: every GPU has float16 tensor cores (compute capability >= 7.0)"
    if gpus:
        slow = next(d for d in gpus if not d.tensor_cores)
        return "float32", f"auto: {slow.describe()} has no float16 tensor cores, where mixed precision is slower"
    amx = any("amx_bf16" in d.features for d in devices if d.kind == "CPU")
    if cpu_bf16 and not amx:
        return "float32", ("auto: no GPU; the CPU has AVX512_BF16 but no AMX, where mixed_bfloat16 measured "
                           "0.68-0.79x float32's examples/s (Intel Xeon, cpu family 6 model 207; "
                           "hardware.precision_trial=true measures your model)")
    if cpu_bf16 and recurrent:
        return "float32", ("auto: no GPU; the CPU has native bfloat16, but recurrent layers measured no "
                           "faster and less accurate in mixed_bfloat16 (request it to try)")
    if cpu_bf16 and backbone is not None:
        speedup, name = backbone.entry.bf16_speedup, backbone.entry.name
        measured = (f"mixed_bfloat16 measured {speedup:.2f}x float32's training examples/s for {name} at batch 32, "
                    f"128x128 (scripts/bench_backbones.py)")
        if speedup >= 1.1:
            return "mixed_bfloat16", f"auto: no GPU; the CPU has AMX bfloat16 tiles, and {measured}"
        return "float32", f"auto: no GPU; the CPU has native bfloat16, but {measured} (request it to try)"
    if cpu_bf16:
        # Measured (docs/precision-and-devices.md) on a Sapphire Rapids Xeon: 1.69x the float32
        # examples/s on fashion_mnist_cnn, same accuracy.
        return "mixed_bfloat16", ("auto: no GPU; the CPU has AMX bfloat16 tiles, where mixed_bfloat16 measured "
                                  "1.7x faster than float32 at the same accuracy (Sapphire Rapids)")
    return "float32", "auto: no GPU and no native bfloat16 on the CPU"


def split_cpu(count: int) -> None:
    """Make the CPU appear as `count` logical devices; must run before TensorFlow initializes them."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is None or len(current) != count:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
        except RuntimeError as err:  # devices already initialized (e.g. an earlier job of a multirun)
            raise HardwareError(f"hardware.logical_cpus={count} cannot be applied: TensorFlow has already "
                                f"initialized its devices in this process ({err})",
                                hint="run it as its own process, not as a later job of a multirun",
                                config_key="hardware.logical_cpus") from None


def make_strategy(kind: StrategyKind, devices: list[Device], cluster: ClusterTask | None = None):
    """`cluster` (from TF_CONFIG) means MultiWorkerMirroredStrategy; validation has already
    refused it with a single-machine strategy, and cluster.wait_for_peers has seen every peer."""
    import tensorflow as tf

    if cluster is not None:
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = [d for d in devices if d.kind == "GPU"]
    if kind is StrategyKind.mirrored or (kind is StrategyKind.auto and len(gpus) > 1):
        if gpus:
            return tf.distribute.MirroredStrategy()
        # No GPU: mirror over the logical CPUs (hardware.logical_cpus), one replica each.
        return tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    if kind is StrategyKind.one_device:
        return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
    return tf.distribute.get_strategy()  # the default strategy: one device, no wrapping cost

