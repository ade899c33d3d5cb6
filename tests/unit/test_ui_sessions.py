"""Web UI sessions (security/sessions.py) and page rendering (ui/pages.py), without a server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from superollama.core.types import KeyRecord
from superollama.errors import AdminRequired, CsrfRejected, Forbidden, Unauthorized
from superollama.security import (
    Budgets,
    KeyCache,
    MemoryRateLimiter,
    NewKey,
    PriceTable,
    Security,
    Sessions,
    generate_key,
)
from superollama.security.sessions import COOKIE, CSRF_HEADER
from superollama.ui.pages import PAGES, render, static_file


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_verifies_until_it_expires() -> None:
    clock = Clock()
    sessions = Sessions(b"k" * 32, ttl=60, clock=clock)
    issued = sessions.issue("key_1", "so-abcdefgh")
    seen = sessions.verify(issued.cookie)
    assert (seen.key_id, seen.prefix, seen.csrf) == ("key_1", "so-abcdefgh", issued.csrf)
    clock.now += 61  # time itself is under test: the session's lifetime
    with pytest.raises(Unauthorized, match="expired"):
        sessions.verify(issued.cookie)


def test_a_forged_or_foreign_cookie_is_refused() -> None:
    sessions = Sessions(b"k" * 32, ttl=60)
    other = Sessions(b"o" * 32, ttl=60)
    cookie = sessions.issue("key_1", "so-abcdefgh").cookie
    body, _, mac = cookie.rpartition(".")
    tampered = body.replace("key_1", "key_2") + "." + mac
    for bad in (tampered, other.issue("key_1", "so-abcdefgh").cookie, "", "v1.x", cookie + "x"):
        with pytest.raises(Unauthorized):
            sessions.verify(bad)


def test_changes_need_the_csrf_token_and_reads_do_not() -> None:
    sessions = Sessions(b"k" * 32, ttl=60)
    session = sessions.verify(sessions.issue("key_1", "so-abcdefgh").cookie)
    for method in ("GET", "HEAD", "OPTIONS"):
        sessions.check_csrf(session, method, None)
    sessions.check_csrf(session, "POST", session.csrf)
    for token in (None, "", "x" * len(session.csrf)):
        with pytest.raises(CsrfRejected):
            sessions.check_csrf(session, "DELETE", token)


def test_sign_out_ends_the_session_here() -> None:
    sessions = Sessions(b"k" * 32, ttl=60)
    issued = sessions.issue("key_1", "so-abcdefgh")
    kept = sessions.issue("key_1", "so-abcdefgh")
    sessions.end(sessions.verify(issued.cookie))
    with pytest.raises(Unauthorized, match="ended"):
        sessions.verify(issued.cookie)
    assert sessions.verify(kept.cookie).key_id == "key_1"


def test_workers_of_one_home_share_the_signing_key(tmp_path: Path) -> None:
    first, second = Sessions.of_home(tmp_path, 60), Sessions.of_home(tmp_path, 60)
    assert second.verify(first.issue("key_1", "so-abcdefgh").cookie).key_id == "key_1"
    assert (tmp_path / "ui-session.key").stat().st_mode & 0o777 == 0o600


def test_pages_escape_what_they_show_and_serve_only_our_assets() -> None:
    page = render("models.html", title="<b>", current="models", csrf='"><script>', who="<i>")
    assert "<b>" not in page and "<i>" not in page and '"><script>' not in page
    assert '<meta name="csrf-token" content="&quot;&gt;&lt;script&gt;">' in page
    for slug in (p.slug for p in PAGES):
        assert static_file(f"{slug}.js") is not None, slug
    assert static_file("ui.css") is not None
    for bad in ("../pages.py", "..", ".hidden.js", "x/ui.js", "routes.py", "nope.js"):
        assert static_file(bad) is None, bad


def _security(*records: KeyRecord) -> Security:
    cache = KeyCache()
    cache.load(records)
    limiter = MemoryRateLimiter()
    sessions = Sessions(b"k" * 32, ttl=60)
    return Security(cache, limiter, Budgets(PriceTable.parse("{}"), limiter), sessions=sessions)


def _record(key: NewKey, key_id: str, role: str, **extra: object) -> KeyRecord:
    return KeyRecord(id=key_id, name=key_id, prefix=key.prefix, hash=key.hash, role=role, **extra)  # type: ignore[arg-type]


def test_a_viewer_reads_the_admin_api_and_changes_nothing() -> None:
    viewer = generate_key()
    sec = _security(_record(viewer, "vw", "viewer"))
    assert not sec.keys.has_admin_keys  # a viewer key alone never locks the operator out
    principal = sec.authenticate({"Authorization": f"Bearer {viewer.key}"})
    assert principal is not None and principal.reads_admin and principal.reads_metrics
    for method in ("GET", "HEAD"):
        sec.require_admin(principal, method)
    for method in ("POST", "DELETE"):
        with pytest.raises(AdminRequired):
            sec.require_admin(principal, method)
    with pytest.raises(Forbidden, match="viewer role"):
        sec.require_models(principal)


def test_a_session_authenticates_as_its_key_until_the_key_changes() -> None:
    admin = generate_key()
    sec = _security(_record(admin, "adm", "admin"))
    assert sec.sessions is not None
    session = sec.sessions.issue("adm", admin.prefix)
    cookies = {COOKIE: session.cookie}
    who = sec.authenticate_request("GET", {}, cookies)
    assert who is not None and who.key_id == "adm"
    with pytest.raises(CsrfRejected):
        sec.authenticate_request("POST", {}, cookies)
    assert sec.authenticate_request("POST", {CSRF_HEADER: session.csrf}, cookies) is not None
    rotated = generate_key()
    sec.keys.load([_record(rotated, "adm", "admin")])  # rotated: same id, another prefix
    with pytest.raises(Unauthorized):
        sec.authenticate_request("GET", {}, cookies)
    sec.keys.load([_record(admin, "adm", "admin", revoked_at=datetime.now(UTC) - timedelta(seconds=1))])
    with pytest.raises(Unauthorized, match="revoked"):
        sec.authenticate_request("GET", {}, cookies)


def test_an_ended_session_counts_as_no_key_where_none_is_needed() -> None:
    admin = generate_key()
    sec = _security(_record(admin, "adm", "admin"))
    assert sec.sessions is not None
    cookies = {COOKIE: sec.sessions.issue("adm", admin.prefix).cookie}
    sec.keys.load([])  # the key is gone: the API is open again on loopback (auth=auto)
    assert sec.authenticate_request("GET", {}, cookies, required=False) is None
    with pytest.raises(Unauthorized):
        sec.authenticate_request("GET", {}, cookies, required=True)
