"""Model references: ``[host/][namespace/]model[:tag]``, Ollama's grammar, default tag ``latest``.

Names are case-insensitive and stored lower-case. ``smollm2`` and ``smollm2:latest`` are the same
version; ``hf.co/org/repo:Q4_K_M`` keeps its host and namespace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["DEFAULT_TAG", "ModelRef", "NameError_"]

DEFAULT_TAG = "latest"
_PART = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")
_HOST = re.compile(r"^[a-z0-9][a-z0-9.-]{0,252}(:[0-9]{1,5})?$")
_TAG = re.compile(r"^[a-z0-9_][a-z0-9._-]{0,127}$")


class NameError_(ValueError):
    """Raised for a string that is not a valid model reference."""


@dataclass(frozen=True, order=True)
class ModelRef:
    """A parsed model reference. ``str(ref)`` is the canonical form used as the version's name."""

    model: str
    tag: str = DEFAULT_TAG
    namespace: str | None = None
    host: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        raw = text.strip().lower()
        if not raw:
            raise NameError_("model name is empty")
        path, tag = raw, DEFAULT_TAG
        last = raw.rsplit("/", 1)[-1]
        if ":" in last:
            path, tag = raw[: len(raw) - len(last)] + last.split(":", 1)[0], last.split(":", 1)[1]
        parts = path.split("/")
        if len(parts) > 3:
            raise NameError_(f"invalid model name {text!r}: at most host/namespace/model")
        host = namespace = None
        if len(parts) == 3:
            host, namespace, model = parts
        elif len(parts) == 2:
            namespace, model = parts
        else:
            (model,) = parts
        if not _PART.match(model):
            raise NameError_(
                f"invalid model name {text!r}: "
                "letters, digits, '.', '_' and '-', starting with a letter or digit"
            )
        if namespace is not None and not _PART.match(namespace):
            raise NameError_(f"invalid namespace in {text!r}")
        if host is not None and not _HOST.match(host):
            raise NameError_(f"invalid host in {text!r}")
        if not _TAG.match(tag):
            raise NameError_(f"invalid tag in {text!r}")
        return cls(model=model, tag=tag, namespace=namespace, host=host)

    @property
    def family(self) -> str:
        """The model (family) name without the tag: what groups versions together."""
        return "/".join(p for p in (self.host, self.namespace, self.model) if p)

    @property
    def path_parts(self) -> tuple[str, ...]:
        """Directory parts of this reference under ``manifests/`` (tag last)."""
        return (*(p for p in (self.host, self.namespace) if p), self.model, self.tag)

    def __str__(self) -> str:
        return f"{self.family}:{self.tag}"
