"""A pure-Python reader for the header of a GGUF file (v2 and v3, little-endian).

Only the header is read: the key/value metadata and the tensor infos. The file is memory-mapped and the big
tokenizer arrays (``tokenizer.ggml.tokens``, ``merges``, ``scores`` …) are skipped by walking their length
prefixes, never materialised; their lengths are kept in ``GgufInfo.array_lengths``.

Layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md)::

    magic "GGUF" | version u32 | tensor_count u64 | kv_count u64
    kv_count x (key: string, value_type: u32, value)
    tensor_count x (name: string, n_dims: u32, dims: n_dims x u64, ggml_type: u32, offset: u64)
    padding to general.alignment (default 32), then the tensor data

    string = u64 length + UTF-8 bytes;  array = element_type u32 + count u64 + elements
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from superollama.errors import StoreError

__all__ = [
    "FILE_TYPES",
    "GGML_TYPES",
    "GgufInfo",
    "as_metadata",
    "human_parameters",
    "is_gguf",
    "read_gguf_metadata",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
# Arrays up to this many elements are kept in ``raw``; longer ones (vocabularies, merges) are skipped.
MAX_KEPT_ARRAY = 512
_MAX_DIMS = 8

# llama.cpp's ``enum llama_ftype`` (the value of ``general.file_type``) → the quantization's name.
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    4: "Q4_1_SOME_F16",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
}

# ggml's ``enum ggml_type`` (the type of each tensor) → name.
GGML_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    6: "Q5_0",
    7: "Q5_1",
    8: "Q8_0",
    9: "Q8_1",
    10: "Q2_K",
    11: "Q3_K",
    12: "Q4_K",
    13: "Q5_K",
    14: "Q6_K",
    15: "Q8_K",
    16: "IQ2_XXS",
    17: "IQ2_XS",
    18: "IQ3_XXS",
    19: "IQ1_S",
    20: "IQ4_NL",
    21: "IQ3_S",
    22: "IQ2_S",
    23: "IQ4_XS",
    24: "I8",
    25: "I16",
    26: "I32",
    27: "I64",
    28: "F64",
    29: "IQ1_M",
    30: "BF16",
    34: "TQ1_0",
    35: "TQ2_0",
    39: "MXFP4",
}

# GGUF value types: 0..12. Fixed-size ones map to a struct code; 8 = string, 9 = array.
_T_STRING = 8
_T_ARRAY = 9
_SCALAR_CODES: dict[int, str] = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
_TYPE_NAMES: dict[int, str] = {
    0: "uint8",
    1: "int8",
    2: "uint16",
    3: "int16",
    4: "uint32",
    5: "int32",
    6: "float32",
    7: "bool",
    8: "string",
    9: "array",
    10: "uint64",
    11: "int64",
    12: "float64",
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF header says about a model. ``raw`` holds every scalar KV and the short arrays."""

    version: int
    architecture: str | None
    name: str | None
    parameter_count: int
    file_type: int | None
    quantization: str | None
    context_length: int | None
    embedding_length: int | None
    block_count: int | None
    head_count: int | None
    head_count_kv: int | None
    vocab_size: int | None
    chat_template: str | None
    tensor_count: int
    tensor_data_offset: int
    file_size: int
    raw: dict[str, Any] = field(default_factory=dict)
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensor_types: dict[str, int] = field(default_factory=dict)  # ggml type name → number of tensors

    @property
    def tensor_bytes(self) -> int:
        """Bytes of tensor data (what a runtime maps into memory)."""
        return max(0, self.file_size - self.tensor_data_offset)


class _Truncated(Exception):
    pass


