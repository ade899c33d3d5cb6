"""The one façade the gateway calls per request: who is it (``authenticate``), may it go (``admit``), what
did it cost (``settle``).

    principal = security.authenticate(request.headers)          # 401
    admission = await security.admit(principal, model, estimate_tokens(body))   # 403, 429 quota, 429 rate
    ...  response.headers.update(admission.headers)
    security.settle_soon(admission, record)      # at the end: None, or a round trip left to await
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping
from typing import Any

from superollama.core.types import RequestRecord
from superollama.errors import AdminRequired, Forbidden, ModelNotAllowed, Unauthorized
from superollama.security.budgets import Budgets
from superollama.security.keys import KeyCache, Principal, looks_like_key
from superollama.security.limits import Admission, RateLimiter, admitted
from superollama.security.sessions import COOKIE, CSRF_HEADER, SAFE_METHODS, Sessions

__all__ = ["DEFAULT_COMPLETION_TOKENS", "Security", "bearer_key", "estimate_tokens"]

DEFAULT_COMPLETION_TOKENS = 256


def bearer_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: ``Authorization: Bearer KEY``, else ``x-api-key: KEY``."""
    auth = headers.get("Authorization") or headers.get("authorization")
    if auth:
        scheme, _, value = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    key = headers.get("x-api-key") or headers.get("X-Api-Key")
    return key.strip() if key and key.strip() else None


class Security:
    """Authentication, model permissions, budgets and rate limits for the data plane.

    ``auth_required``: True (``auth=on``), False (``auth=off``), or None: required as soon as any key
    exists (``auth=auto`` on a loopback address; see ``resolve_auth``).
    """

    def __init__(
        self,
        keys: KeyCache,
        limiter: RateLimiter,
        budgets: Budgets,
        *,
        auth_required: bool | None = None,
        sessions: Sessions | None = None,
    ) -> None:
        self.keys = keys
        self.limiter = limiter
        self.budgets = budgets
        self.sessions = sessions
        self._auth_required = auth_required

    @property
    def auth_required(self) -> bool:
        if self._auth_required is None:
            return self.keys.has_keys
        return self._auth_required

    @property
    def admin_required(self) -> bool:
        """Whether the admin API needs an admin key. With ``auth=auto`` on loopback: once an admin key
        exists — so creating a first user key never locks the operator out of the admin API."""
        if self._auth_required is None:
            return self.keys.has_admin_keys
        return self._auth_required

    def authenticate(self, headers: Mapping[str, str], *, required: bool | None = None) -> Principal | None:
        """The caller's principal, or None when auth is not required and no key of ours was sent.

        ``Unauthorized`` when auth is required and no key was sent, or for a bad key. When auth is not
        required, a value that does not look like one of our keys (``so-…``) is ignored: the OpenAI SDKs
        insist on sending some key (``api_key="x"``)."""
        key = bearer_key(headers)
        required = self.auth_required if required is None else required
        if key is None:
            if required:
                raise Unauthorized("missing API key: send 'Authorization: Bearer KEY' (or 'x-api-key: KEY')")
            return None
        if not required and not looks_like_key(key):
            return None
        return self.keys.lookup(key)

    def authenticate_request(
        self,
        method: str,
        headers: Mapping[str, str],
        cookies: Mapping[str, str],
        *,
        required: bool | None = None,
    ) -> Principal | None:
        """``authenticate``, and else a web UI session (``so_session`` cookie) when no key was sent: the
        session's key, still valid, and for a change its CSRF token (403 without it). A key sent in a
        header always wins over the cookie. Where no key is required, a session that ended (expired, its
        key revoked) counts as no key at all, as it would without the cookie."""
        cookie = cookies.get(COOKIE)
        if self.sessions is None or not cookie or bearer_key(headers) is not None:
            return self.authenticate(headers, required=required)
        required = self.auth_required if required is None else required
        try:
            session = self.sessions.verify(cookie)
            self.sessions.check_csrf(session, method, headers.get(CSRF_HEADER))
            return self.keys.by_id(session.key_id, session.prefix)
        except Unauthorized:
            if required:
                raise
            return None

    async def admit(self, principal: Principal | None, model: str, estimated_tokens: int) -> Admission:
        """403 for a model outside the key's patterns (a backstop: the gateway answers such a model as
        missing before it gets here), then 429 ``insufficient_quota`` for a spent budget, then 429
        ``rate_limit_exceeded``; else the admission (reserving ``estimated_tokens``)."""
        return await admitted(self.admit_soon(principal, model, estimated_tokens))

    def admit_soon(
        self, principal: Principal | None, model: str, estimated_tokens: int
    ) -> Admission | Awaitable[Admission]:
        """``admit``: the admission when the limiter decides it without waiting, else an awaitable of it
        (``RateLimiter.admit_soon``). A refusal decided without waiting is raised here, the others when
        the awaitable is awaited."""
        if principal is None:
            return Admission(model, None, max(0, estimated_tokens))
        if not principal.allows(model):
            raise ModelNotAllowed(f"API key {principal.prefix} may not use model {model!r}", param="model")
        return self.limiter.admit_soon(principal, model, estimated_tokens)

    def cost(self, model: str, record: RequestRecord) -> float:
        """USD of a finished request: ``record.cost`` when already known, else from the price table."""
        if record.cost is not None:
            return record.cost
        return self.budgets.cost(model, record.prompt_tokens or 0, record.completion_tokens or 0)

    async def settle(self, admission: Admission, record: RequestRecord) -> None:
        """Charge the real token count (the reservation is kept when the usage is unknown) and the cost."""
        rest = self.settle_soon(admission, record)
        if rest is not None:
            await rest

    def settle_soon(self, admission: Admission, record: RequestRecord) -> Awaitable[None] | None:
        """``settle`` as far as it goes without waiting; what is left to await, if anything (a round trip
        of a limiter that settles each request on its own: see ``RateLimiter.settle_soon``)."""
        if admission.principal is None:
            return None
        if record.prompt_tokens is None and record.completion_tokens is None:
            actual = admission.reserved_tokens
        else:
            actual = (record.prompt_tokens or 0) + (record.completion_tokens or 0)
        return self.limiter.settle_soon(admission, actual, cost=self.cost(admission.model, record))

    def require_admin(self, principal: Principal | None, method: str = "POST") -> None:
        """401 without a key where auth is required; 403 for a user key, and for a viewer key on a
        change (a viewer reads: ``GET``, ``HEAD``, ``OPTIONS``)."""
        if principal is None:
            if self.admin_required:
                raise Unauthorized("the admin API requires an admin API key")
            return
        if principal.role == "viewer" and method.upper() in SAFE_METHODS:
            return
        if not principal.is_admin:
            raise AdminRequired(f"API key {principal.prefix} is not an admin key")

    def require_models(self, principal: Principal | None) -> None:
        """403 for a key that may not call the client APIs (``/v1/*``, ``/api/*``): a metrics key."""
        if principal is not None and not principal.uses_models:
            if principal.role == "metrics":
                raise Forbidden(f"API key {principal.prefix} has the metrics role: it may only read /metrics")
            raise Forbidden(
                f"API key {principal.prefix} has the {principal.role} role: it may not call the client APIs"
            )

    def require_metrics_reader(self, principal: Principal | None) -> None:
        """``/metrics`` needs a key with the admin or metrics role wherever the data plane needs a key
        (``authenticate`` already answered 401 without one); 403 for any other key."""
        if principal is not None and not principal.reads_metrics:
            raise Forbidden(
                f"API key {principal.prefix} may not read /metrics: it needs the admin or metrics role"
            )

    def may_see(self, principal: Principal | None, model: str) -> bool:
        """Whether the caller may see (and so call) ``model``, by its canonical name. A model it may not
        see must look exactly like one that does not exist, on every route."""
        return principal is None or principal.allows(model)

    def visible_models(self, principal: Principal | None, models: Iterable[str]) -> list[str]:
        """The models a principal may see (``/v1/models``, ``/api/tags``, ``/api/ps``)."""
        return [m for m in models if self.may_see(principal, m)]


