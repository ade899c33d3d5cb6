"""``Settings``: where values come from (given, then ``SUPEROLLAMA_*``, then defaults), how each kind of
value is taken (as pydantic's lax mode took it, so an environment that worked before still works), what
a bad value gets (one error naming every bad setting, and the CLI's one line per setting), and secrets
that never show (``repr``, ``superollama config``, a URL's password)."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from superollama.settings import DEFAULT_PORT, Secret, Settings, SettingsError, described, shown

ROOT = Path(__file__).resolve().parents[2]


def test_values_given_then_the_environment_then_the_defaults() -> None:
    environ = {"SUPEROLLAMA_PORT": "8123", "superollama_host": "0.0.0.0", "SUPEROLLAMA_WORKERS": "3"}
    settings = Settings.from_env(environ, workers=2)
    assert settings.port == 8123  # a string of the environment, as the field's type
    assert settings.host == "0.0.0.0"  # names matched whatever their case
    assert settings.workers == 2  # a value given wins over the environment
    assert settings.keep_alive == 300.0  # neither: the default


def test_settings_alone_read_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUPEROLLAMA_PORT", "8123")
    assert Settings().port == DEFAULT_PORT
    assert Settings.from_env().port == 8123


def test_unknown_superollama_variables_are_left_alone() -> None:
    settings = Settings.from_env({"SUPEROLLAMA_TEST_SLOW": "1", "SUPEROLLAMA_NOT_A_SETTING": "x"})
    assert settings == Settings()


@pytest.mark.parametrize(
    ("field", "given", "taken"),
    [
        ("metrics", "off", False),
        ("metrics", "No", False),
        ("metrics", "0", False),
        ("metrics", "TRUE", True),
        ("metrics", "on", True),
        ("metrics", 1, True),
        ("workers", " 4 ", 4),
        ("workers", 4.0, 4),
        ("keep_alive", "0.5", 0.5),
        ("keep_alive", 2, 2.0),
        ("home", "/srv/so", Path("/srv/so")),
        ("auth", "on", "on"),
        ("database_url", None, None),
        ("api_key", "sk-1", Secret("sk-1")),
    ],
)
def test_each_kind_of_value_is_taken_as_pydantic_took_it(field: str, given: object, taken: object) -> None:
    value = getattr(Settings(**{field: given}), field)
    assert value == taken and type(value) is type(taken)


@pytest.mark.parametrize(
    ("values", "why"),
    [
        ({"port": "eighty"}, "port: 'eighty': give a whole number"),
        ({"port": True}, "port: True: give a whole number"),
        ({"workers": 1.5}, "workers: 1.5: give a whole number"),
        ({"port": 70000}, "port: 70000: must be at most 65535"),
        ({"workers": -1}, "workers: -1: must be at least 0"),
        ({"load_timeout": 0}, "load_timeout: 0.0: must be more than 0"),
        ({"metrics": "perhaps"}, "metrics: 'perhaps': give true or false"),
        ({"auth": "maybe"}, "auth: 'maybe': choose one of auto, on, off"),
        ({"host": 5}, "host: 5: give a string"),
        ({"storage_roots": "fast=relative"}, "storage_roots: storage root 'fast=relative': give an absolute"),
    ],
)
def test_a_bad_value_is_named_with_why(values: dict[str, object], why: str) -> None:
    with pytest.raises(SettingsError) as caught:
        Settings(**values)
    assert str(caught.value).startswith(why)


def test_every_bad_value_is_named_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"SUPEROLLAMA_PORT": "x", "SUPEROLLAMA_METRICS": "maybe"}, workers=-2)
    assert [name for name, _ in caught.value.problems] == ["port", "workers", "metrics"]


def test_a_secret_given_badly_is_not_repeated() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings(api_key=12345)  # type: ignore[arg-type]
    assert "12345" not in str(caught.value)


def test_replace_checks_the_new_values_and_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(port=9000)
    monkeypatch.setenv("SUPEROLLAMA_HOST", "10.0.0.1")
    moved = settings.replace(port="9001")
    assert (moved.port, moved.host, settings.port) == (9001, "127.0.0.1", 9000)
    with pytest.raises(SettingsError, match="port"):
        settings.replace(port=-1)


def test_settings_are_frozen_and_travel_to_worker_processes() -> None:
    settings = Settings(api_key="sk-secret", home=Path("/srv/so"))
    with pytest.raises(AttributeError):
        settings.port = 1  # type: ignore[misc]
    copy = pickle.loads(pickle.dumps(settings))
    assert copy == settings and copy.api_key is not None
    assert copy.api_key.get_secret_value() == "sk-secret"


def test_secrets_never_show() -> None:
    settings = Settings(api_key="sk-secret", otlp_headers="authorization=Bearer%20t")
    assert "sk-secret" not in repr(settings) and "Bearer" not in repr(settings)
    assert str(settings.api_key) == "**********"
    assert shown(settings.api_key) == "**********"
    assert shown("redis://:hunter2@cache:6379/0") == "redis://:**********@cache:6379/0"
    assert shown("postgresql://so:hunter2@db/so") == "postgresql://so:**********@db/so"
    assert shown("redis://cache:6379/0") == "redis://cache:6379/0"
    assert shown(8) == 8


def test_every_setting_says_what_it_is_for() -> None:
    names = [name for name, _ in described(Settings)]
    assert names[:3] == ["home", "host", "port"] and len(names) == len(set(names)) > 60
    assert all(description for _, description in described(Settings))


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "superollama.cli", *args],
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_config_prints_the_environment_with_no_secret_in_clear(tmp_path: Path) -> None:
    env = {
        "SUPEROLLAMA_HOME": str(tmp_path),
        "SUPEROLLAMA_PORT": "8123",
        "SUPEROLLAMA_API_KEY": "sk-secret",
        "SUPEROLLAMA_REDIS_URL": "redis://:hunter2@127.0.0.1:6379/0",
    }
    done = _cli("config", "--json", env=env)
    assert done.returncode == 0, done.stderr
    values = {row["variable"]: row["value"] for row in json.loads(done.stdout)}
    assert values["SUPEROLLAMA_PORT"] == 8123 and values["SUPEROLLAMA_HOME"] == str(tmp_path)
    assert values["SUPEROLLAMA_API_KEY"] == "**********"
    assert values["SUPEROLLAMA_REDIS_URL"] == "redis://:**********@127.0.0.1:6379/0"
    assert "sk-secret" not in done.stdout and "hunter2" not in done.stdout


def test_the_cli_names_each_bad_variable_in_one_line(tmp_path: Path) -> None:
    done = _cli(
        "config", env={"SUPEROLLAMA_HOME": str(tmp_path), "SUPEROLLAMA_PORT": "x", "SUPEROLLAMA_AUTH": "no"}
    )
    assert done.returncode == 1
    assert "SUPEROLLAMA_PORT: 'x': give a whole number; SUPEROLLAMA_AUTH: 'no': choose one of" in done.stderr
    assert "Traceback" not in done.stderr
