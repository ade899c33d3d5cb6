"""The model side of the transformers worker: load a Hugging Face folder, generate, embed (rerank: see
``_hf_rerank``).

Only the worker process imports this module (it imports torch, transformers and sentence-transformers).
Everything here is synchronous and runs on the worker's one generation thread; the event loop never
calls into it directly.

Generation is a manual decode loop over the KV cache (one sequence): each step checks a cancel flag,
samples with a per-request seeded ``torch.Generator`` (``_hf_sampling``: inside the JSON guide's
language when the request has one), and hands the text that is safe to send (see ``StopText``), with
its tokens' logprobs when asked, to a callback. A guided value stops as soon as it is complete.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from superollama.core.images import is_vision_config
from superollama.runtimes import _tools
from superollama.runtimes._hf_rerank import RerankEngine, is_cross_encoder, read_config
from superollama.runtimes._hf_sampling import pick, token_logprob
from superollama.runtimes._logprobs import Piece, TokenLogprob
from superollama.runtimes._openai_shapes import RequestError, Sampling, StopText
from superollama.runtimes._token_filter import TokenGuide, Vocabulary
from superollama.runtimes._tools import ToolParams

__all__ = [
    "ChatEngine",
    "EmbedEngine",
    "Engine",
    "LoadError",
    "Outcome",
    "RerankEngine",
    "VisionEngine",
    "detect_task",
    "load_engine",
]

INSTALL_HINT = "pip install 'superollama[transformers]'"
_CHAT_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")
_DEFAULT_CONTEXT = 2048


class LoadError(Exception):
    """The model cannot be served; the message is the reason the agent shows."""


@dataclass(frozen=True)
class Outcome:
    """How a generation ended: ``finish_reason`` is "stop", "length" or "cancelled"; ``logprobs``: those
    of the tokens whose text was sent (when asked)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    logprobs: tuple[TokenLogprob, ...] = ()


def detect_task(folder: Path) -> str:
    """ "rerank" for a one-label sequence classifier (a cross-encoder), "embedding" for a
    sentence-transformers folder or an encoder, "chat" for a causal LM."""
    config = read_config(folder)
    if is_cross_encoder(config):
        return "rerank"
    if (folder / "modules.json").is_file() or (folder / "config_sentence_transformers.json").is_file():
        return "embedding"
    if not config or is_vision_config(config):
        return "chat"
    architectures = config.get("architectures") or []
    if any(str(a).endswith(_CHAT_SUFFIXES) for a in architectures):
        return "chat"
    return "embedding"


def _precheck(folder: Path) -> None:
    if not folder.exists():
        raise LoadError(f"model folder not found: {folder}")
    if not folder.is_dir():
        raise LoadError(f"model path is not a folder: {folder}")
    if not (folder / "config.json").is_file():
        raise LoadError(f"no config.json in {folder}: not a Hugging Face model folder")


def _import_torch() -> Any:
    try:
        import torch
        import transformers  # noqa: F401
    except ImportError as exc:
        raise LoadError(
            f"the transformers runtime needs torch and transformers ({exc}): {INSTALL_HINT}"
        ) from exc
    return torch


def resolve_device(torch: Any, name: str) -> Any:
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise LoadError(f"unknown device {name!r}: use 'cpu' or 'cuda:N'")
    if not torch.cuda.is_available():
        raise LoadError(
            f"device {name} asked for, but CUDA is not available to torch {torch.__version__} "
            "(a CPU-only build, or no GPU/driver on this node)"
        )
    index = int(match.group(1) or 0)
    count = torch.cuda.device_count()
    if index >= count:
        raise LoadError(f"device {name} asked for, but this node has {count} CUDA device(s)")
    return torch.device("cuda", index)


def resolve_dtype(torch: Any, name: str, device: Any) -> Any:
    """``auto``: bfloat16 on a GPU that has it (else float16), float32 on CPU."""
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in dtypes:
        raise LoadError(f"unknown dtype {name!r}: use auto, float32, bfloat16 or float16")
    return dtypes[name]


