"""The JSON guide without a model: the schema subset, the byte automaton (accepts, refuses, whitespace
bound, never strands a generation), and the token filter over the real SmolLM2 tokenizer.

``conforms`` is an independent validator for the subset (it shares no code with the guide); the
integration and e2e tests check real model output with it."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from tests.integration.conftest import hf_extra, smollm2_hf  # noqa: F401  (fixtures)

from superollama.runtimes._json_guide import MAX_DIGITS, MAX_INDENT, Frame, feed_bytes, start
from superollama.runtimes._json_schema import ANY_OBJECT, Node, SchemaError, compile_schema
from superollama.runtimes._openai_shapes import (
    RequestError,
    parse_chat,
    parse_completion,
    parse_response_format,
)

# -- an independent validator for the subset -----------------------------------------------------------

_PYTHON_TYPES: dict[str, Any] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _resolve(root: Any, ref: str) -> Any:
    target = root
    for part in ref.lstrip("#").split("/")[1:]:
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return target


def conforms(value: Any, schema: Any, root: Any = None) -> bool:
    """Whether ``value`` satisfies ``schema`` (the subset the guide supports)."""
    root = schema if root is None else root
    if schema is True or schema == {}:
        return True
    if "$ref" in schema:
        return conforms(value, _resolve(root, schema["$ref"]), root)
    if "anyOf" in schema:
        return any(conforms(value, s, root) for s in schema["anyOf"])
    if "allOf" in schema:
        return all(conforms(value, s, root) for s in schema["allOf"])
    if "const" in schema and not _same(value, schema["const"]):
        return False
    if "enum" in schema and not any(_same(value, v) for v in schema["enum"]):
        return False
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        if not any(_PYTHON_TYPES[t](value) for t in names):
            return False
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        if not set(schema.get("required", [])) <= value.keys():
            return False
        extra = schema.get("additionalProperties", True)
        for key, item in value.items():
            sub = properties.get(key, extra)
            if sub is False or not conforms(item, sub, root):
                return False
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            return False
        return all(conforms(item, schema.get("items", True), root) for item in value)
    if isinstance(value, str):
        return schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))
    return True


# -- the automaton ------------------------------------------------------------------------------------


def run(node: Node, text: str | bytes) -> Frame | None:
    return feed_bytes(start(node), text.encode() if isinstance(text, str) else text)


def accepts(node: Node, text: str | bytes) -> bool:
    frame = run(node, text)
    return frame is not None and frame.complete


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["str", "int", "float", "bool", "null"] + (["list", "dict"] * 2 if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "str":
        return "".join(rng.choice('ab "\\/\n\té€😀\u0001') for _ in range(rng.randint(0, 6)))
    if kind == "int":
        return rng.randint(-(10**12), 10**12)
    if kind == "float":
        return rng.uniform(-1e6, 1e6)
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {f"k{i}{rng.choice('xé ')}": random_value(rng, depth + 1) for i in range(rng.randint(0, 4))}


def layouts(value: Any) -> list[str]:
    return [
        json.dumps(value),
        json.dumps(value, separators=(",", ":")),
        json.dumps(value, indent=2),
        json.dumps(value, indent="\t", ensure_ascii=False),
    ]


def test_any_json_object_in_any_usual_layout_is_accepted() -> None:
    rng = random.Random(7)
    for _ in range(300):
        value = {"a": random_value(rng), "b": random_value(rng)}
        for text in layouts(value):
            frame = run(ANY_OBJECT, text)
            assert frame is not None and frame.closed, text


def test_what_the_guide_accepts_is_json() -> None:
    """Mutate valid texts one byte at a time: whatever the automaton still accepts parses as an object."""
    rng = random.Random(11)
    alphabet = b'{}[]",:0123456789-+.eEtrufalsn \n\\x'
    accepted = 0
    for _ in range(300):
        text = bytearray(json.dumps({"k": random_value(rng)}).encode())
        for _ in range(rng.randint(1, 3)):
            text[rng.randrange(len(text))] = rng.choice(alphabet)
        if accepts(ANY_OBJECT, bytes(text)):
            accepted += 1
            assert isinstance(json.loads(bytes(text)), dict), text
    assert accepted > 10  # the check ran on real cases


@pytest.mark.parametrize(
    "text",
    [
        '{"a": 1,}',
        '{"a" 1}',
        "{'a': 1}",
        '{"a": 01}',
        '{"a": 1.}',
        '{"a": .5}',
        '{"a": tru}',
        '{"a": "x\ny"}',
        '{"a": "\\q"}',
        '{"a": "\\u12G4"}',
        "[1]",
        '"text"',
        '{"a": 1} {}',
        '{"a": NaN}',
    ],
)
def test_invalid_json_is_refused(text: str) -> None:
    assert not accepts(ANY_OBJECT, text)


def test_broken_utf8_is_refused_and_split_characters_are_fine() -> None:
    euro = "€".encode()
    assert accepts(ANY_OBJECT, b'{"a": "' + euro + b'"}')
    frame = run(ANY_OBJECT, b'{"a": "' + euro[:1])
    assert frame is not None  # half a character: still viable
    assert feed_bytes(frame, euro[1:] + b'"}') is not None
    assert feed_bytes(frame, b'"') is None  # a string cannot end inside a character
    assert run(ANY_OBJECT, b'{"a": "\xff"}') is None
    assert run(ANY_OBJECT, b'{"a": "\xed\xa0\x80"}') is None  # an encoded surrogate


def test_whitespace_is_bounded() -> None:
    assert accepts(ANY_OBJECT, '{\n  "a": [\n    1,\n    2\n  ]\n}')
    assert accepts(ANY_OBJECT, ' {"a": 1}')
    assert run(ANY_OBJECT, '{  "a": 1}') is None  # two spaces without a newline
    assert run(ANY_OBJECT, '{\n\n"a": 1}') is None  # a second newline
    assert run(ANY_OBJECT, "{\n" + " " * MAX_INDENT + '"a": 1}') is not None
    assert run(ANY_OBJECT, "{\n" + " " * (MAX_INDENT + 1)) is None
    assert run(ANY_OBJECT, '{"a":  1}') is None
    assert run(ANY_OBJECT, "\n\n{") is None


def test_numbers_are_bounded_and_a_top_level_number_may_end_or_go_on() -> None:
    number = compile_schema({"type": "number"})
    frame = run(number, "12")
    assert frame is not None and frame.complete and not frame.closed
    assert accepts(number, "-0.5e+10")
    assert run(number, "1" * MAX_DIGITS) is not None
    assert run(number, "1" * (MAX_DIGITS + 1)) is None
    closed = run(ANY_OBJECT, "{}")
    assert closed is not None and closed.closed and closed.feed(ord(" ")) is None


# -- the schema subset --------------------------------------------------------------------------------

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 5},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"enum": ["a", "b", 3]}, "minItems": 1, "maxItems": 2},
        "pet": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/pet"}]},
        "kind": {"const": "person"},
        "score": {"type": ["number", "null"]},
    },
    "required": ["name", "age", "kind"],
    "additionalProperties": False,
    "$defs": {
        "pet": {
            "type": "object",
            "properties": {"species": {"type": "string"}},
            "required": ["species"],
            "additionalProperties": False,
        }
    },
}


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ({"name": "Ann", "age": 3, "kind": "person"}, True),
        ({"kind": "person", "age": -1, "name": "Bo", "tags": ["a", 3], "pet": None, "score": 1.5}, True),
        ({"name": "Ann", "age": 3, "kind": "person", "pet": {"species": "cat"}, "score": None}, True),
        ({"name": "Ann", "age": 3}, False),  # required kind
        ({"name": "", "age": 3, "kind": "person"}, False),  # minLength
        ({"name": "Annabel", "age": 3, "kind": "person"}, False),  # maxLength
        ({"name": "Ann", "age": 3.5, "kind": "person"}, False),  # integer
        ({"name": "Ann", "age": 3, "kind": "robot"}, False),  # const
        ({"name": "Ann", "age": 3, "kind": "person", "x": 1}, False),  # additionalProperties
        ({"name": "Ann", "age": 3, "kind": "person", "tags": []}, False),  # minItems
        ({"name": "Ann", "age": 3, "kind": "person", "tags": ["a", "b", "a"]}, False),  # maxItems
        ({"name": "Ann", "age": 3, "kind": "person", "tags": ["c"]}, False),  # enum
        ({"name": "Ann", "age": 3, "kind": "person", "pet": {}}, False),  # $ref's required
        ({"name": "Ann", "age": 3, "kind": "person", "score": "1"}, False),  # type list
    ],
)
def test_schema_subset_agrees_with_the_validator(value: dict[str, Any], ok: bool) -> None:
    assert conforms(value, PERSON) is ok
    node = compile_schema(PERSON)
    for text in layouts(value):
        assert accepts(node, text) is ok, text


def test_a_key_cannot_repeat_and_open_objects_take_any_other_key() -> None:
    closed = compile_schema(
        {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False}
    )
    assert run(closed, '{"a": 1, "a"') is None
    assert run(closed, '{"a": 1,') is None  # nothing left to write: no comma
    open_ = compile_schema({"type": "object", "properties": {"a": {"type": "integer"}}})
    assert accepts(open_, '{"a": 1, "b": [true, {"c": null}]}')
    assert not accepts(open_, '{"a": "1"}')
    assert not accepts(open_, '{"\\u0061": "1"}')  # the same key, escaped, keeps its schema
    typed = compile_schema({"type": "object", "additionalProperties": {"type": "string"}})
    assert accepts(typed, '{"x": "y"}') and not accepts(typed, '{"x": 1}')


def test_recursive_refs_compile_and_guide() -> None:
    tree = {
        "$defs": {
            "node": {
                "type": "object",
                "properties": {
                    "v": {"type": "integer"},
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}},
                },
                "required": ["v"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/node",
    }
    node = compile_schema(tree)
    assert accepts(node, '{"v": 1, "kids": [{"v": 2, "kids": [{"v": 3}]}]}')
    assert not accepts(node, '{"v": 1, "kids": [{"w": 2}]}')
    assert accepts(compile_schema({"type": "array", "items": {"$ref": "#"}}), "[[], [[]]]")


@pytest.mark.parametrize(
    ("schema", "keyword"),
    [
        ({"type": "string", "pattern": "^a+$"}, "pattern"),
        ({"type": "string", "format": "date-time"}, "format"),
        ({"type": "integer", "minimum": 0}, "minimum"),
        ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "oneOf"),
        ({"not": {"type": "string"}}, "not"),
        ({"type": "object", "patternProperties": {"^x": {}}}, "patternProperties"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "object", "properties": {"a": {"type": "string", "format": "email"}}}, "format"),
        ({"$ref": "https://example.com/schema.json"}, "$ref"),
        ({"$ref": "#/$defs/missing"}, "$ref"),
        ({"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}, "$ref"),
        ({"anyOf": [{"type": "string"}], "type": "string"}, "anyOf"),
        ({"allOf": [{"type": "string"}, {"maxLength": 3}]}, "allOf"),
        ({"type": "date"}, "type"),
        ({"enum": []}, "enum"),
        ({"type": "string", "enum": [1, 2]}, "enum"),
        ({"type": "object", "required": ["a"], "additionalProperties": False}, "required"),
    ],
)
def test_unsupported_keywords_are_named(schema: dict[str, Any], keyword: str) -> None:
    with pytest.raises(SchemaError) as info:
        compile_schema(schema)
    assert info.value.keyword == keyword
    body = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    with pytest.raises(RequestError) as error:
        parse_response_format(body)
    assert error.value.param == "response_format" and error.value.status == 400
    assert repr(keyword) in error.value.message or keyword in error.value.message


def test_annotations_are_not_constraints() -> None:
    node = compile_schema(
        {"title": "T", "description": "d", "type": "string", "default": "x", "examples": ["y"]}
    )
    assert accepts(node, '"z"')


def test_response_format_parsing() -> None:
    assert parse_response_format(None) is None
    assert parse_response_format({"type": "text"}) is None
    assert parse_response_format({"type": "json_object"}) is ANY_OBJECT
    for bad in (
        {"type": "yaml"},
        {"type": "json_schema"},
        {"type": "json_schema", "json_schema": {}},
        "json",
    ):
        with pytest.raises(RequestError) as info:
            parse_response_format(bad)
        assert info.value.param == "response_format"
    params = parse_chat(
        {"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}
    )
    assert params.sampling.json is ANY_OBJECT
    # Completions take it too, or llama.cpp's ``json_schema`` (the gateway's Ollama ``format`` sends both).
    completion = parse_completion({"prompt": "x", "response_format": {"type": "json_object"}})
    assert completion.sampling.json is ANY_OBJECT
    assert parse_completion({"prompt": "x", "json_schema": {"type": "integer"}}).sampling.json is not None
    assert parse_completion({"prompt": "x"}).sampling.json is None
    with pytest.raises(RequestError) as info:
        parse_completion({"prompt": "x", "json_schema": {"type": "string", "pattern": "a"}})
    assert info.value.param == "json_schema" and "'pattern'" in info.value.message


def _walk(node: Node, rng: random.Random, steps: int = 400) -> bytes | None:
    """Generate like a sampler would, one random allowed byte at a time (preferring to close)."""
    frame, out = start(node), bytearray()
    for _ in range(steps):
        if frame.closed:
            return bytes(out)
        allowed = [b for b in range(256) if frame.feed(b) is not None]
        assert allowed or frame.complete, f"stranded after {bytes(out)!r}"
        if not allowed:
            return bytes(out)
        closers = [b for b in allowed if b in b'}]"']
        byte = rng.choice(closers if closers and rng.random() < 0.3 else allowed)
        frame = frame.feed(byte)  # type: ignore[assignment]
        out.append(byte)
    return None


@pytest.mark.parametrize(
    "schema",
    [
        PERSON,
        {"type": "array", "items": {"type": ["integer", "boolean"]}, "minItems": 2, "maxItems": 3},
        True,
    ],
    ids=["person", "array", "any"],
)
def test_random_generation_never_strands_and_always_conforms(schema: Any) -> None:
    node = ANY_OBJECT if schema is True else compile_schema(schema)
    rng = random.Random(5)
    done = 0
    for _ in range(40):
        text = _walk(node, rng)
        if text is None:
            continue
        done += 1
        value = json.loads(text)
        assert conforms(value, {"type": "object"} if schema is True else schema), text
    assert done >= 10


# -- the token filter over the real tokenizer ----------------------------------------------------------


@pytest.fixture(scope="module")
def vocab(smollm2_hf: Path) -> Any:  # noqa: F811
    from transformers import AutoTokenizer

    from superollama.runtimes._token_filter import Vocabulary

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_hf), local_files_only=True)
    return tokenizer, Vocabulary.from_tokenizer(tokenizer, [tokenizer.eos_token_id])


def _whole(data: bytes) -> bool:
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def test_token_bytes_rebuild_the_decoded_text(vocab: Any) -> None:
    tokenizer, table = vocab
    text = 'Héllo wörld 😀 {"a": [1, 2.5], "b": "\\u00e9"}\n\t'
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert not all(_whole(table.piece(i)) for i in ids)  # the emoji is split over tokens
    assert b"".join(table.piece(i) for i in ids).decode() == tokenizer.decode(ids) == text
    eos = tokenizer.eos_token_id
    assert not table.guided(eos) and table.piece(eos) == tokenizer.eos_token.encode()


def test_the_allowed_set_is_exactly_the_tokens_that_continue(vocab: Any) -> None:
    from superollama.runtimes._token_filter import TokenGuide

    tokenizer, table = vocab
    schema = compile_schema(PERSON)
    for prefix in [
        "",
        "{",
        '{"na',
        '{"name": "A',
        '{"name": "A", "age": 1',
        '{"name": "A", "age": 1, "kind": "person"',
    ]:
        guide = TokenGuide(table, schema)
        guide.frame = run(schema, prefix)  # type: ignore[assignment]
        allowed = set(guide.allowed())
        brute = {i for i in range(len(tokenizer)) if guide.allows(i)}
        assert allowed == brute, prefix
        assert allowed and all(accepts_prefix(schema, prefix.encode() + table.piece(i)) for i in allowed)
    guide = TokenGuide(table, schema)
    assert {table.piece(i) for i in guide.allowed()} >= {b"{", b"\n"}
    assert b'{"' in {table.piece(i) for i in guide.allowed()}
    assert tokenizer.eos_token_id not in guide.allowed()


def accepts_prefix(node: Node, data: bytes) -> bool:
    return run(node, data) is not None


def test_the_end_token_is_allowed_only_when_the_value_may_end(vocab: Any) -> None:
    from superollama.runtimes._token_filter import TokenGuide

    tokenizer, table = vocab
    eos = tokenizer.eos_token_id
    guide = TokenGuide(table, compile_schema({"type": "integer"}))
    assert not guide.allows(eos)
    one = tokenizer.convert_tokens_to_ids("1")
    guide.advance(one)
    assert guide.accepting and not guide.done and guide.allows(eos)
    obj = TokenGuide(table, ANY_OBJECT)
    for token in tokenizer("{}", add_special_tokens=False)["input_ids"]:
        assert obj.allows(token)
        obj.advance(token)
    assert obj.done and obj.allowed() == [eos]


def test_schema_as_mapping_is_kept_intact() -> None:
    schema: Mapping[str, Any] = json.loads(json.dumps(PERSON))
    compile_schema(schema)
    assert schema == PERSON


# -- the sampler: guided draws follow the masked, renormalised distribution ----------------------------


def _frequencies(
    vocab_pieces: list[bytes], logits: list[float], temperature: float, top_p: float
) -> list[float]:
    import torch

    from superollama.runtimes._hf_sampling import pick
    from superollama.runtimes._openai_shapes import Sampling
    from superollama.runtimes._token_filter import TokenGuide, Vocabulary

    vocab = Vocabulary(vocab_pieces, range(len(vocab_pieces)), eos=[])
    node = compile_schema({"enum": ["a", "b"]})
    sampling = Sampling(temperature=temperature, top_p=top_p)
    generator = torch.Generator().manual_seed(1234)
    tensor = torch.tensor(logits)
    counts = [0] * len(vocab_pieces)
    draws = 3000
    for _ in range(draws):
        counts[pick(torch, tensor, sampling, generator, TokenGuide(vocab, node))] += 1
    return [c / draws for c in counts]


@pytest.mark.parametrize("refused", [3, 40], ids=["among-candidates", "past-the-candidates"])
def test_guided_sampling_draws_from_the_masked_distribution(refused: int) -> None:
    pieces = [f'"x{i}"'.encode() for i in range(refused)] + [b'"a"', b'"b"']
    logits = [5.0] * refused + [1.0, 0.0]  # the refused tokens hold nearly all the mass
    got = _frequencies(pieces, logits, 1.0, 1.0)
    assert sum(got[:refused]) == 0.0
    expected_a = math.exp(1.0) / (math.exp(1.0) + 1.0)  # 0.731
    assert got[refused] == pytest.approx(expected_a, abs=0.03)
    greedy = _frequencies(pieces, logits, 0.0, 1.0)
    assert greedy[refused] == 1.0
    # top-p keeps only refused tokens: the temperature-scaled allowed distribution decides
    assert _frequencies(pieces, logits, 1.0, 0.5)[refused] == pytest.approx(expected_a, abs=0.03)