class _Reader:
    """Cursor over a memory-mapped file with bounds checks (a short file is ``_Truncated``, never garbage)."""

    def __init__(self, buf: mmap.mmap, size: int) -> None:
        self.buf = buf
        self.size = size
        self.pos = 0

    def _need(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Truncated

    def u32(self) -> int:
        self._need(4)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return int(v)

    def u64(self) -> int:
        self._need(8)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return int(v)

    def string(self) -> str:
        n = self.u64()
        self._need(n)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        for _ in range(count):
            if pos + 8 > size:
                raise _Truncated
            pos += 8 + unpack(buf, pos)[0]
        if pos > size:
            raise _Truncated
        self.pos = pos

    def value(self, vtype: int, *, keep: bool) -> Any:
        """Read (``keep``) or skip one value of GGUF type ``vtype``."""
        code = _SCALAR_CODES.get(vtype)
        if code is not None:
            st = struct.calcsize(code)
            self._need(st)
            (v,) = struct.unpack_from("<" + code, self.buf, self.pos)
            self.pos += st
            return v
        if vtype == _T_STRING:
            return self.string()
        if vtype == _T_ARRAY:
            return self.array(keep=keep)
        raise StoreError(f"unknown GGUF value type {vtype}")

    def array(self, *, keep: bool) -> list[Any] | None:
        etype = self.u32()
        count = self.u64()
        keep = keep and count <= MAX_KEPT_ARRAY
        code = _SCALAR_CODES.get(etype)
        if code is not None:
            nbytes = struct.calcsize(code) * count
            self._need(nbytes)
            if not keep:
                self.pos += nbytes
                return None
            values = list(struct.unpack_from(f"<{count}{code}", self.buf, self.pos))
            self.pos += nbytes
            return values
        if etype == _T_STRING:
            if not keep:
                self.skip_strings(count)
                return None
            return [self.string() for _ in range(count)]
        if etype == _T_ARRAY:
            if count > self.size:  # every nested array takes at least 12 bytes
                raise _Truncated
            items = [self.array(keep=keep) for _ in range(count)]
            return items if keep else None
        raise StoreError(f"unknown GGUF array element type {etype}")


def read_gguf_metadata(path: str | os.PathLike[str]) -> GgufInfo:
    """Read the header of the GGUF file at ``path``. Raise ``StoreError`` if it is not a readable GGUF."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                head = f.read(4)
                if head != GGUF_MAGIC:
                    raise StoreError(f"{p}: not a GGUF file (bad magic {head!r})")
                raise StoreError(f"{p}: truncated GGUF header ({size} bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return _parse(buf, size, p)
    except OSError as exc:
        raise StoreError(f"{p}: cannot read GGUF file: {exc}") from exc


def is_gguf(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts with the GGUF magic (cheap: reads 4 bytes)."""
    try:
        with Path(path).open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


def _parse(buf: mmap.mmap, size: int, path: Path) -> GgufInfo:
    if buf[:4] != GGUF_MAGIC:
        raise StoreError(f"{path}: not a GGUF file (bad magic {bytes(buf[:4])!r})")
    r = _Reader(buf, size)
    r.pos = 4
    try:
        version = r.u32()
        if version not in SUPPORTED_VERSIONS:
            if version & 0xFFFF == 0 and (version >> 24) in SUPPORTED_VERSIONS:
                raise StoreError(f"{path}: big-endian GGUF is not supported")
            raise StoreError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
        tensor_count = r.u64()
        kv_count = r.u64()
        if kv_count > size or tensor_count > size:
            raise StoreError(f"{path}: corrupt GGUF header (kv_count={kv_count}, tensors={tensor_count})")
        raw: dict[str, Any] = {}
        lengths: dict[str, int] = {}
        for _ in range(kv_count):
            key = r.string()
            vtype = r.u32()
            if vtype == _T_ARRAY:
                start = r.pos
                r.u32()
                count = r.u64()
                r.pos = start
                lengths[key] = count
                value = r.array(keep=count <= MAX_KEPT_ARRAY)
                if value is not None:
                    raw[key] = value
            else:
                raw[key] = r.value(vtype, keep=True)
        params = 0
        types_by_count: Counter[str] = Counter()
        types_by_elems: Counter[str] = Counter()
        for _ in range(tensor_count):
            r.string()  # tensor name
            n_dims = r.u32()
            if n_dims > _MAX_DIMS:
                raise StoreError(f"{path}: corrupt GGUF tensor info ({n_dims} dimensions)")
            elems = math.prod(r.u64() for _ in range(n_dims))
            gtype = r.u32()
            r.u64()  # offset in the data section
            tname = GGML_TYPES.get(gtype, f"TYPE{gtype}")
            params += elems
            types_by_count[tname] += 1
            types_by_elems[tname] += elems
    except _Truncated:
        raise StoreError(f"{path}: truncated GGUF header ({size} bytes)") from None
    alignment = raw.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0:
        alignment = DEFAULT_ALIGNMENT
    data_offset = -(-r.pos // alignment) * alignment
    return _info(
        version=version,
        raw=raw,
        lengths=lengths,
        tensor_params=params,
        types_by_count=types_by_count,
        types_by_elems=types_by_elems,
        tensor_count=tensor_count,
        data_offset=data_offset,
        size=size,
    )


def _info(
    *,
    version: int,
    raw: dict[str, Any],
    lengths: dict[str, int],
    tensor_params: int,
    types_by_count: Counter[str],
    types_by_elems: Counter[str],
    tensor_count: int,
    data_offset: int,
    size: int,
) -> GgufInfo:
    arch = _str(raw.get("general.architecture"))
    file_type = _int(raw.get("general.file_type"))
    quant = FILE_TYPES.get(file_type, f"FTYPE{file_type}") if file_type is not None else None
    if quant is None and types_by_elems:
        quant = types_by_elems.most_common(1)[0][0]  # weighted by elements: the big matrices decide
    declared = _int(raw.get("general.parameter_count"))

    def arch_int(suffix: str) -> int | None:
        return _int(raw.get(f"{arch}.{suffix}")) if arch else None

    vocab = arch_int("vocab_size")
    if vocab is None:
        vocab = lengths.get("tokenizer.ggml.tokens")
    return GgufInfo(
        version=version,
        architecture=arch,
        name=_str(raw.get("general.name")),
        parameter_count=declared if declared is not None else tensor_params,
        file_type=file_type,
        quantization=quant,
        context_length=arch_int("context_length"),
        embedding_length=arch_int("embedding_length"),
        block_count=arch_int("block_count"),
        head_count=arch_int("attention.head_count"),
        head_count_kv=arch_int("attention.head_count_kv"),
        vocab_size=vocab,
        chat_template=_str(raw.get("tokenizer.chat_template")),
        tensor_count=tensor_count,
        tensor_data_offset=data_offset,
        file_size=size,
        raw=raw,
        array_lengths=lengths,
        tensor_types=dict(types_by_count),
    )


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def _str(v: Any) -> str | None:
    return v if isinstance(v, str) else None


def human_parameters(n: int) -> str:
    """``134_515_008`` → ``"135M"``; ``7_241_732_096`` → ``"7.2B"``; ``8_030_261_248`` → ``"8B"``."""
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            x = n / scale
            text = f"{math.floor(x + 0.5)}" if x >= 100 else f"{math.floor(x * 10 + 0.5) / 10:g}"
            return text + unit
    return str(n)


def as_metadata(info: GgufInfo) -> dict[str, Any]:
    """A JSON-able summary for manifests and ``show``: the derived fields plus the raw scalar KVs."""
    model_info = {k: v for k, v in info.raw.items() if k != "tokenizer.chat_template"}
    for key, n in info.array_lengths.items():
        model_info.setdefault(f"{key}.length", n)
    return {
        "gguf_version": info.version,
        "architecture": info.architecture,
        "name": info.name,
        "parameter_count": info.parameter_count,
        "parameter_size": human_parameters(info.parameter_count),
        "file_type": info.file_type,
        "quantization": info.quantization,
        "context_length": info.context_length,
        "embedding_length": info.embedding_length,
        "block_count": info.block_count,
        "head_count": info.head_count,
        "head_count_kv": info.head_count_kv,
        "vocab_size": info.vocab_size,
        "tensor_count": info.tensor_count,
        "tensor_bytes": info.tensor_bytes,
        "chat_template": info.chat_template,
        "model_info": _jsonable(model_info),
    }


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v
