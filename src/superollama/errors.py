"""The one error tree of Super Ollama.

Every failure a client or operator can see is one of these. Lower-layer exceptions (aiohttp, SQLAlchemy,
OS errors) are mapped once, at the boundary where they happen (``raise StoreError(...) from exc``), and the
edges render them in the client's protocol (OpenAI ``{"error": {...}}``, Ollama ``{"error": "..."}``).

    SuperOllamaError                      500  internal_error
    ├── Unauthorized                      401  invalid_api_key (missing, unknown, revoked or expired key)
    ├── Forbidden                         403  (the key may not do this)
    │   ├── ModelNotAllowed               403  model_not_allowed
    │   └── AdminRequired                 403  admin_required
    ├── RateLimited                       429  rate_limit_exceeded (Retry-After, x-ratelimit-* headers)
    ├── QuotaExceeded                     429  insufficient_quota (the key's budget is spent)
    ├── UnsafeBind                        500  (startup refusal: a non-loopback bind without auth)
    ├── InvalidRequest                    400  invalid_request_error
    │   ├── InvalidModelName              400
    │   ├── UnsupportedOperation          400  unsupported_operation (the model cannot do this: rerank …)
    │   ├── PayloadTooLarge               413
    │   ├── RequestTimeout                408  (the client stopped sending its request)
    │   └── HeadersTooLarge               431  (a request line or header line over the limit)
    ├── NotFound                          404
    │   ├── ModelNotFound                 404  model_not_found
    │   └── SourceNotFound                404
    ├── Conflict                          409
    │   ├── ModelExists                   409
    │   └── ModelInUse                    409
    ├── StoreError                        500
    │   ├── IntegrityError                422  (digest or size mismatch: the bytes are not what they claim)
    │   └── InsufficientStorage           507  (not enough free space for a download, or the disk filled up)
    ├── RegistryError                     500
    └── Unavailable                       503  (Retry-After where it helps)
        ├── ModelLoadFailed               503
        ├── LoadTimeout                   503
        ├── ServerBusy                    503  (this worker is at its connection cap; Retry-After)
        └── UpstreamError                 502/503 (the backend failed or died mid-request)
            └── UpstreamTimeout           504 (no answer, or no first token, in the time allowed)
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = [
    "AdminRequired",
    "Conflict",
    "Forbidden",
    "HeadersTooLarge",
    "InsufficientStorage",
    "IntegrityError",
    "InvalidModelName",
    "InvalidRequest",
    "LoadTimeout",
    "ModelExists",
    "ModelInUse",
    "ModelLoadFailed",
    "ModelNotAllowed",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RateLimited",
    "RegistryError",
    "RequestTimeout",
    "ServerBusy",
    "SourceNotFound",
    "StoreError",
    "SuperOllamaError",
    "Unauthorized",
    "Unavailable",
    "UnsafeBind",
    "UnsupportedOperation",
    "UpstreamError",
    "UpstreamTimeout",
]

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class SuperOllamaError(Exception):
    """Base of every error we raise on purpose. ``status``/``type``/``code`` drive the wire rendering."""

    status: int = 500
    type: str = "internal_error"
    code: str | None = None
    headers: Mapping[str, str] = _NO_HEADERS  # extra response headers the edge sends with the error

    def __init__(self, message: str, *, param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after


class Unauthorized(SuperOllamaError):
    """No key where one is required, or a key that is unknown, revoked or expired. The message never
    repeats the key that was sent."""

    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    headers = MappingProxyType({"WWW-Authenticate": 'Bearer realm="superollama"'})


class Forbidden(SuperOllamaError):
    status = 403
    type = "invalid_request_error"
    code = "forbidden"


class ModelNotAllowed(Forbidden):
    code = "model_not_allowed"


class AdminRequired(Forbidden):
    code = "admin_required"


class CsrfRejected(Forbidden):
    """A change made with a web UI session without its CSRF token (or with a wrong one)."""

    code = "csrf_failed"


class RateLimited(SuperOllamaError):
    """Over a requests- or tokens-per-minute limit. ``headers`` carries OpenAI's ``x-ratelimit-*``."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, param=param, retry_after=retry_after)
        self.headers = MappingProxyType(dict(headers or {}))


class QuotaExceeded(SuperOllamaError):
    """The key's budget for the current period is spent."""

    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class UnsafeBind(SuperOllamaError):
    """``serve`` refuses to bind a non-loopback address without auth (unless told ``--insecure``)."""

    code = "unsafe_bind"


class InvalidRequest(SuperOllamaError):
    status = 400
    type = "invalid_request_error"


class InvalidModelName(InvalidRequest):
    code = "invalid_model_name"


class UnsupportedOperation(InvalidRequest):
    """The model exists, but what was asked is not something it does (rerank with a chat model)."""

    code = "unsupported_operation"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"


class RequestTimeout(InvalidRequest):
    status = 408
    code = "request_timeout"


class HeadersTooLarge(InvalidRequest):
    status = 431
    code = "request_header_fields_too_large"


class NotFound(SuperOllamaError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class SourceNotFound(NotFound):
    code = "source_not_found"


class Conflict(SuperOllamaError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class ModelExists(Conflict):
    code = "model_exists"


class ModelInUse(Conflict):
    code = "model_in_use"


class StoreError(SuperOllamaError):
    type = "store_error"


class IntegrityError(StoreError):
    status = 422
    code = "integrity_error"


class InsufficientStorage(StoreError):
    """A download that does not fit: refused before it starts ("needs X, Y free on PATH"), or stopped when
    the filesystem filled up (its partial file is removed, so the disk is usable again)."""

    status = 507
    code = "insufficient_storage"


class RegistryError(SuperOllamaError):
    type = "registry_error"


class Unavailable(SuperOllamaError):
    status = 503
    type = "service_unavailable"
    code = "unavailable"


class ModelLoadFailed(Unavailable):
    code = "model_load_failed"


class LoadTimeout(Unavailable):
    code = "load_timeout"


class ServerBusy(Unavailable):
    code = "server_busy"


class UpstreamError(Unavailable):
    code = "upstream_error"


class UpstreamTimeout(UpstreamError):
    """A backend did not answer (or send its first token) in the time allowed: 504."""

    status = 504
    code = "upstream_timeout"
