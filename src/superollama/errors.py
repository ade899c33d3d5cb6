"""The one error tree of Super Ollama.

Every failure a client or operator can see is one of these. Lower-layer exceptions (aiohttp, SQLAlchemy,
OS errors) are mapped once, at the boundary where they happen (``raise StoreError(...) from exc``), and the
edges render them in the client's protocol (OpenAI ``{"error": {...}}``, Ollama ``{"error": "..."}``).

    SuperOllamaError                      500  internal_error
    ├── InvalidRequest                    400  invalid_request_error
    │   ├── InvalidModelName              400
    │   └── PayloadTooLarge               413
    ├── NotFound                          404
    │   ├── ModelNotFound                 404  model_not_found
    │   └── SourceNotFound                404
    ├── Conflict                          409
    │   ├── ModelExists                   409
    │   └── ModelInUse                    409
    ├── StoreError                        500
    │   └── IntegrityError                422  (digest or size mismatch: the bytes are not what they claim)
    ├── RegistryError                     500
    └── Unavailable                       503  (Retry-After where it helps)
        ├── ModelLoadFailed               503
        ├── LoadTimeout                   503
        └── UpstreamError                 502/503 (the backend failed or died mid-request)
"""

from __future__ import annotations

__all__ = [
    "Conflict",
    "IntegrityError",
    "InvalidModelName",
    "InvalidRequest",
    "LoadTimeout",
    "ModelExists",
    "ModelInUse",
    "ModelLoadFailed",
    "ModelNotFound",
    "NotFound",
    "PayloadTooLarge",
    "RegistryError",
    "SourceNotFound",
    "StoreError",
    "SuperOllamaError",
    "Unavailable",
    "UpstreamError",
]


class SuperOllamaError(Exception):
    """Base of every error we raise on purpose. ``status``/``type``/``code`` drive the wire rendering."""

    status: int = 500
    type: str = "internal_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after


class InvalidRequest(SuperOllamaError):
    status = 400
    type = "invalid_request_error"


class InvalidModelName(InvalidRequest):
    code = "invalid_model_name"


class PayloadTooLarge(InvalidRequest):
    status = 413
    code = "payload_too_large"


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


class UpstreamError(Unavailable):
    code = "upstream_error"
