"""Loading plugins and calling their hooks, one plugin's failure never anyone else's.

``load_plugins`` registers the built-ins, then every entry point of the ``superollama.plugins`` group.
A plugin that cannot be imported, that implements a hook that does not exist, or whose ``register_*``
hook raises, is reported (``Plugins.report``: its name and the error) and left out; the rest load, and
the server starts. The hooks are called one implementation at a time in pluggy's order (the reverse of
registration, ``tryfirst``/``trylast`` honoured), so that each failure has a plugin's name on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, TypeVar

import pluggy

from superollama import __version__
from superollama.errors import SuperOllamaError
from superollama.plugins.specs import PROJECT, AdminHandler, Specs

if TYPE_CHECKING:
    import aiohttp
    import click
    from aiohttp.typedefs import Middleware

    from superollama.core import CredentialSource, Provider, Runtime
    from superollama.gateway.hooks import HookRequest, HookResponse
    from superollama.settings import Settings
    from superollama.store import Source

__all__ = [
    "ENTRY_POINT_GROUP",
    "PluginInfo",
    "PluginRequestHooks",
    "Plugins",
    "load_plugins",
    "plugin_middlewares",
]

log = logging.getLogger("superollama.plugins")

ENTRY_POINT_GROUP = "superollama.plugins"
BUILTIN = "superollama.builtin"
T = TypeVar("T")


@dataclass
class PluginInfo:
    """One plugin as ``superollama plugins`` and ``GET /admin/v1/plugins`` show it."""

    name: str
    version: str | None
    hooks: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "hooks": self.hooks, "error": self.error}


class Plugins:
    """The plugin manager of one process: built-ins and the installed plugins, with what failed."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(Specs)
        self._info: dict[str, PluginInfo] = {}

    # -- loading ---------------------------------------------------------------------------------
    def add(self, plugin: object, name: str, version: str | None) -> bool:
        """Register ``plugin``; False (and reported) when it implements a hook that does not exist or
        one whose arguments do not match."""
        info = self._info.setdefault(name, PluginInfo(name, version))
        if self.pm.is_registered(plugin):
            info.error = f"already loaded as {self.pm.get_name(plugin)!r}"
            return False
        try:
            self.pm.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            if self.pm.is_registered(plugin):  # pluggy keeps the hooks it had taken before the bad one
                self.pm.unregister(plugin)
            info.error = str(exc)
            return False
        unknown = [h.name for h in self.pm.get_hookcallers(plugin) or () if not h.has_spec()]
        if unknown:
            self.pm.unregister(plugin)
            info.error = f"unknown hook(s): {', '.join(sorted(unknown))}"
            return False
        info.hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or ())
        return True

    def load_entry_points(self, entry_points: Iterable[metadata.EntryPoint]) -> None:
        for ep in entry_points:
            version = ep.dist.version if ep.dist is not None else None
            if ep.name in self._info:
                self._info[ep.name + f" ({ep.value})"] = PluginInfo(
                    ep.name, version, error=f"another plugin is already named {ep.name!r}"
                )
                continue
            try:
                plugin = ep.load()
            except Exception as exc:
                log.warning("plugin %r failed to load: %s", ep.name, exc)
                self._info[ep.name] = PluginInfo(ep.name, version, error=f"{type(exc).__name__}: {exc}")
                continue
            if not self.add(plugin, ep.name, version):
                log.warning("plugin %r left out: %s", ep.name, self._info[ep.name].error)

    def report(self) -> list[PluginInfo]:
        """Every plugin, the built-ins first, each with its hooks or its error."""
        return list(self._info.values())

    def failed(self, name: str, hook: str, exc: BaseException) -> None:
        """A plugin's hook failed where the process goes on without it: reported, logged."""
        info = self._info.setdefault(name, PluginInfo(name, None))
        info.error = f"{hook}: {type(exc).__name__}: {exc}"
        log.warning("plugin %r failed in %s: %s", name, hook, exc, exc_info=exc)

    # -- calling ---------------------------------------------------------------------------------
    def _impls(self, hook: str) -> list[pluggy.HookImpl]:
        caller: pluggy.HookCaller = getattr(self.pm.hook, hook)
        return [i for i in reversed(caller.get_hookimpls()) if not (i.hookwrapper or i.wrapper)]

    def _collect(self, hook: str, key: Callable[[T], str], **kwargs: Any) -> list[T]:
        """Every ``register(item)`` of every plugin's ``hook``; the first of each ``key`` wins."""
        found: dict[str, T] = {}
        for impl in self._impls(hook):
            items: list[T] = []
            try:
                impl.function(*_args(impl, register=items.append, **kwargs))
            except Exception as exc:
                self.failed(impl.plugin_name, hook, exc)
                continue
            for item in items:
                name = key(item)
                if name in found:
                    log.info("%s: %r of plugin %r is already registered", hook, name, impl.plugin_name)
                    continue
                found[name] = item
        return list(found.values())

    def runtimes(self, settings: Settings) -> dict[str, Runtime]:
        """The runtimes by name, in the order they are tried."""
        runtimes: list[Runtime] = self._collect("register_runtimes", lambda r: r.name, settings=settings)
        return {r.name: r for r in runtimes}

    def providers(
        self, session: aiohttp.ClientSession, credentials: CredentialSource | None
    ) -> dict[str, Provider]:
        providers: list[Provider] = self._collect(
            "register_providers", lambda p: p.kind, session=session, credentials=credentials
        )
        return {p.kind: p for p in providers}

    def sources(self, settings: Settings) -> list[Source]:
        return self._collect("register_sources", lambda s: s.scheme, settings=settings)

    def admin_routes(self) -> list[tuple[str, str, AdminHandler]]:
        """``(method, path, handler)`` of every plugin; a path outside ``/admin/`` fails its plugin."""
        routes: list[tuple[str, str, AdminHandler]] = []
        for impl in self._impls("register_admin_routes"):
            mine: list[tuple[str, str, AdminHandler]] = []

            def register(method: str, path: str, fn: AdminHandler, into: list[Any] = mine) -> None:
                into.append((method.upper(), path, fn))

            try:
                impl.function(*_args(impl, register=register))
                for _method, path, _handler in mine:
                    if not path.startswith("/admin/"):
                        raise ValueError(f"admin route {path!r} must start with /admin/")
            except Exception as exc:
                self.failed(impl.plugin_name, "register_admin_routes", exc)
                continue
            routes += mine
        return routes

    def commands(self, cli: click.Group) -> None:
        """Let every plugin add its commands to ``cli``."""
        for impl in self._impls("register_commands"):
            try:
                impl.function(*_args(impl, cli=cli))
            except Exception as exc:
                self.failed(impl.plugin_name, "register_commands", exc)

    def request_hooks(self) -> PluginRequestHooks | None:
        """The request hooks, or None when no plugin has one (the gateway then runs none: no cost)."""
        before = [(i.plugin_name, i.function, i.argnames) for i in self._impls("before_request")]
        after = [(i.plugin_name, i.function, i.argnames) for i in self._impls("after_response")]
        return PluginRequestHooks(before, after) if before or after else None


