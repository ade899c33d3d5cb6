"""schemathesis against a real ``superollama serve`` (the bundled SmolLM2 on llama.cpp, SQLite): every
operation of ``/openapi.json``, a bounded number of examples each, with the checks ``not_a_server_error``,
``status_code_conformance`` and ``response_schema_conformance``: no 5xx, no status or body the document
does not declare.

The document is the one the server publishes, narrowed for the run only where the generator would
otherwise never reach real code or take minutes per request (``_narrow``):
- the client APIs' ``model`` is the one real model (random names all end in a 404 before any code runs),
  and so is a vector store's ``embedding_model`` (the server's default for them, too);
- generation is bounded (``max_tokens`` and its kin at most 8, and required), so that one example is one
  short llama.cpp call, not a 4096-token ramble;
- the event log's live stream is bounded too (``timeout`` at most 2 s, and required): unbounded, it
  is endless by design, and the run sat waiting out the 120 s request timeout on it;
- ``apply``'s ``prune`` stays false: a random fleet file with prune deletes the model under test;
- Anthropic's ``x-api-key`` header is not generated: the run authenticates with an admin key.
No operation is excluded: the four that delete, rename or disable the model under test run in a second
pass, after the model is shown to answer still.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.e2e.conftest import ServerProcess

# About 10 minutes on 2 cores (128 operations x EXAMPLES, the inference ones through llama.cpp).
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

MODEL = "smollm2:135m"
EXAMPLES = int(os.environ.get("SUPEROLLAMA_FUZZ_EXAMPLES", "5"))
CHECKS = "not_a_server_error,status_code_conformance,response_schema_conformance"
_CLIENT_PREFIXES = ("/v1/", "/v2/", "/api/")
# SUPEROLLAMA_FUZZ_PATHS: a regex of the paths to run (the first pass only), to try new operations first
ONLY = os.environ.get("SUPEROLLAMA_FUZZ_PATHS", "")
_TOKEN_LIMITS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
_BOUND = {"type": "integer", "minimum": 1, "maximum": 8}
_NO_MODEL_ENUM = ("/api/delete", "/api/copy", "/api/pull")  # random names: never the model under test
# Run after the rest (and after checking the model still answers): they delete, rename or disable the model
# under test when schemathesis draws its name from earlier responses, as it does.
_LAST = (
    "delete_api_delete",
    "delete_admin_v1_models_name",
    "post_admin_v1_rename",
    "post_admin_v1_models_name_disable",
)


def _narrow(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    bounded = 0
    for path, methods in doc["paths"].items():
        for op in methods.values():
            op["parameters"] = [p for p in op["parameters"] if p["name"] != "x-api-key"]
            for param in op["parameters"]:
                if path.endswith("/events/stream") and param["name"] == "timeout":
                    param["schema"] = {"type": "number", "exclusiveMinimum": 0, "maximum": 2}
                    param["required"] = True
                    bounded += 1
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if not body or "properties" not in body:
                continue
            props = body["properties"]
            if path.startswith(_CLIENT_PREFIXES) and "model" in props and path not in _NO_MODEL_ENUM:
                props["model"] = {"type": "string", "enum": [MODEL]}
            if "embedding_model" in props:
                props["embedding_model"] = {"type": "string", "enum": [MODEL]}
            for limit in _TOKEN_LIMITS:
                if limit in props:
                    props[limit] = dict(_BOUND)
                    body["required"] = sorted({*body.get("required", []), limit})
            if path in ("/api/chat", "/api/generate"):
                options = props["options"]
                options["properties"]["num_predict"] = dict(_BOUND)
                options["required"] = ["num_predict"]
                body["required"] = sorted({*body.get("required", []), "options"})
            if path == "/admin/v1/apply":
                props["prune"] = {"const": False}
    assert bounded == 1, "the event stream's timeout was not found: the run would wait out endless streams"
    return doc


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = ServerProcess(tmp_path_factory.mktemp("fuzz-home"), SUPEROLLAMA_RAG_EMBEDDING_MODEL=MODEL).start()
    try:
        yield srv
    finally:
        srv.stop()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(
    fuzz_server: ServerProcess, tmp_path: Path
) -> None:
    made = fuzz_server.admin("POST", "/admin/v1/keys", json={"name": "fuzz-admin", "role": "admin"})
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    auth = {"Authorization": f"Bearer {key}"}
    published = httpx.get(fuzz_server.url + "/openapi.json", timeout=30).json()
    assert published["openapi"] == "3.1.0"
    schema = tmp_path / "openapi.json"
    schema.write_text(json.dumps(_narrow(published)))
    started = time.monotonic()
    if ONLY:
        only = _schemathesis(schema, fuzz_server.url, key, tmp_path, "--include-path-regex", ONLY)
        print(f"schemathesis ({ONLY}): {time.monotonic() - started:.0f} s\n{only.stdout[-3000:]}")
        assert only.returncode == 0, f"schemathesis failed:\n{only.stdout[-20000:]}\n{only.stderr[-3000:]}"
        return
    first = _schemathesis(schema, fuzz_server.url, key, tmp_path, "--exclude-operation-id", *_LAST)
    # the server is still whole: the model under test answers
    answer = httpx.post(
        fuzz_server.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
        headers=auth,
        timeout=120,
    )
    assert answer.status_code == 200, answer.text
    last = _schemathesis(schema, fuzz_server.url, key, tmp_path, "--include-operation-id", *_LAST)
    print(f"schemathesis: {len(published['paths'])} paths, {time.monotonic() - started:.0f} s")
    for run in (first, last):
        print(run.stdout[-1500:])
        failed = f"schemathesis failed (rc {run.returncode}):\n{run.stdout[-20000:]}\n{run.stderr[-3000:]}"
        assert run.returncode == 0, failed
        assert " passed" in run.stdout


def _schemathesis(
    schema: Path, url: str, key: str, tmp_path: Path, *select: str
) -> subprocess.CompletedProcess[str]:
    flag, *ids = select
    return subprocess.run(
        [
            sys.executable, "-m", "schemathesis.cli", "run", str(schema),
            "--url", url,
            "--checks", CHECKS,
            "--max-examples", str(EXAMPLES),
            "--phases", "examples,fuzzing",
            "--workers", "1",
            "--seed", "1",
            "--request-timeout", "120",
            "--suppress-health-check", "all",
            "--header", f"Authorization: Bearer {key}",
            "--no-color",
            *(arg for op in ids for arg in (flag, op)),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,  # its cache (.schemathesis/) goes there, not into the checkout
        timeout=1000,
        check=False,
    )  # fmt: skip
