"""A tiny name → class registry shared by forms, inits, optimizer recipes and schedules."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

from .errors import unknown

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps a component's name (its config value and file name) to its class (never to an
    instance: every adapter creates its own components)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise RuntimeError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """The component called ``name``, or a LorakitError listing the known ones."""
        try:
            return self._items[name]
        except KeyError:
            raise unknown(self.kind, name, self._items) from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)


def import_components(package: str, path: Iterable[str]) -> None:
    """Import every module of the component package ``package`` (its ``__path__``), so that each
    registers itself: a new component is one new file."""
    for info in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{info.name}")
