"""Admin request bodies checked against the published contract (``superollama.contract.admin``) before
the handler runs: the schema *is* the validation, so the document cannot promise what the server refuses.

A body that does not fit is a 400 in the admin API's (OpenAI's) envelope naming the field: ``param`` is
its path (``targets.0.weight``). Requests outside ``/admin/`` pass through after one ``startswith``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from superollama.contract import Operation
from superollama.errors import InvalidRequest
from superollama.gateway import read_json

__all__ = ["body_validation"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_PREFIX = "/admin/"


def body_validation(operations: Iterable[Operation]) -> Middleware:
    """A middleware (inside ``error_middleware``) validating the admin operations' JSON bodies."""
    checks = {
        op.key: (Draft202012Validator(op.body), op.body_required)
        for op in operations
        if op.body is not None and op.path.startswith(_PREFIX)
    }

    @web.middleware
    async def validate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(_PREFIX):
            resource = request.match_info.route.resource
            check = checks.get((request.method, resource.canonical)) if resource is not None else None
            if check is not None:
                validator, required = check
                if required or request.can_read_body:
                    _check(validator, await read_json(request))  # aiohttp keeps the body for the handler
        return await handler(request)

    return validate


def _check(validator: Draft202012Validator, body: dict[str, Any]) -> None:
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
