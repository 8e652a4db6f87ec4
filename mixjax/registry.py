"""Classes selectable by their ``name`` attribute: the registry mixers and Methods share.

A leaf module (it imports nothing from mixjax), so any layer can keep one.
"""

from __future__ import annotations


class ClassRegistry:
    """``register`` (a class decorator), ``names()`` and ``get(name) -> class`` for one
    ``kind`` of class (the word the error messages use: "mixer", "method")."""

    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, type] = {}

    def register(self, cls: type) -> type:
        """Class decorator: makes ``cls`` available as ``get(cls.name)``."""
        if not cls.name:
            raise ValueError(f"{cls.__qualname__} needs a class attribute `name`")
        if cls.name in self._classes and self._classes[cls.name] is not cls:
            raise ValueError(f"{self.kind} name {cls.name!r} is registered twice")
        self._classes[cls.name] = cls
        return cls

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type:
        if name not in self._classes:
            raise KeyError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._classes[name]
