"""The pages of the web UI and how a shell is rendered: the layout, the page's body, its script.

Templates are plain HTML with ``string.Template`` placeholders (``$name``); every value put into them is
HTML-escaped here. Data never reaches a template: each page's script fetches it from the API.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from functools import cache
from importlib import resources
from string import Template

__all__ = ["PAGES", "Page", "render", "static_file"]


@dataclass(frozen=True)
class Page:
    slug: str
    title: str


PAGES = (
    Page("models", "Models"),
    Page("deployments", "Deployments"),
    Page("instances", "Instances"),
    Page("connections", "Connections"),
    Page("keys", "Keys"),
    Page("usage", "Usage"),
    Page("events", "Events"),
    Page("playground", "Playground"),
)
"""In navigation order. Nodes live on the Instances page: each node's bars, with its instances."""

_STATIC_TYPES = {".css": "text/css", ".js": "text/javascript", ".svg": "image/svg+xml"}


@cache
def _template(name: str) -> Template:
    return Template(resources.files("superollama.ui").joinpath("templates", name).read_text("utf-8"))


def static_file(name: str) -> tuple[bytes, str] | None:
    """A static asset's bytes and content type; None for a name that is not one of ours."""
    suffix = name[name.rfind(".") :] if "." in name else ""
    if "/" in name or "\\" in name or name.startswith(".") or suffix not in _STATIC_TYPES:
        return None
    item = resources.files("superollama.ui").joinpath("static", name)
    if not item.is_file():
        return None
    return item.read_bytes(), _STATIC_TYPES[suffix]


def _nav(current: str) -> str:
    items = []
    for page in PAGES:
        here = ' aria-current="page"' if page.slug == current else ""
        items.append(f'<li><a href="/ui/{page.slug}"{here}>{html.escape(page.title)}</a></li>')
    return "\n".join(items)


def render(
    template: str,
    *,
    title: str,
    current: str = "",
    csrf: str = "",
    role: str = "",
    who: str = "",
    banner: str = "",
    error: str = "",
    version: str = "",
) -> str:
    """A whole page: ``layout.html`` around ``template`` (``signin.html``, ``models.html`` …)."""
    body = _template(template).safe_substitute(error=html.escape(error))
    return _template("layout.html").substitute(
        title=html.escape(title),
        nav=_nav(current) if current else "",
        body=body,
        csrf=html.escape(csrf),
        role=html.escape(role),
        who=html.escape(who),
        banner=f'<p class="banner" role="status">{html.escape(banner)}</p>' if banner else "",
        page=html.escape(current),
        script=f'<script src="/ui/static/{html.escape(current)}.js" defer></script>' if current else "",
        signout="" if not csrf else _SIGNOUT.substitute(csrf=html.escape(csrf)),
        version=html.escape(version),
    )


_SIGNOUT = Template(
    '<form method="post" action="/ui/signout" class="signout">'
    '<input type="hidden" name="csrf_token" value="$csrf"><button type="submit">Sign out</button></form>'
)
