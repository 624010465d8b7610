"""Config: the typed schema, where the Hydra tree lives, and validation (all TensorFlow-free)."""

from __future__ import annotations

from pathlib import Path


def config_dir() -> Path:
    """The Hydra config tree: shipped in the wheel as safetrain/_configs, else the checkout's configs/."""
    package = Path(__file__).resolve().parent.parent
    installed = package / "_configs"
    if (installed / "config.yaml").is_file():
        return installed
    return package.parent / "configs"
