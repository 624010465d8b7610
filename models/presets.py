"""Model presets are the YAML files of the `model` config group; scripts and tests read the same ones."""

from __future__ import annotations

from typing import Any

import yaml

from safetrain.config import config_dir


def preset_config(name: str) -> dict[str, Any]:
    """The `model` node of configs/model/NAME.yaml (a `# @package _global_` preset, like backbone,
    keeps it under `model:` beside the dataset keys it sets)."""
    path = config_dir() / "model" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"no model preset {name!r} in {path.parent}; known: {', '.join(known)}")
    raw = yaml.safe_load(path.read_text())
    return raw["model"] if "model" in raw else raw


def preset_layers(name: str) -> list[dict[str, Any]]:
    """The `layers` list of configs/model/NAME.yaml."""
    return preset_config(name)["layers"]


def layer_presets() -> list[str]:
    """The presets made of layers alone (no pretrained backbone), which fit any input."""
    names = sorted(p.stem for p in (config_dir() / "model").glob("*.yaml"))
    return [name for name in names if not preset_config(name).get("backbone")]
