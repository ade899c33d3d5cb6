"""The web UI's routes: ``/ui/signin``, ``/ui/signout``, a shell per page, and the static assets.

Who sees a page: an operator signed in with an admin or viewer key (``security/sessions.py`` signs the
cookie), or anyone when the admin API itself is open — no admin key on a loopback address, as the CLI
works then — with a banner saying so. Everything a page shows or changes goes through the admin and
client APIs with that same cookie, checked there by the request middleware (its CSRF token included).
"""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from superollama.errors import SuperOllamaError
from superollama.security import Principal, Security, Session, Sessions
from superollama.security.sessions import COOKIE, CSRF_FIELD
from superollama.ui.pages import PAGES, render, static_file

__all__ = ["UiRoutes"]

OPEN_BANNER = (
    "No admin key is configured and the server listens on loopback: the admin API and this UI are open to "
    "anyone on this machine, as the CLI is. Create an admin key (Keys) to require sign-in."
)
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",  # no-referrer would make the browser send "Origin: null"
    "X-Frame-Options": "DENY",
}


class UiRoutes:
    def __init__(self, security: Security, version: str) -> None:
        if security.sessions is None:
            raise ValueError("the web UI needs sessions: build Security with sessions=Sessions(...)")
        self._security = security
        self._sessions: Sessions = security.sessions
        self._version = version

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/ui", self.home)
        r.add_get("/ui/", self.home)
        r.add_get("/ui/signin", self.signin_page)
        r.add_post("/ui/signin", self.signin)
        r.add_post("/ui/signout", self.signout)
        r.add_get("/ui/static/{name}", self.static)
        for page in PAGES:
            r.add_get(f"/ui/{page.slug}", self.page)

    def _session(self, request: web.Request) -> tuple[Session, Principal] | None:
        """The request's valid session and its key, else None (no cookie, forged, expired, key gone)."""
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return None
        try:
            session = self._sessions.verify(cookie)
            principal = self._security.keys.by_id(session.key_id, session.prefix)
        except SuperOllamaError:
            return None
        return (session, principal) if principal.reads_admin else None

    async def home(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPSeeOther("/ui/models")

    async def page(self, request: web.Request) -> web.Response:
        slug = request.path.rsplit("/", 1)[-1]
        title = next(p.title for p in PAGES if p.slug == slug)
        signed_in = self._session(request)
        if signed_in is None and self._security.admin_required:
            raise web.HTTPSeeOther(f"/ui/signin?next=/ui/{slug}")
        session, principal = signed_in if signed_in else (None, None)
        text = render(
            f"{slug}.html",
            title=title,
            current=slug,
            csrf=session.csrf if session else "",
            role=principal.role if principal else "admin",
            who=f"{principal.name} ({principal.prefix}…, {principal.role})" if principal else "open",
            banner="" if self._security.admin_required else OPEN_BANNER,
            version=self._version,
        )
        return _html(text)

    async def signin_page(self, request: web.Request, error: str = "", status: int = 200) -> web.Response:
        if not error and (self._session(request) or not self._security.admin_required):
            raise web.HTTPSeeOther(_next(request))
        return _html(render("signin.html", title="Sign in", error=error, version=self._version), status)

    async def signin(self, request: web.Request) -> web.Response:
        if not _same_origin(request):
            return await self.signin_page(request, "This sign-in came from another site.", 403)
        form = await _form(request)
        if form is None:
            return await self.signin_page(request, "The sign-in form could not be read.", 400)
        key = str(form.get("key") or "").strip()
        if not key:
            return await self.signin_page(request, "Enter an admin or viewer API key.", 400)
        try:
            principal = self._security.keys.lookup(key)
        except SuperOllamaError as exc:
            return await self.signin_page(request, exc.message, 401)
        if not principal.reads_admin:
            role = principal.role
            message = f"API key {principal.prefix} has the {role} role: only admin and viewer keys sign in."
            return await self.signin_page(request, message, 403)
        session = self._sessions.issue(principal.key_id, principal.prefix)
        response = web.HTTPSeeOther(_next(request, str(form.get("next") or "")))
        response.set_cookie(
            COOKIE,
            session.cookie,
            max_age=int(self._sessions.ttl),
            path="/",
            httponly=True,
            secure=request.secure,
            samesite="Strict",
        )
        raise response

    async def signout(self, request: web.Request) -> web.Response:
        form = await _form(request) or MultiDict[str]()
        cookie = request.cookies.get(COOKIE)
        if cookie:
            try:
                session = self._sessions.verify(cookie)
                self._sessions.check_csrf(session, request.method, str(form.get(CSRF_FIELD) or ""))
            except SuperOllamaError as exc:
                if exc.status == 403:
                    return _html(render("signin.html", title="Sign in", error=exc.message), 403)
            else:
                self._sessions.end(session)
        response = web.HTTPSeeOther("/ui/signin")
        response.del_cookie(COOKIE, path="/")
        raise response

    async def static(self, request: web.Request) -> web.Response:
        found = static_file(request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        headers = {**_HEADERS, "Cache-Control": "no-cache"}
        return web.Response(body=body, content_type=content_type, headers=headers)


def _html(text: str, status: int = 200) -> web.Response:
    return web.Response(
        text=text, status=status, content_type="text/html", headers={**_HEADERS, "Cache-Control": "no-store"}
    )


def _next(request: web.Request, wanted: str = "") -> str:
    """Where to go after signing in: a page of ours only (never an open redirect)."""
    target = wanted or request.query.get("next", "")
    return target if target.startswith("/ui/") and "//" not in target and "\\" not in target else "/ui/models"


def _same_origin(request: web.Request) -> bool:
    """A form post comes from one of our pages: the browser's ``Sec-Fetch-Site`` says so, or else its
    ``Origin`` names this host (a client that sends neither, such as curl, is not a browser to protect)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in ("same-origin", "none")
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return origin != "null" and urlsplit(origin).netloc == request.host


async def _form(request: web.Request) -> MultiDictProxy[str | bytes | bytearray | web.FileField] | None:
    """The posted form, or None when it cannot be read (a multipart body without its boundary …)."""
    try:
        return await request.post()
    except ValueError:
        return None
