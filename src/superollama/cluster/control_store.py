"""What the Ray head that ``serve --cluster`` starts is protected by: its control store on Redis, and
Ray's token authentication.

**Control store on Redis (GCS fault tolerance).** With ``RAY_REDIS_ADDRESS`` in its environment, the
head's GCS keeps the cluster's tables (nodes, actors, jobs, its key-value store) in Redis under the keys
``RAY{namespace}@…`` (``RAY_external_storage_namespace``) instead of in its memory. A head that dies and
is started again with the same address, port and namespace reads them back: the raylets of the other
nodes reconnect (within Ray's ``gcs_rpc_server_reconnect_timeout_s``, 60 s) and detached actors (our
instances and node agents) keep running. Ray's GCS cannot select a Redis database (it never sends
``SELECT``): a URL naming a database other than 0 is refused rather than silently written to database 0;
the namespace keeps clusters sharing one Redis apart instead. A password or user name in the URL is
honoured; Ray itself then puts it on its ``gcs_server``'s command line (visible in ``ps`` on the head's
machine): give Ray a Redis user of its own.

**Token authentication.** Ray 2.60 checks a shared token on its gRPC ports when ``RAY_AUTH_MODE=token``
(the token from ``RAY_AUTH_TOKEN``, or the file ``RAY_AUTH_TOKEN_PATH`` names). The control plane makes
one once (``ray_auth_token``: 256 random bits, a file of mode 0600 in its home), starts the head and
its own driver with the file's path (the token is in no environment and on no command line there), and
hands the token to a machine that joins with a valid join token (``admin/join.py``), whose agent gives
it to its ``ray start`` child through the environment.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

__all__ = ["RedisStore", "auth_env", "default_namespace", "ray_auth_token"]

_NAMESPACE_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class RedisStore:
    """Where the head's GCS keeps its tables: a Redis (database 0) and a key namespace of ours."""

    host: str
    port: int
    namespace: str
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never printed

    @classmethod
    def from_url(cls, url: str, namespace: str) -> RedisStore:
        """``redis://[user:password@]host[:port][/0]`` or ``rediss://…`` (TLS); ``ValueError`` saying why
        for anything Ray cannot honour."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"the Ray head's control store needs a redis:// or rediss:// URL, not {url!r}")
        if not parts.hostname:
            raise ValueError("the Ray head's control store URL names no host")
        db = parts.path.strip("/")
        if db not in ("", "0"):
            raise ValueError(
                f"the Ray head's control store cannot use Redis database {db}: Ray's GCS always writes to "
                "database 0 (it keeps clusters apart by a key namespace instead). Give "
                "SUPEROLLAMA_CLUSTER_REDIS_URL a URL without a database (or /0); the rate limits keep "
                "SUPEROLLAMA_REDIS_URL"
            )
        if parts.query:
            raise ValueError("the Ray head's control store URL takes no options (?…): Ray would ignore them")
        if not namespace or not set(namespace) <= _NAMESPACE_OK:
            raise ValueError(
                f"cluster_store_namespace {namespace!r}: letters, digits, '-', '_' or '.' (Ray's keys are "
                "RAY{namespace}@TABLE)"
            )
        try:
            port = parts.port or 6379
        except ValueError as exc:
            raise ValueError(f"the Ray head's control store URL: {exc}") from None
        return cls(
            host=parts.hostname,
            port=port,
            namespace=namespace,
            tls=parts.scheme == "rediss",
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
        )

    def head_env(self) -> dict[str, str]:
        """The environment ``ray start --head`` (and so its GCS) needs for this store."""
        address = f"{self.host}:{self.port}"
        return {
            "RAY_REDIS_ADDRESS": f"rediss://{address}" if self.tls else address,
            "RAY_external_storage_namespace": self.namespace,
        }

    def head_args(self) -> list[str]:
        """``ray start`` options for the store's credentials (Ray reads them nowhere else)."""
        args = []
        if self.username:
            args.append(f"--redis-username={self.username}")
        if self.password:
            args.append(f"--redis-password={self.password}")
        return args

    def clear(self) -> int:
        """Delete the namespace's keys (a cluster ended on purpose: the next head starts afresh)."""
        from ray._raylet import del_key_prefix_from_storage  # type: ignore[attr-defined]

        done = del_key_prefix_from_storage(
            self.host, self.port, self.username or "", self.password or "", self.tls, self.namespace
        )
        return int(bool(done))


def default_namespace(home: Path) -> str:
    """A namespace of this control plane's own, the same at each start: its machine and home."""
    digest = hashlib.sha256(f"{socket.gethostname()}:{home.resolve()}".encode()).hexdigest()
    return f"superollama-{digest[:12]}"


def ray_auth_token(path: Path) -> str:
    """The cluster's Ray token: read from ``path``, or made once there (mode 0600, created exclusively
    so two starts never write two tokens)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"{path} is empty: remove it to make a new Ray token") from None
        return token
    token = secrets.token_hex(32)
    with os.fdopen(fd, "w") as out:
        out.write(token)
    return token


def auth_env(token_path: Path | None) -> dict[str, str]:
    """Ray's authentication environment for a process of the control plane's machine (head, driver):
    token mode reading ``token_path``; explicitly off otherwise (Ray would turn it on by itself when a
    ``~/.ray/auth_token`` exists, with a token nobody else has)."""
    if token_path is None:
        return {"RAY_AUTH_MODE": "disabled"}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
