"""Images in chat requests: the facts every room agrees on. Pure functions, no I/O.

Inside the system an image travels the way OpenAI's chat API carries it, as an ``image_url`` content
part; the edges translate Ollama's ``images`` and Anthropic's ``image`` blocks into that. By the time a
request reaches a backend every image is a ``data:`` URL (the gateway fetched the http(s) ones), so a
backend never reaches out to the network on a client's behalf.

Whether a version reads images is decided from its files once, when it is pulled: a Hugging Face folder
whose ``config.json`` has a ``vision_config`` (LLaVA, Idefics3/SmolVLM, Qwen2-VL, Gemma 3 …), or a GGUF
version that carries a projector (``mmproj``) layer. The catalog keeps the answer in the version's
metadata (``vision``); the routing snapshot turns it into the ``vision`` capability.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

__all__ = [
    "DATA_URL",
    "MEDIA_PROJECTOR",
    "VISION",
    "ImageError",
    "capabilities_of",
    "data_url",
    "has_image_parts",
    "image_parts",
    "is_vision_config",
    "parse_data_url",
    "sniff_mime",
]

VISION: Final = "vision"
# Ollama's media type for a vision model's projector layer; ours too (a GGUF version's ``mmproj`` file).
MEDIA_PROJECTOR: Final = "application/vnd.ollama.image.projector"
DATA_URL: Final = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*);base64,", re.I
)

_MAGIC: Final = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)


class ImageError(ValueError):
    """An image that cannot be read: the message says why (shown to the client as a 400)."""


def sniff_mime(head: bytes) -> str | None:
    """The image type of a file from its first bytes (PNG, JPEG, GIF, WebP, BMP), else None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    for magic, mime in _MAGIC:
        if head.startswith(magic):
            return mime
    return None


def data_url(data: bytes, mime: str | None = None) -> str:
    """``data:<mime>;base64,…`` of ``data`` (the MIME sniffed when not given)."""
    kind = mime or sniff_mime(data[:16]) or "application/octet-stream"
    return f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"


def parse_data_url(url: str) -> tuple[str, bytes]:
    """``(mime, bytes)`` of a base64 ``data:`` URL whose bytes are an image; ``ImageError`` otherwise."""
    match = DATA_URL.match(url)
    if match is None:
        raise ImageError("an image data URL must look like data:image/png;base64,<data>")
    try:
        data = base64.b64decode(url[match.end() :], validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("the image data URL is not valid base64") from None
    mime = sniff_mime(data[:16])
    if mime is None:
        raise ImageError("the image is not a PNG, JPEG, GIF, WebP or BMP file")
    return mime, data


def image_parts(messages: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(message index, part)`` of every ``image_url`` content part of OpenAI chat ``messages`` (the
    part itself, to read or rewrite in place)."""
    if not isinstance(messages, list):
        return
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                yield i, part


def has_image_parts(messages: Any) -> bool:
    """Whether ``image_parts`` finds any: a loop, not a generator, since the chat path asks it of every
    request and almost none has an image."""
    if not isinstance(messages, list):
        return False
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url":
                    return True
    return False


def is_vision_config(config: Mapping[str, Any]) -> bool:
    """Whether a Hugging Face ``config.json`` describes an image-text model: it has a vision tower's
    config (every image-text class in transformers keeps one as ``vision_config``)."""
    vision = config.get("vision_config")
    return isinstance(vision, Mapping) and bool(vision)


def capabilities_of(metadata: Mapping[str, Any]) -> tuple[str, ...]:
    """The capabilities of a version from its catalog metadata (``/api/show``, image checks)."""
    base: tuple[str, ...] = ("completion", "embedding")
    return (*base, VISION) if metadata.get(VISION) is True else base
