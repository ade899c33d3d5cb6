"""``/docs``: the OpenAPI document rendered as one self-contained HTML page, server-side, no script.

Why our own renderer: it must work offline (no CDN). The one framework-free PyPI package that ships
Swagger UI (``swagger-ui-bundle`` 1.1.0) carries Swagger UI 4.15, which cannot render OpenAPI 3.1; the
packages with a current Swagger UI or Redoc (``drf-spectacular-sidecar``) depend on Django. A page of
tags, operations, parameters and schemas is a few dozen lines of Python and needs no front-end code.
"""

from __future__ import annotations

import html
from typing import Any

import orjson

__all__ = ["render_docs"]

_STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0 auto;max-width:70rem;padding:1rem 2rem;color:#1d2430}
h2{border-bottom:1px solid #ccd;padding-bottom:.2rem;margin-top:2.5rem}
details{border:1px solid #dde;border-radius:6px;margin:.4rem 0;padding:.3rem .7rem}
summary{cursor:pointer}code.m{display:inline-block;min-width:4.2rem;font-weight:bold}
.get{color:#176}.post{color:#264}.put{color:#851}.delete{color:#a22}
pre{background:#f5f6f8;padding:.6rem;overflow:auto;font-size:13px;max-height:28rem}
table{border-collapse:collapse}td,th{border:1px solid #dde;padding:.2rem .5rem;text-align:left}
nav a{margin-right:1rem}
"""


def _esc(value: object) -> str:
    return html.escape(str(value))


def _json(schema: Any) -> str:
    return "<pre>" + _esc(orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode()) + "</pre>"


def _operation(path: str, method: str, op: dict[str, Any]) -> str:
    parts = [
        f'<details id="{_esc(op["operationId"])}"><summary><code class="m {method}">{method.upper()}</code> '
        f"<code>{_esc(path)}</code> — {_esc(op['summary'])}</summary>"
    ]
    if op.get("description"):
        parts.append(f"<p>{_esc(op['description'])}</p>")
    if op["parameters"]:
        rows = "".join(
            f"<tr><td><code>{_esc(p['name'])}</code></td><td>{_esc(p['in'])}</td>"
            f"<td>{'yes' if p.get('required') else ''}</td><td>{_esc(p.get('description', ''))}</td></tr>"
            for p in op["parameters"]
        )
        parts.append(f"<table><tr><th>Parameter</th><th>In</th><th>Required</th><th></th></tr>{rows}</table>")
    for media, body in op.get("requestBody", {}).get("content", {}).items():
        parts.append(f"<h4>Request body ({_esc(media)})</h4>")
        parts.append(_json(body["schema"]))
    parts.append("<h4>Responses</h4>")
    for status, reply in op["responses"].items():
        ref = reply.get("$ref", "")
        label = ref.rsplit("/", 1)[-1] if ref else reply.get("description", "")
        parts.append(f"<p><b>{_esc(status)}</b> {_esc(label)}</p>")
        for content_type, media in reply.get("content", {}).items():
            parts.append(f"<p><code>{_esc(content_type)}</code></p>" + _json(media["schema"]))
    parts.append("</details>")
    return "".join(parts)


def render_docs(document: dict[str, Any]) -> str:
    by_tag: dict[str, list[str]] = {t["name"]: [] for t in document["tags"]}
    for path, methods in document["paths"].items():
        for method, op in methods.items():
            by_tag[op["tags"][0]].append(_operation(path, method, op))
    nav = "".join(f'<a href="#tag-{i}">{_esc(t)}</a>' for i, t in enumerate(by_tag))
    sections = "".join(
        f'<h2 id="tag-{i}">{_esc(tag)}</h2>' + "".join(ops) for i, (tag, ops) in enumerate(by_tag.items())
    )
    components = document["components"]
    info = document["info"]
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{_esc(info['title'])} API</title>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><style>{_STYLE}</style></head>"
        f"<body><h1>{_esc(info['title'])} API <small>{_esc(info['version'])}</small></h1>"
        f"<p>{_esc(info['description'])}</p><p>Machine-readable: <a href=/openapi.json>/openapi.json</a> "
        f"(OpenAPI {_esc(document['openapi'])}).</p><nav>{nav}</nav>{sections}"
        f"<h2>Shared schemas</h2>{_json(components['schemas'])}</body></html>"
    )