class ChatEngine:
    """A causal LM and its tokenizer: chat (through the chat template) and plain completions."""

    task = "chat"
    reads_images = False

    def __init__(self, model: Any, tokenizer: Any, torch: Any, device: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.torch = torch
        self.device = device
        config = model.config.get_text_config()  # an image-text model's language half
        self.context = int(getattr(config, "max_position_embeddings", 0) or _DEFAULT_CONTEXT)
        eos = model.generation_config.eos_token_id if model.generation_config else None
        eos_ids = eos if isinstance(eos, list) else [eos]
        self.eos = {int(t) for t in [*eos_ids, tokenizer.eos_token_id] if t is not None}
        params = inspect.signature(model.forward).parameters
        self._keep_last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        # transformers >= 5.2x names the KV cache ``cache``; earlier versions ``past_key_values``.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"

    @classmethod
    def load(
        cls, folder: Path, device: Any, dtype: Any, torch: Any, adapter: Path | None = None
    ) -> ChatEngine:
        """``adapter``: a peft LoRA folder applied to the model of ``folder`` (its base), merged into the
        weights so that decoding costs what the base's does."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        if adapter is not None:
            try:
                from peft import PeftModel
            except ImportError as exc:
                raise LoadError(
                    "serving a LoRA adapter needs peft: pip install 'superollama[finetune]'"
                ) from exc
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        return cls(model.to(device).eval(), tokenizer, torch, device)

    @cached_property
    def vocab(self) -> Vocabulary:
        """Every token's bytes, read once (for the JSON guide and logprobs)."""
        return Vocabulary.from_tokenizer(self.tokenizer, self.eos)

    def _render(self, messages: Sequence[Mapping[str, Any]], **extra: Any) -> str:
        return str(
            self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=True, **extra
            )
        )

    @cached_property
    def _renders_tools(self) -> bool:
        """Whether the chat template shows ``tools`` (it changes the prompt)."""
        probe = [{"role": "user", "content": "hi"}]
        tool = _tools.Tool("superollama_probe_fn", "probe", {"type": "object", "properties": {}})
        try:
            return self._render(probe, tools=[tool.as_openai()]) != self._render(probe)
        except Exception:
            return False

    @cached_property
    def _renders_tool_calls(self) -> bool:
        """Whether the chat template shows an assistant's ``tool_calls``."""
        call = {
            "id": "call_0",
            "type": "function",
            "function": {"name": "superollama_probe_fn", "arguments": {}},
        }
        probe: list[dict[str, Any]] = [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_0", "content": "ok"},
        ]
        try:
            return "superollama_probe_fn" in self._render(probe)
        except Exception:
            return False

    def chat_prompt(
        self, messages: Sequence[Mapping[str, Any]], tools: ToolParams | None = None
    ) -> list[int]:
        """The prompt's tokens: the messages through the chat template, with the tools when offered
        (the template's own way, or a system preamble when the template ignores them)."""
        return list(self.tokenizer(self._chat_text(messages, tools), add_special_tokens=False)["input_ids"])

    def _chat_text(self, messages: Sequence[Mapping[str, Any]], tools: ToolParams | None) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise RequestError("this model has no chat template: use /v1/completions", param="messages")
        extra: dict[str, Any] = {}
        if tools is not None and tools.active:
            if self._renders_tools:
                extra["tools"] = [t.as_openai() for t in tools.tools]
            else:
                messages = _tools.with_preamble(messages, tools.tools)
        history = _tools.render_history(messages, structured=self._renders_tool_calls)
        try:
            return self._render(history, **extra)
        except Exception as exc:  # the template's own error (e.g. roles it does not accept)
            raise RequestError(f"the chat template rejected the messages: {exc}", param="messages") from exc

    def text_prompt(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt)["input_ids"])

    def check_room(self, prompt: Sequence[int], sampling: Sampling) -> int:
        """The number of new tokens allowed, or a 400 when the prompt leaves no room."""
        room = self.context - len(prompt)
        if room <= 0:
            raise RequestError(
                f"the prompt has {len(prompt)} tokens; this model's context is {self.context}",
                param="messages",
                code="context_length_exceeded",
            )
        return room if sampling.max_tokens is None else min(room, sampling.max_tokens)

    def generate(
        self,
        prompt: Sequence[int],
        sampling: Sampling,
        cancel: threading.Event,
        emit: Callable[[Piece], None],
        inputs: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """Decode up to ``check_room`` tokens; call ``emit`` with each safe text delta (and the logprobs
        of the tokens behind it when ``sampling.logprobs`` asks). ``inputs``: more tensors for the first
        forward pass (an image-text model's ``pixel_values``); later steps read them from the cache."""
        torch = self.torch
        limit = self.check_room(prompt, sampling)
        generator = torch.Generator(device=self.device)
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(sampling.seed)
        guide = None if sampling.json is None else TokenGuide(self.vocab, sampling.json)
        stops = StopText(sampling.stop)
        tokens: list[int] = []
        pending: list[TokenLogprob] = []
        sent: list[TokenLogprob] = []

        def send(text: str) -> None:
            if text or pending:
                emit(Piece(text, tuple(pending)))
                sent.extend(pending)
                pending.clear()

        text, finish, matched = "", "length", False
        with torch.inference_mode():
            ids = torch.tensor([list(prompt)], device=self.device)
            out = self.model(input_ids=ids, use_cache=True, **(inputs or {}), **self._keep_last)
            while True:
                if cancel.is_set():
                    finish = "cancelled"
                    break
                logits = out.logits[0, -1, :]
                token = pick(torch, logits, sampling, generator, guide)
                if token in self.eos:
                    finish = "stop"
                    break
                if sampling.logprobs is not None:
                    offset = len(text.rstrip("\ufffd"))
                    pending.append(
                        token_logprob(torch, logits, token, sampling.logprobs, self.vocab, offset=offset)
                    )
                if guide is not None:
                    guide.advance(token)
                tokens.append(token)
                text = self.tokenizer.decode(
                    tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False
                )
                delta, stopped = stops.update(text)
                if delta:
                    send(delta)
                if stopped:
                    finish, matched = "stop", True
                    break
                if guide is not None and guide.done:
                    finish = "stop"
                    break
                if len(tokens) >= limit:
                    break
                step = torch.tensor([[token]], device=self.device)
                cache = out.get("cache", None) or out.get("past_key_values", None)
                out = self.model(input_ids=step, use_cache=True, **{self._cache_arg: cache})
        if matched:
            pending.clear()  # the tokens of the stop string: their text is not sent
        elif finish != "cancelled":
            send(stops.finish(text))  # what was held back for a stop string that never came
        return Outcome(stops.sent, finish, len(prompt), len(tokens), tuple(sent))


class VisionEngine(ChatEngine):
    """An image-text model (``AutoModelForImageTextToText``) and its processor: chat as ``ChatEngine``,
    and chats with images, which the processor turns into pixel tensors and expands into the prompt's
    image tokens (so the prompt's token count includes what the images take)."""

    reads_images = True

    def __init__(self, model: Any, processor: Any, torch: Any, device: Any, dtype: Any) -> None:
        tokenizer = processor.tokenizer
        if not getattr(tokenizer, "chat_template", None) and getattr(processor, "chat_template", None):
            tokenizer.chat_template = processor.chat_template  # saved beside the processor, not the tokenizer
        super().__init__(model, tokenizer, torch, device)
        self.processor = processor
        self.dtype = dtype

    @classmethod
    def load_vision(cls, folder: Path, device: Any, dtype: Any, torch: Any) -> VisionEngine:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        processor = AutoProcessor.from_pretrained(str(folder), local_files_only=True)
        model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
        return cls(model.to(device).eval(), processor, torch, device, dtype)

    def image_prompt(
        self, messages: Sequence[Mapping[str, Any]], tools: ToolParams | None, images: Sequence[bytes]
    ) -> tuple[list[int], dict[str, Any]]:
        """The prompt's tokens (image tokens expanded) and the tensors of its images, for ``generate``."""
        text = self._chat_text(messages, tools)
        pictures = [_picture(data, i) for i, data in enumerate(images)]
        try:
            encoded = self.processor(
                text=text, images=pictures, return_tensors="pt", add_special_tokens=False
            )
        except Exception as exc:  # e.g. a template that places fewer image tokens than images
            raise RequestError(f"the images do not fit this model's prompt: {exc}", param="messages") from exc
        tokens = [int(t) for t in encoded["input_ids"][0].tolist()]
        inputs: dict[str, Any] = {}
        for key, value in encoded.items():
            if key in ("input_ids", "attention_mask", "token_type_ids"):
                continue
            moved = value.to(self.device) if hasattr(value, "to") else value
            if hasattr(moved, "is_floating_point") and moved.is_floating_point():
                moved = moved.to(self.dtype)
            inputs[key] = moved
        return tokens, inputs


def _picture(data: bytes, i: int) -> Any:
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RequestError(
            f"image {i + 1} cannot be decoded: {exc}", param="messages", code="invalid_image"
        ) from None


class EmbedEngine:
    """A sentence-transformers model: pooling and normalisation as its folder's modules.json says."""

    task = "embedding"

    def __init__(self, model: Any) -> None:
        self.model = model
        # sentence-transformers 6 renamed these (the old names warn); keep both for older versions.
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        self._preprocess = getattr(model, "preprocess", None) or model.tokenize
        self.dimensions = int(dimension() or 0)

    @classmethod
    def load(cls, folder: Path, device: Any, dtype: Any) -> EmbedEngine:
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise LoadError(f"embedding models need sentence-transformers ({exc}): {INSTALL_HINT}") from exc
        model = SentenceTransformer(
            str(folder), device=str(device), local_files_only=True, model_kwargs={"dtype": dtype}
        )
        return cls(model.eval())

    def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """The vectors of ``texts`` (float32) and the number of tokens read (after truncation)."""
        features = self._preprocess(list(texts))
        tokens = int(features["attention_mask"].sum().item())
        vectors = self.model.encode(
            list(texts), batch_size=32, convert_to_numpy=True, show_progress_bar=False
        )
        return vectors.astype("float32").tolist(), tokens


Engine = ChatEngine | VisionEngine | EmbedEngine | RerankEngine


def _no_text(_: Piece) -> None:
    return None


def load_engine(
    folder: Path, *, device: str, dtype: str, task: str, threads: int = 0, adapter: Path | None = None
) -> Engine:
    """Load ``folder`` for ``task`` (chat, embedding, rerank or auto) or raise ``LoadError`` with the
    reason; ``adapter``: a LoRA (peft) folder over the chat model of ``folder``."""
    _precheck(folder)
    torch = _import_torch()
    if threads > 0:
        torch.set_num_threads(threads)
    torch_device = resolve_device(torch, device)
    torch_dtype = resolve_dtype(torch, dtype, torch_device)
    kind = detect_task(folder) if task == "auto" else task
    try:
        engine: Engine
        if kind == "embedding":
            engine = EmbedEngine.load(folder, torch_device, torch_dtype)
            engine.embed(["warm up"])
        elif kind == "rerank":
            engine = RerankEngine.load(folder, torch_device, torch_dtype, torch)
            engine.score("warm up", ["warm up"])
        else:
            if is_vision_config(read_config(folder)):
                engine = VisionEngine.load_vision(folder, torch_device, torch_dtype, torch)
            else:
                engine = ChatEngine.load(folder, torch_device, torch_dtype, torch, adapter)
            # The first forward passes are several times slower (kernel selection, allocator): pay them
            # before the instance reports ready, not in the first request's TTFT. The same for the token
            # table that the JSON guide and logprobs read (built once per tokenizer, ~0.2 s).
            engine.generate(engine.text_prompt("Hello"), Sampling(max_tokens=2), threading.Event(), _no_text)
            _ = engine.vocab
        return engine
    except LoadError:
        raise
    except Exception as exc:
        raise LoadError(
            f"transformers could not load {folder} ({kind}): {type(exc).__name__}: {exc}"
        ) from exc
