"""The admin API's webhooks (``/admin/v1/webhooks*``): signed deliveries of the event log's events, their
delivery log and a ping. Errors in OpenAI's envelope; bodies validated against these schemas first, then
by ``control/webhooks.py`` (the URL's scheme, the event patterns' syntax, the secret's length)."""

from __future__ import annotations

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

TAG = "Admin: webhooks"
P = "/admin/v1/webhooks"
_ID = (Param("id", "path", string(minLength=1), "the webhook's id (wh_…)", required=True),)
_TIME = nullable(string())

HOOK = obj(
    ("id", "url", "events", "description", "enabled"),
    id=string(),
    url=string(),
    events=array(string()),
    description=string(),
    enabled=boolean(),
    created_at=_TIME,
    updated_at=_TIME,
)
_WITH_SECRET = {"allOf": [HOOK, obj(("secret",), secret=string())]}
_MAYBE_SECRET = {"allOf": [HOOK, obj(secret=string(description="only after rotate_secret: shown once"))]}
DELIVERY = obj(
    ("id", "webhook_id", "type", "state", "attempts", "created_at", "updated_at", "payload"),
    id=integer(),
    webhook_id=string(),
    event_id=nullable(integer()),
    type=string(),
    state=string(enum=["pending", "delivered", "failed"]),
    attempts=integer(minimum=0),
    status_code=nullable(integer()),
    error=nullable(string()),
    duration_ms=nullable(number()),
    next_at=_TIME,
    created_at=string(),
    updated_at=string(),
    payload=obj(
        ("id", "type", "created_at", "data"), id=string(), type=string(), created_at=string(), data=obj()
    ),
)
_URL = string(minLength=1, description="http or https, with a host: where deliveries are POSTed")
_EVENTS = {
    "anyOf": [string(), array(string(), minItems=1)],
    "description": "event types or fnmatch patterns (deployment.*); default: every event",
}
_DESCRIPTION = string(maxLength=200)


def _op(method: str, path: str, summary: str, replies: dict[int, Reply], **kw: object) -> Operation:
    return Operation(method, P + path, summary, TAG, Family.OPENAI, replies, **kw)  # type: ignore[arg-type]


OPERATIONS = (
    _op(
        "GET",
        "",
        "List the webhooks (never their secrets)",
        {200: Reply("The webhooks", {JSON: obj(("webhooks",), webhooks=array(HOOK))})},
    ),
    _op(
        "POST",
        "",
        "Add a webhook (its signing secret is in this answer only)",
        {201: Reply("The webhook and its secret", {JSON: _WITH_SECRET})},
        body={
            **obj(
                ("url",),
                url=_URL,
                events=_EVENTS,
                description=_DESCRIPTION,
                secret=string(minLength=16, description="your own signing secret (default: one is made)"),
            ),
            "additionalProperties": False,
        },
    ),
    _op("GET", "/{id}", "One webhook", {200: Reply("The webhook", {JSON: HOOK})}, params=_ID),
    _op(
        "PATCH",
        "/{id}",
        "Change a webhook: url, events, description, enabled; rotate_secret makes a new secret",
        {200: Reply("The webhook (with its new secret after rotate_secret)", {JSON: _MAYBE_SECRET})},
        params=_ID,
        body={
            **obj(
                url=_URL,
                events=_EVENTS,
                description=_DESCRIPTION,
                enabled=boolean(),
                rotate_secret=boolean(),
            ),
            "additionalProperties": False,
        },
    ),
    _op(
        "DELETE",
        "/{id}",
        "Remove a webhook",
        {200: Reply("Removed", {JSON: obj(("deleted",), deleted=string())})},
        params=_ID,
    ),
    _op(
        "GET",
        "/{id}/deliveries",
        "A webhook's delivery log (newest first)",
        {200: Reply("The deliveries", {JSON: obj(("deliveries",), deliveries=array(DELIVERY))})},
        params=(
            *_ID,
            Param("limit", "query", integer(), "at most (default 50)"),
            Param("state", "query", string(enum=["pending", "delivered", "failed"]), "only this state"),
        ),
    ),
    _op(
        "POST",
        "/{id}/ping",
        "Send a webhook.ping now; its first attempt's outcome",
        {200: Reply("The delivery", {JSON: DELIVERY})},
        params=_ID,
    ),
)
