"""Pure parts of the network sources: reference parsing, GGUF and folder selection, safe paths, retries."""

from __future__ import annotations

import pytest

from superollama.errors import InvalidRequest, SourceNotFound
from superollama.store import RetryPolicy
from superollama.store.sources import SourceFile, parse_ollama_name, safe_relpath
from superollama.store.sources.hf import HfFile, folder_files, parse_hf_ref, pick_gguf, pick_projector
from superollama.store.sources.http import fragment_digest, sidecar_digest
from superollama.store.transfer import partial_key


def files(*paths: str) -> list[HfFile]:
    return [HfFile(p, 1) for p in paths]


def test_parse_hf_ref() -> None:
    assert parse_hf_ref("hf://org/repo") == ("org/repo", "main", None)
    assert parse_hf_ref("hf://org/repo@v1.0:Q4_K_M") == ("org/repo", "v1.0", "Q4_K_M")
    assert parse_hf_ref("hf://org/repo:sub/model.gguf") == ("org/repo", "main", "sub/model.gguf")
    assert parse_hf_ref("hf://gpt2") == ("gpt2", "main", None)
    for bad in ("hf://a/b/c", "hf://", "hf://org/re po", "https://x/y"):
        with pytest.raises(InvalidRequest):
            parse_hf_ref(bad)


def test_pick_gguf() -> None:
    repo = files("m.Q4_K_M.gguf", "m.Q4_K_S.gguf", "m.IQ4_XS.gguf", "m.Q4_XS.gguf", "sub/m.Q8_0.gguf", "x.md")
    assert pick_gguf("r", repo, "q4_k_m") == HfFile("m.Q4_K_M.gguf", 1)
    assert pick_gguf("r", repo, "Q8_0") == HfFile("sub/m.Q8_0.gguf", 1)
    assert pick_gguf("r", repo, "m.Q4_K_S.gguf") == HfFile("m.Q4_K_S.gguf", 1)
    assert pick_gguf("r", repo, "Q4_XS") == HfFile("m.Q4_XS.gguf", 1)  # a whole token: not IQ4_XS
    assert pick_gguf("r", repo, None) == HfFile("m.Q4_K_M.gguf", 1)  # the default among several
    with pytest.raises(InvalidRequest, match=r"m\.Q4_K_M\.gguf, m\.Q4_K_S\.gguf"):
        pick_gguf("r", repo, "Q4_K")
    with pytest.raises(SourceNotFound, match="no GGUF file matches 'Q2_K'"):
        pick_gguf("r", repo, "Q2_K")
    with pytest.raises(InvalidRequest, match="not a GGUF"):
        pick_gguf("r", repo, "x.md")
    assert pick_gguf("r", files("only.gguf", "README.md"), None) == HfFile("only.gguf", 1)
    assert pick_gguf("r", files("config.json", "model.safetensors"), None) is None
    split = files("m-Q4_0-00001-of-00002.gguf", "m-Q4_0-00002-of-00002.gguf")
    with pytest.raises(InvalidRequest, match="split GGUF"):
        pick_gguf("r", split, "m-Q4_0-00001-of-00002.gguf")


def test_a_vision_repo_pulls_its_model_and_projector() -> None:
    """llama.cpp's converter names a vision model's projector ``mmproj-….gguf``: never the model itself,
    pulled beside it (the f16 one when there are several)."""
    repo = files("SmolVLM-256M-Q8_0.gguf", "mmproj-SmolVLM-256M-Q8_0.gguf", "README.md")
    assert pick_gguf("r", repo, None) == HfFile("SmolVLM-256M-Q8_0.gguf", 1)
    assert pick_projector(repo) == HfFile("mmproj-SmolVLM-256M-Q8_0.gguf", 1)
    several = files("m-Q4_K_M.gguf", "mmproj-m-Q8_0.gguf", "mmproj-m-f16.gguf")
    assert pick_gguf("r", several, None) == HfFile("m-Q4_K_M.gguf", 1)
    assert pick_projector(several) == HfFile("mmproj-m-f16.gguf", 1)
    assert pick_projector(files("m-Q4_K_M.gguf")) is None


def test_folder_files_keeps_a_sharded_model_and_drops_the_rest() -> None:
    repo = files(
        ".gitattributes",
        "README.md",
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "pytorch_model.bin",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "onnx/model.onnx",
        "onnx/config.json",
        "1_Pooling/config.json",
        "2_Dense/model.safetensors",
        "2_Dense/config.json",
    )
    assert [f.path for f in folder_files("r", repo)] == [
        "1_Pooling/config.json",
        "2_Dense/config.json",
        "2_Dense/model.safetensors",
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer.model",
        "tokenizer_config.json",
    ]
    with pytest.raises(InvalidRequest, match="no GGUF file and no safetensors"):
        folder_files("r", files("config.json", "pytorch_model.bin"))


def test_safe_relpath() -> None:
    assert safe_relpath("1_Pooling/config.json") == "1_Pooling/config.json"
    for bad in ("", "/etc/passwd", "../x", "a/../../x", "a//b", "a\\b", "./a"):
        with pytest.raises(InvalidRequest):
            safe_relpath(bad)


def test_ollama_names() -> None:
    name = parse_ollama_name("llama3:8b")
    assert str(name) == "registry.ollama.ai/library/llama3:8b" and name.short == "llama3:8b"
    assert parse_ollama_name("user/model").short == "user/model:latest"
    other = parse_ollama_name("example.com:5000/ns/m:q4")
    assert (other.host, other.repository, other.tag) == ("example.com:5000", "ns/m", "q4")
    assert other.short == "example.com:5000/ns/m:q4"
    with pytest.raises(InvalidRequest):
        parse_ollama_name("a/b/c/d")


def test_digests_from_urls_and_sidecars() -> None:
    hexd = "ab" * 32
    assert fragment_digest(f"sha256={hexd.upper()}") == f"sha256:{hexd}"
    assert fragment_digest("") is None
    with pytest.raises(InvalidRequest):
        fragment_digest("sha256=12")
    assert sidecar_digest(f"{hexd}  model.gguf\n") == f"sha256:{hexd}"
    assert sidecar_digest("<html>not found</html>") is None
    assert sidecar_digest(None) is None and sidecar_digest("  ") is None


def test_partial_keys_and_retry_policy() -> None:
    with_digest = SourceFile("m", "http://h/m", digest="sha256:" + "a" * 64)
    assert partial_key(with_digest) == "sha256-" + "a" * 64
    v1 = partial_key(SourceFile("m", "http://h/m", validator='"v1"'))
    v2 = partial_key(SourceFile("m", "http://h/m", validator='"v2"'))
    assert v1 and v2 and v1 != v2  # a new ETag names other bytes: another partial file
    assert partial_key(SourceFile("m", "http://h/m")) is None  # nothing to check a resume against
    policy = RetryPolicy(attempts=5, backoff=0.5, max_backoff=3)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]
