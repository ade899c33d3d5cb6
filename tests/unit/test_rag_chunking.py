"""Text extraction (text, Markdown, HTML, a real PDF read by pypdf), static chunking, the chunking
strategy's checks, and the fine-tuning JSONL check of ``/v1/files``."""

from __future__ import annotations

import json

import pytest
from tests.rag_docs import make_pdf

from superollama.errors import InvalidRequest
from superollama.plugins.rag.chunking import ChunkingStrategy, UnsupportedFile, chunk_text, extract_text
from superollama.plugins.rag.files import check_fine_tune_jsonl


def test_static_chunks_have_the_size_and_overlap_asked() -> None:
    words = [f"w{i}" for i in range(1000)]
    chunks = chunk_text(" ".join(words), ChunkingStrategy(100, 40))
    assert chunks[0].split() == words[:100]
    assert chunks[1].split() == words[60:160]  # 60 = 100 - 40 tokens later
    assert chunks[-1].split()[-1] == "w999"
    assert all(len(c.split()) <= 100 for c in chunks)
    assert len(chunks) == 16  # starts 0, 60, …, 900
    assert chunk_text("   \n ") == []
    assert chunk_text("one short text") == ["one short text"]


def test_the_strategy_is_checked_like_openai() -> None:
    assert ChunkingStrategy.parse(None) == ChunkingStrategy(800, 400)
    assert ChunkingStrategy.parse({"type": "auto"}) == ChunkingStrategy(800, 400)
    spec = {"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 50}}
    assert ChunkingStrategy.parse(spec) == ChunkingStrategy(200, 50)
    assert ChunkingStrategy.parse(spec).as_json() == spec
    for bad, match in (
        ({"type": "static", "static": {"max_chunk_size_tokens": 50}}, "100 to 4096"),
        ({"type": "static", "static": {"max_chunk_size_tokens": 200, "chunk_overlap_tokens": 150}}, "half"),
        ({"type": "other"}, "auto"),
    ):
        with pytest.raises(InvalidRequest, match=match):
            ChunkingStrategy.parse(bad)


def test_text_markdown_html_and_pdf_give_their_text() -> None:
    assert extract_text("a.txt", b"plain words") == "plain words"
    assert extract_text("notes.md", b"# Title\n\n- item") == "# Title\n\n- item"
    html = b"<html><head><title>t</title><style>p{}</style></head><body><h1>Head</h1><p>Body &amp; more</p>"
    html += b"<script>var x = 1;</script></body></html>"
    text = extract_text("page.html", html)
    assert "Head" in text and "Body & more" in text and "var x" not in text and "p{}" not in text
    pdf = make_pdf(["The lighthouse keeper is named Orsolya.", "Second line here."])
    got = extract_text("doc.pdf", pdf)
    assert "lighthouse keeper is named Orsolya" in got and "Second line" in got


def test_unreadable_files_say_why() -> None:
    with pytest.raises(UnsupportedFile, match="binary") as binary:
        extract_text("blob.txt", b"\x00\x01\x02")
    assert binary.value.code == "unsupported_file"
    with pytest.raises(UnsupportedFile, match=r"type '\.exe'"):
        extract_text("tool.exe", b"MZ")
    with pytest.raises(UnsupportedFile) as bad_pdf:
        extract_text("broken.pdf", b"%PDF-1.4\nnot really")
    assert bad_pdf.value.code == "invalid_file"


def test_fine_tune_jsonl_names_the_line_and_the_problem() -> None:
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    assert check_fine_tune_jsonl(((json.dumps(good) + "\n") * 3).encode()) == 3
    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"messages": [{"role": "user", "content": "no answer"}]}),
        json.dumps({"messages": [{"role": "wizard", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": 2},
                ]
            }
        ),
    ]
    with pytest.raises(InvalidRequest) as err:
        check_fine_tune_jsonl("\n".join(lines).encode(), "train.jsonl")
    message = err.value.message
    assert "train.jsonl" in message
    assert "line 2: not valid JSON" in message
    assert "line 3: has no assistant message" in message
    assert "line 4: messages[0].role must be one of" in message
    assert "line 5: messages[1].weight must be 0 or 1" in message
    assert "line 1" not in message
    with pytest.raises(InvalidRequest, match="no training examples"):
        check_fine_tune_jsonl(b"\n\n")
