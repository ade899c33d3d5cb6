"""Deployments end to end: two real versions on llama.cpp (the bundled SmolLM2 and a ``cp`` of it), the CLI
as the admin API's client, and clients of the OpenAI and Ollama APIs naming the deployment.

The tests run in order on one server: deploy → split → swap under load → stages → rollback → pause.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml
from tests.e2e.conftest import ServerProcess, wait_until
from tests.e2e.test_workers import pinned, start

A, B = "smollm2:135m", "smollm2:135m-b"
TARGET = "X-Superollama-Target"


@pytest.fixture(scope="module")
def srv(server: ServerProcess) -> ServerProcess:
    done = server.cli("cp", A, B)
    assert done.returncode == 0, done.stderr
    return server


def _chat(srv: ServerProcess, model: str, user: str | None = None, **extra: object) -> httpx.Response:
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": 4,
    }
    if user is not None:
        body["user"] = user
    return httpx.post(srv.url + "/v1/chat/completions", json={**body, **extra}, timeout=120)


def test_deploy_makes_a_model_name_for_both_apis(srv: ServerProcess) -> None:
    done = srv.cli("deploy", "chat", "--target", f"{A}=100")
    assert done.returncode == 0, done.stderr
    assert "chat: enabled" in done.stdout and A in done.stdout
    out = _chat(srv, "chat")
    assert out.status_code == 200, out.text
    assert out.headers[TARGET] == A and out.json()["choices"][0]["message"]["content"]
    ollama = httpx.post(
        srv.url + "/api/chat",
        json={
            "model": "chat",
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": False,
            "options": {"num_predict": 4},
        },
        timeout=120,
    )
    assert ollama.status_code == 200, ollama.text
    assert ollama.json()["model"] == "chat" and ollama.json()["message"]["content"]
    assert "chat" in [m["id"] for m in httpx.get(srv.url + "/v1/models").json()["data"]]
    assert httpx.get(srv.url + "/v1/models/chat").json()["id"] == "chat"
    assert "chat" in [m["name"] for m in httpx.get(srv.url + "/api/tags").json()["models"]]
    shown = httpx.post(srv.url + "/api/show", json={"model": "chat"}, timeout=30)
    assert shown.status_code == 200 and "completion" in shown.json()["capabilities"], shown.text
    # a plain version stays routable by its own name
    assert _chat(srv, B).status_code == 200


def test_bad_deployments_are_clear_errors(srv: ServerProcess) -> None:
    missing = srv.admin("PUT", "/admin/v1/deployments/x", json={"targets": ["nope:1=100"]})
    assert missing.status_code == 400 and "neither a version" in missing.text
    assert srv.cli("cp", A, "taken").returncode == 0  # the version taken:latest answers to "taken"
    clash = srv.admin("PUT", "/admin/v1/deployments/taken", json={"targets": [f"{A}=1"]})
    assert clash.status_code == 409 and "already a model's name" in clash.text
    assert srv.cli("rm", "taken").returncode == 0
    colon = srv.admin("PUT", "/admin/v1/deployments/a:b", json={"targets": [f"{A}=1"]})
    assert colon.status_code == 400 and "lowercase letters" in colon.text
    zero = srv.cli("deploy", "x", "--target", f"{A}=0")
    assert zero.returncode == 1 and "more than 0" in zero.stderr
    unknown = _chat(srv, "chat@nostage")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_sticky_split_by_user(srv: ServerProcess) -> None:
    done = srv.cli("split", "chat", f"{A}=50", f"{B}=50", "--sticky", "user")
    assert done.returncode == 0, done.stderr
    seen: dict[str, str] = {}
    for n in range(16):
        out = _chat(srv, "chat", user=f"user-{n}")
        assert out.status_code == 200, out.text
        seen[f"user-{n}"] = out.headers[TARGET]
    assert set(seen.values()) == {A, B}  # 16 users at 50/50: both targets answer
    for user, target in list(seen.items())[:6]:  # and each user stays on its target
        assert _chat(srv, "chat", user=user).headers[TARGET] == target
    shown = srv.cli("deployments", "show", "chat")
    assert shown.returncode == 0 and "50.0%" in shown.stdout and "sticky user" in shown.stdout


def _swap_under_load(srv: ServerProcess, model: str, to: str) -> tuple[Counter[str], list[str], str]:
    """8 clients chat with ``model`` without pause while it is deployed on ``to``: what answered, what
    failed, and the deploy's JSON answer."""
    stop = threading.Event()
    answered: Counter[str] = Counter()
    failures: list[str] = []
    lock = threading.Lock()

    def load() -> None:
        with httpx.Client(timeout=120) as client:
            while not stop.is_set():
                body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
                try:
                    out = client.post(srv.url + "/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    with lock:
                        failures.append(repr(exc))
                    continue
                with lock:
                    if out.status_code == 200:
                        answered[out.headers[TARGET]] += 1
                    else:
                        failures.append(f"{out.status_code} {out.text[:200]}")

    threads = [threading.Thread(target=load) for _ in range(8)]
    for t in threads:
        t.start()
    try:
        assert wait_until(lambda: sum(answered.values()) >= 8, timeout=60), (answered, failures)
        done = srv.cli("deploy", model, "--target", f"{to}=100", "--json")
        assert done.returncode == 0, done.stderr
        assert wait_until(lambda: answered[to] >= 16, timeout=90), (answered, failures)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=130)
    return answered, failures, done.stdout


