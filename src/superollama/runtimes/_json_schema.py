"""A JSON Schema subset compiled into immutable nodes for the JSON guide (``_json_guide``): pure, no torch.

Supported, and guaranteed by constrained decoding:

- ``type``: object, array, string, number, integer, boolean, null, or a list of these;
- objects: ``properties``, ``required``, ``additionalProperties`` (``false``, ``true`` or a schema; absent
  means any extra key, as JSON Schema says);
- arrays: ``items``, ``minItems``, ``maxItems``; strings: ``minLength``, ``maxLength``;
- ``enum``, ``const``, ``anyOf``, a one-element ``allOf``, local ``$ref`` (``#``, ``#/$defs/…``,
  ``#/definitions/…`` or any JSON pointer into the document, recursion included);
- annotations, which constrain nothing: ``title``, ``description``, ``default``, ``examples`` …

Any other keyword (``pattern``, ``format``, ``minimum``, ``oneOf`` …) raises :class:`SchemaError` naming
it: a constraint is never silently dropped. A schema without ``type`` that has object (array, string)
keywords is read as that type. Integers are written without a fraction or exponent.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ANY",
    "ANY_OBJECT",
    "ArrayNode",
    "LiteralNode",
    "Node",
    "NumberNode",
    "ObjectNode",
    "RefNode",
    "SchemaError",
    "StringNode",
    "UnionNode",
    "compile_schema",
]

_ANNOTATIONS = frozenset(
    {
        "title",
        "description",
        "default",
        "examples",
        "$schema",
        "$id",
        "$comment",
        "deprecated",
        "readOnly",
        "writeOnly",
        "$defs",
        "definitions",
    }
)
_OBJECT_KEYS = frozenset({"properties", "required", "additionalProperties"})
_ARRAY_KEYS = frozenset({"items", "minItems", "maxItems"})
_STRING_KEYS = frozenset({"minLength", "maxLength"})
_GENERIC_KEYS = frozenset({"type", "enum", "const", "anyOf", "allOf", "$ref"})
_SUPPORTED = _ANNOTATIONS | _OBJECT_KEYS | _ARRAY_KEYS | _STRING_KEYS | _GENERIC_KEYS
_TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")


class SchemaError(ValueError):
    """The schema uses something the guide cannot guarantee; ``keyword`` and ``path`` say where."""

    def __init__(self, message: str, *, keyword: str | None = None, path: str = "#") -> None:
        super().__init__(f"{message} (at {path})")
        self.keyword = keyword
        self.path = path


@dataclass(frozen=True, eq=False)
class StringNode:
    min_length: int = 0
    max_length: int | None = None


@dataclass(frozen=True, eq=False)
class NumberNode:
    integer: bool = False


@dataclass(frozen=True, eq=False)
class LiteralNode:
    """One of these exact JSON texts (``enum``/``const``, ``true``/``false``, ``null``), as UTF-8."""

    options: tuple[bytes, ...]


@dataclass(frozen=True, eq=False)
class ArrayNode:
    items: Node
    min_items: int = 0
    max_items: int | None = None


@dataclass(frozen=True, eq=False)
class ObjectNode:
    """``additional`` is the schema of keys not in ``properties``; None: no other key is allowed."""

    properties: Mapping[str, Node]
    required: frozenset[str] = frozenset()
    additional: Node | None = None


@dataclass(frozen=True, eq=False)
class UnionNode:
    alternatives: tuple[Node, ...]


@dataclass(frozen=True, eq=False)
class RefNode:
    """A ``$ref``, resolved after compilation (so recursive schemas compile)."""

    pointer: str
    table: dict[str, Node] = field(repr=False)

    @property
    def target(self) -> Node:
        return self.table[self.pointer]


Node = StringNode | NumberNode | LiteralNode | ArrayNode | ObjectNode | UnionNode | RefNode
_STRING = StringNode()
BOOLEAN = LiteralNode((b"true", b"false"))
NULL = LiteralNode((b"null",))
ANY_OBJECT: ObjectNode
ANY: UnionNode


def _any_nodes() -> tuple[UnionNode, ObjectNode]:
    table: dict[str, Node] = {}
    any_ref = RefNode("any", table)
    obj = ObjectNode({}, frozenset(), any_ref)
    value = UnionNode((obj, ArrayNode(any_ref), _STRING, NumberNode(), BOOLEAN, NULL))
    table["any"] = value
    return value, obj


ANY, ANY_OBJECT = _any_nodes()


def compile_schema(schema: Any) -> Node:
    """The node of ``schema`` (a dict, or ``true``), or :class:`SchemaError`."""
    compiler = _Compiler(schema)
    node = compiler.node(schema, "#")
    compiler.resolve_refs()
    return node


def _literal(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()


def _type_of(value: Any) -> set[str]:
    if value is None:
        return {"null"}
    if isinstance(value, bool):
        return {"boolean"}
    if isinstance(value, int):
        return {"integer", "number"}
    if isinstance(value, float):
        return {"number", "integer"} if value.is_integer() else {"number"}
    if isinstance(value, str):
        return {"string"}
    return {"array"} if isinstance(value, list) else {"object"}


class _Compiler:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.table: dict[str, Node] = {}
        self.pending: list[str] = []

    def node(self, schema: Any, path: str) -> Node:
        if schema is True or schema == {}:
            return ANY
        if schema is False:
            raise SchemaError("the schema 'false' admits no value", keyword="false", path=path)
        if not isinstance(schema, Mapping):
            raise SchemaError("a schema must be an object or a boolean", path=path)
        for key in schema:
            if key not in _SUPPORTED:
                raise SchemaError(f"the keyword {key!r} is not supported", keyword=str(key), path=path)
        constraints = {k for k in schema if k not in _ANNOTATIONS}
        for key in ("$ref", "anyOf", "allOf"):
            if key in schema and constraints - {key}:
                others = ", ".join(sorted(constraints - {key}))
                raise SchemaError(f"{key!r} next to other constraints ({others})", keyword=key, path=path)
        if "$ref" in schema:
            return self._ref(schema["$ref"], path)
        if "anyOf" in schema:
            return self._any_of(schema["anyOf"], path)
        if "allOf" in schema:
            parts = schema["allOf"]
            if not isinstance(parts, list) or len(parts) != 1:
                raise SchemaError("'allOf' is supported with one schema only", keyword="allOf", path=path)
            return self.node(parts[0], f"{path}/allOf/0")
        types = self._types(schema, path)
        if "const" in schema or "enum" in schema:
            return self._literals(schema, types, path)
        alternatives = [self._typed(t, schema, path) for t in types]
        return alternatives[0] if len(alternatives) == 1 else UnionNode(tuple(alternatives))

    def _types(self, schema: Mapping[str, Any], path: str) -> list[str]:
        declared = schema.get("type")
        if declared is None:
            if "const" in schema or "enum" in schema:
                return list(_TYPES)
            implied = [
                t
                for t, keys in (("object", _OBJECT_KEYS), ("array", _ARRAY_KEYS), ("string", _STRING_KEYS))
                if keys & schema.keys()
            ]
            if len(implied) > 1:
                raise SchemaError(f"keywords of several types ({implied}) without 'type'", path=path)
            return implied or ["object", "array", "string", "number", "boolean", "null"]
        names = declared if isinstance(declared, list) else [declared]
        if not names or any(n not in _TYPES for n in names):
            raise SchemaError(
                f"'type' must be one of {list(_TYPES)} or a list of them", keyword="type", path=path
            )
        if "number" in names and "integer" in names:
            names = [n for n in names if n != "integer"]
        return list(dict.fromkeys(names))

    def _literals(self, schema: Mapping[str, Any], types: list[str], path: str) -> Node:
        key = "const" if "const" in schema else "enum"
        values = [schema["const"]] if key == "const" else schema["enum"]
        if key == "enum" and (not isinstance(values, list) or not values):
            raise SchemaError("'enum' must be a non-empty list", keyword="enum", path=path)
        if "const" in schema and "enum" in schema:
            values = [v for v in values if v in schema["enum"]]
        allowed = set(types) | ({"integer"} if "number" in types else set())
        try:
            options = [_literal(v) for v in values if _type_of(v) & allowed]
        except ValueError as exc:
            raise SchemaError(
                f"{key!r} holds a value that is not JSON: {exc}", keyword=key, path=path
            ) from exc
        if not options:
            raise SchemaError(f"no value of {key!r} satisfies the schema", keyword=key, path=path)
        return LiteralNode(tuple(dict.fromkeys(options)))

    def _typed(self, kind: str, schema: Mapping[str, Any], path: str) -> Node:
        if kind == "object":
            return self._object(schema, path)
        if kind == "array":
            items = self.node(schema.get("items", True), f"{path}/items")
            low = _count(schema, "minItems", path) or 0
            return ArrayNode(items, low, _bounded(schema, "maxItems", low, path))
        if kind == "string":
            low = _count(schema, "minLength", path) or 0
            return StringNode(low, _bounded(schema, "maxLength", low, path))
        if kind in ("number", "integer"):
            return NumberNode(integer=kind == "integer")
        return BOOLEAN if kind == "boolean" else NULL

    def _object(self, schema: Mapping[str, Any], path: str) -> ObjectNode:
        properties = schema.get("properties", {})
        if not isinstance(properties, Mapping):
            raise SchemaError("'properties' must be an object", keyword="properties", path=path)
        nodes = {str(k): self.node(v, f"{path}/properties/{k}") for k, v in properties.items()}
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise SchemaError("'required' must be a list of names", keyword="required", path=path)
        extra = schema.get("additionalProperties", True)
        additional = None if extra is False else self.node(extra, f"{path}/additionalProperties")
        missing = [r for r in required if r not in nodes]
        if missing and additional is None:
            raise SchemaError(
                f"required {missing} not in 'properties' while additionalProperties is false",
                keyword="required",
                path=path,
            )
        return ObjectNode(nodes, frozenset(required), additional)

    def _any_of(self, parts: Any, path: str) -> Node:
        if not isinstance(parts, list) or not parts:
            raise SchemaError("'anyOf' must be a non-empty list", keyword="anyOf", path=path)
        nodes = tuple(self.node(p, f"{path}/anyOf/{i}") for i, p in enumerate(parts))
        return nodes[0] if len(nodes) == 1 else UnionNode(nodes)

    def _ref(self, ref: Any, path: str) -> Node:
        if not isinstance(ref, str) or not ref.startswith("#"):
            raise SchemaError(
                f"'$ref' may only point inside the schema ('#…'): {ref!r}", keyword="$ref", path=path
            )
        if ref not in self.table and ref not in self.pending:
            self.pending.append(ref)
        return RefNode(ref, self.table)

    def resolve_refs(self) -> None:
        while self.pending:
            ref = self.pending.pop()
            if ref in self.table:
                continue
            self.table[ref] = ANY  # a placeholder while it compiles: a self reference finds an entry
            self.table[ref] = self.node(self._pointer(ref), ref)
        for ref in self.table:
            _check_progress(self.table[ref], ref)

    def _pointer(self, ref: str) -> Any:
        target = self.root
        for raw in ref[1:].split("/")[1:] if ref != "#" else []:
            part = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(target, Mapping) and part in target:
                target = target[part]
            elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
                target = target[int(part)]
            else:
                raise SchemaError(f"'$ref' {ref!r} points nowhere", keyword="$ref", path=ref)
        return target


def _check_progress(node: Node, ref: str, seen: tuple[str, ...] = ()) -> None:
    """Refuse references that reach themselves without reading a character (``A: {$ref: A}``)."""
    if isinstance(node, RefNode):
        if node.pointer in seen:
            raise SchemaError("'$ref' refers to itself without reading a value", keyword="$ref", path=ref)
        _check_progress(node.target, ref, (*seen, node.pointer))
    elif isinstance(node, UnionNode):
        for alternative in node.alternatives:
            _check_progress(alternative, ref, seen)


def _count(schema: Mapping[str, Any], key: str, path: str) -> int | None:
    value = schema.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SchemaError(f"{key!r} must be an integer >= 0", keyword=key, path=path)
    return value


def _bounded(schema: Mapping[str, Any], key: str, low: int, path: str) -> int | None:
    high = _count(schema, key, path)
    if high is not None and high < low:
        raise SchemaError(f"{key!r} is below its minimum", keyword=key, path=path)
    return high
