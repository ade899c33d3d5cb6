"""The systems under test, each started the same way: pinned, logged, timed to its first 200.

``SUPEROLLAMA_VARIANTS`` is the one place that lists how Super Ollama is run (extra environment, ``serve``
flags, request headers, an API key created on the started server): governance all ON and all OFF.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import procs
from .upstream import MODEL

__all__ = [
    "REDIS_URL",
    "SUPEROLLAMA_VARIANTS",
    "WORKLOADS",
    "Context",
    "Running",
    "Target",
    "Variant",
    "start_bare",
    "start_direct",
    "start_floor",
    "start_litellm",
    "start_superollama",
]

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
LITELLM_VENV = BENCH_DIR / ".venv-litellm"
LITELLM_KEY = "sk-bench-0123456789abcdef"  # LiteLLM refuses to start without a master key
WORKLOADS = ("json", "sse", "emb")
START_TIMEOUT = 180.0


@dataclass(frozen=True)
class Variant:
    """One way of running Super Ollama: a row group in the table.

    ``env`` adds to (a None value removes from) the server's environment. ``key_args``, when set, are the
    arguments of ``superollama keys create`` run against the started server (after its connections are
    made); the key it prints is then sent as ``Authorization: Bearer`` on every request, with ``headers``.
    """

    name: str
    label: str
    env: dict[str, str | None] = field(default_factory=dict)
    serve_flags: tuple[str, ...] = ()
    headers: dict[str, str] = field(default_factory=dict)
    key_args: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


REDIS_URL = os.environ.get("SOBENCH_REDIS_URL", "redis://127.0.0.1:6379/0")

# Every governance feature in the request path on, as production would run it: an API key (limits far
# above what the bench can reach, so nothing is refused but every request is checked and charged), rate
# limits in Redis (an EVALSHA per local allowance, one per settlement), Prometheus metrics, the JSON access
# log (INFO), and the usage ledger (always on: one row per request, written in batches).
SUPEROLLAMA_ON = Variant(
    "superollama-on",
    "Super Ollama, all ON",
    env={
        "SUPEROLLAMA_REDIS_URL": REDIS_URL,
        "SUPEROLLAMA_METRICS": "true",
        "SUPEROLLAMA_LOG_LEVEL": "INFO",
        "SUPEROLLAMA_LOG_JSON": "true",
        "SUPEROLLAMA_WORKERS": "1",  # the gateway gets one core here: one worker
    },
    key_args=("--name", "bench", "--rpm", "10000000", "--tpm", "1000000000"),
    notes=(
        "key (rpm 10M, tpm 1G) sent as Bearer; limits in Redis; metrics; JSON access log at INFO; "
        "usage ledger",
    ),
)
# Everything that can be turned off, off: no key (auth auto: none required), the in-memory limiter with
# nothing to check, no metrics, WARNING (so no access lines). The usage ledger has no switch: it stays on.
SUPEROLLAMA_OFF = Variant(
    "superollama-off",
    "Super Ollama, all OFF",
    env={
        "SUPEROLLAMA_METRICS": "false",
        "SUPEROLLAMA_LOG_LEVEL": "WARNING",
        "SUPEROLLAMA_REDIS_URL": None,
        "SUPEROLLAMA_WORKERS": "1",
    },
    notes=("no key; memory limiter; no metrics; WARNING; usage ledger (no switch)",),
)
SUPEROLLAMA_VARIANTS: tuple[Variant, ...] = (SUPEROLLAMA_ON, SUPEROLLAMA_OFF)


@dataclass(frozen=True)
class Target:
    """What wrk sends for one workload: URL, JSON body, extra headers."""

    url: str
    body: dict[str, object]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Context:
    tmp: Path
    nginx_port: int
    gateway_cpu: int | None
    load_cpu: int | None

    @property
    def upstream(self) -> str:
        return f"http://{procs.HOST}:{self.nginx_port}"


@dataclass
class Running:
    """A started system (or why it could not be)."""

    name: str
    label: str
    service: procs.Service | None = None
    targets: dict[str, Target] = field(default_factory=dict)
    start_s: float | None = None
    rss_idle_mb: float | None = None
    rss_after_mb: float | None = None
    unavailable: str | None = None
    notes: list[str] = field(default_factory=list)
    home: Path | None = None  # Super Ollama's SUPEROLLAMA_HOME
    key_id: str | None = None  # the API key the requests carry, when one was created
    redis_url: str | None = None  # where its rate limits live, when in Redis

    def stop(self) -> None:
        if self.service is not None:
            if self.rss_after_mb is None:
                self.rss_after_mb = self.service.rss_mb()
            self.service.stop()


def chat_body(model: str, stream: bool) -> dict[str, object]:
    body: dict[str, object] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are a benchmark."},
            {"role": "user", "content": "Say hello in one short sentence."},
        ],
        "max_tokens": 32,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def emb_body(model: str) -> dict[str, object]:
    return {"model": model, "input": "The quick brown fox jumps over the lazy dog."}


def _targets(
    base: str, json_model: str, sse_model: str, *, sse_prefix: str = "", headers: dict[str, str] | None = None
) -> dict[str, Target]:
    h = headers or {}
    return {
        "json": Target(f"{base}/v1/chat/completions", chat_body(json_model, False), h),
        "sse": Target(f"{base}{sse_prefix}/v1/chat/completions", chat_body(sse_model, True), h),
        "emb": Target(f"{base}/v1/embeddings", emb_body(json_model), h),
    }


def _started(running: Running, service: procs.Service, models_url: str, headers: dict[str, str]) -> Running:
    """Time to the first 200 on /v1/models, then idle RSS (after a short settle)."""
    running.service = service
    try:
        running.start_s = procs.wait_ok(models_url, service.started, START_TIMEOUT, service.proc, headers)
    except (RuntimeError, TimeoutError) as exc:
        running.unavailable = f"did not start: {exc}; log: {service.log_tail(2)[-300:]}"
        return running
    time.sleep(1.0)
    running.rss_idle_mb = service.rss_mb()
    return running


def start_direct(ctx: Context, nginx: procs.Service, nginx_start_s: float) -> Running:
    """wrk straight to nginx: the upstream's own cost, the baseline for 'added latency'."""
    running = Running("direct", "direct (nginx)", start_s=nginx_start_s, rss_idle_mb=nginx.rss_mb())
    running.targets = _targets(ctx.upstream, MODEL, MODEL, sse_prefix="/stream")
    running.notes.append("nginx on the load CPU; its process is stopped with the upstream")
    return running


