"""What a setting is: a field of a frozen dataclass with a description and bounds, filled from the values
given or the ``SUPEROLLAMA_*`` environment, and checked when the object is made.

Every setting is one scalar: a string, a number, a flag, a path, a secret or one of a few words. Checking
those takes this module, not pydantic: the server process then never imports pydantic (and its compiled
core) for its configuration: 81.8 → 73.1 MB idle (bench/idle.py). A value is taken the way pydantic's lax
mode took it, so an environment that worked before works the same: ``"8"`` for a number, ``"off"`` for a
flag, any string for a path or a secret.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar, get_args, get_origin
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

__all__ = [
    "ENV_PREFIX",
    "Secret",
    "SettingsError",
    "check",
    "described",
    "from_environment",
    "setting",
    "shown",
]

ENV_PREFIX = "SUPEROLLAMA_"

_N = TypeVar("_N", int, float)
_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})


class Secret:
    """A string that never shows itself: ``repr``, ``str`` and ``superollama config`` print stars; the
    code that needs it asks for ``get_secret_value()``."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')" if self._value else "Secret('')"

    def __str__(self) -> str:
        return "**********" if self._value else ""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


class SettingsError(ValueError):
    """One or more settings were given values they cannot take. ``problems``: (field name, why) pairs."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{name}: {why}" for name, why in problems))


def setting(
    default: Any = dataclasses.MISSING,
    *,
    default_factory: Callable[[], Any] | None = None,
    description: str,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
) -> Any:
    """A field of ``Settings``: its default (or a factory for one), what it is for, and its bounds."""
    metadata = {"description": description, "ge": ge, "gt": gt, "le": le}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def described(cls: type) -> Iterator[tuple[str, str]]:
    """Each setting's name and description, in declaration order."""
    for f in dataclasses.fields(cls):
        yield f.name, f.metadata.get("description", "")


def shown(value: Any) -> Any:
    """A setting's value as ``superollama config`` prints it: a secret as stars, and the password of a
    URL (``redis://:password@host``, ``postgresql://user:password@host/db``) as stars too."""
    if isinstance(value, Secret):
        return str(value)
    if isinstance(value, str) and "://" in value and "@" in value:
        parts = urlsplit(value)
        if parts.password is not None:
            user = parts.username or ""
            host = parts.netloc.rpartition("@")[2]
            return urlunsplit(parts._replace(netloc=f"{user}:**********@{host}"))
    return value


def from_environment(cls: type, environ: Mapping[str, str]) -> dict[str, str]:
    """The ``SUPEROLLAMA_<FIELD>`` variables of ``environ`` that name a field, by field name (matched
    without regard to case). Values stay strings; ``check`` converts them."""
    wanted = {f"{ENV_PREFIX}{f.name}".upper(): f.name for f in dataclasses.fields(cls)}
    found: dict[str, str] = {}
    for variable, value in environ.items():
        name = wanted.get(variable.upper())
        if name is not None:
            found[name] = value
    return found


def check(settings: DataclassInstance) -> None:
    """Convert each field of a just-made frozen dataclass to its declared type and check its bounds, in
    place; raise one ``SettingsError`` naming every field that is wrong."""
    kind: type = type(settings)
    hints = _hints(kind)
    problems: list[tuple[str, str]] = []
    for f in dataclasses.fields(settings):
        try:
            value = _convert(getattr(settings, f.name), hints[f.name])
            _bounds(value, f.metadata)
        except (TypeError, ValueError) as exc:
            problems.append((f.name, str(exc)))
            continue
        object.__setattr__(settings, f.name, value)
    if problems:
        raise SettingsError(problems)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The fields' types, resolved once per class (its annotations are strings)."""
    return typing.get_type_hints(cls)


def _convert(value: Any, hint: Any) -> Any:
    origin = get_origin(hint)
    if origin is types.UnionType or origin is typing.Union:
        kinds = [a for a in get_args(hint) if a is not type(None)]
        if value is None:
            return None
        [kind] = kinds  # settings are "X | None" at most
        return _convert(value, kind)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ValueError(f"{value!r}: choose one of {', '.join(map(str, choices))}")
        return value
    convert = _CONVERT.get(hint)
    if convert is None:
        raise TypeError(f"no conversion for {hint!r}")  # a field of a type this module does not know
    return convert(value)


def _to_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"{value!r}: give a string")


def _to_int(value: Any) -> int:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return _number(value, int, "a whole number")


def _to_float(value: Any) -> float:
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return _number(value, float, "a number")


def _number(value: Any, kind: type[_N], what: str) -> _N:
    """``value`` when it is already a ``kind`` (a flag is not a number), or a string that reads as one."""
    if isinstance(value, kind) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return kind(value.strip())
    raise ValueError(f"{value!r}: give {what}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ValueError(f"{value!r}: give true or false (1/0, yes/no, on/off)")


def _to_path(value: Any) -> Path:
    if isinstance(value, Path):
        return value
    if isinstance(value, str):
        return Path(value)
    raise ValueError(f"{value!r}: give a path")


def _to_secret(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    if isinstance(value, str):
        return Secret(value)
    raise ValueError("give a string")  # the value itself is not repeated: it may be a secret


_CONVERT: dict[Any, Callable[[Any], Any]] = {
    str: _to_str,
    int: _to_int,
    float: _to_float,
    bool: _to_bool,
    Path: _to_path,
    Secret: _to_secret,
}


def _bounds(value: Any, metadata: Mapping[str, Any]) -> None:
    if value is None:
        return
    ge, gt, le = metadata.get("ge"), metadata.get("gt"), metadata.get("le")
    if ge is not None and value < ge:
        raise ValueError(f"{value!r}: must be at least {ge}")
    if gt is not None and value <= gt:
        raise ValueError(f"{value!r}: must be more than {gt}")
    if le is not None and value > le:
        raise ValueError(f"{value!r}: must be at most {le}")
