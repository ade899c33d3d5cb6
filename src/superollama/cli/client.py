"""What commands written before ``superollama.Client`` import: ``ApiError`` (now ``SuperollamaError``,
the client's error) and ``find_server_url``. New commands use ``ctx.client`` 's methods and raise or catch
``superollama.client.SuperollamaError``; see ``superollama.cli.main``."""

from __future__ import annotations

from superollama.client._common import find_server_url
from superollama.client._errors import SuperollamaError

__all__ = ["ApiError", "find_server_url"]


class ApiError(SuperollamaError):
    """A command's own failure, as one line: ``ApiError(0, "pull failed: ...")``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message, status=status)
