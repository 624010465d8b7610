"""Checks declared on the layer-spec field they belong to, not applied by field name.

A layer spec's dataclass field says what its value must satisfy beyond its type:

    filters: int = positive(32)
    padding: str = one_of(PADDINGS, "valid")
    rate: float = fraction(0.5)

models.parse runs the check after the type check, with the config path in the message. Fields
without one (a custom layer's `axis: int = -1`, `offset: int = 0`) are checked for type only.
Plain Python.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from safetrain.core.errors import ConfigError


@dataclass(frozen=True)
class FieldCheck:
    """`ok(value)` or a ConfigError: `says` finishes "KEY=VALUE ...", `fix(key)` is the hint."""

    ok: Callable[[Any], bool]
    says: str
    fix: Callable[[str], str]

    def __call__(self, key: str, value: Any) -> None:
        if value is not None and not self.ok(value):
            shown = repr(value) if isinstance(value, str) else value
            raise ConfigError(f"{key}={shown} {self.says}.", hint=self.fix(key), config_key=key)


def _positive(value: Any) -> bool:
    values = value if isinstance(value, tuple) else (value,)
    return all(v >= 1 for v in values)


POSITIVE = FieldCheck(_positive, "must be a positive integer", lambda key: f"set {key} >= 1")
FRACTION = FieldCheck(lambda v: 0.0 <= v < 1.0, "must be in [0, 1)", lambda key: f"set {key}=0.3")


def check_of(f: dataclasses.Field) -> FieldCheck | None:
    return f.metadata.get("check")


def positive(default: Any) -> Any:
    """An integer (or an [int, int] pair) of at least 1: sizes, counts, strides."""
    return dataclasses.field(default=default, metadata={"check": POSITIVE})


def fraction(default: float) -> Any:
    """A rate in [0, 1): dropout."""
    return dataclasses.field(default=default, metadata={"check": FRACTION})


def one_of(choices: tuple[str, ...], default: str | None) -> Any:
    """One of `choices` (or null where the type allows it): activations, paddings, merge modes."""
    listed = ", ".join(choices)
    check = FieldCheck(lambda v: v in choices, f"is not one of: {listed}",
                       lambda key: f"set {key} to one of: {listed}")
    return dataclasses.field(default=default, metadata={"check": check})
