"""What the data plane learns about one request while it runs, turned into one ``RequestRecord`` at the
end. Handlers fill it in as they go (route, target, load wait, tokens, first byte); nothing here does I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from superollama.core import RequestRecord
from superollama.security import Admission, Principal

__all__ = ["EXCHANGE", "Exchange", "Observer", "exchange_of", "principal_of"]


class Observer(Protocol):
    """Telemetry as the data plane sees it: cheap, synchronous, never blocking."""

    capture_content: bool

    def record(self, record: RequestRecord) -> None: ...

    def inflight(self, delta: int) -> None: ...


@dataclass(slots=True, eq=False)
class Exchange:
    request_id: str
    protocol: str  # "openai", "ollama", "anthropic", "admin"
    started_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    principal: Principal | None = None
    operation: str = ""
    model: str | None = None
    version: str | None = None
    deployment: str | None = None  # set when routed through a deployment (per-target window stats)
    target: str | None = None  # the deployment's target (route name) that answered
    instance: str | None = None
    connection: str | None = None
    stream: bool = False
    admission: Admission | None = None
    load_wait: float | None = None
    first_byte: float | None = None  # perf_counter of the first byte of the answer
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_estimated: bool = False  # tokens are our estimate: the backend reported none
    search_units: int | None = None  # rerank's billing unit
    error_type: str | None = None
    error: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # added to the response when it starts
    capture: bool = False  # keep prompts and outputs (only when the operator turned capture on)
    input: Any = None
    output: Any = None
    body: dict[str, Any] | None = None  # the request body as the request hooks left it (gateway/hooks.py)

    def mark_first_byte(self) -> None:
        if self.first_byte is None:
            self.first_byte = time.perf_counter()

    def usage(self, tokens: tuple[int, int] | None) -> None:
        if tokens is not None:
            self.prompt_tokens, self.completion_tokens = tokens

    def estimated_usage(self, tokens: tuple[int, int]) -> None:
        """Tokens we estimated because the backend reported none (the record says so)."""
        self.prompt_tokens, self.completion_tokens = tokens
        self.usage_estimated = True

    def finish(self, status: int, *, node: str, client: str | None, user_agent: str | None) -> RequestRecord:
        now = time.perf_counter()
        p = self.principal
        return RequestRecord.of(  # positionally, in the fields' order (see RequestRecord.of)
            self.request_id,
            self.protocol,
            self.operation,
            self.model or "",
            status,
            self.started_at,
            now - self.started,
            self.stream,
            p.key_id if p else None,
            p.prefix if p else None,
            self.version,
            self.deployment,
            self.target,
            self.instance,
            self.connection,
            None if self.connection else node,
            (self.first_byte - self.started) if self.first_byte is not None else None,
            self.load_wait,
            self.prompt_tokens,
            self.completion_tokens,
            self.usage_estimated,
            self.search_units,
            None,  # cost: not known here (Security.cost prices the usage at settlement)
            self.error_type,
            self.error,
            client,
            user_agent,
            self.input,
            self.output,
        )


EXCHANGE = web.RequestKey("superollama_exchange", Exchange)


def exchange_of(request: web.Request) -> Exchange | None:
    return request.get(EXCHANGE)


def principal_of(request: web.Request) -> Principal | None:
    """The key behind the request (None: no key, or a path the request middleware does not guard)."""
    ex = request.get(EXCHANGE)
    return ex.principal if ex is not None else None
