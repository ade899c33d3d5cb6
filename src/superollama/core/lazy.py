"""A module imported on first use: what an idle server need not hold.

``lazy_module(name)`` returns the module at once, but runs its code only when one of its attributes is
first read (``importlib.util.LazyLoader``). For a module whose import is costly and which only some
requests need: Anthropic's and the Responses API's pydantic request models and the JSON Schemas the
contract makes of them are about 1 MB of a server's memory that a server nobody sends those requests to
never needs. Declare such a module lazy once, in its package's ``__init__`` (``superollama/wire``
does): every ``from package import module`` then gets the module without running it, as plain imports
that type checkers read as usual. A ``from package.module import name`` reads the attribute and runs it.

The first attribute read runs the module's code in the thread that reads it: the server's event loop,
where the first such request is (for the request models above: about 40 ms, once).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

__all__ = ["lazy_module"]


def lazy_module(name: str) -> ModuleType:
    """``name`` (a module, not a package), loaded when first used; the module itself if already imported."""
    if name in sys.modules:
        return sys.modules[name]
    parent, _, child = name.rpartition(".")
    package = importlib.import_module(parent) if parent else None
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None:
        raise ModuleNotFoundError(f"no module named {name!r}", name=name)
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)  # only arms the load
    if package is not None:
        setattr(package, child, module)  # as an import would: ``from parent import child`` finds it
    return module
