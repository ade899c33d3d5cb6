"""Domain values shared by every room. Frozen dataclasses, no behaviour beyond small derived properties."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "MEDIA_MODEL",
    "MEDIA_TEMPLATE",
    "Artifact",
    "ConnectionRecord",
    "Endpoint",
    "EventRecord",
    "InstanceRecord",
    "InstanceSpec",
    "InstanceState",
    "JobRecord",
    "JobState",
    "KeyRecord",
    "Layer",
    "Manifest",
    "NodeRecord",
    "Progress",
    "RequestRecord",
    "VersionRecord",
]

MEDIA_MODEL = "application/vnd.ollama.image.model"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"


@dataclass(frozen=True)
class Layer:
    """One content-addressed file of a version: ``digest`` is ``sha256:<hex>``."""

    media_type: str
    digest: str
    size: int
    filename: str | None = None


@dataclass(frozen=True)
class Manifest:
    """What the store keeps per ``name:tag``: the layers (blobs) and metadata read from them."""

    name: str
    format: str  # "gguf", "safetensors", …
    layers: tuple[Layer, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    created_at: datetime | None = None
    # The storage root that holds this version's blobs (its real path); None: the home. Blobs are
    # content-addressed per root, so two versions sharing files in one root share those blob files.
    storage_root: Path | None = None

    @property
    def model_layer(self) -> Layer:
        for layer in self.layers:
            if layer.media_type == MEDIA_MODEL:
                return layer
        return self.layers[0]

    @property
    def size(self) -> int:
        return sum(layer.size for layer in self.layers)


@dataclass(frozen=True)
class Artifact:
    """A version as a runtime sees it: where its files are on this node and what they are."""

    name: str
    format: str
    path: Path
    metadata: Mapping[str, Any] = field(default_factory=dict)
    projector: Path | None = None  # a GGUF vision model's projector (``mmproj``) file, when it has one


@dataclass(frozen=True)
class Progress:
    """One progress event of a long operation; the NDJSON shape Ollama's ``/api/pull`` streams."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.digest is not None:
            out["digest"] = self.digest
        if self.total is not None:
            out["total"] = self.total
        if self.completed is not None:
            out["completed"] = self.completed
        return out


class InstanceState(enum.StrEnum):
    PENDING = "pending"
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True)
class Endpoint:
    """How the data plane reaches a backend: base URL (no trailing slash, never a secret in it), protocol,
    upstream model name, and headers every request to it carries (never a secret: this travels in the
    routing snapshot, to replica workers too). ``credential`` names the credential (a connection's name)
    the sender attaches at send time from its own process (``core.credentials``). ``stream_usage``: the
    backend takes ``stream_options.include_usage``, so every stream asks it for usage (metering); False
    for a server that rejects the field (a connection's ``--no-stream-usage``). ``server_kind``: a
    connection's kind ("openai", "ollama", "tgi"), for the routes it serves in a protocol of its own
    (rerank: TEI's ``/rerank``; an Ollama client's requests to an "ollama" one go to its ``/api/*``
    untranslated); None for the instances we run."""

    base_url: str
    provider: str
    served_name: str
    headers: tuple[tuple[str, str], ...] = ()
    stream_usage: bool = True
    credential: str | None = None
    server_kind: str | None = None


@dataclass(frozen=True)
class ConnectionRecord:
    """An external backend we do not run (Ollama, vLLM, TGI, any OpenAI-compatible server).

    ``secret`` is never a plain key: ``env:VAR`` (read from the environment when used) or ``enc:…``
    (encrypted with the node's secret key). ``url`` is public (no user info, no secret query parameter);
    what ``core.credentials.split_url`` took out of the URL given is ``url_secret`` (``enc:…``)."""

    name: str
    kind: str  # "openai", "ollama", "tgi"
    url: str
    secret: str | None = None
    enabled: bool = True
    options: Mapping[str, Any] = field(default_factory=dict)
    url_secret: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class InstanceSpec:
    """What to run: one version on one device with one runtime."""

    instance_id: str
    version: str
    artifact: Artifact
    runtime: str
    device: str = "cpu"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionRecord:
    """A version in the registry (the catalog); its bytes live in the store."""

    name: str  # canonical "family:tag"
    model: str  # family
    tag: str
    format: str
    digest: str  # digest of the model layer
    size: int
    source: str
    metadata: Mapping[str, Any] = field(default_factory=dict)
    enabled: bool = True
    runtime: str | None = None  # override; None: chosen by format
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class NodeRecord:
    name: str
    address: str
    state: str = "ready"
    inventory: Mapping[str, Any] = field(default_factory=dict)
    last_seen: datetime | None = None

    # set by an admin (``nodes cordon`` / ``nodes drain``): nothing new starts on the node, and the node's
    # own reports (a restart included) keep the state
    CLOSED: ClassVar[tuple[str, ...]] = ("cordoned", "draining")

    @property
    def closed(self) -> bool:
        return self.state in self.CLOSED


