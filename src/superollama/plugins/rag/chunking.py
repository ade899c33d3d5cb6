"""From a file's bytes to the chunks that are embedded: text extraction (plain text and Markdown as they
are, HTML without its tags, scripts and styles, PDF through ``pypdf``) and OpenAI's *static* chunking
(``max_chunk_size_tokens``, ``chunk_overlap_tokens``; ``auto`` is static with 800/400).

Tokens are counted as words and punctuation marks (``\\w+`` or one other non-space character), which is
within ~20% of a BPE tokenizer's count on English prose and needs no model; a chunk is the original text
from its first token to its last, so spacing and line breaks are kept.
"""

from __future__ import annotations

import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any

from superollama.errors import InvalidRequest

__all__ = ["DEFAULT_STRATEGY", "ChunkingStrategy", "UnsupportedFile", "chunk_text", "extract_text"]

_TOKEN = re.compile(r"\w+|[^\w\s]")
_TEXT_SUFFIXES = {
    ".txt", ".md", ".markdown", ".rst", ".csv", ".json", ".jsonl", ".py", ".js", ".ts", ".c", ".h",
    ".java", ".go", ".rs", ".sh", ".yaml", ".yml", ".toml", ".xml", ".tex", ".log", ".css",
}  # fmt: skip


class UnsupportedFile(Exception):
    """A file whose text cannot be read (a vector store file's ``last_error``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code  # OpenAI's last_error.code: unsupported_file | invalid_file
        self.message = message


@dataclass(frozen=True, slots=True)
class ChunkingStrategy:
    max_tokens: int = 800
    overlap: int = 400

    def as_json(self) -> dict[str, Any]:
        return {
            "type": "static",
            "static": {"max_chunk_size_tokens": self.max_tokens, "chunk_overlap_tokens": self.overlap},
        }

    @classmethod
    def parse(cls, spec: Any, param: str = "chunking_strategy") -> ChunkingStrategy:
        """OpenAI's ``chunking_strategy`` (absent or ``auto``: 800/400); a 400 naming the problem."""
        if spec is None:
            return DEFAULT_STRATEGY
        if not isinstance(spec, Mapping):
            raise InvalidRequest(f"{param} must be an object", param=param)
        kind = spec.get("type")
        if kind == "auto":
            return DEFAULT_STRATEGY
        if kind != "static":
            raise InvalidRequest(f"{param}.type must be 'auto' or 'static' (got {kind!r})", param=param)
        static = spec.get("static")
        if not isinstance(static, Mapping):
            raise InvalidRequest(f"{param}.static is required for a static strategy", param=param)
        size, overlap = static.get("max_chunk_size_tokens"), static.get("chunk_overlap_tokens", 400)
        if not isinstance(size, int) or isinstance(size, bool) or not 100 <= size <= 4096:
            raise InvalidRequest(
                f"{param}.static.max_chunk_size_tokens must be an integer from 100 to 4096", param=param
            )
        if not isinstance(overlap, int) or isinstance(overlap, bool) or not 0 <= overlap <= size // 2:
            raise InvalidRequest(
                f"{param}.static.chunk_overlap_tokens must be an integer from 0 to half of "
                f"max_chunk_size_tokens ({size // 2})",
                param=param,
            )
        return cls(size, overlap)


DEFAULT_STRATEGY = ChunkingStrategy()


def chunk_text(text: str, strategy: ChunkingStrategy = DEFAULT_STRATEGY) -> list[str]:
    """Windows of ``max_tokens`` tokens, each starting ``max_tokens - overlap`` tokens after the last."""
    spans = [m.span() for m in _TOKEN.finditer(text)]
    if not spans:
        return []
    step = max(1, strategy.max_tokens - strategy.overlap)
    chunks = []
    start = 0
    while True:
        end = min(start + strategy.max_tokens, len(spans))
        chunks.append(text[spans[start][0] : spans[end - 1][1]])
        if end == len(spans):
            return chunks
        start += step


def extract_text(filename: str, data: bytes) -> str:
    """The text of a file, by its name's suffix (or its first bytes); ``UnsupportedFile`` otherwise."""
    name = filename.lower()
    suffix = name[name.rfind(".") :] if "." in name else ""
    if suffix == ".pdf" or data.startswith(b"%PDF-"):
        return _pdf_text(data)
    text = _decode(data, filename)
    if suffix in (".html", ".htm") or (
        not suffix and text.lstrip()[:15].lower().startswith("<!doctype html")
    ):
        return _html_text(text)
    if suffix in _TEXT_SUFFIXES or not suffix:
        return text
    raise UnsupportedFile("unsupported_file", f"{filename}: files of type {suffix!r} are not supported")


def _decode(data: bytes, filename: str) -> str:
    if b"\x00" in data[:8192]:
        raise UnsupportedFile("unsupported_file", f"{filename} is a binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UnsupportedFile("invalid_file", f"{filename} is not valid UTF-8 (byte {exc.start})") from None


def _pdf_text(data: bytes) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except (PdfReadError, ValueError, KeyError) as exc:
        raise UnsupportedFile("invalid_file", f"cannot read the PDF: {exc}") from None


class _HtmlText(HTMLParser):
    _SKIP = frozenset({"script", "style", "noscript", "template", "head"})
    _BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "pre"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skipping = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skipping += 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP and self._skipping:
            self._skipping -= 1
        elif tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skipping:
            self.parts.append(data)


def _html_text(html: str) -> str:
    parser = _HtmlText()
    parser.feed(html)
    parser.close()
    text = "".join(parser.parts)
    return re.sub(r"\n\s*\n+", "\n\n", re.sub(r"[ \t]+", " ", text)).strip()
