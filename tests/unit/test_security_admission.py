"""The ``Security`` façade: auth modes, the 401 → 403 → 429 order, settlement from a ``RequestRecord``,
admin checks, token estimates, bind safety, and how the errors render at the edge."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from superollama.core.types import KeyRecord, RequestRecord
from superollama.errors import (
    AdminRequired,
    Forbidden,
    ModelNotAllowed,
    QuotaExceeded,
    RateLimited,
    Unauthorized,
    UnsafeBind,
)
from superollama.gateway.errors import error_response
from superollama.security import (
    Budgets,
    KeyCache,
    MemoryRateLimiter,
    PriceTable,
    Security,
    check_bind_safety,
    estimate_tokens,
    generate_key,
    is_loopback,
    resolve_auth,
)

NOW = datetime(2026, 3, 1, tzinfo=UTC)


class Keys:
    def __init__(self) -> None:
        self.admin = generate_key()
        self.user = generate_key()
        self.revoked = generate_key()
        self.metrics = generate_key()

    def records(self) -> list[KeyRecord]:
        return [
            KeyRecord(id="adm", name="admin", prefix=self.admin.prefix, hash=self.admin.hash, role="admin"),
            KeyRecord(
                id="usr",
                name="user",
                prefix=self.user.prefix,
                hash=self.user.hash,
                models=("smollm2:*",),
                rpm=2,
                budget_usd=0.01,
            ),
            KeyRecord(
                id="old",
                name="old",
                prefix=self.revoked.prefix,
                hash=self.revoked.hash,
                revoked_at=NOW - timedelta(days=1),
            ),
            KeyRecord(
                id="prm", name="prom", prefix=self.metrics.prefix, hash=self.metrics.hash, role="metrics"
            ),
        ]


def security(keys: Keys | None, auth_required: bool | None) -> Security:
    cache = KeyCache()
    if keys is not None:
        cache.load(keys.records())
    limiter = MemoryRateLimiter()
    budgets = Budgets(PriceTable.parse('{"smollm2:*": {"input": 10, "output": 20}}'), limiter)
    return Security(cache, limiter, budgets, auth_required=auth_required)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def request_record(model: str, prompt: int | None, completion: int | None) -> RequestRecord:
    return RequestRecord(
        request_id="r",
        protocol="openai",
        operation="chat",
        model=model,
        status=200,
        started_at=0.0,
        duration=0.1,
        prompt_tokens=prompt,
        completion_tokens=completion,
    )


def test_auth_required() -> None:
    keys = Keys()
    sec = security(keys, True)
    with pytest.raises(Unauthorized, match="missing API key"):
        sec.authenticate({})
    with pytest.raises(Unauthorized, match="invalid API key"):
        sec.authenticate(bearer("x"))
    with pytest.raises(Unauthorized, match="revoked"):
        sec.authenticate(bearer(keys.revoked.key))
    assert sec.authenticate(bearer(keys.user.key)).key_id == "usr"  # type: ignore[union-attr]
    assert sec.authenticate({"x-api-key": keys.admin.key}).key_id == "adm"  # type: ignore[union-attr]


def test_auth_off_ignores_foreign_keys_but_checks_ours() -> None:
    keys = Keys()
    sec = security(keys, False)
    assert sec.authenticate({}) is None
    assert sec.authenticate(bearer("x")) is None  # what the OpenAI SDK sends when told api_key="x"
    assert sec.authenticate(bearer(keys.user.key)).key_id == "usr"  # type: ignore[union-attr]
    with pytest.raises(Unauthorized, match="revoked"):
        sec.authenticate(bearer(keys.revoked.key))
    with pytest.raises(Unauthorized):
        sec.authenticate(bearer(generate_key().key))


async def test_auth_auto_turns_on_with_the_first_key() -> None:
    sec = security(None, None)
    assert not sec.auth_required and sec.authenticate({}) is None
    sec.require_admin(None)  # a loopback server with no keys: its owner is the admin
    sec.keys.load(Keys().records())
    assert sec.auth_required
    with pytest.raises(Unauthorized):
        sec.authenticate({})
    with pytest.raises(Unauthorized):
        sec.require_admin(None)


async def test_order_401_then_403_then_quota_then_rate() -> None:
    keys = Keys()
    sec = security(keys, True)
    with pytest.raises(Unauthorized):
        sec.authenticate(bearer(keys.user.key[:-1] + "!"))
    user = sec.authenticate(bearer(keys.user.key))
    with pytest.raises(ModelNotAllowed) as forbidden:
        await sec.admit(user, "llama3:8b", 10)
    assert forbidden.value.status == 403 and forbidden.value.code == "model_not_allowed"
    first = await sec.admit(user, "smollm2:135m", 10)
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    await sec.settle(first, request_record("smollm2:135m", 300, 100))  # $0.005
    second = await sec.admit(user, "smollm2:135m", 10)
    with pytest.raises(RateLimited):
        await sec.admit(user, "smollm2:135m", 10)  # 2 rpm
    await sec.settle(second, request_record("smollm2:135m", 500, 0))  # $0.01 in all: the budget is spent
    with pytest.raises(QuotaExceeded):
        await sec.admit(user, "smollm2:135m", 10)  # the budget speaks before the rate limit
    with pytest.raises(ModelNotAllowed):
        await sec.admit(user, "llama3:8b", 10)  # and the model check before both


async def test_settle_uses_real_usage_or_keeps_the_reservation() -> None:
    keys = Keys()
    sec = security(keys, True)
    cache, limiter = sec.keys, sec.limiter
    user = cache.lookup(keys.user.key)
    admission = await sec.admit(user, "smollm2:135m", 1000)
    await sec.settle(admission, request_record("smollm2:135m", None, None))
    assert await limiter.spent(user) == 0  # usage unknown: no cost, reservation kept
    record = request_record("smollm2:135m", 1, 1)
    assert sec.cost("smollm2:135m", record) == pytest.approx(30 / 1_000_000)
    priced = RequestRecord(**{**record.__dict__, "cost": 0.001})
    assert sec.cost("smollm2:135m", priced) == 0.001  # a cost already computed wins


async def test_anonymous_requests_are_not_limited() -> None:
    sec = security(None, False)
    admission = await sec.admit(None, "anything", 10**9)
    assert admission.principal is None and dict(admission.headers) == {}
    await sec.settle(admission, request_record("anything", 1, 1))


def test_require_admin() -> None:
    keys = Keys()
    sec = security(keys, True)
    sec.require_admin(sec.authenticate(bearer(keys.admin.key)))
    with pytest.raises(AdminRequired) as info:
        sec.require_admin(sec.authenticate(bearer(keys.user.key)))
    assert isinstance(info.value, Forbidden) and info.value.code == "admin_required"


def test_roles_decide_who_reads_metrics_and_who_calls_models() -> None:
    keys = Keys()
    sec = security(keys, True)
    admin, user, prom = (sec.authenticate(bearer(k.key)) for k in (keys.admin, keys.user, keys.metrics))
    for reader in (admin, prom):
        sec.require_metrics_reader(reader)
    with pytest.raises(Forbidden, match="admin or metrics role"):
        sec.require_metrics_reader(user)
    sec.require_metrics_reader(None)  # no key where none is needed (authenticate decides that: 401)
    for caller in (admin, user, None):
        sec.require_models(caller)
    with pytest.raises(Forbidden, match="may only read /metrics") as refused:
        sec.require_models(prom)
    assert refused.value.status == 403
    with pytest.raises(AdminRequired):
        sec.require_admin(prom)


def test_visible_models() -> None:
    keys = Keys()
    sec = security(keys, True)
    models = ["smollm2:135m", "llama3:8b", "smollm2:360m"]
    assert sec.visible_models(sec.authenticate(bearer(keys.user.key)), models) == [
        "smollm2:135m",
        "smollm2:360m",
    ]
    assert sec.visible_models(None, models) == models
    user = sec.authenticate(bearer(keys.user.key))
    assert sec.may_see(user, "smollm2:135m") and not sec.may_see(user, "llama3:8b")
    assert sec.may_see(None, "llama3:8b")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"messages": [{"role": "user", "content": "x" * 400}], "max_tokens": 50}, 150),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "y" * 40}]}]}, 10 + 256),
        ({"messages": [], "max_completion_tokens": 7, "n": 3}, 21),
        ({"prompt": ["abcd", "efgh"], "max_tokens": 0}, 2),
        ({"input": ["a" * 8, "b" * 8]}, 4),  # embeddings: nothing generated
        ({"model": "m", "prompt": "abcd", "options": {"num_predict": 9}}, 10),  # Ollama
        ({"messages": "not a list", "max_tokens": "many"}, 256),
    ],
)
def test_estimate_tokens(body: dict[str, Any], expected: int) -> None:
    assert estimate_tokens(body) == expected


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.10", False),
        ("example.com", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_bind_safety() -> None:
    assert check_bind_safety("127.0.0.1", False, False) is None
    assert check_bind_safety("0.0.0.0", True, False) is None
    with pytest.raises(UnsafeBind, match="--insecure") as info:
        check_bind_safety("0.0.0.0", False, False)
    assert "keys create" in info.value.message
    warning = check_bind_safety("0.0.0.0", False, True)
    assert warning is not None and "WITHOUT authentication" in warning


def test_resolve_auth() -> None:
    assert resolve_auth("on", "127.0.0.1") is True
    assert resolve_auth("off", "0.0.0.0") is False
    assert resolve_auth("auto", "127.0.0.1") is None
    assert resolve_auth("auto", "0.0.0.0") is True
    assert resolve_auth("auto", "0.0.0.0", insecure=True) is None


async def test_errors_render_with_their_headers() -> None:
    sec = security(Keys(), True)
    with pytest.raises(Unauthorized) as unauthorized:
        sec.authenticate({})
    response = error_response(unauthorized.value)
    assert response.status == 401 and response.headers["WWW-Authenticate"].startswith("Bearer")
    assert orjson.loads(response.body)["error"]["code"] == "invalid_api_key"  # type: ignore[arg-type]

    keys = Keys()
    sec = security(keys, True)
    user = sec.authenticate(bearer(keys.user.key))
    await sec.admit(user, "smollm2:1", 0)
    await sec.admit(user, "smollm2:1", 0)
    with pytest.raises(RateLimited) as limited:
        await sec.admit(user, "smollm2:1", 0)
    response = error_response(limited.value)
    assert response.status == 429
    assert response.headers["Retry-After"] == "30"
    assert response.headers["x-ratelimit-limit-requests"] == "2"
    assert response.headers["x-ratelimit-remaining-requests"] == "0"
    body = orjson.loads(response.body)["error"]  # type: ignore[arg-type]
    assert body["type"] == "rate_limit_error" and body["code"] == "rate_limit_exceeded"
    ollama = error_response(limited.value, ollama=True)
    assert ollama.headers["x-ratelimit-limit-requests"] == "2"
    assert orjson.loads(ollama.body) == {"error": limited.value.message}  # type: ignore[arg-type]