Hook = tuple[str, Callable[..., Any], tuple[str, ...]]  # plugin, function, its argument names


class PluginRequestHooks:
    """``gateway.hooks.RequestHooks`` over the plugins' ``before_request`` / ``after_response``: a
    ``SuperOllamaError`` is the hook's answer to the client; anything else is a bug of the plugin, logged
    with its name, and a 500 for the client (its request must not pass unchecked)."""

    def __init__(self, before: list[Hook], after: list[Hook]) -> None:
        self._before = before
        self._after = after

    @property
    def order(self) -> Mapping[str, list[str]]:
        return {
            "before_request": [h[0] for h in self._before],
            "after_response": [h[0] for h in self._after],
        }

    def before(self, request: HookRequest) -> None:
        for name, fn, argnames in self._before:
            _call(name, "before_request", fn, [request for _ in argnames])

    def after(self, request: HookRequest, response: HookResponse) -> None:
        for name, fn, argnames in self._after:
            _call(name, "after_response", fn, [request if a == "request" else response for a in argnames])


def _args(impl: pluggy.HookImpl, **given: Any) -> list[Any]:
    """The arguments ``impl`` declares, in its order (pluggy checked them against the spec)."""
    return [given[a] for a in impl.argnames]


def _call(name: str, hook: str, fn: Callable[..., Any], args: list[Any]) -> None:
    try:
        fn(*args)
    except SuperOllamaError:
        raise
    except Exception as exc:
        log.error("plugin %r failed in %s", name, hook, exc_info=exc)
        raise SuperOllamaError(f"the request hook of plugin {name!r} failed") from exc


def plugin_middlewares(plugins: Plugins) -> list[Middleware]:
    """What the data plane adds for the plugins' request hooks: nothing when no plugin has one."""
    from superollama.gateway.hooks import hooks_middleware

    hooks = plugins.request_hooks()
    return [] if hooks is None else [hooks_middleware(hooks)]


def load_plugins(entry_points: Iterable[metadata.EntryPoint] | None = None) -> Plugins:
    """The built-ins and every installed plugin (``entry_points``: instead of the installed ones)."""
    from superollama.plugins import builtin

    plugins = Plugins()
    plugins.add(builtin, BUILTIN, __version__)
    if entry_points is None:
        entry_points = metadata.entry_points(group=ENTRY_POINT_GROUP)
    plugins.load_entry_points(entry_points)
    return plugins
