"""The admin API (``/admin/v1/*``): what the CLI and the web UI do. Errors in OpenAI's envelope.

Request bodies here are validated by the server against these schemas (``validation``): a body that does
not fit is a 400 naming the field, before the handler runs.
"""

from __future__ import annotations

from superollama.contract.admin_shapes import (
    CONNECTION,
    DEPLOYMENT,
    EVENT,
    INSTANCE,
    ISSUED_KEY,
    JOB,
    KEY,
    PLACEMENT_BODY,
    VERSION,
    VERSION_SCALE,
)
from superollama.contract.model import (
    JSON,
    NDJSON,
    SSE,
    Family,
    Operation,
    Param,
    Reply,
    Schema,
    array,
    boolean,
    integer,
    nullable,
    number,
    obj,
    sse_event,
    string,
)
from superollama.security.keys import ROLES
from superollama.telemetry.usage import GROUPINGS

__all__ = ["OPERATIONS"]

P = "/admin/v1"
TEXT = string(minLength=1, pattern=r"\S")  # a non-empty name
_OPT_TEXT = nullable(TEXT)

_PAIR = obj(("source", "destination"), source=TEXT, destination=TEXT)
_TARGETS = array(
    {
        "anyOf": [
            string(minLength=1),
            obj(
                ("name",),
                name=string(),
                weight=integer(),
                replicas=integer(),
                role=_OPT_TEXT,
                placement=nullable(PLACEMENT_BODY),
            ),
        ]
    },
    minItems=1,
)
_JOB_MODE = {"stream": boolean(), "background": boolean()}
_JOB_REPLIES = {
    200: Reply(
        "NDJSON progress until the job ends (the default), or its result with stream: false",
        {NDJSON: string(), JSON: obj(("status", "job"), status=string(), job=string())},
    ),
    202: Reply("Started in the background (background: true)", {JSON: JOB}),
}


def _path(name: str, description: str) -> Param:
    return Param(name, "path", string(minLength=1), description, required=True)


def _query(name: str, schema: Schema, description: str) -> Param:
    return Param(name, "query", schema, description)


_NAME = (_path("name", "a version (model:tag)"),)
_DEP = (_path("name", "the deployment"),)
_CONN = (_path("name", "the connection"),)
_JOB = (_path("id", "the job's id"),)
_KEY = (_path("ident", "the key's id, name or prefix"),)


def _op(
    method: str, path: str, summary: str, tag: str, replies: dict[int, Reply], **kwargs: object
) -> Operation:
    return Operation(method, P + path, summary, tag, Family.OPENAI, replies, **kwargs)  # type: ignore[arg-type]


def _one(description: str, schema: Schema) -> dict[int, Reply]:
    return {200: Reply(description, {JSON: schema})}


def _list(key: str, item: Schema) -> dict[int, Reply]:
    return {200: Reply(f"The {key}", {JSON: obj((key,), **{key: array(item)})})}


_FLAG = string(description="true, 1, yes or on")
M, D, C, J, K, S = (
    "Admin: models",
    "Admin: deployments",
    "Admin: connections",
    "Admin: jobs",
    "Admin: keys",
    "Admin: system",
)