def start_floor(ctx: Context) -> Running:
    port = procs.free_port()
    cmd = [*procs.pin(ctx.gateway_cpu), sys.executable, str(BENCH_DIR / "floor.py"), str(port), ctx.upstream]
    service = procs.Service("floor", cmd, log_dir=ctx.tmp)
    base = f"http://{procs.HOST}:{port}"
    running = Running("floor", "aiohttp floor")
    running.targets = _targets(base, MODEL, MODEL, sse_prefix="/stream")
    return _started(running, service, f"{base}/v1/models", {})


def start_bare(ctx: Context, server: str = "bare") -> Running:
    """``bare.py``: Super Ollama's backend client behind no web framework (``bare``: the least a Python
    proxy can do) or behind aiohttp's web server (``aiohttp``: ``floor.py`` with our client instead of
    aiohttp's). Served from this checkout's ``src`` (the client is ``superollama.gateway.h1``)."""
    port = procs.free_port()
    script = [sys.executable, str(BENCH_DIR / "bare.py"), str(port), ctx.upstream, "--server", server]
    name, label = ("bare", "bare relay (no framework)") if server == "bare" else ("floor-h1", "aiohttp + h1")
    service = procs.Service(
        name, [*procs.pin(ctx.gateway_cpu), *script], log_dir=ctx.tmp, env={"PYTHONPATH": str(REPO / "src")}
    )
    base = f"http://{procs.HOST}:{port}"
    running = Running(name, label)
    running.targets = _targets(base, MODEL, MODEL, sse_prefix="/stream")
    return _started(running, service, f"{base}/v1/models", {})


def ensure_litellm(log: Callable[[str], None]) -> tuple[Path | None, str | None]:
    """bench/.venv-litellm with ``litellm[proxy]``: (its litellm binary, None) or (None, why not)."""
    binary = LITELLM_VENV / "bin" / "litellm"
    if binary.exists():
        return binary, None
    log(f"installing litellm[proxy] into {LITELLM_VENV} (a few minutes) …")
    pip_log = BENCH_DIR / "results" / "litellm-install.log"
    pip_log.parent.mkdir(exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True, capture_output=True)
        with pip_log.open("wb") as out:
            pip = [str(LITELLM_VENV / "bin" / "pip"), "install", "--disable-pip-version-check"]
            done = subprocess.run(
                [*pip, "litellm[proxy]"],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=1800,
                check=False,
            )
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"install failed: {exc}"
    if done.returncode != 0 or not binary.exists():
        tail = pip_log.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
        return None, f"pip install 'litellm[proxy]' failed: {tail[0][:200]} (see {pip_log})"
    return binary, None


def litellm_config(upstream: str) -> str:
    """model ``bench`` → openai/bench at nginx; ``bench-sse`` the same at nginx's streaming path."""
    models = []
    for name, base in (("bench", f"{upstream}/v1"), ("bench-sse", f"{upstream}/stream/v1")):
        params = {"model": f"openai/{MODEL}", "api_base": base, "api_key": "bench"}
        models.append({"model_name": name, "litellm_params": params})
    config = {
        "model_list": models,
        "litellm_settings": {"telemetry": False, "set_verbose": False, "drop_params": True},
        "general_settings": {"master_key": LITELLM_KEY},
    }
    return json.dumps(config, indent=2)  # YAML is a superset of JSON


