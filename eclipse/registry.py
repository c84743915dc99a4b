"""One small registry type for every kind of named choice (attacks, samplers, defenses, victims,
ECLIPSE modules, profiles). The CLI takes its ``choices=`` and help from these, so adding a method is
one function plus one ``register`` call, and nothing else has to learn its name."""
from __future__ import annotations

from typing import Generic, Iterator, Mapping, TypeVar

T = TypeVar("T")


class UnknownChoice(KeyError, ValueError):
    """A name no registry entry has (a KeyError for mappings, a ValueError for argument checks)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Mapping[str, T], Generic[T]):
    """A read-mostly mapping ``name -> entry`` with one-line descriptions.

    ``register(name, entry, description=...)`` adds an entry (a second one under the same name is an
    error unless ``replace=True``); used as ``@registry.register("name")`` it decorates a function.
    ``get``/``[]`` raise :class:`UnknownChoice` (a KeyError and a ValueError) naming the
    known choices. Lookups ignore case; listings keep the registered spelling.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}
        self._display: dict[str, str] = {}  # lookups ignore case; listings keep the registered spelling

    @staticmethod
    def _key(name: str) -> str:
        return str(name).strip().lower()

    def register(self, name: str, entry: T | None = None, *, description: str | None = None,
                 replace: bool = False):
        """Add ``entry`` under ``name``; without ``entry``, a decorator that registers the function."""
        key = self._key(name)
        if not key or any(c.isspace() for c in key):
            raise ValueError(f"{self.kind} name must be non-empty without spaces, got {name!r}")

        def add(obj: T) -> T:
            if key in self._entries and not replace:
                raise ValueError(f"{self.kind} {key!r} is already registered (pass replace=True to override)")
            self._entries[key] = obj
            self._display[key] = str(name).strip()
            doc = description if description is not None else (getattr(obj, "description", None)
                                                                or (getattr(obj, "__doc__", None) or ""))
            self._descriptions[key] = str(doc).strip().splitlines()[0] if str(doc).strip() else ""
            return obj

        return add if entry is None else add(entry)

    def unregister(self, name: str) -> None:
        """Remove an entry (tests register toy entries and take them out again)."""
        key = self._key(name)
        self._entries.pop(key, None)
        self._descriptions.pop(key, None)
        self._display.pop(key, None)

    def __getitem__(self, name: str) -> T:
        key = self._key(name)
        if key not in self._entries:
            raise UnknownChoice(f"unknown {self.kind} {name!r}; choose from {', '.join(self._display.values()) or '(none registered)'}")
        return self._entries[key]

    def get(self, name: str, default=None):  # type: ignore[override]
        """The entry called ``name``; unlike ``dict.get`` an unknown name without a default is an error."""
        try:
            return self[name]
        except UnknownChoice:
            if default is not None:
                return default
            raise

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._key(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._display.values()))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        """Registered names in registration order (what the CLI offers as ``choices``)."""
        return list(self._display.values())

    def description(self, name: str) -> str:
        """The one-line description of ``name``."""
        self[name]
        return self._descriptions[self._key(name)]

    def help(self, sep: str = "; ") -> str:
        """``name: description`` for every entry, for argparse help and generated README lists."""
        return sep.join(f"{self._display[k]}: {d}" if d else self._display[k] for k, d in self._descriptions.items())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def choices_help(registry: Registry, default: str | None = None) -> str:
    """argparse help text listing a registry's choices (and the default)."""
    text = registry.help()
    return f"{text} (default: {default})" if default is not None else text


