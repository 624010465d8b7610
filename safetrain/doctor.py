"""`python -m safetrain.doctor`: what this machine can run, and what is broken, in one screen.

Versions (Python, TensorFlow, Keras, TFDS, Hydra, NumPy, protobuf), the CUDA/cuDNN TensorFlow was
built with, devices, which precision each request would get here (and why), and known-bad
combinations. Exits 1 when a problem is fatal (safetrain would not run correctly), else 0.
"""

from __future__ import annotations

import importlib.metadata
import sys
from dataclasses import dataclass

from safetrain.config.schema import Precision


@dataclass(frozen=True)
class Finding:
    fatal: bool
    text: str


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _major_minor(version: str | None) -> tuple[int, int]:
    if not version:
        return (0, 0)
    parts = (version.split(".") + ["0", "0"])[:2]
    return tuple(int("".join(ch for ch in p if ch.isdigit()) or 0) for p in parts)  # type: ignore[return-value]


def check_versions(found: dict[str, str | None]) -> list[Finding]:
    """Known-bad combinations, from installed distribution versions alone (pure; unit-tested)."""
    out = []
    tf_v, keras_v = _major_minor(found.get("tensorflow")), _major_minor(found.get("keras"))
    if found.get("tensorflow") is None:
        out.append(Finding(True, "tensorflow is not installed: pip install -e . (it pins tensorflow 2.21)"))
    elif tf_v != (2, 21):
        out.append(Finding(True, f"tensorflow {found['tensorflow']}: safetrain is built and tested for 2.21"))
    if found.get("keras") is None or keras_v < (3, 0):
        out.append(Finding(True, f"keras {found.get('keras')}: TensorFlow 2.21 needs Keras 3; "
                                 f"pip install 'keras>=3.15,<4'"))
    if found.get("tf-keras"):
        out.append(Finding(False, f"tf-keras {found['tf-keras']} is installed: with TF_USE_LEGACY_KERAS=1 it "
                                  f"replaces Keras 3 and safetrain's models break; uninstall it unless needed"))
    if _major_minor(found.get("numpy")) >= (2, 0) and tf_v < (2, 16) and found.get("tensorflow"):
        out.append(Finding(True, f"numpy {found['numpy']} with tensorflow {found['tensorflow']}: TF < 2.16 "
                                 f"needs numpy < 2 (RNNs and tf.data break)"))
    if found.get("tensorflow-datasets") and not found.get("importlib-resources"):
        out.append(Finding(True, "importlib_resources is missing: TFDS 4.9.10 imports it without declaring it"))
    return out


def _cpu_lines() -> list[str]:
    import os

    from safetrain.train.hardware import describe_cpu, read_cpuinfo

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return describe_cpu(read_cpuinfo(), cores, dict(os.environ))


def _cached_decisions(devices) -> list[str]:
    """The precision trials recorded for these devices (beside the default TFDS data dir)."""
    from safetrain.train.hardware import device_key, read_cpuinfo
    from safetrain.train.precision_cache import PrecisionCache, cache_path

    path = cache_path(None)
    entries = PrecisionCache(path).for_device(device_key(devices, read_cpuinfo()))
    lines = [f"precision trials cached for this machine: {len(entries)} ({path})"]
    for entry in sorted(entries, key=lambda e: e.get("saved", "")):
        key, trial = entry["key"], entry["trial"]
        model = key["model"]
        what = (f"backbone {model['backbone']['name']}" if model.get("backbone") else f"{len(model['layers'])} layers")
        rates = ", ".join(f"{name} {rate:,.0f}" for name, rate in trial["candidates"].items() if rate)
        lines.append(f"  {what}, input {'x'.join(str(v) for v in key['input'][:3])}, batch {key['per_replica_batch']}, "
                     f"TensorFlow {key['tensorflow']}: {trial['chosen']} (examples/s: {rates}; {entry.get('saved')})")
    return lines


def main() -> int:
    from safetrain.core.tf_import import import_tensorflow

    names = ("tensorflow", "keras", "tensorflow-datasets", "tensorboard", "hydra-core", "omegaconf",
             "numpy", "protobuf", "scikit-learn", "pillow", "matplotlib", "imagehash", "tf-keras",
             "importlib-resources")
    found = {name: _version(name) for name in names}
    findings = check_versions(found)
    print(f"python {sys.version.split()[0]}")
    for name in names:
        if found[name] or name != "tf-keras":  # tf-keras is only worth a line when present
            print(f"{name} {found[name] or 'NOT INSTALLED'}")
    if found["tensorflow"]:
        tf = import_tensorflow()
        from safetrain.train.hardware import choose_precision, detect_devices

        build = tf.sysconfig.get_build_info()
        gpus = tf.config.list_physical_devices("GPU")
        print(f"tensorflow built with CUDA {build.get('cuda_version', 'none')}, cuDNN "
              f"{build.get('cudnn_version', 'none')}; GPUs visible at run time: {len(gpus)}"
              + ("" if gpus else " (CUDA libraries not loaded: CPU only)"))
        devices = detect_devices()
        for device in devices:
            print(f"device: {device.describe()}")
        for line in _cpu_lines():
            print(line)
        for requested in Precision:
            try:
                policy, reason = choose_precision(devices, requested)
                print(f"hardware.precision={requested.value}: {policy} ({reason})")
            except Exception as err:  # HardwareError: what a run would refuse
                print(f"hardware.precision={requested.value}: refused ({getattr(err, 'message', err)})")
        for line in _cached_decisions(devices):
            print(line)
    for finding in findings:
        print(f"{'FATAL' if finding.fatal else 'warning'}: {finding.text}")
    fatal = any(f.fatal for f in findings)
    print("doctor: " + ("fatal problems found" if fatal else "ok"))
    return 1 if fatal else 0


if __name__ == "__main__":
    sys.exit(main())