def test_swap_under_load_at_c8_fails_no_request(srv: ServerProcess) -> None:
    assert srv.cli("deploy", "chat", "--target", f"{A}=100").returncode == 0
    answered, failures, reply = _swap_under_load(srv, "chat", B)
    assert failures == [] and answered[A] > 0, (answered, failures)
    assert json.loads(reply)["swap"]["mode"] == "overlap"
    # the old version drained and stopped; the new one serves
    assert wait_until(lambda: {i["version"] for i in srv.instances()} == {B}, timeout=90), srv.instances()


def test_stop_first_swap_queues_requests_and_fails_none(fresh_server: ServerProcess) -> None:
    """The path for a node whose memory cannot hold both: the old instance stops, then the new starts."""
    fresh_server.env["SUPEROLLAMA_DEPLOY_SWAP"] = "stop-first"
    srv = fresh_server.start()
    assert srv.cli("cp", A, B).returncode == 0
    assert srv.cli("deploy", "chat", "--target", f"{A}=100").returncode == 0
    answered, failures, reply = _swap_under_load(srv, "chat", B)
    assert failures == [] and answered[A] > 0, (answered, failures)
    swap = json.loads(reply)["swap"]
    assert swap["mode"] == "stop-first" and swap["reason"] == "set to stop-first"
    assert {i["version"] for i in srv.instances()} == {B}  # the old one stopped before the new started
    events = srv.admin("GET", "/admin/v1/events?target=chat&action=deployment.deploy").json()["events"]
    assert events[0]["detail"]["swap"]["mode"] == "stop-first"


def test_stage_promote_rollback_pause(srv: ServerProcess) -> None:
    done = srv.cli("deploy", "chat", "--stage", "staging", "--target", f"{A}=100")
    assert done.returncode == 0, done.stderr
    staged = _chat(srv, "chat@staging")
    assert staged.status_code == 200 and staged.headers[TARGET] == A
    assert _chat(srv, "chat").headers[TARGET] == B
    assert srv.cli("promote", "chat@staging").returncode == 0
    assert _chat(srv, "chat").headers[TARGET] == A
    back = srv.cli("rollback", "chat")
    assert back.returncode == 0, back.stderr
    assert _chat(srv, "chat").headers[TARGET] == B
    listed = srv.cli("deployments", "ls")
    assert "chat@staging" in listed.stdout and "paused" not in listed.stdout
    assert srv.cli("pause", "chat").returncode == 0
    paused = _chat(srv, "chat")
    assert paused.status_code == 404 and "disabled" in paused.json()["error"]["message"]
    assert "chat" not in [m["id"] for m in httpx.get(srv.url + "/v1/models").json()["data"]]
    assert srv.cli("resume", "chat").returncode == 0
    assert _chat(srv, "chat").status_code == 200
    assert srv.cli("deployments", "rm", "chat@staging").returncode == 0
    assert _chat(srv, "chat@staging").status_code == 404


