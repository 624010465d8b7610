"""Model presets are the YAML files of the `model` config group; scripts and tests read the same ones."""

from __future__ import annotations

from typing import Any

import yaml

from safetrain.config import config_dir


def preset_layers(name: str) -> list[dict[str, Any]]:
    """The `layers` list of configs/model/NAME.yaml."""
    path = config_dir() / "model" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise FileNotFoundError(f"no model preset {name!r} in {path.parent}; known: {', '.join(known)}")
    return yaml.safe_load(path.read_text())["layers"]
