"""The Python client of Super Ollama's admin API: ``Client`` (synchronous) and ``AsyncClient``.

::

    from superollama import Client

    with Client() as so:                     # SUPEROLLAMA_URL / the running server; SUPEROLLAMA_API_KEY
        for line in so.models.pull("hf://bartowski/SmolLM2-135M-Instruct-GGUF/SmolLM2-135M-Instruct-Q4_K_M.gguf"):
            print(line["status"])
        so.deployments.put("chat", ["smollm2:135m"])
        for version in so.models.list():
            print(version["name"], version["size"])

Objects are the API's own JSON as typed dictionaries (``superollama.client.types``); errors are one tree under
``SuperollamaError`` (``_errors``), each with ``status``, ``code`` and a one-line ``message``.
The CLI (``superollama.cli``) is a client of this module and nothing else.

Adding a route to the client (and a command to the CLI):

1. Declare the route in ``superollama/contract/`` (the server validates with it).
2. Add a method to the resource group in ``_async_resources.py`` (or a new group, attached in
   ``_async_client.py``), marked ``@route("METHOD", "/admin/v1/path/{name}")`` in the contract's spelling,
   returning a ``TypedDict`` of ``types``; pass ``idempotent=True`` to ``call`` for a PUT or DELETE that
   may be repeated.
3. Run ``python3 scripts/unasync.py``: it writes the synchronous twin (``_sync_*.py``).
4. In ``superollama/cli/``, call ``ctx.client.<group>.<method>(...)``; a command that prints data takes
   the shared ``json_option`` and prints the API's object with ``print_json`` when it is given.

``tests/unit/test_client_routes.py`` fails for an admin route without a client method.
"""

from __future__ import annotations

from superollama.client import types
from superollama.client._async_client import AsyncClient
from superollama.client._common import find_server_url
from superollama.client._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    SuperollamaError,
)
from superollama.client._sync_client import Client

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "SuperollamaError",
    "find_server_url",
    "types",
]
