"""One tiny registry type, used once per kind (models, losses, teacher sources, stages, benchmarks, ...)."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from .errors import FacepipeError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> object mapping with a did-you-mean error on unknown names."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None):
        """Register `obj` under `name`; used bare (`reg.register("x", f)`) or as a decorator."""

        def add(o: T) -> T:
            if name in self._items and self._items[name] is not o:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = o
            return o

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            hint = difflib.get_close_matches(name, list(self._items), n=1)
            msg = f"unknown {self.kind} {name!r}"
            msg += f" (did you mean {hint[0]!r}?)" if hint else f"; known: {', '.join(sorted(self._items))}"
            raise FacepipeError(msg) from None

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def names(self) -> list[str]:
        return list(self._items)

    def items(self):
        return self._items.items()


def registered(registry: Registry[Callable], name: str):
    """Decorator form: `@registered(MODELS, "mobilefacenet")`."""
    return registry.register(name)
