"""Closed, named registries: configs pick components by name, never by import path.

A config that could name `_target_: os.system` would be code execution; a registry lookup can
only reach what the project registered. Lookups of unknown names list what is known, so the
error is also the documentation. No TensorFlow here: registered values are plain Python
(builders import TensorFlow lazily when called).
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from safetrain.core.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, what: str, config_key: str) -> None:
        self.what = what
        self.config_key = config_key
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@OPTIMIZERS.register("adam")`."""

        def add(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is already registered")
            self._items[name] = item
            return item

        return add

    def get(self, name: str, config_key: str | None = None) -> T:
        try:
            return self._items[name]
        except KeyError:
            key = config_key or self.config_key
            close = difflib.get_close_matches(name, self._items, n=1)
            guess = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{key}={name!r} is not a known {self.what}{guess}. "
                f"Known {self.what}s: {', '.join(sorted(self._items))}.",
                hint=f"set {key} to one of: {', '.join(sorted(self._items))}",
                config_key=key,
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