def start_litellm(ctx: Context, log: Callable[[str], None]) -> Running:
    running = Running("litellm", "LiteLLM proxy (1 worker, no DB)")
    binary, why = ensure_litellm(log)
    if binary is None:
        running.unavailable = why
        return running
    config = ctx.tmp / "litellm.yaml"
    config.write_text(litellm_config(ctx.upstream))
    port = procs.free_port()
    env: dict[str, str | None] = {
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no download of the cost map at start
        "LITELLM_LOG": "ERROR",
        "LITELLM_TELEMETRY": "False",
        "DATABASE_URL": None,  # no DB (an empty value is an error to LiteLLM)
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [*procs.pin(ctx.gateway_cpu), str(binary), "--config", str(config)]
    cmd += ["--host", procs.HOST, "--port", str(port), "--num_workers", "1"]
    service = procs.Service("litellm", cmd, log_dir=ctx.tmp, env=env, cwd=ctx.tmp)
    base = f"http://{procs.HOST}:{port}"
    headers = {"Authorization": f"Bearer {LITELLM_KEY}"}
    running.targets = _targets(base, "bench", "bench-sse", headers=headers)
    running.notes.append("master key set (LiteLLM refuses to start without one): its auth check is ON")
    return _started(running, service, f"{base}/v1/models", headers)


def superollama_cli(url: str, *args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``superollama --url URL ARGS`` from this checkout; ``home`` so that no fallback to the registry
    (when the server can't be reached) ever touches the user's own home."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("SUPEROLLAMA_API_KEY", None)
    if home is not None:
        env["SUPEROLLAMA_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "superollama.cli", "--url", url, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def create_key(base: str, home: Path, key_args: tuple[str, ...]) -> tuple[str, str] | str:
    """``superollama keys create ARGS --json`` against the server: (key, key id), or why not."""
    done = superollama_cli(base, "keys", "create", *key_args, "--json", home=home)
    if done.returncode != 0:
        return f"`keys create` exited {done.returncode}: {(done.stderr or done.stdout).strip()[-300:]}"
    if "no server at" in done.stderr:
        return f"`keys create` did not reach the server: {done.stderr.strip()[-300:]}"
    try:
        issued = json.loads(done.stdout)
        return str(issued["key"]), str(issued["id"])
    except (ValueError, KeyError, TypeError):
        return f"`keys create --json` printed no key: {done.stdout.strip()[-300:]!r}"


def _connect(base: str, upstream: str, home: Path) -> str | None:
    """Connections ``fake`` (JSON path) and ``fakesse`` (nginx's /stream path): None, or why not."""
    wanted = {"fake": upstream, "fakesse": f"{upstream}/stream"}
    has_cli = superollama_cli(base, "connect", "--help", home=home).returncode == 0
    for name, url in wanted.items():
        if has_cli:
            done = superollama_cli(base, "connect", "openai", url, "--name", name, home=home)
            if done.returncode != 0:
                return f"needs connections: `connect` failed: {(done.stderr or done.stdout).strip()[-300:]}"
            continue
        body = {"kind": "openai", "url": url, "name": name}
        status, raw, _ = procs.http_json("POST", f"{base}/admin/v1/connections", body)
        if status in (404, 405):
            return "needs connections (no `superollama connect` and no POST /admin/v1/connections yet)"
        if status >= 300:
            return f"needs connections: POST /admin/v1/connections → {status} {raw[:300]!r}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        _, raw, _ = procs.http_json("GET", f"{base}/v1/models")
        ids = {m.get("id") for m in json.loads(raw).get("data", [])}
        if {f"fake/{MODEL}", f"fakesse/{MODEL}"} <= ids:
            return None
        time.sleep(0.2)
    return f"needs connections: fake/{MODEL} and fakesse/{MODEL} never listed in /v1/models ({sorted(ids)})"


def start_superollama(ctx: Context, variant: Variant) -> Running:
    """Serve from this checkout, connect ``fake``/``fakesse`` to nginx, then create the variant's key."""
    running = Running(variant.name, variant.label, notes=list(variant.notes))
    home = ctx.tmp / f"home-{variant.name}"
    running.home = home
    port = procs.free_port()
    env: dict[str, str | None] = {
        "SUPEROLLAMA_HOME": str(home),
        "SUPEROLLAMA_BUNDLED_MODEL": "false",
        "SUPEROLLAMA_LOG_LEVEL": "WARNING",
        "SUPEROLLAMA_AUTH": "auto",
        # nothing the harness's own environment sets may change what is measured
        "SUPEROLLAMA_DATABASE_URL": None,
        "SUPEROLLAMA_API_KEY": None,
        "SUPEROLLAMA_OTLP_ENDPOINT": None,
        "SUPEROLLAMA_OPIK_ENABLED": "false",
        "SUPEROLLAMA_EVENTS_WEBHOOK": None,
        "SUPEROLLAMA_CAPTURE_CONTENT": "false",
        "PYTHONPATH": str(REPO / "src"),
        **variant.env,
    }
    running.redis_url = env.get("SUPEROLLAMA_REDIS_URL")
    cmd = [*procs.pin(ctx.gateway_cpu), sys.executable, "-m", "superollama.cli", "serve"]
    cmd += ["--host", procs.HOST, "--port", str(port), *variant.serve_flags]
    service = procs.Service(variant.name, cmd, log_dir=ctx.tmp, env=env, cwd=REPO)
    base = f"http://{procs.HOST}:{port}"
    _started(running, service, f"{base}/v1/models", dict(variant.headers))
    if running.unavailable is None:
        running.unavailable = _connect(base, ctx.upstream, home)
    headers = dict(variant.headers)
    if running.unavailable is None and variant.key_args:
        issued = create_key(base, home, variant.key_args)
        if isinstance(issued, str):
            running.unavailable = f"needs an API key: {issued}"
        else:
            key, running.key_id = issued
            headers["Authorization"] = f"Bearer {key}"
    running.targets = _targets(base, f"fake/{MODEL}", f"fakesse/{MODEL}", headers=headers)
    return running


def governance_notes(running: Running) -> list[str]:
    """What shows that the variant's features really ran (after its sanity requests): Redis buckets of
    its key, /metrics, access lines in its log. Notes for the table, one per feature."""
    if running.service is None or not running.name.startswith("superollama"):
        return []
    notes = []
    if running.redis_url is not None and running.key_id is not None:
        notes.append(_redis_note(running.redis_url, running.key_id))
    base = next(iter(running.targets.values())).url.split("/v1/", 1)[0] if running.targets else None
    if base is not None:
        try:
            status, raw, _ = procs.http_json("GET", f"{base}/metrics")
            series = sum(
                1 for line in raw.decode(errors="replace").splitlines() if line.startswith("superollama_")
            )
            notes.append(f"GET /metrics {status}" + (f" ({series} series)" if status == 200 else ""))
        except OSError as exc:
            notes.append(f"GET /metrics failed: {exc}")
    return notes


def _redis_note(url: str, key_id: str) -> str:
    try:
        import redis
    except ImportError:
        return "redis (Python) not installed: Redis buckets not checked"
    try:
        client = redis.Redis.from_url(url, socket_timeout=2)
        found = sorted(k.decode() for k in client.scan_iter(match=f"*{{{key_id}}}*", count=1000))
        calls = int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
        client.close()
    except (redis.RedisError, OSError) as exc:
        return f"Redis at {url} unreachable ({exc}): the limiter runs fail-open, unchecked"
    # A bucket of a limit this large is back to full (and deleted) moments after the limiter's local
    # allowance is given back: the scripts it ran show the limiter used Redis even when no bucket is left.
    if not found and calls == 0:
        return f"no Redis bucket for {key_id} and no EVALSHA after the sanity requests: Redis unused"
    return f"Redis buckets {', '.join(found) or '(none left: full again)'}; {calls} EVALSHA calls so far"


def ledger_and_log_notes(running: Running) -> list[str]:
    """Rows in the usage ledger and access lines in the server's log so far (the ledger writes in
    batches, every 2 s or 500 rows, so the last ones may still be pending)."""
    if running.home is None or running.service is None:
        return []
    notes = []
    db = running.home / "registry.db"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            rows = conn.execute("SELECT count(*) FROM usage").fetchone()[0]
        notes.append(f"usage ledger: {rows:,} rows")
    except sqlite3.Error as exc:
        notes.append(f"usage ledger not read: {exc}")
    if running.redis_url is not None:
        notes.append(_evalsha_note(running.redis_url))
    try:
        with running.service.log_path.open("rb") as log:
            lines = sum(1 for line in log if b'"superollama.access"' in line)
        notes.append(f"access log: {lines:,} lines")
    except OSError as exc:
        notes.append(f"access log not read: {exc}")
    return notes


def _evalsha_note(url: str) -> str:
    """Scripts the limiter ran in Redis so far (admissions, allowances and settlements): with the local
    allowance far fewer than the requests, never none."""
    try:
        import redis

        client = redis.Redis.from_url(url, socket_timeout=2)
        calls = int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
        client.close()
    except Exception as exc:  # ImportError, OSError, redis.RedisError
        return f"Redis script calls not read: {exc}"
    return f"Redis: {calls:,} EVALSHA calls"
