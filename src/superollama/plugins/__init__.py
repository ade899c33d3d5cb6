"""Plugins: pluggy hooks through which runtimes, providers, sources, request hooks, admin routes and CLI
commands are added — the built-ins (``builtin``) the same way as the plugins installed under the
``superollama.plugins`` entry point group. A plugin imports what it needs from here::

    from superollama.plugins import HookRequest, hookimpl
    from superollama.errors import InvalidRequest

    @hookimpl
    def before_request(request: HookRequest) -> None:
        if "forbidden" in str(request.body):
            raise InvalidRequest("this gateway does not take that word")
"""

from typing import TYPE_CHECKING, Any

from superollama.plugins.manager import (
    ENTRY_POINT_GROUP,
    PluginInfo,
    PluginRequestHooks,
    Plugins,
    load_plugins,
    plugin_middlewares,
)
from superollama.plugins.specs import hookimpl, hookspec

__all__ = [
    "ENTRY_POINT_GROUP",
    "HookRequest",
    "HookResponse",
    "PluginInfo",
    "PluginRequestHooks",
    "Plugins",
    "hookimpl",
    "hookspec",
    "load_plugins",
    "plugin_middlewares",
]

if TYPE_CHECKING:
    from superollama.gateway.hooks import HookRequest, HookResponse


def __getattr__(name: str) -> Any:
    """``HookRequest`` and ``HookResponse`` load with the gateway, not with the plugins (a fast CLI)."""
    if name in ("HookRequest", "HookResponse"):
        from superollama.gateway import hooks

        return getattr(hooks, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
