"""What ran where: library versions, TensorFlow's CUDA build, devices. Goes to report.json and TensorBoard."""

from __future__ import annotations

import importlib.metadata
import platform

from safetrain.train.hardware import Device

_PACKAGES = ("tensorflow", "keras", "tensorflow-datasets", "tensorboard", "hydra-core", "omegaconf",
             "numpy", "scikit-learn")


def versions() -> dict[str, str]:
    import tensorflow as tf

    found = {"python": platform.python_version(), "safetrain": _version("safetrain")}
    found.update({name: _version(name) for name in _PACKAGES})
    build = tf.sysconfig.get_build_info()
    found["tf_cuda_build"] = str(build.get("cuda_version", "none"))
    found["tf_cudnn_build"] = str(build.get("cudnn_version", "none"))
    return found


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def env_text(found: dict[str, str], devices: list[Device], hardware: dict) -> str:
    lines = [f"{k}: {v}" for k, v in found.items()]
    lines += [f"device: {d.describe()}" for d in devices]
    lines += [f"{k}: {v}" for k, v in hardware.items() if k != "devices"]
    return "\n".join(lines)
