"""A small name -> object registry (datasets, models, methods, attacks, augmentations)."""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

from robustmaxup.errors import UserError, did_you_mean

T = TypeVar("T")


def _identity(obj: object) -> tuple[str, str]:
    return getattr(obj, "__module__", ""), getattr(obj, "__qualname__", repr(obj))


class Registry(Generic[T]):
    """Maps names to objects; ``get`` on an unknown name raises a :class:`UserError` listing the
    known names, so a typo on the command line yields one helpful line.

    Registering a name twice is an error, unless it is the same object again by module and
    name (a module or notebook cell run a second time): that replaces it.

    Example::

        FRUIT = Registry("fruit")

        @FRUIT.register("apple")
        def apple() -> str: ...

        FRUIT.get("apple")()

    (Each registry documents what its entries are: ``MODELS``' builders take ``(num_classes,
    in_channels)``; see :mod:`robustmaxup.models`.)
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            old = self._items.get(name)
            if old is not None and _identity(old) != _identity(obj):
                raise UserError(f"{self.kind} {name!r} is registered twice ({_identity(old)[1]} and "
                                f"{_identity(obj)[1]}); choose another name")
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
