"""Fine-tuning without training: hyperparameters (OpenAI's and LoRA's, both request shapes), the order of
examples a resumed job sees again, loss masking of the prompt, the OpenAI shapes of jobs, events and
checkpoints, the device choice, and how the two runtimes take an adapter version (command lines)."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from superollama.core import Artifact, InstanceSpec
from superollama.errors import InvalidRequest, ModelExists
from superollama.plugins.finetune import choose_device
from superollama.plugins.finetune.routes import checkpoint_json, event_json, job_json
from superollama.plugins.finetune.service import _hyperparameters_of, resolve_hyperparameters
from superollama.plugins.finetune.worker import batches, encode
from superollama.registry._finetune import CheckpointRecord, FineTuneEvent, FineTuneRecord
from superollama.runtimes import LlamaCppRuntime, TransformersRuntime
from superollama.runtimes.llamacpp import lora_files
from superollama.runtimes.transformers import adapter_base
from superollama.store import ModelStore


def test_auto_hyperparameters_resolve_and_lora_knobs_ride_beside() -> None:
    hp = resolve_hyperparameters({"n_epochs": "auto", "learning_rate_multiplier": 2, "rank": 4}, examples=20)
    assert hp["n_epochs"] == 3 and hp["batch_size"] == 8 and hp["rank"] == 4 and hp["alpha"] == 16
    assert hp["learning_rate"] == pytest.approx(2e-3)
    assert hp["checkpoint_every"] == 3  # one per epoch: ceil(20 / 8)
    assert hp["target_modules"] == ["q_proj", "v_proj"]
    small = resolve_hyperparameters({}, examples=3)
    assert small["batch_size"] == 3 and small["checkpoint_every"] == 1


@pytest.mark.parametrize(
    ("given", "names"),
    [
        ({"n_epochs": 0}, "n_epochs"),
        ({"batch_size": "many"}, "batch_size"),
        ({"learning_rate_multiplier": -1}, "learning_rate_multiplier"),
        ({"target_modules": []}, "target_modules"),
        ({"warmup": 1}, "warmup"),
    ],
)
def test_bad_hyperparameters_are_named(given: dict[str, Any], names: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        resolve_hyperparameters(given, examples=4)
    assert names in caught.value.message


def test_the_newer_method_shape_and_the_older_one_are_both_read() -> None:
    nested = {"method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}}}
    assert _hyperparameters_of(nested) == {"n_epochs": 2}
    assert _hyperparameters_of({"hyperparameters": {"batch_size": 1}}) == {"batch_size": 1}
    with pytest.raises(InvalidRequest):
        _hyperparameters_of({"method": {"type": "dpo"}})
    with pytest.raises(InvalidRequest):
        _hyperparameters_of({"hyperparameters": {"n_epochs": 1}, **nested})


def test_the_order_of_examples_is_a_function_of_seed_and_epoch() -> None:
    first = batches(10, 3, seed=5, epoch=0)
    assert first == batches(10, 3, seed=5, epoch=0)  # a resumed job sees the same batches
    assert sorted(itertools.chain.from_iterable(first)) == list(range(10))
    assert [len(b) for b in first] == [3, 3, 3, 1]
    assert first != batches(10, 3, seed=5, epoch=1)


class _Tokenizer:
    """A character tokenizer with a chat template of its own: enough to check the loss mask."""

    eos_token_id = 0

    def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> str:
        text = "".join(f"<{m['role']}>{m['content']}" for m in messages)
        return text + ("<assistant>" if kwargs.get("add_generation_prompt") else "")

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text]}


def test_the_loss_is_on_the_answer_only() -> None:
    example = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    ids, labels = encode(example, _Tokenizer(), max_len=100)
    prompt = len("<user>hi<assistant>")
    assert labels[:prompt] == [-100] * prompt
    assert labels[prompt:] == ids[prompt:] and ids[-1] == 0  # the answer, then end of sequence
    ids, labels = encode({"prompt": "a", "completion": "bc"}, _Tokenizer(), max_len=3)
    assert ids == [97, 98, 99] and labels == [-100, 98, 99]


def test_jobs_events_and_checkpoints_have_openai_shapes() -> None:
    now = datetime(2026, 1, 2, tzinfo=UTC)
    job = FineTuneRecord(
        id="ftjob-abcdef123456",
        model="smollm2:135m",
        training_file="file-1",
        hyperparameters=resolve_hyperparameters({"n_epochs": 2}, examples=4),
        seed=1,
        status="running",
        created_at=now,
    )
    shaped = job_json(job)
    assert shaped["object"] == "fine_tuning.job" and shaped["created_at"] == int(now.timestamp())
    assert shaped["hyperparameters"]["n_epochs"] == 2 and shaped["hyperparameters"]["rank"] == 8
    assert shaped["method"]["type"] == "supervised" and shaped["fine_tuned_model"] is None
    event = event_json(FineTuneEvent(7, job.id, now, "info", "metrics", "Step 1", {"step": 1}))
    assert (event["id"], event["object"], event["data"]) == (
        "ftevent-7",
        "fine_tuning.job.event",
        {"step": 1},
    )
    checkpoint = checkpoint_json(CheckpointRecord("ftckpt-1", job.id, 4, {"step": 4}, "/x", now), job)
    assert checkpoint["step_number"] == 4 and checkpoint["object"] == "fine_tuning.job.checkpoint"


def test_the_device_setting_wins_over_auto() -> None:
    assert choose_device("cuda:1") == "cuda:1"
    assert choose_device("auto") in ("cpu",) or choose_device("auto").startswith("cuda:")


def _adapter(tmp_path: Path, **metadata: Any) -> Artifact:
    folder = tmp_path / "adapter"
    folder.mkdir(exist_ok=True)
    (folder / "adapter.gguf").write_bytes(b"GGUF")
    meta = {"adapter": "lora", "base": "smollm2:135m", "gguf_adapter": "adapter.gguf", **metadata}
    return Artifact("smollm2:135m-ft-x", "lora", folder, meta)


def test_llamacpp_serves_an_adapter_over_its_gguf_base(tmp_path: Path) -> None:
    artifact = _adapter(tmp_path, base_path="/m/base.gguf", base_format="gguf")
    runtime = LlamaCppRuntime(tmp_path, python="/py")
    assert runtime.accepts(artifact)
    assert lora_files(artifact) == (Path("/m/base.gguf"), artifact.path / "adapter.gguf")
    argv = runtime.command(InstanceSpec("inst-1", "smollm2:135m-ft-x", artifact, "llamacpp"))
    pairs = dict(itertools.pairwise(argv))
    assert pairs["--model"] == "/m/base.gguf" and pairs["--lora"] == str(artifact.path / "adapter.gguf")
    assert not runtime.accepts(_adapter(tmp_path, base_path="/m/base", base_format="safetensors"))


def test_transformers_serves_an_adapter_over_its_hf_base(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    runtime = TransformersRuntime(tmp_path, python="/py")
    assert not runtime.accepts(_adapter(tmp_path, hf_base=str(base)))  # no config.json: no base here
    (base / "config.json").write_text("{}")
    artifact = _adapter(tmp_path, hf_base=str(base), base_path="/m/base.gguf", base_format="gguf")
    assert runtime.accepts(artifact) and adapter_base(artifact) == base
    argv = runtime.command(InstanceSpec("inst-1", "smollm2:135m-ft-x", artifact, "transformers"))
    pairs = dict(itertools.pairwise(argv))
    assert pairs["--model"] == str(base) and pairs["--adapter"] == str(artifact.path)


async def test_an_adapter_becomes_a_folder_version_in_the_store(tmp_path: Path) -> None:
    made = tmp_path / "made"
    (made / "sub").mkdir(parents=True)
    (made / "adapter_config.json").write_text('{"r": 8}')
    (made / "sub" / "adapter.gguf").write_bytes(b"GGUF lora")
    store = ModelStore(tmp_path / "home")
    files = {
        "adapter_config.json": made / "adapter_config.json",
        "adapter.gguf": made / "sub" / "adapter.gguf",
    }
    manifest = await store.add_folder(
        "smollm2:135m-ft-x", files, format="lora", metadata={"base": "smollm2:135m"}, source="fine-tune://x"
    )
    assert manifest.format == "lora" and manifest.metadata["base"] == "smollm2:135m"
    folder = store.model_path("smollm2:135m-ft-x")
    assert (folder / "adapter_config.json").read_text() == '{"r": 8}'
    assert (folder / "adapter.gguf").read_bytes() == b"GGUF lora"
    with pytest.raises(ModelExists):
        await store.add_folder("smollm2:135m-ft-x", files, format="lora", metadata={}, source="x")
    with pytest.raises(InvalidRequest):
        await store.add_folder(
            "smollm2:other",
            {"../escape": made / "adapter_config.json"},
            format="lora",
            metadata={},
            source="x",
        )
