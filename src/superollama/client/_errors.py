"""What a call of the client raises: one tree, every message one line (the CLI prints it as is).

::

    SuperollamaError (status, code, message)
    ├── APIStatusError                 the server answered an error status
    │   ├── BadRequestError            400: a body, parameter or name the server refuses
    │   ├── AuthenticationError        401: no key, or a key it does not know
    │   ├── PermissionDeniedError      403: the key's role or scope does not allow it
    │   ├── NotFoundError              404
    │   ├── ConflictError              409: it exists already, or is in use
    │   ├── RateLimitError             429
    │   └── ServerError                5xx (502/503/504: a backend failed or is busy)
    └── APIConnectionError             no answer: refused, dropped, unreadable (status 0)
        └── APITimeoutError            no answer in time

httpx's exceptions never leave the client: ``_transport`` maps them here once, ``from`` the original.
"""

from __future__ import annotations

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ConflictError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "SuperollamaError",
    "error_for_status",
]


class SuperollamaError(Exception):
    """``status``: the HTTP status (0 when no answer came); ``code``: the error envelope's ``code`` or
    ``type`` when the server named one; ``message``: one line, for a person."""

    def __init__(self, message: str, *, status: int = 0, code: str | None = None) -> None:
        self.message = " ".join(message.split())
        super().__init__(self.message)
        self.status = status
        self.code = code


class APIStatusError(SuperollamaError):
    retry_after: float | None = None  # the server's Retry-After, in seconds, when it sent one


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class ServerError(APIStatusError):
    pass


class APIConnectionError(SuperollamaError):
    pass


class APITimeoutError(APIConnectionError):
    pass


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    409: ConflictError,
    429: RateLimitError,
}


def error_for_status(status: int, message: str, code: str | None = None) -> APIStatusError:
    """The error an answer with ``status`` raises (a 4xx without its own class: ``APIStatusError``)."""
    kind = ServerError if status >= 500 else _BY_STATUS.get(status, APIStatusError)
    return kind(message, status=status, code=code)
