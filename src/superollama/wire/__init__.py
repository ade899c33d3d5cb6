"""Wire formats at the edges: request checks and pure converters between protocols and core types.

``anthropic`` and ``responses`` hold pydantic request models (about 1 MB of a server's memory): they are
declared lazy here, once, so that ``from superollama.wire import anthropic`` anywhere gives the module
without running it, and its code runs on the first attribute read, the first request of that API
(``core/lazy.py``).
"""

from superollama.core.lazy import lazy_module

lazy_module("superollama.wire.anthropic")
lazy_module("superollama.wire.responses")