@dataclass(frozen=True)
class InstanceRecord:
    id: str
    version: str
    node: str
    runtime: str
    state: InstanceState
    device: str = "cpu"
    pid: int | None = None
    endpoint: str | None = None
    error: str | None = None
    started_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class EventRecord:
    """An audit/lifecycle event: who did what to which target, when, and how it ended."""

    action: str
    target: str
    result: str = "ok"
    actor: str = "system"
    detail: Mapping[str, Any] = field(default_factory=dict)
    id: int | None = None
    created_at: datetime | None = None


class JobState(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class JobRecord:
    """A long operation (pull, move): its last progress event and how it ended."""

    id: str
    kind: str  # "pull", "move"
    target: str
    state: JobState = JobState.RUNNING
    actor: str = "system"
    params: Mapping[str, Any] = field(default_factory=dict)
    progress: Mapping[str, Any] = field(default_factory=dict)
    result: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class KeyRecord:
    """An API key as the registry keeps it: never the key itself, only its SHA-256 (``hash``, hex) and a
    visible ``prefix`` (``so-ab12cd34``) for humans.

    ``role`` is ``"admin"`` or ``"user"``; ``models`` are fnmatch patterns the key may call (empty: all);
    ``rpm``/``tpm`` limit requests and tokens per minute over all its models (None: unlimited), and
    ``model_limits`` maps a model pattern to its own ``{"rpm": n, "tpm": n}`` (a per-model limit);
    ``budget_usd`` caps the spend per ``budget_period`` (``day``, ``week``, ``month`` or ``total``)."""

    id: str
    name: str
    prefix: str
    hash: str
    role: str = "user"
    models: tuple[str, ...] = ()
    rpm: int | None = None
    tpm: int | None = None
    model_limits: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    budget_usd: float | None = None
    budget_period: str = "month"
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    created_at: datetime | None = None
    last_used_at: datetime | None = None


@dataclass(frozen=True)
class RequestRecord:
    """What the data plane knows about one finished request; metrics, logs, traces, the usage ledger and
    rate-limit settlement all read this one value (built once, off the byte path, when the request ends).

    Times are ``time.time()`` seconds (wall clock) so that spans and ledger rows line up across processes;
    durations are seconds."""

    request_id: str
    protocol: str  # "openai", "ollama", "anthropic"
    operation: str  # "chat", "completion", "embeddings", "generate" …
    model: str  # what the client asked for
    status: int
    started_at: float
    duration: float
    stream: bool = False
    key_id: str | None = None
    key_prefix: str | None = None
    version: str | None = None  # the version that served it (a deployment target)
    deployment: str | None = None  # the deployment stage it was routed through ("chat", "chat@staging")
    target: str | None = None  # that deployment's target which answered (a version or connection model)
    instance: str | None = None  # instance id, or None for a connection
    connection: str | None = None
    node: str | None = None
    ttft: float | None = None  # seconds to the first byte of the answer
    load_wait: float | None = None  # seconds spent waiting for the model to load
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usage_estimated: bool = False  # the backend reported no usage: tokens are our estimate
    search_units: int | None = None  # rerank: Cohere's billing unit (a query over up to 100 documents)
    cost: float | None = None
    error_type: str | None = None  # e.g. "upstream_error", "rate_limited", "model_not_found"
    error: str | None = None
    client: str | None = None  # remote address
    user_agent: str | None = None
    input: Any = None  # request messages/prompt, only when capture is enabled
    output: Any = None  # response text, only when capture is enabled

    @classmethod
    def of(  # noqa: PLR0917 (positional on purpose: 29 keywords cost a microsecond more to match)
        cls,
        request_id: str,
        protocol: str,
        operation: str,
        model: str,
        status: int,
        started_at: float,
        duration: float,
        stream: bool,
        key_id: str | None,
        key_prefix: str | None,
        version: str | None,
        deployment: str | None,
        target: str | None,
        instance: str | None,
        connection: str | None,
        node: str | None,
        ttft: float | None,
        load_wait: float | None,
        prompt_tokens: int | None,
        completion_tokens: int | None,
        usage_estimated: bool,
        search_units: int | None,
        cost: float | None,
        error_type: str | None,
        error: str | None,
        client: str | None,
        user_agent: str | None,
        input: Any,
        output: Any,
    ) -> RequestRecord:
        """The same value as ``RequestRecord(...)``, every field given positionally in its order: what the
        data plane makes once per request. A frozen dataclass's ``__init__`` sets each of the 29 fields
        through ``object.__setattr__`` (4.2 us called by keywords); this fills the instance's dict at once
        (1.4 us)."""
        record = object.__new__(cls)
        object.__setattr__(
            record,
            "__dict__",
            {
                "request_id": request_id,
                "protocol": protocol,
                "operation": operation,
                "model": model,
                "status": status,
                "started_at": started_at,
                "duration": duration,
                "stream": stream,
                "key_id": key_id,
                "key_prefix": key_prefix,
                "version": version,
                "deployment": deployment,
                "target": target,
                "instance": instance,
                "connection": connection,
                "node": node,
                "ttft": ttft,
                "load_wait": load_wait,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "usage_estimated": usage_estimated,
                "search_units": search_units,
                "cost": cost,
                "error_type": error_type,
                "error": error,
                "client": client,
                "user_agent": user_agent,
                "input": input,
                "output": output,
            },
        )
        return record
