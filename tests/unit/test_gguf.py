"""The GGUF header reader, on the real SmolLM2 file and on small files written here byte by byte."""

from __future__ import annotations

import struct
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from superollama.errors import StoreError
from superollama.store.gguf import (
    MAX_KEPT_ARRAY,
    as_metadata,
    human_parameters,
    is_gguf,
    read_gguf_metadata,
)

# -- a minimal GGUF writer (the spec, independent of the reader) ------------------------------------------
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
_CODES = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q"}
_CODES[F64] = "d"


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _val(vtype: int, value: Any) -> bytes:
    if vtype == STR:
        return _s(value)
    if vtype == ARR:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(_val(etype, x) for x in items)
    return struct.pack("<" + _CODES[vtype], value)


def write_gguf(
    path: Path,
    kvs: list[tuple[str, int, Any]],
    tensors: list[tuple[str, list[int], int]],
    *,
    version: int = 3,
    data: bytes = b"",
) -> Path:
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs)))
    for key, vtype, value in kvs:
        out += _s(key) + struct.pack("<I", vtype) + _val(vtype, value)
    offset = 0
    for name, dims, gtype in tensors:
        out += _s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", gtype, offset)
        offset += 64
    out += b"\0" * (-len(out) % 32)
    path.write_bytes(bytes(out) + data)
    return path


TOKENS = [f"tok{i}" for i in range(MAX_KEPT_ARRAY + 100)]
TINY_KVS: list[tuple[str, int, Any]] = [
    ("general.architecture", STR, "tiny"),
    ("general.name", STR, "Tiny Test"),
    ("general.file_type", U32, 15),
    ("tiny.context_length", U32, 2048),
    ("tiny.embedding_length", U64, 64),
    ("tiny.block_count", U16, 2),
    ("tiny.attention.head_count", I32, 4),
    ("tiny.rope.freq_base", F32, 10000.0),
    ("tiny.eps", F64, 1e-6),
    ("tiny.flag", BOOL, True),
    ("tiny.neg", I8, -3),
    ("tiny.big", I64, -(2**40)),
    ("tiny.byte", U8, 255),
    ("tiny.short", I16, -2),
    ("tiny.layers", ARR, (I32, [1, 2, 3])),
    ("tiny.names", ARR, (STR, ["a", "bé"])),
    ("tiny.nested", ARR, (ARR, [(U8, [1, 2]), (U8, [3])])),
    ("tokenizer.ggml.tokens", ARR, (STR, TOKENS)),
    ("tokenizer.ggml.scores", ARR, (F32, [0.5] * len(TOKENS))),
    ("tokenizer.chat_template", STR, "{{ messages }}<|im_start|>"),
]


# -- the real SmolLM2 ----------------------------------------------------------------------------------
def test_smollm2_header(smollm2_gguf: Path) -> None:
    started = time.perf_counter()
    info = read_gguf_metadata(smollm2_gguf)
    elapsed = time.perf_counter() - started
    assert info.version == 3
    assert info.architecture == "llama"
    assert info.quantization == "Q4_1"
    assert info.file_type == 3
    assert info.context_length == 8192
    assert info.embedding_length == 576
    assert info.block_count == 30
    assert 134_000_000 <= info.parameter_count <= 135_500_000
    assert human_parameters(info.parameter_count) == "135M"
    assert info.chat_template is not None and "im_start" in info.chat_template
    assert info.vocab_size == 49152
    assert info.array_lengths["tokenizer.ggml.tokens"] == 49152
    assert "tokenizer.ggml.tokens" not in info.raw  # skipped, only its length kept
    assert "tokenizer.ggml.merges" not in info.raw
    assert info.tensor_count == 272
    assert sum(info.tensor_types.values()) == 272
    assert info.tensor_data_offset % 32 == 0
    assert 0 < info.tensor_bytes < smollm2_gguf.stat().st_size
    assert elapsed < 2.0, f"header read took {elapsed:.2f}s"


def test_smollm2_metadata_is_json(smollm2_gguf: Path) -> None:
    meta = as_metadata(read_gguf_metadata(smollm2_gguf))
    encoded = orjson.dumps(meta)
    assert len(encoded) < 64_000  # no vocabulary in there
    assert meta["parameter_size"] == "135M"
    assert meta["quantization"] == "Q4_1"
    assert meta["model_info"]["llama.context_length"] == 8192
    assert meta["model_info"]["tokenizer.ggml.tokens.length"] == 49152
    assert "im_start" in meta["chat_template"]


def test_parameter_count_from_tensors_matches_declared_size(smollm2_gguf: Path) -> None:
    info = read_gguf_metadata(smollm2_gguf)
    assert "general.parameter_count" not in info.raw  # so the count above came from the tensor infos
    assert info.raw["general.size_label"] == "135M"


