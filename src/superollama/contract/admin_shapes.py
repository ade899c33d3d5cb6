"""The admin API's answers: the JSON the admin routes write (``admin/serialize.py``, ``as_json`` / ``as_dict``
of the records), as JSON Schema."""

from __future__ import annotations

from superollama.contract.model import array, boolean, integer, nullable, number, obj, string

__all__ = [
    "CONNECTION",
    "DEPLOYMENT",
    "EVENT",
    "INSTANCE",
    "ISSUED_KEY",
    "JOB",
    "KEY",
    "NODE",
    "PLACEMENT",
    "PLACEMENT_BODY",
    "VERSION",
    "VERSION_SCALE",
]

_TIME = nullable(string())

VERSION = obj(
    ("name", "model", "tag", "format", "enabled"),
    name=string(),
    model=string(),
    tag=string(),
    format=string(),
    digest=nullable(string()),
    size=nullable(integer()),
    source=nullable(string()),
    enabled=boolean(),
    runtime=nullable(string()),
    created_at=_TIME,
    updated_at=_TIME,
)
INSTANCE = obj(
    ("id", "version", "node", "state"),
    id=string(),
    version=string(),
    node=string(),
    runtime=string(),
    device=string(),
    state=string(),
    pid=nullable(integer()),
    endpoint=string(),
    in_flight=integer(minimum=0),
    memory_bytes=nullable(integer()),
    load_seconds=number(),
    started_at=_TIME,
)
EVENT = obj(
    ("id", "action", "target", "result"),
    id=nullable(integer()),
    created_at=_TIME,
    actor=nullable(string()),
    action=string(),
    target=string(),
    result=string(),
    detail=obj(),
)
CONNECTION = obj(
    ("name", "kind", "url", "enabled", "models"),
    name=string(),
    kind=string(),
    url=string(),
    enabled=boolean(),
    api_key=nullable(string(enum=["env", "stored"])),
    options=obj(),
    healthy=nullable(boolean()),
    error=nullable(string()),
    models=array({}),
    created_at=_TIME,
)
_LABELS = {"type": "object", "additionalProperties": string(), "description": "key=value node labels"}
PLACEMENT = obj(
    ("device", "node", "labels", "spread"),
    device=string(enum=["cpu", "gpu", "any"]),
    node=nullable(string(description="pinned to this node")),
    labels=_LABELS,
    spread=boolean(),  # its replicas on different nodes, whatever the server's policy
)
PLACEMENT_BODY = obj(
    (),
    device=nullable(string(enum=["cpu", "gpu", "any"])),
    node=nullable(string(minLength=1, description="pin to this node (404 if unknown)")),
    labels=nullable({"anyOf": [_LABELS, string(description="k=v,k=v")]}),
    spread=boolean(),
)
_TARGET = obj(
    ("name", "weight"),
    name=string(),
    weight=integer(),
    role=string(),
    replicas=integer(),
    placement=nullable(PLACEMENT),
)
VERSION_SCALE = obj(
    ("version", "replicas", "wanted", "instances"),
    version=string(),
    replicas=integer(minimum=1),
    placement=nullable(PLACEMENT),
    updated_at=nullable(string(format="date-time")),
    wanted=integer(minimum=1, description="instances wanted: the most its scale or deployments ask"),
    instances=array(
        obj(("id", "node", "state"), id=string(), node=string(), state=string(), device=nullable(string()))
    ),
)
DEPLOYMENT = obj(
    ("name", "targets", "enabled"),
    name=string(),
    stage=nullable(string()),
    model=string(),
    targets=array(_TARGET),
    sticky=nullable(string()),
    enabled=boolean(),
    created_at=_TIME,
    updated_at=_TIME,
    rollout=nullable(
        obj(
            ("state", "stable", "target", "weight"),
            state=string(),
            stable=string(),
            target=string(),
            weight=integer(),
        )
    ),  # the running canary rollout, in lists (a deployment's own page has the whole record)
)
JOB = obj(
    ("id", "kind", "target", "state"),
    id=string(),
    kind=string(),
    target=string(),
    state=string(),
    actor=nullable(string()),
    params=obj(),
    progress=obj(),
    result=obj(),
    error=nullable(string()),
    created_at=_TIME,
    updated_at=_TIME,
)
KEY = obj(
    ("id", "name", "prefix", "role", "state"),
    id=string(),
    name=string(),
    prefix=string(),
    role=string(),
    state=string(),
    models=array(string()),
    rpm=nullable(integer()),
    tpm=nullable(integer()),
    model_limits=obj(),
    budget_usd=nullable(number()),
    budget_period=nullable(string()),
    expires_at=_TIME,
    revoked_at=_TIME,
    created_at=_TIME,
    last_used_at=_TIME,
)
ISSUED_KEY = {"allOf": [KEY, obj(("key",), key=string())]}
_GPU = obj(
    ("memory_total", "memory_used"),
    device=nullable(string()),
    index=nullable(integer()),
    name=nullable(string()),
    uuid=nullable(string()),
    memory_total=integer(),
    memory_used=integer(),
    utilization_percent=nullable(number()),
)
NODE = obj(
    ("name", "address", "state", "local", "inventory", "instances"),
    name=string(),
    address=string(),
    state=string(description="ready, cordoned (takes nothing new), draining, down, unknown"),
    local=boolean(),
    last_seen=_TIME,
    inventory=obj(),
    usage=nullable(
        obj(
            ("cpus", "memory_total", "memory_used", "gpus"),
            cpus=integer(minimum=1),
            cpu_percent=nullable(number()),
            load_average=array(number()),
            memory_total=integer(),
            memory_used=integer(),
            memory_available=integer(),
            gpus=array(_GPU),
        )
    ),
    instances=array({"allOf": [INSTANCE, obj(tokens_per_second=nullable(number()))]}),
)
"""A node (``admin/nodes.py``): ``usage`` is measured now for this process's node, null for the others."""