def _chars(value: Any) -> int:
    """Characters of text in a message content, a prompt or an input (strings, lists, text parts)."""
    if isinstance(value, str):
        return len(value)
    if value is None:  # most requests have no prompt, input or system: not worth an ABC's check
        return 0
    if isinstance(value, list):
        return sum(_chars(v) for v in value)
    if isinstance(value, dict) or isinstance(value, Mapping):  # noqa: SIM101 (dict first: no ABC check)
        text = value.get("text") if value.get("type", "text") == "text" else None
        return len(text) if isinstance(text, str) else 0
    return 0


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """A cheap upper-ish guess of a request's tokens, reserved at admission and settled later: characters
    of the messages/prompt/input / 4, plus ``max_tokens`` (or a default) times ``n`` for generations."""
    chars = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            # a JSON body's messages are dicts: checked first, since an ABC's ``isinstance`` costs more
            if isinstance(message, dict) or isinstance(message, Mapping):  # noqa: SIM101
                chars += _chars(message.get("content"))
    chars += _chars(body.get("prompt")) + _chars(body.get("input")) + _chars(body.get("system"))
    prompt_tokens = (chars + 3) // 4
    if "input" in body and "messages" not in body and "prompt" not in body:
        return prompt_tokens  # embeddings: nothing is generated
    options = body.get("options")
    limit = body.get("max_completion_tokens", body.get("max_tokens"))
    if limit is None and isinstance(options, Mapping):
        limit = options.get("num_predict")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        limit = DEFAULT_COMPLETION_TOKENS
    n = body.get("n", 1)
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    return prompt_tokens + limit * choices
