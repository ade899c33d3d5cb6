"""The Ray head's control store URL and Ray's token (``cluster/control_store.py``): what Ray can honour is
taken, what it cannot is refused with a message that says why; the token is made once, mode 0600."""

from __future__ import annotations

from pathlib import Path

import pytest

from superollama.cluster.control_store import RedisStore, auth_env, default_namespace, ray_auth_token


def test_a_plain_url_is_host_port_and_our_namespace() -> None:
    store = RedisStore.from_url("redis://10.0.0.5", "so-a")
    assert (store.host, store.port, store.tls) == ("10.0.0.5", 6379, False)
    assert store.head_env() == {
        "RAY_REDIS_ADDRESS": "10.0.0.5:6379",
        "RAY_external_storage_namespace": "so-a",
    }
    assert store.head_args() == []


def test_credentials_and_tls_are_honoured_and_never_printed() -> None:
    store = RedisStore.from_url("rediss://ray:p%40ss@cache:6380/0", "so-a")
    assert store.head_env()["RAY_REDIS_ADDRESS"] == "rediss://cache:6380"
    assert store.head_args() == ["--redis-username=ray", "--redis-password=p@ss"]
    assert "p@ss" not in repr(store)


@pytest.mark.parametrize(
    ("url", "namespace", "says"),
    [
        ("redis://cache:6379/3", "so-a", "cannot use Redis database 3"),
        ("http://cache:6379", "so-a", "redis:// or rediss://"),
        ("redis://cache:6379?ssl_cert_reqs=none", "so-a", "takes no options"),
        ("redis://cache:6379", "a@b", "letters, digits"),
    ],
)
def test_what_ray_cannot_honour_is_refused(url: str, namespace: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        RedisStore.from_url(url, namespace)


def test_the_default_namespace_is_stable_per_home(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    assert default_namespace(one) == default_namespace(one) != default_namespace(two)
    RedisStore.from_url("redis://cache", default_namespace(one))  # a namespace Ray accepts


def test_the_token_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "home" / "ray-auth-token"
    token = ray_auth_token(path)
    assert len(token) == 64 and path.stat().st_mode & 0o777 == 0o600
    assert ray_auth_token(path) == token
    path.chmod(0o644)
    assert ray_auth_token(path) == token and path.stat().st_mode & 0o777 == 0o600
    assert auth_env(path) == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)}
    assert auth_env(None) == {"RAY_AUTH_MODE": "disabled"}
