"""The admin API for nodes (``/admin/v1/nodes``): machines with an agent, their capacity and use, and the
admin's say over what is placed on them (cordon, drain, remove); join tokens and the join itself
(``agent --join``). Errors in OpenAI's envelope.

``POST /admin/v1/nodes/join`` (``JOIN_PATH``) is the one admin route an API key does not open: it is
authenticated by a join token (``Authorization: Bearer soj-…``) and by nothing else."""

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
    nullable,
    obj,
    string,
)

__all__ = ["JOIN_PATH", "NODE", "OPERATIONS"]

P = "/admin/v1/nodes"
JOIN_PATH = P + "/join"
TAG = "Admin: nodes"

_NAME = (Param("name", "path", string(minLength=1), "the node's name", required=True),)
_TOKEN_ID = (Param("id", "path", string(minLength=1), "the join token's id or name", required=True),)
_STAMP = nullable(string(format="date-time"))
JOIN_TOKEN = obj(
    ("id", "name", "prefix", "state", "created_at"),
    id=string(),
    name=string(),
    prefix=string(description="the token's visible start (soj-…); the token itself is shown once"),
    state=string(enum=["active", "revoked", "expired"]),
    expires_at=_STAMP,
    revoked_at=_STAMP,
    created_at=_STAMP,
    last_used_at=_STAMP,
    last_node=nullable(string()),
)
ISSUED_JOIN_TOKEN = obj(
    ("token",), token=string(description="shown this once; store it"), **JOIN_TOKEN["properties"]
)
_LABELS: Schema = {
    "type": "object",
    "additionalProperties": string(),
    "description": "key=value labels placement matches",
}
NODE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


def _op(method: str, path: str, summary: str, schema: Schema, description: str = "") -> Operation:
    replies = {200: Reply(summary, {JSON: schema})}
    params = _NAME if "{name}" in path else ()
    return Operation(
        method, P + path, summary, TAG, Family.OPENAI, replies, params=params, description=description
    )


def _token_op(method: str, path: str, summary: str, replies: dict[int, Reply], **kwargs: object) -> Operation:
    params = _TOKEN_ID if "{id}" in path else ()
    return Operation(method, P + path, summary, TAG, Family.OPENAI, replies, params=params, **kwargs)  # type: ignore[arg-type]


OPERATIONS = (
    _token_op(
        "POST",
        "/tokens",
        "Make a join token (shown once) for agent --join",
        {201: Reply("The token and its secret", {JSON: ISSUED_JOIN_TOKEN})},
        body=obj(
            (),
            name=nullable(string(minLength=1)),
            expires_in=nullable({"anyOf": [string(), integer(minimum=1)]}),
        ),
        body_required=False,
    ),
    _token_op(
        "GET",
        "/tokens",
        "The join tokens (never their secrets)",
        {200: Reply("The tokens", {JSON: obj(("tokens",), tokens=array(JOIN_TOKEN))})},
    ),
    _token_op(
        "DELETE",
        "/tokens/{id}",
        "Revoke a join token: no machine joins or rejoins with it any more",
        {200: Reply("The token", {JSON: JOIN_TOKEN})},
    ),
    Operation(
        "POST",
        JOIN_PATH,
        "Join the cluster (authenticated by a join token, not an API key)",
        TAG,
        Family.OPENAI,
        {
            200: Reply(
                "What the node needs to join",
                {
                    JSON: obj(
                        ("node", "address", "labels"),
                        node=string(description="the node's name: its so_node:NAME resource"),
                        address=string(description="the Ray head's control store, host:port"),
                        labels=_LABELS,
                        ray_token=string(
                            description="Ray's token of the head (RAY_AUTH_MODE=token): the node's "
                            "ray start takes it through its environment; absent when the head takes none"
                        ),
                    )
                },
            )
        },
        body=obj(("name",), name=string(pattern=NODE_NAME), labels=nullable(_LABELS)),
        description="401 for a join token that is unknown, revoked or expired; 409 when the server does "
        "not run with --cluster.",
    ),
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
    Operation(
        "POST",
        P + "/{name}/labels",
        "Set and remove a node's labels (placement matches a deployment's labels against them)",
        TAG,
        Family.OPENAI,
        {200: Reply("The node", {JSON: NODE})},
        params=_NAME,
        body=obj((), set=_LABELS, remove=array(string(minLength=1))),
        description="Any node, local included. 400 for a malformed label (param labels), 404 for an "
        "unknown node.",
    ),
    _op(
        "DELETE",
        "/{name}",
        "Forget a node (409 while instances run there: drain it first)",
        obj(("deleted",), deleted=string()),
    ),
)
