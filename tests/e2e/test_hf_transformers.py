"""The seed's official example, end to end: `superollama pull hf://…` of a Hugging Face model folder
(from a local stand-in of the hub with the real files — the real hub is unreachable here), served by the
transformers runtime, called with the official OpenAI SDK. Chat: SmolLM2 as safetensors (derived from the
real GGUF); embeddings: the real all-MiniLM-L6-v2 sentence-transformers folder."""

from __future__ import annotations

import json
from pathlib import Path

from openai import OpenAI
from tests.e2e.conftest import ServerProcess
from tests.e2e.test_lifecycle_ops import HubThread
from tests.integration.conftest import hf_extra, smollm2_hf  # noqa: F401  (fixtures)


def _files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}


def test_pull_from_hf_and_serve_with_transformers(tmp_path: Path, smollm2_hf: Path, minilm_dir: Path) -> None:  # noqa: F811
    with HubThread() as hub:
        hub.add_hf_repo("HuggingFaceTB/SmolLM2-135M-Instruct", _files(smollm2_hf))
        hub.add_hf_repo("sentence-transformers/all-MiniLM-L6-v2", _files(minilm_dir))
        home = tmp_path / "home"
        home.mkdir()
        server = ServerProcess(home, HF_ENDPOINT=hub.url, SUPEROLLAMA_BUNDLED_MODEL="false").start()
        try:
            pulled = server.cli("pull", "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "--name", "smollm2:hf")
            assert pulled.returncode == 0, pulled.stderr
            pulled = server.cli("pull", "hf://sentence-transformers/all-MiniLM-L6-v2", "--name", "minilm")
            assert pulled.returncode == 0, pulled.stderr
            shown = json.loads(server.cli("show", "smollm2:hf", "--json").stdout)
            assert shown["format"] == "safetensors" and shown["architecture"] == "llama"

            client = OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)
            out = client.chat.completions.create(
                model="smollm2:hf", messages=[{"role": "user", "content": "Say hello"}], max_tokens=8, seed=1
            )
            assert out.choices[0].message.content and out.usage and out.usage.completion_tokens > 0
            chunks = list(
                client.chat.completions.create(
                    model="smollm2:hf",
                    messages=[{"role": "user", "content": "Hi"}],
                    max_tokens=5,
                    stream=True,
                )
            )
            assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
            emb = client.embeddings.create(model="minilm:latest", input=["a cat", "a dog"])
            assert len(emb.data) == 2 and len(emb.data[0].embedding) == 384

            runtimes = {i["version"]: i["runtime"] for i in server.instances()}
            assert runtimes == {"smollm2:hf": "transformers", "minilm:latest": "transformers"}
        finally:
            server.stop()
