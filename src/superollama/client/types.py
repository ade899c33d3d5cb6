"""The admin API's objects as typed dictionaries: what the server sends, unchanged (``--json`` prints
these), with the fields a type checker knows. Fields marked ``NotRequired`` appear only on some answers
(details of one object, or a newer server); every object may carry more fields than listed here.

Where an answer's shape is open (a fleet file, a plugin's report) it is a ``JSONObject``.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

__all__ = [
    "ApplyReport",
    "Connection",
    "Deleted",
    "Delivery",
    "Deployment",
    "DeploymentTarget",
    "Event",
    "FileObject",
    "GroundingRule",
    "Instance",
    "IssuedKey",
    "JSONObject",
    "Job",
    "Key",
    "MoveResult",
    "Node",
    "Page",
    "Placement",
    "Plugin",
    "Progress",
    "Rollout",
    "StorageRoot",
    "UsageReport",
    "VectorStore",
    "VectorStoreFileBatch",
    "Version",
    "VersionDetails",
    "VersionScale",
    "Webhook",
]

JSONObject = dict[str, Any]


class Version(TypedDict):
    """A model version (``model:tag``) in the registry."""

    name: str
    model: str
    tag: str
    format: str
    digest: str | None
    size: int | None
    source: str | None
    enabled: bool
    runtime: str | None
    architecture: NotRequired[str | None]
    parameters: NotRequired[int | None]
    parameter_size: NotRequired[str | None]
    quantization: NotRequired[str | None]
    context_length: NotRequired[int | None]
    created_at: str | None
    updated_at: str | None


class Instance(TypedDict):
    """A running backend process serving one version."""

    id: str
    version: str
    node: str
    runtime: str
    device: str
    state: str
    pid: int | None
    endpoint: str
    in_flight: int
    memory_bytes: int | None
    load_seconds: float
    started_at: str | None
    tokens_per_second: NotRequired[float | None]


class VersionDetails(Version):
    """``models.get``: a version with its metadata, files (``layers``) and instances."""

    metadata: JSONObject
    layers: list[JSONObject]
    instances: list[Instance]
    storage_root: NotRequired[str]


class StorageRoot(TypedDict):
    name: str
    path: str
    declared: bool
    home: bool
    usable: bool
    problem: str | None
    free_bytes: int | None
    total_bytes: int | None
    versions: list[str]


class MoveResult(TypedDict, total=False):
    """The last line of a move: where the files went."""

    status: str
    root: str
    path: str
    unchanged: bool
    copied: list[str]
    freed: list[str]
    kept: list[str]


class Progress(TypedDict, total=False):
    """One NDJSON line of a job's progress (Ollama's pull shape): ``status`` every time; ``digest``,
    ``total`` and ``completed`` while a file downloads; the final line has ``status`` ``success`` (with the
    job's result, e.g. ``model``) or ``error`` (with ``error.message``)."""

    status: str
    job: str
    digest: str
    total: int
    completed: int
    model: JSONObject
    error: JSONObject | str


class Job(TypedDict):
    """A long operation (pull, move) the server runs; ``progress`` is its latest ``Progress`` line."""

    id: str
    kind: str
    target: str
    state: str
    actor: str | None
    params: JSONObject
    progress: JSONObject
    result: JSONObject | None
    error: str | None
    created_at: str | None
    updated_at: str | None


class Event(TypedDict):
    """One line of the event log: who did what to which target, and how it ended."""

    id: int | None
    created_at: str | None
    actor: str | None
    action: str
    target: str
    result: str
    detail: JSONObject


class Connection(TypedDict):
    """An external server (Ollama, vLLM, TGI, OpenAI-compatible) whose models are routable."""

    name: str
    kind: str
    url: str
    enabled: bool
    api_key: str | None  # "env", "stored" or None: never the key itself
    options: JSONObject
    healthy: bool | None
    error: str | None
    models: list[Any]
    created_at: str | None


class Placement(TypedDict, total=False):
    """Where a target's (or a version's) instances may run; every field optional in a request."""

    device: str | None  # cpu | gpu | any
    node: str | None  # pinned to this node
    labels: dict[str, str] | str | None  # required node labels: {"zone": "b"} or "zone=b,gpu=a100"
    spread: bool  # its replicas on different nodes, whatever the server's policy


class DeploymentTarget(TypedDict):
    name: str
    weight: int
    role: NotRequired[str]
    replicas: NotRequired[int]
    placement: NotRequired[Placement | None]


class VersionScale(TypedDict):
    """A version scaled by itself (``scale VERSION --replicas N``) and its instances."""

    version: str
    replicas: int
    placement: Placement | None
    updated_at: str | None
    wanted: int
    instances: list[JSONObject]


class Deployment(TypedDict):
    """A routable name over weighted targets; details add live state and history."""

    name: str
    stage: NotRequired[str | None]
    model: NotRequired[str]
    targets: list[DeploymentTarget]
    sticky: NotRequired[str | None]
    enabled: bool
    created_at: NotRequired[str | None]
    updated_at: NotRequired[str | None]


class ApplyReport(TypedDict):
    applied: bool
    changes: list[JSONObject]
    keys: NotRequired[JSONObject]


class Key(TypedDict):
    """An API key, never its secret."""

    id: str
    name: str
    prefix: str
    role: str
    state: str
    models: list[str]
    rpm: int | None
    tpm: int | None
    model_limits: JSONObject
    budget_usd: float | None
    budget_period: str | None
    expires_at: str | None
    revoked_at: str | None
    created_at: str | None
    last_used_at: str | None
    spend_usd: NotRequired[float | None]


class IssuedKey(Key):
    """A key with its secret: the only time the server shows it."""

    key: str


class UsageReport(TypedDict):
    by: str
    since: str
    until: str | None
    rows: list[JSONObject]


class Deleted(TypedDict):
    deleted: str


class Rollout(TypedDict, total=False):
    """A progressive rollout of one deployment to a new version (canary, steps, checks); ``status``
    adds ``live``, the targets' numbers now."""

    deployment: str
    state: str  # running, promoted, rolled_back, aborted
    stable: str
    target: str
    weight: int
    policy: JSONObject
    decisions: list[JSONObject]
    next_at: str
    started_at: str | None
    updated_at: str | None


class Webhook(TypedDict):
    id: str
    url: str
    events: list[str]
    description: str
    enabled: bool
    created_at: str | None
    updated_at: str | None
    secret: NotRequired[str]  # only when it is created, or its secret rotated


class Delivery(TypedDict):
    """One event sent (or being sent) to one hook."""

    id: str
    webhook_id: str
    event_id: int | None
    type: str
    state: str
    attempts: int
    status_code: int | None
    error: str | None
    duration_ms: float | None
    next_at: str | None
    created_at: str
    updated_at: str
    payload: JSONObject


class Node(TypedDict):
    """A machine the control plane places instances on, with its inventory and instances."""

    name: str
    address: str
    state: str
    local: bool
    last_seen: str | None
    inventory: JSONObject
    usage: JSONObject | None
    instances: list[Instance]


class Plugin(TypedDict):
    name: str
    version: str | None
    hooks: list[str]
    error: str | None  # why it was left out


class GroundingRule(TypedDict):
    """A model (or deployment) whose chat answers from vector stores, with citations."""

    name: str
    vector_store_ids: list[str]
    top_k: int
    score_threshold: float | None
    template: str | None
    updated_at: str | None


class Page(TypedDict):
    """An OpenAI list (``/v1/files``, ``/v1/vector_stores`` …)."""

    object: str
    data: list[JSONObject]
    has_more: NotRequired[bool]
    first_id: NotRequired[str | None]
    last_id: NotRequired[str | None]


class FileObject(TypedDict):
    id: str
    object: str
    bytes: int
    created_at: int
    filename: str
    purpose: str


class VectorStore(TypedDict, total=False):
    id: str
    object: str
    name: str | None
    status: str
    created_at: int
    file_counts: JSONObject
    usage_bytes: int
    metadata: JSONObject | None


class VectorStoreFileBatch(TypedDict, total=False):
    id: str
    object: str
    status: str
    vector_store_id: str
    file_counts: JSONObject
