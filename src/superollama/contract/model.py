"""What one operation of the HTTP API is: method, path, summary, body and response schemas, and the error
envelope of its API family. The declarations (one module per family) are plain data; ``document``
turns them into OpenAPI 3.1 and ``validation`` checks admin request bodies against the same schemas.

Schemas are JSON Schema 2020-12 (OpenAPI 3.1's dialect), written with the small helpers below.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "ERROR_SCHEMAS",
    "JSON",
    "NDJSON",
    "SSE",
    "Family",
    "ModelSchema",
    "Operation",
    "Param",
    "Reply",
    "Schema",
    "array",
    "boolean",
    "integer",
    "nullable",
    "number",
    "obj",
    "sse_event",
    "string",
]

Schema = dict[str, Any]


class ModelSchema(Mapping[str, Any]):
    """A pydantic model's JSON Schema (the one the route parses with), made when first read: the model's
    module is imported then, not when the contract is (``core/lazy.py`` says why). Its ``$defs`` are
    renamed ``{prefix}{Model}``: the document hoists them into its components, where the ``$ref`` s
    point."""

    __slots__ = ("_made", "_model", "_module", "_prefix")

    def __init__(self, module: str, model: str, prefix: str) -> None:
        self._module, self._model, self._prefix = module, model, prefix
        self._made: Schema | None = None

    def _schema(self) -> Schema:
        if self._made is None:
            model = getattr(importlib.import_module(self._module), self._model)
            template = f"#/components/schemas/{self._prefix}{{model}}"
            schema: Schema = model.model_json_schema(ref_template=template)
            if "$defs" in schema:
                schema["$defs"] = {self._prefix + name: d for name, d in schema["$defs"].items()}
            self._made = schema
        return self._made

    def __getitem__(self, key: str) -> Any:
        return self._schema()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._schema())

    def __len__(self) -> int:
        return len(self._schema())

    def __repr__(self) -> str:
        return f"ModelSchema({self._module}.{self._model})"


JSON = "application/json"
NDJSON = "application/x-ndjson"
SSE = "text/event-stream"


class Family(StrEnum):
    """Which error envelope an operation answers in (``gateway/errors.py`` renders them)."""

    OPENAI = "openai"  # {"error": {"message", "type", "param", "code"}}; also the admin API's
    OLLAMA = "ollama"  # {"error": "..."}
    ANTHROPIC = "anthropic"  # {"type": "error", "error": {"type", "message"}}


ERROR_SCHEMAS: dict[Family, Schema] = {
    Family.OPENAI: {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                },
            }
        },
    },
    Family.OLLAMA: {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    Family.ANTHROPIC: {
        "type": "object",
        "required": ["type", "error"],
        "properties": {
            "type": {"const": "error"},
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}


def obj(required: tuple[str, ...] = (), /, **properties: Schema) -> Schema:
    """An object with these properties (others allowed: the wire APIs grow)."""
    out: Schema = {"type": "object", "properties": properties}
    if required:
        out["required"] = list(required)
    return out


def sse_event(data: str) -> Schema:
    """One server-sent event as a client reads it (``data`` is ``data``'s lines, here JSON or ``[DONE]``)."""
    return obj(("data",), data=string(description=data), event=string(), id=string(), retry=integer())


def string(**extra: Any) -> Schema:
    return {"type": "string", **extra}


def integer(**extra: Any) -> Schema:
    return {"type": "integer", **extra}


def number(**extra: Any) -> Schema:
    return {"type": "number", **extra}


def boolean() -> Schema:
    return {"type": "boolean"}


def array(items: Schema, **extra: Any) -> Schema:
    return {"type": "array", "items": items, **extra}


def nullable(schema: Schema) -> Schema:
    """``schema`` or null (a type list where it can be: its errors read "must be integer or null")."""
    kind = schema.get("type")
    if isinstance(kind, str) and "const" not in schema:
        out = {**schema, "type": [kind, "null"]}
        if "enum" in schema:
            out["enum"] = [*schema["enum"], None]
        return out
    return {"anyOf": [schema, {"type": "null"}]}


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # "path", "query" or "header"
    schema: Schema
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Reply:
    """A success answer: its schema per content type."""

    description: str
    content: dict[str, Schema] = field(default_factory=dict)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # aiohttp's canonical form: /admin/v1/models/{name}
    summary: str
    tag: str
    family: Family
    replies: dict[int, Reply]
    body: Schema | ModelSchema | None = None
    body_required: bool = True
    body_media: str = JSON  # the request body's content type: multipart/form-data for an upload
    params: tuple[Param, ...] = ()
    upstream: bool = False  # may answer 502/503/504 when a backend fails or is busy
    description: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return self.method, self.path

    @property
    def operation_id(self) -> str:
        words = [w.strip("{}") for w in self.path.strip("/").replace(".", "_").split("/")]
        return "_".join([self.method.lower(), *(w.replace("-", "_") for w in words)])
