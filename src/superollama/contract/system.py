"""Everything that is not a client or admin API: health, metrics, this contract, and the web UI's pages."""

from __future__ import annotations

from superollama.contract.model import JSON, Family, Operation, Param, Reply, obj, string

__all__ = ["OPERATIONS", "UI_PAGES"]

UI_PAGES = (
    "models",
    "deployments",
    "instances",
    "connections",
    "keys",
    "usage",
    "events",
    "playground",
)  # ui/pages.py
_HTML = "text/html"
_PAGE = {200: Reply("The page", {_HTML: string()}), 303: Reply("Sign in first (or go to the models page)")}


def _ui(method: str, path: str, summary: str, **kwargs: object) -> Operation:
    replies = kwargs.pop("replies", _PAGE)
    return Operation(method, path, summary, "Web UI", Family.OPENAI, replies, **kwargs)  # type: ignore[arg-type]


_FORM = {
    "type": "object",
    "properties": {"key": string(), "next": string(), "csrf": string()},
}

OPERATIONS = (
    Operation(
        "GET",
        "/health",
        "Liveness: the process answers",
        "System",
        Family.OPENAI,
        {
            200: Reply(
                "Alive", {JSON: obj(("status", "version"), status=string(const="ok"), version=string())}
            )
        },
    ),
    Operation(
        "GET",
        "/",
        "A plain-text greeting",
        "System",
        Family.OPENAI,
        {200: Reply("Running", {"text/plain": string()})},
    ),
    Operation(
        "GET",
        "/metrics",
        "Prometheus metrics (text exposition format)",
        "System",
        Family.OPENAI,
        {200: Reply("The metrics", {"text/plain": string()})},
    ),
    Operation(
        "GET",
        "/openapi.json",
        "This OpenAPI 3.1 document",
        "System",
        Family.OPENAI,
        {200: Reply("The document", {JSON: obj(("openapi", "paths"), openapi=string(), paths=obj())})},
    ),
    Operation(
        "GET",
        "/docs",
        "The API reference, rendered as HTML",
        "System",
        Family.OPENAI,
        {200: Reply("The page", {_HTML: string()})},
    ),
    _ui("GET", "/ui", "The web UI (redirects to its models page)"),
    _ui("GET", "/ui/", "The web UI (redirects to its models page)"),
    _ui("GET", "/ui/signin", "The sign-in page"),
    _ui(
        "POST",
        "/ui/signin",
        "Sign in with an admin or viewer API key (a session cookie)",
        replies={**_PAGE, 303: Reply("Signed in: on to the page asked for")},
        body={"type": "object"},
        body_required=False,
        description="An HTML form (application/x-www-form-urlencoded): key, next.",
    ),
    _ui(
        "POST",
        "/ui/signout",
        "Sign out",
        replies={303: Reply("Signed out"), 403: Reply("Refused (CSRF)", {_HTML: string()})},
    ),
    _ui(
        "GET",
        "/ui/static/{name}",
        "A static asset of the web UI",
        replies={200: Reply("The file", {"text/css": string(), "application/javascript": string()})},
        params=(Param("name", "path", string(minLength=1), "the file's name", required=True),),
    ),
    *(_ui("GET", f"/ui/{slug}", f"The {slug} page") for slug in UI_PAGES),
)
