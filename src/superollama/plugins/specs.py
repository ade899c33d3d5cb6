"""The hook specifications: what a plugin can add to Super Ollama.

As in simonw/llm, a plugin is a module with functions marked ``@hookimpl``; the ``register_*`` hooks take
a ``register`` callback, and the built-ins (``superollama.plugins.builtin``) register through these same
hooks. A hook implementation may take any subset of the arguments named here.

Order: hooks of the plugin registered last run first (pluggy's order), so a third-party plugin runs before
the built-ins; ``@hookimpl(tryfirst=True)`` / ``(trylast=True)`` move one. For the ``register_*`` hooks,
the first registration of a name wins (a plugin may replace a built-in runtime, provider or source), and
runtimes are tried in that order: the first whose ``accepts(artifact)`` is true and that suits the node
serves a version.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import aiohttp
    import click
    from aiohttp import web

    from superollama.core import CredentialSource, Provider, Runtime
    from superollama.gateway.hooks import HookRequest, HookResponse
    from superollama.settings import Settings
    from superollama.store import Source

__all__ = ["PROJECT", "AdminHandler", "Specs", "hookimpl", "hookspec"]

PROJECT = "superollama"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

AdminHandler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


class Specs:
    @hookspec
    def register_runtimes(self, register: Callable[[Runtime], None], settings: Settings) -> None:
        """Register node runtimes (``core.Runtime``): ``register(runtime)``."""

    @hookspec
    def register_providers(
        self,
        register: Callable[[Provider], None],
        session: aiohttp.ClientSession,
        credentials: CredentialSource | None,
    ) -> None:
        """Register connection kinds (``core.Provider``, by ``kind``): ``register(provider)``;
        ``session``: the shared client session, ``credentials``: where an endpoint's credential is found."""

    @hookspec
    def register_sources(self, register: Callable[[Source], None], settings: Settings) -> None:
        """Register pull sources (``store.Source``, by ``scheme``): ``register(source)``."""

    @hookspec
    def register_admin_routes(self, register: Callable[[str, str, AdminHandler], None]) -> None:
        """Add admin API routes: ``register(method, path, handler)``; ``path`` starts with ``/admin/``, so
        the route takes an admin key like the rest of the admin API."""

    @hookspec
    def register_commands(self, cli: click.Group) -> None:
        """Add commands to the ``superollama`` command line (``@cli.command()``)."""

    @hookspec
    def before_request(self, request: HookRequest) -> None:
        """An inference request on any API edge, before it is routed. Change ``request.body`` in place
        (it is in the client's protocol: ``request.protocol``), or raise a ``SuperOllamaError``
        (``InvalidRequest``: 400, ``Forbidden``: 403 …) to refuse it, rendered in the client's protocol."""

    @hookspec
    def after_response(self, request: HookRequest, response: HookResponse) -> None:
        """The answer to an inference request: change ``response.body`` (the JSON answer; None when it was
        streamed) in place, or raise a ``SuperOllamaError`` to send that error instead."""
