"""The web UI's security against a real server: CSRF, sessions, roles, no key material in the page.

A session is a signed cookie (HttpOnly, SameSite=Strict) naming an admin or viewer key; every change made
with it needs the page's CSRF token; signing out, or revoking the key, ends it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest
from tests.e2e.conftest import ServerProcess, UiServer
from tests.e2e.ui_browser import PAGES, signed_in

_CSRF = re.compile(r'<meta name="csrf-token" content="([^"]+)">')


@contextmanager
def sign_in(ui: UiServer, key: str) -> Iterator[httpx.Client]:
    """An HTTP client holding a session made with ``key`` (asserting that sign-in worked)."""
    with httpx.Client(base_url=ui.url, timeout=60) as client:
        done = client.post("/ui/signin", data={"key": key})
        assert done.status_code == 303 and done.headers["location"] == "/ui/models", done.text
        cookie = done.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie, cookie
        assert "Secure" not in cookie  # plain HTTP here: Secure is set when the request came over TLS
        yield client


def csrf_of(client: httpx.Client) -> str:
    page = client.get("/ui/keys")
    assert page.status_code == 200, page.text
    match = _CSRF.search(page.text)
    assert match is not None, page.text[:500]
    return match.group(1)


def test_every_page_needs_a_session(ui_server: UiServer) -> None:
    with httpx.Client(base_url=ui_server.url, timeout=30) as anonymous:
        for slug in PAGES:
            page = anonymous.get(f"/ui/{slug}")
            assert page.status_code == 303 and page.headers["location"] == f"/ui/signin?next=/ui/{slug}", slug
        assert anonymous.get("/admin/v1/models").status_code == 401
    forged_cookie = {"so_session": "v1.key_x.so-x.9999999999.n.mac"}
    with httpx.Client(base_url=ui_server.url, timeout=30, cookies=forged_cookie) as forged:
        refused = forged.get("/admin/v1/models")
        assert refused.status_code == 401, refused.text


def test_changes_without_the_csrf_token_are_refused(ui_server: UiServer) -> None:
    with sign_in(ui_server, ui_server.admin_key) as client:
        assert client.get("/admin/v1/keys").status_code == 200  # reads need no token
        refused = client.post("/admin/v1/keys", json={"name": "no-token"})
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed", refused.text
        wrong = client.post("/admin/v1/keys", json={"name": "wrong"}, headers={"X-CSRF-Token": "x" * 43})
        assert wrong.status_code == 403, wrong.text
        chat = client.post("/v1/chat/completions", json={"model": "smollm2:135m", "messages": []})
        assert chat.status_code == 403, chat.text  # the client APIs too, when called with the session
        names = [k["name"] for k in client.get("/admin/v1/keys").json()["keys"]]
        assert "no-token" not in names and "wrong" not in names
        token = {"X-CSRF-Token": csrf_of(client)}
        made = client.post("/admin/v1/keys", json={"name": "with-token"}, headers=token)
        assert made.status_code == 201, made.text


def test_a_user_or_metrics_key_cannot_sign_in(ui_server: UiServer) -> None:
    for role in ("user", "metrics"):
        key = ui_server.key(role, f"no-ui-{role}")
        with httpx.Client(base_url=ui_server.url, timeout=30) as client:
            refused = client.post("/ui/signin", data={"key": key})
            assert refused.status_code == 403 and "set-cookie" not in refused.headers, refused.text
            assert f"has the {role} role" in refused.text
    bad = httpx.post(f"{ui_server.url}/ui/signin", data={"key": "so-notakey"})
    assert bad.status_code == 401 and "set-cookie" not in bad.headers


def test_a_viewer_reads_and_changes_nothing(ui_server: UiServer) -> None:
    viewer = ui_server.key("viewer", "ui-viewer")
    with sign_in(ui_server, viewer) as client:
        assert client.get("/admin/v1/models").status_code == 200
        page = client.get("/ui/models")
        assert 'data-role="viewer"' in page.text
        token = csrf_of(client)
        refused = client.post("/admin/v1/keys", json={"name": "by-viewer"}, headers={"X-CSRF-Token": token})
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "admin_required", refused.text
    with_key = httpx.post(
        f"{ui_server.url}/admin/v1/models/smollm2:135m/disable", headers={"Authorization": f"Bearer {viewer}"}
    )
    assert with_key.status_code == 403, with_key.text
    listed = httpx.get(f"{ui_server.url}/admin/v1/models", headers={"Authorization": f"Bearer {viewer}"})
    assert listed.status_code == 200


def test_sign_out_and_revocation_end_the_session(ui_server: UiServer) -> None:
    with sign_in(ui_server, ui_server.admin_key) as client:
        cookie = client.cookies["so_session"]
        out = client.post("/ui/signout", data={"csrf_token": csrf_of(client)})
        assert out.status_code == 303 and 'so_session=""' in out.headers["set-cookie"], out.headers
    with httpx.Client(base_url=ui_server.url, timeout=30, cookies={"so_session": cookie}) as old:
        after = old.get("/admin/v1/models")
        assert after.status_code == 401, after.text
    second_admin = ui_server.key("admin", "ui-admin-2")
    with sign_in(ui_server, second_admin) as client:
        assert client.get("/admin/v1/models").status_code == 200
        keys = ui_server.api("GET", "/admin/v1/keys").json()["keys"]
        key_id = next(k["id"] for k in keys if k["name"] == "ui-admin-2")
        assert ui_server.api("POST", f"/admin/v1/keys/{key_id}/revoke").status_code == 200
        assert client.get("/admin/v1/models").status_code == 401
        assert client.get("/ui/models").status_code == 303


@pytest.mark.browser
def test_no_key_material_in_the_html_or_storage(browser: object, ui_server: UiServer) -> None:
    with signed_in(browser, ui_server) as page:
        for slug in PAGES:
            page.goto(f"/ui/{slug}")
            page.wait_for_load_state("domcontentloaded")
            html = page.content()
            assert ui_server.admin_key not in html, slug
            assert not re.search(r"so-[a-z0-9]{8}[A-Za-z0-9_-]{40}", html), slug  # no whole key of any kind
            storage = page.evaluate("[localStorage.length, sessionStorage.length]")
            assert storage == [0, 0], (slug, storage)
        cookies = page.context.cookies()
        assert [c["name"] for c in cookies] == ["so_session"]
        assert cookies[0]["httpOnly"] and cookies[0]["sameSite"] == "Strict"
        assert ui_server.admin_key not in cookies[0]["value"]
        assert page.evaluate("document.cookie") == ""  # HttpOnly: the page's script cannot read it


def test_a_session_works_on_every_worker(fresh_server: ServerProcess) -> None:
    """With two workers, the replica passes /ui and the admin API to the primary, and recognises the
    session itself for the client APIs (the playground): both workers share the home's signing key."""
    fresh_server.env.update(SUPEROLLAMA_WORKERS="2", SUPEROLLAMA_BUNDLED_MODEL="false")
    fresh_server.start()
    made = fresh_server.admin("POST", "/admin/v1/keys", json={"name": "ops", "role": "admin"})
    assert made.status_code == 201, made.text
    ui = httpx.Client(base_url=fresh_server.url, timeout=30)
    with ui:
        assert ui.post("/ui/signin", data={"key": made.json()["key"]}).status_code == 303
        cookie = {"so_session": ui.cookies["so_session"]}
    seen: dict[str, set[int]] = {"/v1/models": set(), "/admin/v1/models": set(), "/ui/models": set()}
    workers: set[str] = set()  # which worker answered /v1/models itself
    for _ in range(40):
        for path, statuses in seen.items():
            with httpx.Client(base_url=fresh_server.url, timeout=30, cookies=cookie) as client:  # new conn.
                answer = client.get(path)
            statuses.add(answer.status_code)
            if path == "/v1/models":
                workers.add(answer.headers.get("x-superollama-worker", "?"))
        if workers == {"0", "1"}:
            break
    assert workers == {"0", "1"}, workers
    assert seen == {"/v1/models": {200}, "/admin/v1/models": {200}, "/ui/models": {200}}, seen
    with httpx.Client(base_url=fresh_server.url, timeout=30) as anonymous:
        assert anonymous.get("/v1/models").status_code == 401
