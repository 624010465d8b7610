"""Config dicts to layer specs: unknown arguments, wrong types and declared field checks refused.

`parse_layers(cfg.model.layers)` turns each entry into its registered spec class (models.spec,
models.sequence, models.blocks, custom layers), naming the config path in every error
(`model.layers.3.filters`). Types come from the dataclass annotations; value checks come from the
field itself (models.fields), so they apply only where a layer declares them. Plain Python.
"""

from __future__ import annotations

import types
import typing
from dataclasses import fields
from typing import Any

from safetrain.models.fields import check_of
from safetrain.models.spec import LAYERS, LayerSpec
from safetrain.core.errors import ConfigError


def parse_layers(raw: list[dict[str, Any]]) -> list[LayerSpec]:
    if not raw:
        raise ConfigError("model.layers is empty: a model needs at least one layer before the head.",
                          hint="pick a preset (model=cnn_small) or list layers under model.layers",
                          config_key="model.layers")
    return [parse_layer(i, dict(item) if isinstance(item, dict) else item) for i, item in enumerate(raw)]


def parse_layer(index: int, raw: Any, key: str | None = None) -> LayerSpec:
    """`key`: the config path of `raw` (default model.layers.INDEX; nested layers pass theirs)."""
    key = key or f"model.layers.{index}"
    if not isinstance(raw, dict) or "type" not in raw:
        raise ConfigError(f"{key} must be a mapping with a 'type', got {raw!r}.",
                          hint=f"write {key} as {{type: conv2d, filters: 32, kernel_size: 3}}",
                          config_key=key)
    args = dict(raw)
    cls = LAYERS.get(str(args.pop("type")), config_key=f"{key}.type")
    known = {f.name: f for f in fields(cls) if f.name != "index"}
    hints = typing.get_type_hints(cls)
    for name, value in args.items():
        if name not in known:
            raise ConfigError(
                f"{key} ({cls.type}) has no argument {name!r}. Known arguments: "
                f"{', '.join(known) or 'none'}.",
                hint=f"remove {key}.{name}" + (f" or use one of: {', '.join(known)}" if known else ""),
                config_key=f"{key}.{name}")
        args[name] = _check_value(f"{key}.{name}", hints[name], value)
        check = check_of(known[name])
        if check is not None:
            check(f"{key}.{name}", args[name])
    spec = cls(index=index, **args)
    spec.check()
    return spec


def _check_value(key: str, annotation: Any, value: Any) -> Any:
    allowed = _flatten_union(annotation)
    if Any in allowed:
        return value
    if value is None and type(None) in allowed:
        return None
    if isinstance(value, dict) and dict in allowed:
        return dict(value)
    if isinstance(value, (list, tuple)) and tuple[int, int] in allowed:
        if len(value) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return (int(value[0]), int(value[1]))
    for kind in (bool, int, float, str):
        if kind not in allowed:
            continue
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    names = " or ".join(_type_name(a) for a in allowed)
    raise ConfigError(f"{key}={value!r} has the wrong type: expected {names}.",
                      hint=f"set {key} to a {names}", config_key=key)


def _flatten_union(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out += _flatten_union(arg)
        return out
    return [annotation]


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    if annotation is dict:
        return "a mapping"
    if annotation == tuple[int, int]:
        return "[int, int]"
    return getattr(annotation, "__name__", str(annotation))
