"""Admin request bodies checked against the published contract (``superollama.contract.admin``) before
the handler runs: the schema *is* the validation, so the document cannot promise what the server refuses.

A body that does not fit is a 400 in the admin API's (OpenAI's) envelope naming the field: ``param`` is
its path (``targets.0.weight``). Requests outside ``/admin/`` pass through after one ``startswith``.

An operation's validator is built the first time a body for it arrives, and jsonschema is imported then:
a gateway that is never administered does not carry it (about 2 MB with ``referencing`` and ``rpds``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web

from superollama.contract.model import Operation
from superollama.errors import InvalidRequest
from superollama.gateway import read_json
from superollama.gateway.errors import Check

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

__all__ = ["admin_bodies"]

_PREFIX = "/admin/"


def admin_bodies(operations: Iterable[Operation]) -> Check:
    """The check ``ErrorMiddleware`` runs before the handler: None (nothing to await) for a request
    outside ``/admin/`` or for an operation without a body, else the validation of its JSON body."""
    checks = {
        op.key: _Body(op.body, op.body_required)
        for op in operations
        if op.body is not None and op.path.startswith(_PREFIX)
    }

    def check(request: web.Request) -> Awaitable[None] | None:
        if not request.path.startswith(_PREFIX):
            return None
        resource = request.match_info.route.resource
        body = checks.get((request.method, resource.canonical)) if resource is not None else None
        if body is None or not (body.required or request.can_read_body):
            return None
        return _validate(body, request)

    return check


async def _validate(body: _Body, request: web.Request) -> None:
    _check(body.validator(), await read_json(request))  # aiohttp keeps the body for the handler


class _Body:
    """One operation's body: its schema, and the validator built from it on first use."""

    __slots__ = ("_validator", "required", "schema")

    def __init__(self, schema: Mapping[str, Any], required: bool) -> None:
        self.schema = schema
        self.required = required
        self._validator: Draft202012Validator | None = None

    def validator(self) -> Draft202012Validator:
        if self._validator is None:
            from jsonschema import Draft202012Validator

            self._validator = Draft202012Validator(self.schema)
        return self._validator


def _check(validator: Draft202012Validator, body: dict[str, Any]) -> None:
    from jsonschema.exceptions import best_match

    error = best_match(validator.iter_errors(body))
    if error is None:
        return
    path = [str(p) for p in error.absolute_path]
    if error.validator == "required":
        missing = [
            k for k in error.validator_value if isinstance(error.instance, dict) and k not in error.instance
        ]
        path.append(str(missing[0]) if missing else "")
        raise InvalidRequest(f"'{'.'.join(path)}' is required", param=".".join(path))
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        known = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in known)
        if extra:  # what the handlers said before the schema did: the field's name
            path.append(extra[0])
            raise InvalidRequest(f"unknown field {extra[0]!r}", param=".".join(path))
    field = ".".join(path) or "body"
    raise InvalidRequest(f"'{field}': {_message(error)}", param=field if path else None)


def _message(error: ValidationError) -> str:
    if error.validator == "type":
        wanted = error.validator_value
        return "must be " + (" or ".join(wanted) if isinstance(wanted, list) else str(wanted))
    return str(error.message)
