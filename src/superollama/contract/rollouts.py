"""The admin API's canary rollouts and shadow targets (``/admin/v1/deployments/{name}/rollout`` and
``…/shadow``). Errors in OpenAI's envelope; bodies validated against these schemas first, then by
``admin/rollouts.py`` (durations, rates and latency bounds parsed, the deployment's state checked)."""

from __future__ import annotations

from superollama.contract.admin_shapes import DEPLOYMENT
from superollama.contract.model import (
    JSON,
    Family,
    Operation,
    Param,
    Reply,
    array,
    boolean,
    integer,
    nullable,
    number,
    obj,
    string,
)

__all__ = ["OPERATIONS"]

TAG = "Admin: rollouts"
P = "/admin/v1/deployments/{name}"
_DEP = (Param("name", "path", string(minLength=1), "the deployment (name or name@stage)", required=True),)
_TIME = nullable(string())
_NUMBER_OR_TEXT = {"type": ["number", "string"]}
_WHOLE_OR_TEXT = {"type": ["integer", "string"], "description": 'a whole number ("10" and "10%" too)'}

_POLICY = obj(
    ("canary", "step", "every", "max_error_rate", "relative", "min_samples"),
    canary=integer(),
    step=integer(),
    every=number(),
    max_error_rate=number(),
    max_p95=nullable(number()),
    relative=boolean(),
    min_samples=integer(),
    latency_slack=number(),
)
_STATS = obj(
    ("requests", "errors"),
    requests=integer(minimum=0),
    errors=integer(minimum=0),
    error_rate=number(),
    p95_ms=nullable(number()),
    gateways=integer(minimum=0),
    shadow_dropped=integer(minimum=0),
)
ROLLOUT = obj(
    ("deployment", "state", "stable", "target", "weight", "policy", "decisions"),
    deployment=string(),
    state=string(),
    stable=string(),
    target=string(),
    weight=integer(),
    policy=_POLICY,
    decisions=array(
        obj(
            ("at", "action", "weight", "reason"),
            at=string(),
            action=string(),
            weight=integer(),
            reason=string(),
            actor=string(),
        )
    ),
    next_at=string(),
    started_at=_TIME,
    updated_at=_TIME,
)
_SAMPLE = obj(
    ("target", "primary_target", "exact"),
    at=_TIME,
    target=string(),
    primary_target=string(),
    primary_latency_ms=number(),
    shadow_latency_ms=nullable(number()),
    primary_length=integer(),
    shadow_length=nullable(integer()),
    exact=boolean(),
    similarity=nullable(number()),
    error=nullable(string()),
)
_SHADOW = obj(
    ("shadow", "dropped", "samples", "failed", "last"),
    shadow=nullable(obj(("target", "percent"), target=string(), percent=integer())),
    dropped=integer(minimum=0),
    samples=integer(minimum=0),
    failed=integer(minimum=0),
    exact_match_rate=nullable(number()),
    primary_latency_ms=nullable(number()),
    shadow_latency_ms=nullable(number()),
    primary_length=nullable(number()),
    shadow_length=nullable(number()),
    similarity=nullable(number()),
    last=array(_SAMPLE),
)
_TO = string(minLength=1, description="a version, or a connection's model (connection/model)")


def _op(method: str, path: str, summary: str, replies: dict[int, Reply], **kw: object) -> Operation:
    kw.setdefault("params", _DEP)
    return Operation(method, P + path, summary, TAG, Family.OPENAI, replies, **kw)  # type: ignore[arg-type]


OPERATIONS = (
    _op(
        "POST",
        "/rollout",
        "Start a canary rollout: traffic moves step by step while the canary stays within bounds",
        {201: Reply("The rollout, running", {JSON: ROLLOUT})},
        body=obj(
            ("to",),
            to=_TO,
            canary=_WHOLE_OR_TEXT,
            step=_WHOLE_OR_TEXT,
            every={**_NUMBER_OR_TEXT, "description": "seconds, or a duration: 30s, 2m"},
            max_error_rate={**_NUMBER_OR_TEXT, "description": "a share (0.01) or a percentage: 1%"},
            max_p95_latency={
                "type": ["number", "string", "null"],
                "description": "+20% (against the stable target's p95), 800ms or seconds; null: none",
            },
            min_samples=_WHOLE_OR_TEXT,
        ),
    ),
    _op(
        "GET",
        "/rollout",
        "A deployment's rollout (running or last): state, decisions and live per-target stats",
        {
            200: Reply(
                "The rollout",
                {
                    JSON: {
                        "allOf": [
                            ROLLOUT,
                            obj(("live",), live={"type": "object", "additionalProperties": _STATS}),
                        ]
                    }
                },
            )
        },
    ),
    _op(
        "POST",
        "/rollout/abort",
        "Abort a running rollout: back to the stable target alone",
        {200: Reply("The rollout, aborted", {JSON: ROLLOUT})},
    ),
    _op(
        "PUT",
        "/shadow",
        "Mirror a share of a deployment's requests to a shadow target (never an answer)",
        {200: Reply("The deployment", {JSON: DEPLOYMENT})},
        body=obj(("to",), to=_TO, percent=integer(minimum=0, maximum=100, description="default 5; 0: off")),
    ),
    _op(
        "DELETE",
        "/shadow",
        "Stop mirroring",
        {200: Reply("The deployment", {JSON: DEPLOYMENT})},
    ),
    _op(
        "GET",
        "/shadow",
        "How the shadow target's answers compare (aggregates and the last samples)",
        {200: Reply("The comparisons", {JSON: _SHADOW})},
        params=(*_DEP, Param("last", "query", integer(), "how many recent samples (0 to 500, default 10)")),
    ),
)
