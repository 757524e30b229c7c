"""One registry implementation for samplers, predictors, correctors and models."""
from typing import Callable, Dict, List, Optional, TypeVar

T = TypeVar("T")


class Registry:
    """A name -> object table with a decorator to fill it.

    >>> samplers = Registry("sampler")
    >>> @samplers.register("ode")
    ... class ODESampler: ...
    >>> samplers.get("ode") is ODESampler
    True
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, object] = {}

    def register(self, name: Optional[str] = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name if name is not None else obj.__name__
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return decorator

    def get(self, name: str):
        if not isinstance(name, str):
            raise TypeError(f"{self.kind} name must be a string, got {type(name).__name__}")
        try:
            return self._items[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; available: {', '.join(self.list())}") from None

    def list(self) -> List[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items
