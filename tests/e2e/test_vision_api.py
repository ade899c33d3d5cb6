"""Vision through a real ``superollama serve``, with the official ``openai``, ``ollama`` and ``anthropic``
SDKs: images reach a model that reads them, in every form each API takes.

No vision weights can be downloaded here, so the model is a tiny LLaVA the test builds from its configs
with random weights (``tests/vision_model.py``), pulled from a local stand-in of the Hugging Face hub and
served by the transformers runtime like any downloaded one. What it proves is the path, not answers:

- the image is consumed: the prompt's token count grows by exactly the image's tokens (16 here), and
  two different images give different greedy outputs while the same image gives the same one;
- URL (fetched by the gateway from a loopback server, allowed by ``SUPEROLLAMA_IMAGE_FETCH_PRIVATE``),
  data URL and bare base64 are the same image to the model (the same output as the data URL);
- a text-only model (the bundled SmolLM2 on llama.cpp) answers a 400 in each protocol's shape;
- llama.cpp with a projector: a tiny SmolVLM converted by llama.cpp's own converter (a model GGUF and its
  ``mmproj``), pulled from the hub stand-in as vision GGUF repos ship it, reads images the same way.
"""

from __future__ import annotations

import base64
import functools
import http.server
import threading
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from tests.e2e.conftest import ServerProcess
from tests.e2e.test_lifecycle_ops import HubThread
from tests.vision_model import IMAGE_TOKENS, build_vision_gguf, build_vision_model, noise_png, png

