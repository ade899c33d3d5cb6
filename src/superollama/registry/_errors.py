"""Map SQLAlchemy and driver errors once, at the registry's boundary, to ``RegistryError``."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError, SQLAlchemyError, StatementError

from superollama.errors import RegistryError

__all__ = ["describe", "mapped"]


def describe(exc: BaseException) -> str:
    """The driver's message without the SQL text or its parameters (which may hold user data)."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}".strip()
    if isinstance(exc, StatementError) and exc.orig is not None:
        return f"{type(exc.orig).__name__}: {exc.orig}".strip()
    return f"{type(exc).__name__}: {exc}".strip()


@contextmanager
def mapped(what: str) -> Iterator[None]:
    """Turn a database failure inside the block into ``RegistryError("<what> failed: …")`` (the driver's
    own, too, where a statement goes to the driver directly: ``sqlite3.Error``)."""
    try:
        yield
    except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
        raise RegistryError(f"registry: {what} failed: {describe(exc)}") from exc
