"""This process's upstream credentials, by name: the ``CredentialSource`` every sender reads at send time.

On the primary, the ``ConnectionManager`` fills it from the registry (decrypted once per change, kept in
memory only). Replica workers of ``serve --workers N`` must send to connections too: the primary hands
them the whole table over its control socket (a Unix socket of mode 0600, the same one that carries the
routing snapshot, but in a message field of its own: never inside the snapshot), whenever it changed
(``version``); the replica replaces its own store with it before it applies the snapshot that may refer to
it. So a credential never travels in a ``RoutingTable``, never reaches disk in the clear, and never leaves
this machine's processes.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from superollama.core import Credential

__all__ = ["CredentialStore"]


class CredentialStore:
    """Credentials by name, replaced whole on change (one reference swap: readers never see half)."""

    def __init__(self) -> None:
        self._by_name: Mapping[str, Credential] = MappingProxyType({})
        self._version = 0

    @property
    def version(self) -> int:
        """Goes up by one on every change of content."""
        return self._version

    def credential(self, ref: str) -> Credential | None:
        return self._by_name.get(ref)

    def replace(self, by_name: Mapping[str, Credential]) -> None:
        new = dict(by_name)
        if new != dict(self._by_name):
            self._by_name = MappingProxyType(new)
            self._version += 1

    def to_json(self) -> dict[str, Any]:
        """For the primary → replica control socket only (see the module's docstring)."""
        return {name: credential.to_json() for name, credential in self._by_name.items()}

    def load_json(self, data: Mapping[str, Any]) -> None:
        self.replace({str(name): Credential.from_json(value) for name, value in data.items()})

    def __repr__(self) -> str:  # never the secrets, should a store end up in a log line
        return f"CredentialStore(version={self._version}, names={sorted(self._by_name)})"