def test_apply_is_idempotent_dry_runs_prunes_and_export_round_trips(
    srv: ServerProcess, tmp_path: Path
) -> None:
    """Last in the module: the fleet creates an admin key, and with a key the server asks for one."""
    exported = srv.cli("export")
    assert exported.returncode == 0, exported.stderr
    spec = yaml.safe_load(exported.stdout)
    assert {A, B} <= {m["name"] for m in spec["models"]} and spec["keys"] == []
    assert "chat" in [d["name"] for d in spec["deployments"]]
    spec["deployments"].append(
        {"name": "fleet-chat", "stage": "production", "sticky": "key", "enabled": True,
         "targets": [{"name": B, "weight": 100}]}
    )  # fmt: skip
    spec["keys"] = [{"name": "fleet-admin", "role": "admin"}]
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(yaml.safe_dump(spec))

    dry = srv.cli("apply", "-f", str(fleet), "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "+ deployment fleet-chat (create)" in dry.stdout and "+ key fleet-admin (create)" in dry.stdout
    assert "dry run" in dry.stdout
    assert srv.admin("GET", "/admin/v1/deployments/fleet-chat").status_code == 404

    done = srv.cli("apply", "-f", str(fleet))
    assert done.returncode == 0, done.stderr
    assert "2 change(s) applied" in done.stdout
    secret = re.search(r"key fleet-admin: (\S+)", done.stdout)
    assert secret is not None, done.stdout
    srv.env["SUPEROLLAMA_API_KEY"] = secret.group(1)  # the server now asks every client for a key
    auth = {"Authorization": f"Bearer {secret.group(1)}"}
    body = {"model": "fleet-chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    out = httpx.post(srv.url + "/v1/chat/completions", json=body, headers=auth, timeout=120)
    assert out.status_code == 200 and out.headers[TARGET] == B, out.text

    again = srv.cli("apply", "-f", str(fleet))
    assert again.returncode == 0 and "no changes" in again.stdout, again.stdout

    round_trip = srv.cli("export")
    assert round_trip.returncode == 0, round_trip.stderr
    back = yaml.safe_load(round_trip.stdout)
    assert [k["name"] for k in back["keys"]] == ["fleet-admin"]
    assert sorted(back["deployments"], key=str) == sorted(spec["deployments"], key=str)
    (tmp_path / "exported.yaml").write_text(round_trip.stdout)
    assert "no changes" in srv.cli("apply", "-f", str(tmp_path / "exported.yaml")).stdout

    spec["deployments"] = [d for d in spec["deployments"] if d["name"] != "fleet-chat"]
    fleet.write_text(yaml.safe_dump(spec))
    plain = srv.cli("apply", "-f", str(fleet))
    assert "no changes" in plain.stdout, plain.stdout  # without --prune nothing is removed
    pruned = srv.cli("apply", "-f", str(fleet), "--prune")
    assert pruned.returncode == 0 and "- deployment fleet-chat (delete)" in pruned.stdout, pruned.stdout
    assert srv.admin("GET", "/admin/v1/deployments/fleet-chat", headers=auth).status_code == 404
    assert srv.admin("GET", "/admin/v1/deployments/chat", headers=auth).status_code == 200
    assert "no changes" in srv.cli("apply", "-f", str(fleet), "--prune").stdout


def test_deployments_on_two_workers(tmp_path: Path) -> None:
    """``serve --workers 2``: a deployment made through the replica routes on both workers at once."""
    cluster = start(tmp_path)
    try:
        with pinned(cluster.url, 0) as w0, pinned(cluster.url, 1) as w1:
            workers = (w0, w1)

            def listed() -> list[bool]:
                return ["chat" in {m["id"] for m in w.get("/v1/models").json()["data"]} for w in workers]

            made = w1.put("/admin/v1/deployments/chat", json={"targets": [f"{A}=100"], "sticky": "header"})
            assert made.status_code == 200, made.text
            assert listed() == [True, True]
            for w in workers:
                body = {"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
                out = w.post("/v1/chat/completions", json=body, headers={"X-Session-Id": "s-1"})
                assert out.status_code == 200 and out.headers[TARGET] == A, out.text
            assert w0.post("/admin/v1/deployments/chat/pause").status_code == 200
            assert listed() == [False, False]
    finally:
        cluster.stop()
