"""Upstream API keys at rest: never stored in the clear.

A key is kept either as a reference to an environment variable (``env:NAME``, read when used) or
encrypted with this node's secret (``enc:<Fernet token>``; the secret is ``HOME/secret.key``, mode 0600,
created on first use). The secrets of a connection's URL (user info, ``?api-key=…``) are always encrypted
(``encrypt``). ``cryptography`` (6 MB resident) is imported only when a key is sealed or opened.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from superollama.errors import InvalidRequest, SuperOllamaError

if TYPE_CHECKING:
    from cryptography.fernet import Fernet

__all__ = ["SecretBox"]

_KEY_FILE = "secret.key"


class SecretBox:
    def __init__(self, key_file: Path) -> None:
        self._key_file = key_file
        self._fernet: Fernet | None = None

    @classmethod
    def of_home(cls, home: Path) -> SecretBox:
        """The node's box: its key is ``HOME/secret.key``."""
        return cls(home / _KEY_FILE)

    def encrypt(self, value: str) -> str:
        """``enc:…`` for ``value``, whatever it looks like (``open`` gives it back)."""
        return "enc:" + self._box().encrypt(value.encode()).decode()

    def seal(self, value: str | None) -> str | None:
        """What to store for a key: ``env:NAME`` stays a reference; a literal key is encrypted."""
        if not value:
            return None
        if value.startswith("env:"):
            if not value[4:]:
                raise InvalidRequest("'env:' needs a variable name, e.g. env:OPENAI_API_KEY", param="api_key")
            return value
        return self.encrypt(value)

    def open(self, stored: str | None) -> str | None:
        """The key to send upstream now (None: none configured, or the variable is unset)."""
        if not stored:
            return None
        if stored.startswith("env:"):
            return os.environ.get(stored[4:]) or None
        if stored.startswith("enc:"):
            from cryptography.fernet import InvalidToken

            try:
                return self._box().decrypt(stored[4:].encode()).decode()
            except InvalidToken as exc:
                raise SuperOllamaError(f"cannot decrypt a stored key with {self._key_file}") from exc
        raise SuperOllamaError("unknown stored secret format")

    def _box(self) -> Fernet:
        if self._fernet is None:
            from cryptography.fernet import Fernet

            if not self._key_file.exists():
                self._key_file.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(self._key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(Fernet.generate_key())
            self._fernet = Fernet(self._key_file.read_bytes().strip())
        return self._fernet
