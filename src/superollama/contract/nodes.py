"""The admin API for nodes (``/admin/v1/nodes``): machines with an agent, their capacity and use, and the
admin's say over what is placed on them (cordon, drain, remove). Errors in OpenAI's envelope."""

from __future__ import annotations

from superollama.contract.admin_shapes import NODE
from superollama.contract.model import (
    JSON,
    Family,
    Operation,
    Param,
    Reply,
    Schema,
    array,
    integer,
    obj,
    string,
)

__all__ = ["NODE", "OPERATIONS"]

P = "/admin/v1/nodes"
TAG = "Admin: nodes"

_NAME = (Param("name", "path", string(minLength=1), "the node's name", required=True),)


def _op(method: str, path: str, summary: str, schema: Schema, description: str = "") -> Operation:
    replies = {200: Reply(summary, {JSON: schema})}
    params = _NAME if "{name}" in path else ()
    return Operation(
        method, P + path, summary, TAG, Family.OPENAI, replies, params=params, description=description
    )


OPERATIONS = (
    _op("GET", "", "Every node: capacity, use and instances", obj(("nodes",), nodes=array(NODE))),
    _op("GET", "/{name}", "One node", NODE),
    _op(
        "POST",
        "/{name}/cordon",
        "Cordon a node: placement puts nothing new there",
        NODE,
        "Instances already there keep serving. A cordon survives the node's own reports.",
    ),
    _op("POST", "/{name}/uncordon", "Let placement use a node again", NODE),
    _op(
        "POST",
        "/{name}/drain",
        "Cordon a node and stop its instances (drained first): they are placed elsewhere on demand",
        obj(("node", "stopped"), node=NODE, stopped=array(string()), cut=integer(minimum=0)),
    ),
    _op(
        "DELETE",
        "/{name}",
        "Forget a node (409 while instances run there: drain it first)",
        obj(("deleted",), deleted=string()),
    ),
)
