"""The OpenAPI 3.1 document, built from the declarations (``OPERATIONS``) and nothing else.

Every operation answers its API family's error envelope for any 4xx; operations that reach a backend also
declare 502 (bad upstream answer), 503 (busy, loading, no instance: ``Retry-After``) and 504 (timeout).
Pydantic models' ``$defs`` (the Anthropic and Responses request bodies) are hoisted into
``components.schemas``, where their ``$ref`` s point.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from superollama.contract.model import ERROR_SCHEMAS, JSON, Family, Operation, Schema

__all__ = ["openapi_document"]

_PATH_PARAM = re.compile(r"\{(\w+)\}")
_UPSTREAM = {
    "502": "The backend failed",
    "503": "Busy or not ready (see Retry-After)",
    "504": "The backend timed out",
}


def openapi_document(operations: Iterable[Operation], version: str) -> dict[str, Any]:
    schemas: dict[str, Schema] = {f"{f.value.capitalize()}Error": s for f, s in ERROR_SCHEMAS.items()}
    responses = {
        f"{f.value.capitalize()}Error": {
            "description": f"An error in the {f.value} envelope",
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{f.value.capitalize()}Error"}}},
        }
        for f in Family
    }
    paths: dict[str, dict[str, Any]] = {}
    tags: dict[str, None] = {}
    for op in operations:
        tags[op.tag] = None
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Super Ollama",
            "version": version,
            "description": "A model gateway: the OpenAI, Ollama, Anthropic Messages and Responses APIs for "
            "clients, and the admin API the CLI and the web UI use. Authenticate with "
            "`Authorization: Bearer <key>` (or `x-api-key`) when auth is on.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "tags": [{"name": t} for t in tags],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": responses,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"},
            },
        },
        "security": [{}, {"bearer": []}, {"apiKey": []}],
    }


def _operation(op: Operation, schemas: dict[str, Schema]) -> dict[str, Any]:
    error = {"$ref": f"#/components/responses/{op.family.value.capitalize()}Error"}
    out: dict[str, Any] = {
        "operationId": op.operation_id,
        "summary": op.summary,
        "tags": [op.tag],
        "parameters": _parameters(op),
        "responses": {
            **{
                str(status): {
                    "description": reply.description,
                    **(
                        {"content": {ct: {"schema": s} for ct, s in reply.content.items()}}
                        if reply.content
                        else {}
                    ),
                }
                for status, reply in op.replies.items()
            },
            "4XX": error,
            **(
                {code: {**error, "description": text} for code, text in _UPSTREAM.items()}
                if op.upstream
                else {}
            ),
        },
    }
    if op.description:
        out["description"] = op.description
    if op.body is not None:
        body = dict(op.body)
        for name, definition in body.pop("$defs", {}).items():
            _hoist(schemas, name, definition)
        out["requestBody"] = {"required": op.body_required, "content": {op.body_media: {"schema": body}}}
    return out


def _hoist(schemas: dict[str, Schema], name: str, definition: Schema) -> None:
    if schemas.get(name, definition) != definition:
        raise ValueError(f"two different schemas are both named {name}")
    schemas[name] = definition


def _parameters(op: Operation) -> list[dict[str, Any]]:
    declared = {p.name for p in op.params}
    out = [
        {"name": p.name, "in": p.where, "required": p.required or p.where == "path", "schema": p.schema}
        | ({"description": p.description} if p.description else {})
        for p in op.params
    ]
    for name in _PATH_PARAM.findall(op.path):
        if name not in declared:
            out.append(
                {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
            )
    return out
