"""OpenAI's files (``/v1/files*``) and vector stores (``/v1/vector_stores*``), as the OpenAI SDK calls them,
and the admin API's groundings (``/admin/v1/grounding*``) that answer chat from those stores. Errors in
OpenAI's envelope; a file or vector store of another key is a 404, as if it did not exist.

The handlers are ``plugins/rag/routes.py`` and ``plugins/rag/admin.py``; what they check is said here
(the ``/v1`` bodies keep their own validation, the admin body is validated against this schema first).
"""

from __future__ import annotations

from superollama.contract.model import (
    JSON,
    Family,
    Operation,
    Param,
    Reply,
    Schema,
    array,
    boolean,
    integer,
    nullable,
    number,
    obj,
    string,
)

__all__ = ["FILE_PURPOSES", "OPERATIONS", "VECTOR_STORE_ENGINES"]

FILES, STORES, GROUNDING = "Files", "Vector stores", "Admin: grounding"
FILE_PURPOSES = ("assistants", "batch", "fine-tune", "user_data", "vision", "evals")  # plugins/rag/files.py
VECTOR_STORE_ENGINES = ("sqlite-vec", "lancedb")  # plugins/rag/service.py
_VS = "/v1/vector_stores"

# -- params ---------------------------------------------------------------------------------------------


def _path(name: str, description: str) -> Param:
    return Param(name, "path", string(minLength=1), description, required=True)


def _query(name: str, schema: Schema, description: str) -> Param:
    return Param(name, "query", schema, description)


_FILE_ID = (_path("id", "the file's id (file-…)"),)
_STORE_ID = (_path("id", "the vector store's id (vs_…)"),)
_STORE_FILE = (*_STORE_ID, _path("file_id", "the file's id"))
_BATCH = (*_STORE_ID, _path("batch_id", "the batch's id (vsfb_…)"))
_ORDER = _query("order", string(enum=["asc", "desc"]), "by creation time (default desc)")
_AFTER = _query("after", string(), "the id of the last item of the previous page")
_BEFORE = _query("before", string(), "accepted, not used (OpenAI's SDK may send it)")
_STATUS = string(enum=["in_progress", "completed", "failed", "cancelled"])


def _page_params(default: int) -> tuple[Param, ...]:
    limit = integer(minimum=1, maximum=10_000, description=f"default {default}")
    return (_query("limit", limit, "at most this many"), _AFTER, _BEFORE, _ORDER)


# -- shapes ---------------------------------------------------------------------------------------------