VISION = "llava:tiny"
GGUF_VISION = "smolvlm:tiny-gguf"  # llama.cpp with a projector
TEXT_ONLY = "smollm2:135m"  # the bundled chat model (llama.cpp, no projector)
QUESTION = "what color is this image ?"
RED, NOISE = png((255, 0, 0)), noise_png(3)
GREEDY: Any = {"temperature": 0, "max_tokens": 8}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _data_url(data: bytes) -> str:
    return f"data:image/png;base64,{_b64(data)}"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        return None


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A plain HTTP server on loopback serving the test images (what a URL image points at)."""
    folder = tmp_path_factory.mktemp("images")
    (folder / "red.png").write_bytes(RED)
    (folder / "noise.png").write_bytes(NOISE)
    (folder / "notes.txt").write_text("not an image")
    handler = functools.partial(_Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    model = build_vision_model(tmp_path_factory.mktemp("vision") / "model")
    files = {str(p.relative_to(model)): p for p in sorted(model.rglob("*")) if p.is_file()}
    gguf, mmproj = build_vision_gguf(tmp_path_factory.mktemp("vision-gguf"))
    with HubThread() as hub:
        hub.add_hf_repo("superollama-tests/tiny-llava", files)
        hub.add_hf_repo("superollama-tests/tiny-smolvlm-GGUF", {gguf.name: gguf, mmproj.name: mmproj})
        home = tmp_path_factory.mktemp("home")
        srv = ServerProcess(home, HF_ENDPOINT=hub.url, SUPEROLLAMA_IMAGE_FETCH_PRIVATE="true").start()
        try:
            for source, name in (
                ("hf://superollama-tests/tiny-llava", VISION),
                ("hf://superollama-tests/tiny-smolvlm-GGUF", GGUF_VISION),
            ):
                done = srv.cli("pull", source, "--name", name)
                assert done.returncode == 0, done.stderr
            yield srv
        finally:
            srv.stop()


@pytest.fixture(scope="module")
def oai(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)


def _ask(client: openai.OpenAI, url: str | None, model: str = VISION) -> tuple[str, int]:
    content: Any = [{"type": "text", "text": QUESTION}]
    if url is not None:
        content.append({"type": "image_url", "image_url": {"url": url}})
    out = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}], **GREEDY
    )
    assert out.usage is not None
    return out.choices[0].message.content or "", out.usage.prompt_tokens


def test_show_says_which_models_read_images(server: ServerProcess) -> None:
    client = ollama.Client(host=server.url)
    assert "vision" in (client.show(VISION).capabilities or [])
    assert "vision" in (client.show(GGUF_VISION).capabilities or [])  # its projector came along
    assert "vision" not in (client.show(TEXT_ONLY).capabilities or [])


def test_openai_image_is_consumed(oai: openai.OpenAI) -> None:
    _, base = _ask(oai, None)
    red, with_image = _ask(oai, _data_url(RED))
    assert with_image == base + IMAGE_TOKENS  # the image's tokens are in the prompt
    noise, _ = _ask(oai, _data_url(NOISE))
    assert red != noise  # the model saw the pixels
    assert _ask(oai, _data_url(RED))[0] == red  # … and the same pixels give the same answer

    stream = oai.chat.completions.create(
        model=VISION,
        messages=[{"role": "user", "content": [{"type": "text", "text": QUESTION}, _part(_data_url(NOISE))]}],
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = next(c.usage for c in chunks if c.usage is not None)
    assert streamed == noise and usage.prompt_tokens == with_image


def _part(url: str) -> Any:
    return {"type": "image_url", "image_url": {"url": url}}


def test_openai_url_data_url_and_base64_are_the_same_image(oai: openai.OpenAI, images: str) -> None:
    expected = {name: _ask(oai, _data_url(data)) for name, data in (("red", RED), ("noise", NOISE))}
    for name, data in (("red", RED), ("noise", NOISE)):
        assert _ask(oai, f"{images}/{name}.png") == expected[name]  # fetched by the gateway
        assert _ask(oai, _b64(data)) == expected[name]  # bare base64, as some clients send it

    with pytest.raises(openai.BadRequestError) as not_image:
        _ask(oai, f"{images}/notes.txt")
    assert not_image.value.code == "invalid_image" and "not an image" in not_image.value.message
    with pytest.raises(openai.BadRequestError) as missing:
        _ask(oai, f"{images}/nowhere.png")
    assert "answered 404" in missing.value.message
    with pytest.raises(openai.BadRequestError) as scheme:
        _ask(oai, "file:///etc/passwd")
    assert scheme.value.code == "invalid_image"


def test_openai_responses_input_image(oai: openai.OpenAI, images: str) -> None:
    red, with_image = _ask(oai, _data_url(RED))
    for url in (f"{images}/red.png", _data_url(RED)):
        out = oai.responses.create(
            model=VISION,
            input=[
                {
                    "role": "user",
                    "content": [
                        {"type": "input_text", "text": QUESTION},
                        {"type": "input_image", "image_url": url, "detail": "auto"},
                    ],
                }
            ],
            temperature=0,
            max_output_tokens=8,
        )
        assert out.usage is not None and out.usage.input_tokens == with_image
        assert out.output_text == red


def test_ollama_chat_and_generate_read_images(server: ServerProcess) -> None:
    client = ollama.Client(host=server.url)
    options = {"temperature": 0, "num_predict": 8}

    def chat(images: list[bytes]) -> ollama.ChatResponse:
        message = {"role": "user", "content": QUESTION, "images": images}
        return client.chat(model=VISION, messages=[message], options=options)

    plain, red, noise = chat([]), chat([RED]), chat([NOISE])
    assert red.prompt_eval_count == (plain.prompt_eval_count or 0) + IMAGE_TOKENS
    assert red.message.content != noise.message.content
    assert chat([RED]).message.content == red.message.content

    first = client.generate(model=VISION, prompt=QUESTION, images=[RED], options=options)
    other = client.generate(model=VISION, prompt=QUESTION, images=[NOISE], options=options)
    bare = client.generate(model=VISION, prompt=QUESTION, options=options)
    assert first.response != other.response
    assert first.prompt_eval_count == (bare.prompt_eval_count or 0) + IMAGE_TOKENS
    streamed = list(
        client.generate(model=VISION, prompt=QUESTION, images=[RED], options=options, stream=True)
    )
    assert "".join(p.response for p in streamed) == first.response


def test_anthropic_image_blocks_base64_and_url(server: ServerProcess, images: str) -> None:
    client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=300)

    def ask(source: Any | None) -> anthropic.types.Message:
        content: Any = [{"type": "text", "text": QUESTION}]
        if source is not None:
            content.insert(0, {"type": "image", "source": source})
        return client.messages.create(
            model=VISION,
            max_tokens=8,
            messages=[{"role": "user", "content": content}],
            extra_body={"temperature": 0},  # greedy (this SDK version has no temperature argument)
        )

    plain = ask(None)
    red = ask({"type": "base64", "media_type": "image/png", "data": _b64(RED)})
    noise = ask({"type": "base64", "media_type": "image/png", "data": _b64(NOISE)})
    assert red.usage.input_tokens == plain.usage.input_tokens + IMAGE_TOKENS
    assert red.content != noise.content
    assert ask({"type": "url", "url": f"{images}/red.png"}).content == red.content
    counted = client.messages.count_tokens(
        model=VISION,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "image", "source": {"type": "url", "url": f"{images}/noise.png"}},
                    {"type": "text", "text": QUESTION},
                ],
            }
        ],
    )
    assert counted.input_tokens == red.usage.input_tokens


def test_a_text_only_model_answers_400_in_each_protocol(
    server: ServerProcess, oai: openai.OpenAI, images: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        _ask(oai, _data_url(RED), model=TEXT_ONLY)
    assert refused.value.code == "image_input_not_supported" and "text-only" in refused.value.message
    assert refused.value.body["param"] == "messages"  # type: ignore[index]

    client = ollama.Client(host=server.url)
    with pytest.raises(ollama.ResponseError) as chat:
        client.chat(model=TEXT_ONLY, messages=[{"role": "user", "content": QUESTION, "images": [RED]}])
    assert chat.value.status_code == 400 and "text-only" in chat.value.error
    with pytest.raises(ollama.ResponseError) as generate:
        client.generate(model=TEXT_ONLY, prompt=QUESTION, images=[RED])
    assert generate.value.status_code == 400 and "text-only" in generate.value.error

    claude = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0)
    block: Any = {"type": "image", "source": {"type": "url", "url": f"{images}/red.png"}}
    with pytest.raises(anthropic.BadRequestError) as messages:
        claude.messages.create(model=TEXT_ONLY, max_tokens=4, messages=[{"role": "user", "content": [block]}])
    body = messages.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert "text-only" in body["error"]["message"]  # type: ignore[index]

    raw = httpx.post(
        server.url + "/api/chat",
        json={"model": TEXT_ONLY, "messages": [{"role": "user", "content": "x", "images": [_b64(RED)]}]},
        timeout=60,
    )
    assert raw.status_code == 400 and set(raw.json()) == {"error"}


def test_llamacpp_with_a_projector_reads_images(
    oai: openai.OpenAI, server: ServerProcess, images: str
) -> None:
    # llama.cpp reuses a cached prompt prefix, which moves this random model's floats enough to change a
    # greedy pick: each request is evaluated whole (``cache_prompt``, llama.cpp's own field, relayed)
    fresh: Any = {"cache_prompt": False}

    def ask(url: str | None) -> tuple[str, int]:
        content: Any = [{"type": "text", "text": QUESTION}]
        if url is not None:
            content.append(_part(url))
        out = oai.chat.completions.create(
            model=GGUF_VISION, messages=[{"role": "user", "content": content}], extra_body=fresh, **GREEDY
        )
        assert out.usage is not None
        return out.choices[0].message.content or "", out.usage.prompt_tokens

    _, base = ask(None)
    red, with_image = ask(_data_url(RED))
    noise, _ = ask(_data_url(NOISE))
    assert with_image > base and red != noise
    assert ask(f"{images}/red.png") == (red, with_image)  # the URL, fetched by the gateway
    assert ask(_b64(RED)) == (red, with_image)

    client = ollama.Client(host=server.url)
    message = {"role": "user", "content": QUESTION, "images": [RED]}
    answer = client.chat(model=GGUF_VISION, messages=[message], options={"temperature": 0, "num_predict": 8})
    assert answer.prompt_eval_count == with_image