# -- broken files ----------------------------------------------------------------------------------------
def test_truncated_file_is_store_error(smollm2_gguf: Path, tmp_path: Path) -> None:
    for size in (1000, 10, 1_000_000):
        cut = tmp_path / f"cut{size}.gguf"
        with smollm2_gguf.open("rb") as f:
            cut.write_bytes(f.read(size))
        with pytest.raises(StoreError, match="truncated"):
            read_gguf_metadata(cut)


def test_not_gguf_is_store_error(tmp_path: Path) -> None:
    other = tmp_path / "model.bin"
    other.write_bytes(b"PK\x03\x04" + b"\0" * 5000)
    with pytest.raises(StoreError, match="not a GGUF"):
        read_gguf_metadata(other)
    assert not is_gguf(other)
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(StoreError):
        read_gguf_metadata(empty)
    with pytest.raises(StoreError):
        read_gguf_metadata(tmp_path / "missing.gguf")


def test_unsupported_version_and_value_type(tmp_path: Path) -> None:
    v1 = write_gguf(tmp_path / "v1.gguf", [("a", U8, 1)], [], version=1)
    with pytest.raises(StoreError, match="version 1"):
        read_gguf_metadata(v1)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _s("k") + struct.pack("<I", 99) + b"\0" * 32)
    with pytest.raises(StoreError, match="value type 99"):
        read_gguf_metadata(bad)


# -- a tiny file written by hand ------------------------------------------------------------------------
def test_tiny_v3_parsed_exactly(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf", TINY_KVS, [("w", [4, 8], 8)], data=b"\1" * 64)
    info = read_gguf_metadata(path)
    assert info.version == 3
    assert info.architecture == "tiny"
    assert info.name == "Tiny Test"
    assert info.file_type == 15
    assert info.quantization == "Q4_K_M"
    assert info.context_length == 2048
    assert info.embedding_length == 64
    assert info.block_count == 2
    assert info.head_count == 4
    assert info.parameter_count == 32
    assert info.chat_template == "{{ messages }}<|im_start|>"
    assert info.vocab_size == len(TOKENS)
    assert info.tensor_count == 1
    assert info.tensor_types == {"Q8_0": 1}
    assert info.tensor_data_offset == path.stat().st_size - 64
    assert info.tensor_bytes == 64
    raw = info.raw
    assert raw["tiny.rope.freq_base"] == 10000.0
    assert raw["tiny.eps"] == 1e-6
    assert raw["tiny.flag"] is True
    assert raw["tiny.neg"] == -3
    assert raw["tiny.big"] == -(2**40)
    assert raw["tiny.byte"] == 255
    assert raw["tiny.short"] == -2
    assert raw["tiny.layers"] == [1, 2, 3]
    assert raw["tiny.names"] == ["a", "bé"]
    assert raw["tiny.nested"] == [[1, 2], [3]]
    assert "tokenizer.ggml.tokens" not in raw and "tokenizer.ggml.scores" not in raw
    assert info.array_lengths == {
        "tiny.layers": 3,
        "tiny.names": 2,
        "tiny.nested": 2,
        "tokenizer.ggml.tokens": len(TOKENS),
        "tokenizer.ggml.scores": len(TOKENS),
    }
    assert set(raw) == {k for k, _, _ in TINY_KVS} - {"tokenizer.ggml.tokens", "tokenizer.ggml.scores"}


def test_tiny_v2_quantization_inferred_from_tensors(tmp_path: Path) -> None:
    kvs: list[tuple[str, int, Any]] = [
        ("general.architecture", STR, "tiny"),
        ("general.parameter_count", U64, 1234),
    ]
    tensors = [("norm", [64], 0), ("a", [64, 64], 12), ("b", [64, 32], 12), ("c", [8], 0), ("d", [2], 0)]
    info = read_gguf_metadata(write_gguf(tmp_path / "v2.gguf", kvs, tensors, version=2))
    assert info.version == 2
    assert info.file_type is None
    assert info.quantization == "Q4_K"  # the big matrices decide, not the many small F32 vectors
    assert info.parameter_count == 1234  # declared wins over the tensor sum
    assert info.tensor_types == {"F32": 3, "Q4_K": 2}
    assert info.context_length is None and info.chat_template is None and info.vocab_size is None


def test_tiny_truncated_anywhere_is_store_error(tmp_path: Path) -> None:
    full = write_gguf(tmp_path / "tiny.gguf", TINY_KVS, [("w", [4, 8], 8)]).read_bytes()
    header_end = len(full)  # no tensor data: the whole file is header (plus padding)
    cut = tmp_path / "cut.gguf"
    for size in range(4, header_end - 32, 97):
        cut.write_bytes(full[:size])
        with pytest.raises(StoreError):
            read_gguf_metadata(cut)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (134_515_008, "135M"),
        (7_241_732_096, "7.2B"),
        (8_030_261_248, "8B"),
        (1_500_000_000, "1.5B"),
        (22_000_000, "22M"),
        (360_000_000, "360M"),
        (2_500_000, "2.5M"),
        (999, "999"),
        (405_000_000_000, "405B"),
    ],
)
def test_human_parameters(n: int, text: str) -> None:
    assert human_parameters(n) == text