FILE = obj(
    ("id", "object", "bytes", "created_at", "filename", "purpose", "status"),
    id=string(),
    object=string(const="file"),
    bytes=integer(minimum=0),
    created_at=integer(),
    filename=string(),
    purpose=string(),
    status=string(),
    expires_at=nullable(integer()),
    status_details=nullable(string()),
)
_COUNTS = obj(
    ("in_progress", "completed", "failed", "cancelled", "total"),
    **{k: integer(minimum=0) for k in ("in_progress", "completed", "failed", "cancelled", "total")},
)
_METADATA = {
    "type": "object",
    "maxProperties": 16,
    "propertyNames": {"maxLength": 64},
    "additionalProperties": string(maxLength=512),
}
_ATTRIBUTES = {
    "type": "object",
    "maxProperties": 16,
    "propertyNames": {"maxLength": 64},
    "additionalProperties": {"type": ["string", "number", "boolean"]},
}
_EXPIRES_AFTER = {
    **obj(anchor=string(), days=integer()),
    "description": "OpenAI's {anchor: last_active_at, days}: kept and shown; stores do not expire here",
}
_CHUNKING = {
    "anyOf": [
        obj(("type",), type=string(const="auto")),
        obj(
            ("type", "static"),
            type=string(const="static"),
            static=obj(
                ("max_chunk_size_tokens",),
                max_chunk_size_tokens=integer(minimum=100, maximum=4096),
                chunk_overlap_tokens=integer(
                    minimum=0, maximum=2048, description="at most half of max_chunk_size_tokens"
                ),
            ),
        ),
    ]
}
_CHUNKING_SHOWN = obj(
    ("type", "static"),
    type=string(const="static"),
    static=obj(
        ("max_chunk_size_tokens", "chunk_overlap_tokens"),
        max_chunk_size_tokens=integer(),
        chunk_overlap_tokens=integer(),
    ),
)
VECTOR_STORE = obj(
    ("id", "object", "created_at", "usage_bytes", "file_counts", "status", "metadata"),
    id=string(),
    object=string(const="vector_store"),
    created_at=integer(),
    name=nullable(string()),
    description=nullable(string()),
    usage_bytes=integer(minimum=0),
    file_counts=_COUNTS,
    status=string(enum=["in_progress", "completed", "expired"]),
    last_active_at=nullable(integer()),
    metadata=obj(),
    expires_after=nullable(obj()),
    expires_at=nullable(integer()),
    embedding_model=string(),
    engine=string(enum=list(VECTOR_STORE_ENGINES)),
)
STORE_FILE = obj(
    ("id", "object", "created_at", "vector_store_id", "status", "usage_bytes"),
    id=string(),
    object=string(const="vector_store.file"),
    created_at=integer(),
    vector_store_id=string(),
    status=_STATUS,
    usage_bytes=integer(minimum=0),
    last_error=nullable(obj(("code", "message"), code=string(), message=string())),
    attributes=nullable(obj()),
    chunking_strategy=_CHUNKING_SHOWN,
)
FILE_BATCH = obj(
    ("id", "object", "created_at", "vector_store_id", "status", "file_counts"),
    id=string(),
    object=string(const="vector_store.files_batch"),
    created_at=integer(),
    vector_store_id=string(),
    status=string(enum=["in_progress", "completed", "failed", "cancelled", "cancelling"]),
    file_counts=_COUNTS,
)
_SEARCH_PAGE = obj(
    ("object", "search_query", "data", "has_more"),
    object=string(const="vector_store.search_results.page"),
    search_query=array(string()),
    data=array(
        obj(
            ("file_id", "filename", "score", "content"),
            file_id=string(),
            filename=string(),
            score=number(),
            attributes=nullable(obj()),
            content=array(obj(("type", "text"), type=string(const="text"), text=string())),
        )
    ),
    has_more=boolean(),
    next_page=nullable(string()),
)
_FILTER = obj(
    ("type",),
    type=string(enum=["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "and", "or"]),
    key=string(minLength=1),
    value={"type": ["string", "number", "boolean", "array"]},
    filters=array(obj(), minItems=1, description="the filters of an and / or"),
)
GROUNDING_SHAPE = obj(
    ("name", "vector_store_ids", "top_k"),
    name=string(),
    vector_store_ids=array(string()),
    top_k=integer(minimum=1, maximum=50),
    score_threshold=nullable(number()),
    template=nullable(string()),
    updated_at=nullable(string()),
)


def _list(item: Schema) -> dict[int, Reply]:
    page = obj(
        ("object", "data", "has_more"),
        object=string(const="list"),
        data=array(item),
        first_id=nullable(string()),
        last_id=nullable(string()),
        has_more=boolean(),
    )
    return {200: Reply("A page, oldest or newest first (order)", {JSON: page})}


def _one(description: str, schema: Schema) -> dict[int, Reply]:
    return {200: Reply(description, {JSON: schema})}


def _deleted(kind: str) -> dict[int, Reply]:
    return _one(
        "Deleted",
        obj(("id", "object", "deleted"), id=string(), object=string(const=kind), deleted=boolean()),
    )


def _v1(method: str, path: str, summary: str, tag: str, replies: dict[int, Reply], **kw: object) -> Operation:
    return Operation(method, path, summary, tag, Family.OPENAI, replies, **kw)  # type: ignore[arg-type]


_UPLOAD = {
    "type": "object",
    "required": ["file", "purpose"],
    "properties": {
        "file": {"type": "string", "format": "binary", "description": "the file's bytes, with its name"},
        "purpose": string(enum=list(FILE_PURPOSES), description="fine-tune: checked as chat JSONL"),
        "expires_after[anchor]": string(const="created_at"),
        "expires_after[seconds]": integer(minimum=3600, maximum=2_592_000),
    },
}

OPERATIONS = (
    # -- files ----------------------------------------------------------------------------------------------
    _v1(
        "POST",
        "/v1/files",
        "Upload a file (multipart/form-data: file, purpose)",
        FILES,
        _one("The file", FILE),
        body=_UPLOAD,
        body_media="multipart/form-data",
    ),
    _v1(
        "GET",
        "/v1/files",
        "List this key's files",
        FILES,
        _list(FILE),
        params=(
            _query("purpose", string(), "only files of this purpose"),
            _query("limit", integer(minimum=1, maximum=10_000), "at most this many (default all)"),
            _AFTER,
            _ORDER,
        ),
    ),
    _v1("GET", "/v1/files/{id}", "One file", FILES, _one("The file", FILE), params=_FILE_ID),
    _v1(
        "GET",
        "/v1/files/{id}/content",
        "A file's bytes",
        FILES,
        {200: Reply("The bytes, as uploaded", {"application/octet-stream": string(format="binary")})},
        params=_FILE_ID,
    ),
    _v1(
        "DELETE",
        "/v1/files/{id}",
        "Delete a file (it leaves every vector store it is in)",
        FILES,
        _deleted("file"),
        params=_FILE_ID,
    ),
    # -- vector stores --------------------------------------------------------------------------------------
    _v1(
        "POST",
        _VS,
        "Create a vector store (its files are indexed by background jobs)",
        STORES,
        _one("The vector store", VECTOR_STORE),
        body=obj(
            name=nullable(string()),
            description=nullable(string()),
            metadata=nullable(_METADATA),
            file_ids=nullable(array(string(minLength=1))),
            chunking_strategy=nullable(_CHUNKING),
            expires_after=nullable(_EXPIRES_AFTER),
            embedding_model=nullable(
                string(description="a routable embedding model or deployment (default: rag_embedding_model)")
            ),
            engine=nullable(string(enum=list(VECTOR_STORE_ENGINES))),
        ),
        description="Beyond OpenAI's fields: embedding_model and engine (the SDK's extra_body).",
    ),
    _v1("GET", _VS, "List this key's vector stores", STORES, _list(VECTOR_STORE), params=_page_params(20)),
    _v1(
        "GET",
        f"{_VS}/{{id}}",
        "One vector store",
        STORES,
        _one("The vector store", VECTOR_STORE),
        params=_STORE_ID,
    ),
    _v1(
        "POST",
        f"{_VS}/{{id}}",
        "Change a vector store's name, metadata or expires_after",
        STORES,
        _one("The vector store", VECTOR_STORE),
        params=_STORE_ID,
        body=obj(
            name=nullable(string()), metadata=nullable(_METADATA), expires_after=nullable(_EXPIRES_AFTER)
        ),
    ),
    _v1(
        "DELETE",
        f"{_VS}/{{id}}",
        "Delete a vector store and its chunks (the files stay)",
        STORES,
        _deleted("vector_store.deleted"),
        params=_STORE_ID,
    ),
    _v1(
        "POST",
        f"{_VS}/{{id}}/search",
        "Search a vector store (its embedding model embeds the query)",
        STORES,
        _one("The best chunks", _SEARCH_PAGE),
        params=_STORE_ID,
        body=obj(
            ("query",),
            query={"anyOf": [string(minLength=1), array(string(minLength=1), minItems=1)]},
            max_num_results=integer(minimum=1, maximum=50),
            filters=nullable(_FILTER),
            ranking_options=nullable(
                obj(ranker=string(), score_threshold=nullable(number(minimum=0, maximum=1)))
            ),
            rewrite_query=boolean(),
        ),
        upstream=True,
    ),
    # -- files of a store -----------------------------------------------------------------------------------
    _v1(
        "POST",
        f"{_VS}/{{id}}/files",
        "Add a file to a vector store (indexed in the background: poll it)",
        STORES,
        _one("The vector store file, in_progress", STORE_FILE),
        params=_STORE_ID,
        body=obj(
            ("file_id",),
            file_id=string(minLength=1),
            attributes=nullable(_ATTRIBUTES),
            chunking_strategy=nullable(_CHUNKING),
        ),
    ),
    _v1(
        "GET",
        f"{_VS}/{{id}}/files",
        "The files of a vector store",
        STORES,
        _list(STORE_FILE),
        params=(*_STORE_ID, _query("filter", _STATUS, "only files in this state"), *_page_params(20)),
    ),
    _v1(
        "GET",
        f"{_VS}/{{id}}/files/{{file_id}}",
        "One file of a vector store",
        STORES,
        _one("The vector store file", STORE_FILE),
        params=_STORE_FILE,
    ),
    _v1(
        "POST",
        f"{_VS}/{{id}}/files/{{file_id}}",
        "New attributes for a file of a vector store (indexed again with them)",
        STORES,
        _one("The vector store file, in_progress", STORE_FILE),
        params=_STORE_FILE,
        body=obj(("attributes",), attributes=nullable(_ATTRIBUTES)),
    ),
    _v1(
        "DELETE",
        f"{_VS}/{{id}}/files/{{file_id}}",
        "Remove a file from a vector store (the file stays)",
        STORES,
        _deleted("vector_store.file.deleted"),
        params=_STORE_FILE,
    ),
    # -- batches --------------------------------------------------------------------------------------------
    _v1(
        "POST",
        f"{_VS}/{{id}}/file_batches",
        "Add files to a vector store in one batch",
        STORES,
        _one("The batch", FILE_BATCH),
        params=_STORE_ID,
        body=obj(
            file_ids=nullable(array(string(minLength=1))),
            files=nullable(
                array(obj(("file_id",), file_id=string(minLength=1), attributes=nullable(_ATTRIBUTES)))
            ),
            attributes=nullable(_ATTRIBUTES),
            chunking_strategy=nullable(_CHUNKING),
        ),
        description="file_ids or files must name at least one file.",
    ),
    _v1(
        "GET",
        f"{_VS}/{{id}}/file_batches/{{batch_id}}",
        "One batch",
        STORES,
        _one("The batch", FILE_BATCH),
        params=_BATCH,
    ),
    _v1(
        "POST",
        f"{_VS}/{{id}}/file_batches/{{batch_id}}/cancel",
        "Cancel a batch (its files not yet indexed are cancelled)",
        STORES,
        _one("The batch", FILE_BATCH),
        params=_BATCH,
    ),
    _v1(
        "GET",
        f"{_VS}/{{id}}/file_batches/{{batch_id}}/files",
        "The files of a batch",
        STORES,
        _list(STORE_FILE),
        params=(*_BATCH, _query("filter", _STATUS, "only files in this state"), *_page_params(20)),
    ),
    # -- groundings (admin) ---------------------------------------------------------------------------------
    _v1(
        "GET",
        "/admin/v1/grounding",
        "The groundings: models whose chat answers from vector stores",
        GROUNDING,
        _one("The groundings", obj(("grounding",), grounding=array(GROUNDING_SHAPE))),
    ),
    _v1(
        "GET",
        "/admin/v1/grounding/{name}",
        "One model's grounding",
        GROUNDING,
        _one("The grounding", GROUNDING_SHAPE),
        params=(_path("name", "a model or deployment name"),),
    ),
    _v1(
        "PUT",
        "/admin/v1/grounding/{name}",
        "Ground a model's (or deployment's) chat in vector stores",
        GROUNDING,
        _one("The grounding", GROUNDING_SHAPE),
        params=(_path("name", "a model or deployment name"),),
        body=obj(
            ("vector_store_ids",),
            vector_store_ids=array(string(), minItems=1),
            top_k=integer(minimum=1, maximum=50),
            score_threshold=nullable(number(minimum=0, maximum=1)),
            template=nullable(
                string(description="the system prompt: {context} (and {question}); other braces doubled")
            ),
        ),
    ),
    _v1(
        "DELETE",
        "/admin/v1/grounding/{name}",
        "Stop grounding a model's chat",
        GROUNDING,
        _one("Removed", obj(("deleted",), deleted=string())),
        params=(_path("name", "a model or deployment name"),),
    ),
)
