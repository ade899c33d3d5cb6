"""Images without a network or a model: the shared helpers (``core.images``), how a version's metadata and
a Hugging Face config say "vision", and how the transformers worker parses image parts."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from superollama.core.images import (
    VISION,
    ImageError,
    capabilities_of,
    data_url,
    has_image_parts,
    image_parts,
    is_vision_config,
    parse_data_url,
    sniff_mime,
)
from superollama.runtimes._openai_shapes import RequestError, parse_chat

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 24
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 24


def test_sniff_and_data_urls_round_trip() -> None:
    assert sniff_mime(PNG) == "image/png" and sniff_mime(JPEG) == "image/jpeg"
    assert sniff_mime(b"RIFF\0\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff_mime(b"GIF89a..") == "image/gif" and sniff_mime(b"hello") is None
    url = data_url(PNG)
    assert url.startswith("data:image/png;base64,")
    assert parse_data_url(url) == ("image/png", PNG)
    # the MIME a client claims does not matter: the bytes are what is read
    assert parse_data_url("data:image/jpeg;base64," + base64.b64encode(PNG).decode()) == ("image/png", PNG)
    for bad in (
        "data:image/png,raw",
        "data:image/png;base64,@@",
        data_url(b"text, not pixels"),
        "https://x/y",
    ):
        with pytest.raises(ImageError):
            parse_data_url(bad)


def test_image_parts_of_openai_messages() -> None:
    part: dict[str, Any] = {"type": "image_url", "image_url": {"url": "https://x/a.png"}}
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}, part]},
    ]
    found = list(image_parts(messages))
    assert found == [(1, part)] and found[0][1] is part  # the part itself: the gateway rewrites it
    assert list(image_parts("not a list")) == []


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hi"}],
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        [{"role": "system", "content": "x"}, {"role": "user", "content": [{"type": "image_url"}]}],
        [{"role": "user", "content": [{"type": "text"}, {"type": "image_url", "image_url": "abc"}]}],
        [{"role": "user", "content": ["text", 3, None]}, "not a message", None],
        [{"role": "user", "content": {"type": "image_url"}}],  # not a list of parts
        [],
        "not a list",
        None,
    ],
)
def test_has_image_parts_answers_as_image_parts_finds(messages: Any) -> None:
    """The chat path asks ``has_image_parts`` to skip the image step: it must agree with what that step
    would find, or an image would reach the backend unchecked."""
    assert has_image_parts(messages) is (next(image_parts(messages), None) is not None)


def test_vision_is_read_from_the_config_and_kept_as_a_capability() -> None:
    assert is_vision_config({"architectures": ["LlavaForConditionalGeneration"], "vision_config": {"x": 1}})
    assert not is_vision_config({"architectures": ["LlamaForCausalLM"]})
    assert not is_vision_config({"vision_config": None})
    assert VISION in capabilities_of({VISION: True})
    assert VISION not in capabilities_of({}) and "completion" in capabilities_of({})


def test_the_worker_parses_image_parts_in_order() -> None:
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": data_url(PNG)}},
                    {"type": "text", "text": "and"},
                    {"type": "image_url", "image_url": data_url(JPEG)},  # the bare-string form some send
                ],
            },
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ]
    }
    params = parse_chat(body)
    assert params.images == (PNG, JPEG)
    assert params.messages[0]["content"] == [
        {"type": "image"},
        {"type": "text", "text": "and"},
        {"type": "image"},
    ]
    assert params.messages[1]["content"] == "ab"  # text-only parts stay one string for every template


@pytest.mark.parametrize(
    ("url", "why"),
    [("https://example.com/a.png", "data URLs"), ("data:image/png;base64,@@", "base64")],
)
def test_the_worker_takes_data_urls_only(url: str, why: str) -> None:
    body = {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}
    with pytest.raises(RequestError, match=why) as refused:
        parse_chat(body)
    assert refused.value.status == 400 and refused.value.code == "invalid_image"