OPERATIONS = (
    # -- models and instances ------------------------------------------------------------------------------
    _op(
        "GET",
        "/models",
        "List the model versions",
        M,
        _list("models", VERSION),
        params=(
            _query("enabled", _FLAG, "only enabled (true) or disabled (false) ones"),
            _query("format", string(), "only this format: gguf, safetensors …"),
        ),
    ),
    _op("GET", "/models/{name}", "One version's details", M, _one("The version", VERSION), params=_NAME),
    _op(
        "DELETE",
        "/models/{name}",
        "Delete a version (force: even if a deployment routes to it)",
        M,
        _one("Deleted", obj(("deleted",), deleted=string(), cut=array({}))),
        params=(*_NAME, _query("force", _FLAG, "delete even if deployments route to it")),
    ),
    _op(
        "POST",
        "/models/{name}/enable",
        "Make a version routable",
        M,
        _one("The version", VERSION),
        params=_NAME,
    ),
    _op(
        "POST",
        "/models/{name}/disable",
        "Stop routing to a version",
        M,
        _one("The version", VERSION),
        params=_NAME,
    ),
    _op(
        "POST",
        "/models/{name}/unload",
        "Stop a version's instances",
        M,
        _one("Stopped", obj(("unloaded",), unloaded=boolean())),
        params=_NAME,
    ),
    _op(
        "POST",
        "/copy",
        "Copy a version under a new name (one more manifest)",
        M,
        {201: Reply("The copy", {JSON: VERSION})},
        body=obj(("source", "destination"), source=TEXT, destination=TEXT, runtime=_OPT_TEXT),
    ),
    _op("POST", "/rename", "Rename a version", M, _one("The renamed version", VERSION), body=_PAIR),
    _op(
        "POST",
        "/pull",
        "Pull a version from hf://, ollama://, https:// or file:// (a job)",
        M,
        _JOB_REPLIES,
        body=obj(("source",), source=TEXT, name=_OPT_TEXT, runtime=_OPT_TEXT, node=_OPT_TEXT, **_JOB_MODE),
    ),
    _op(
        "POST",
        "/move",
        "Move a version's files to another storage root (a job)",
        M,
        _JOB_REPLIES,
        body=obj(("name", "to"), name=TEXT, to=TEXT, **_JOB_MODE),
    ),
    _op("GET", "/instances", "The running instances", M, _list("instances", INSTANCE)),
    _op(
        "POST",
        "/instances/move",
        "Move a running instance of a version to another node (serve --cluster)",
        M,
        _one(
            "Where it runs now, where it ran, and how long the move took",
            obj(
                ("version", "instance", "node", "from", "seconds"),
                version=string(),
                instance=string(),
                node=string(),
                **{"from": obj(("instance", "node"), instance=string(), node=string())},
                seconds=number(),
                ready_seconds=number(),
                cut=integer(minimum=0),
            ),
        ),
        body=obj(("name", "node"), name=TEXT, node=TEXT, instance=_OPT_TEXT),
        upstream=True,
        description="A new instance starts on the node (its blobs copied there first) and becomes ready; "
        "then the old one leaves routing, its requests in flight finish (streams included) and it stops. "
        "404: unknown version or node; 409: the node is cordoned, draining or down, or the version runs "
        "nowhere else; 503: it does not fit there (the message names the numbers).",
    ),
    _op(
        "GET",
        "/storage",
        "The storage roots, their free space and versions",
        M,
        _list(
            "roots",
            obj(
                ("name", "path", "usable"),
                name=string(),
                path=string(),
                usable=boolean(),
                free_bytes=nullable(integer()),
                total_bytes=nullable(integer()),
                versions=array(string()),
            ),
        ),
    ),
    # -- deployments ---------------------------------------------------------------------------------------
    _op("GET", "/deployments", "List the deployments", D, _list("deployments", DEPLOYMENT)),
    _op(
        "GET",
        "/deployments/{name}",
        "One deployment, live state and history",
        D,
        _one("The deployment", DEPLOYMENT),
        params=_DEP,
    ),
    _op(
        "PUT",
        "/deployments/{name}",
        "Create or change a deployment (new versions start before traffic moves)",
        D,
        _one("The deployment", DEPLOYMENT),
        params=_DEP,
        body=obj(
            ("targets",),
            targets=_TARGETS,
            stage=_OPT_TEXT,
            sticky=_OPT_TEXT,
            placement=nullable(PLACEMENT_BODY),
        ),
        description="placement ({device, node, labels, spread}) applies to the targets that carry none. "
        "400 for a malformed placement (naming device, node, labels or spread); 404 for a pin to an "
        "unknown node; 409 when another deployment asks a different placement of the same version; 503 "
        "when no node fits it (the message says why).",
    ),
    _op(
        "DELETE",
        "/deployments/{name}",
        "Delete a deployment",
        D,
        _one("Deleted", obj(("deleted",), deleted=string())),
        params=_DEP,
    ),
    _op(
        "POST",
        "/deployments/{name}/split",
        "Change the traffic split",
        D,
        _one("The deployment", DEPLOYMENT),
        params=_DEP,
        body=obj(("targets",), targets=_TARGETS, sticky=_OPT_TEXT),
    ),
    _op(
        "POST",
        "/deployments/{name}/scale",
        "Run N instances (replicas) of one target: new ones join when ready, a surplus drains",
        D,
        _one("The deployment", DEPLOYMENT),
        params=_DEP,
        body=obj(
            ("target", "replicas"),
            target=string(minLength=1),
            replicas=integer(minimum=1),
            placement=nullable(PLACEMENT_BODY),
        ),
        description="placement: the target's new constraint (absent: it keeps its own).",
    ),
    _op(
        "POST",
        "/models/{name}/scale",
        "Run N instances of a version clients name directly, where its placement allows",
        D,
        _one("The version's scale and instances", VERSION_SCALE),
        params=_NAME,
        body=obj(("replicas",), replicas=integer(minimum=1), placement=nullable(PLACEMENT_BODY)),
        description="Kept in the registry (a restart keeps it). placement absent: the one it had. Errors "
        "as for a deployment's placement (400, 404, 409, 503).",
    ),
    _op(
        "POST",
        "/deployments/{name}/promote",
        "Promote a stage (to: production by default)",
        D,
        _one("The deployment", DEPLOYMENT),
        params=_DEP,
        body=obj(to=_OPT_TEXT),
        body_required=False,
    ),
    _op(
        "POST",
        "/deployments/{name}/rollback",
        "Go back to the previous split",
        D,
        _one("The deployment", DEPLOYMENT),
        params=_DEP,
    ),
    _op(
        "POST",
        "/deployments/{name}/pause",
        "Stop routing to a deployment",
        D,
        _one("The deployment", DEPLOYMENT),
        params=_DEP,
    ),
    _op(
        "POST",
        "/deployments/{name}/resume",
        "Route to a deployment again",
        D,
        _one("The deployment", DEPLOYMENT),
        params=_DEP,
    ),
    _op(
        "POST",
        "/apply",
        "Apply a fleet file (models, connections, deployments, keys)",
        D,
        _one("The changes", obj(("applied", "changes"), applied=boolean(), changes=array(obj()), keys=obj())),
        body=obj(("spec",), spec=obj(), dry_run=boolean(), prune=boolean()),
    ),
    _op("GET", "/export", "The fleet as a file apply takes (no secrets)", D, _one("The fleet", obj())),
    # -- connections ---------------------------------------------------------------------------------------
    _op("GET", "/connections", "List the connections", C, _list("connections", CONNECTION)),
    _op(
        "POST",
        "/connections",
        "Add a connection (an Ollama, vLLM, TGI or OpenAI-compatible server)",
        C,
        {201: Reply("The connection", {JSON: CONNECTION})},
        body=obj(
            ("kind", "url"),
            kind=string(minLength=1),
            url=string(minLength=1),
            name=_OPT_TEXT,
            api_key=nullable(string()),
            options=nullable(obj()),
        ),
    ),
    _op("GET", "/connections/{name}", "One connection", C, _one("The connection", CONNECTION), params=_CONN),
    _op(
        "DELETE",
        "/connections/{name}",
        "Remove a connection",
        C,
        _one("Removed", obj(("deleted",), deleted=string())),
        params=_CONN,
    ),
    _op(
        "POST",
        "/connections/{name}/refresh",
        "Discover its models again",
        C,
        _one("The connection", CONNECTION),
        params=_CONN,
        upstream=True,
    ),
    _op(
        "POST",
        "/connections/{name}/enable",
        "Route to a connection",
        C,
        _one("The connection", CONNECTION),
        params=_CONN,
    ),
    _op(
        "POST",
        "/connections/{name}/disable",
        "Stop routing to a connection",
        C,
        _one("The connection", CONNECTION),
        params=_CONN,
    ),
    _op(
        "POST",
        "/connections/{name}/pull",
        "Pull a model onto the connected server",
        C,
        {
            200: Reply(
                "NDJSON progress, or the connection with stream: false",
                {
                    NDJSON: string(),
                    JSON: obj(("status", "connection"), status=string(), connection=CONNECTION),
                },
            )
        },
        params=_CONN,
        body=obj(("model",), model=TEXT, stream=boolean()),
        upstream=True,
    ),
    _op(
        "POST",
        "/connections/{name}/copy",
        "Copy a model on the connected server",
        C,
        _one("The connection", CONNECTION),
        params=_CONN,
        body=_PAIR,
        upstream=True,
    ),
    _op(
        "DELETE",
        "/connections/{name}/models/{model}",
        "Delete a model on the connected server",
        C,
        _one("The connection", CONNECTION),
        params=(*_CONN, _path("model", "the model there")),
        upstream=True,
    ),
    # -- jobs ----------------------------------------------------------------------------------------------
    _op(
        "GET", "/jobs", "Recent jobs", J, _list("jobs", JOB), params=(_query("limit", integer(), "at most"),)
    ),
    _op("GET", "/jobs/{id}", "One job", J, _one("The job", JOB), params=_JOB),
    _op(
        "GET",
        "/jobs/{id}/watch",
        "A job's progress as NDJSON until it ends",
        J,
        {200: Reply("Progress", {NDJSON: string()})},
        params=_JOB,
    ),
    _op("POST", "/jobs/{id}/cancel", "Cancel a job", J, _one("The job", JOB), params=_JOB),
    # -- keys ----------------------------------------------------------------------------------------------
    _op("GET", "/keys", "List the API keys (never their secrets)", K, _list("keys", KEY)),
    _op(
        "POST",
        "/keys",
        "Create an API key (its secret is shown once)",
        K,
        {201: Reply("The key and its secret", {JSON: ISSUED_KEY})},
        body=obj(
            ("name",),
            name=TEXT,
            role=nullable(string(enum=list(ROLES))),
            models=nullable({"anyOf": [string(), array(string())]}),
            rpm=nullable(integer()),
            tpm=nullable(integer()),
            model_limits=nullable(obj()),
            budget_usd=nullable(number()),
            budget_period=nullable(string()),
            expires_in=nullable({"anyOf": [string(), number()]}),
            expires_at=nullable(string()),
        ),
    ),
    _op("GET", "/keys/{ident}", "One key, with its spend this period", K, _one("The key", KEY), params=_KEY),
    _op("POST", "/keys/{ident}/revoke", "Revoke a key", K, _one("The key", KEY), params=_KEY),
    _op(
        "POST",
        "/keys/{ident}/rotate",
        "Replace a key's secret",
        K,
        _one("The key and its new secret", ISSUED_KEY),
        params=_KEY,
    ),
    # -- system --------------------------------------------------------------------------------------------
    _op(
        "GET",
        "/events",
        "The event log (newest first)",
        S,
        _list("events", EVENT),
        params=(
            _query("limit", integer(), "at most"),
            _query("since", string(), "24h, 30m, 7d or ISO time"),
            _query("target", string(), "only this target"),
            _query("action", string(), "only this action"),
        ),
    ),
    _op(
        "GET",
        "/events/stream",
        "The event log as server-sent events",
        S,
        {200: Reply("Events", {SSE: sse_event("an event of the log, as JSON")})},
        params=(
            _query("backlog", integer(), "past events first"),
            _query("target", string(), "only this target"),
            _query("action", string(), "only this action"),
            _query("timeout", number(exclusiveMinimum=0), "end the stream after this many seconds"),
        ),
    ),
    _op(
        "GET",
        "/usage",
        "Usage per model, key, deployment, day or request",
        S,
        {
            200: Reply(
                "The rows",
                {
                    JSON: obj(
                        ("by", "since", "rows"),
                        by=string(),
                        since=string(),
                        until=nullable(string()),
                        rows=array(obj()),
                    ),
                    "text/csv": string(),
                },
            )
        },
        params=(
            _query("by", string(enum=[*GROUPINGS, "request"]), "grouping"),
            _query("format", string(enum=["json", "csv"]), "json or csv"),
            _query("since", string(), "24h, 30m, 7d or ISO time"),
            _query("until", string(), "ISO time"),
        ),
    ),
    _op("GET", "/gateways", "The gateway processes sharing this registry", S, _one("The gateways", obj())),
    _op("GET", "/resilience", "Breakers, retry budget and route limits", S, _one("Their state", obj())),
    _op(
        "GET",
        "/plugins",
        "The plugins this server loaded, and those that failed with their error",
        S,
        _one(
            "The plugins",
            obj(
                ("object", "data"),
                object=string(const="list"),
                data=array(
                    obj(
                        ("name", "hooks"),
                        name=string(),
                        version=nullable(string()),
                        hooks=array(string()),
                        error=nullable(string()),
                    )
                ),
            ),
        ),
    ),
)
