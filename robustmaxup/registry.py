"""A small name -> object registry (datasets, models, methods, attacks, augmentations)."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from robustmaxup.errors import UserError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects; ``get`` on an unknown name raises a :class:`UserError` listing the
    known names, so a typo on the command line yields one helpful line.

    Example::

        MODELS = Registry("model")

        @MODELS.register("digits_cnn")
        def digits_cnn(num_classes: int) -> nn.Module: ...

        MODELS.get("digits_cnn")(10)
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UserError(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}{did_you_mean(name, self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
