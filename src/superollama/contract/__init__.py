"""One published contract: every HTTP operation declared once, by (method, path), one module per API family.

The OpenAPI 3.1 document (``/openapi.json``) and the docs page (``/docs``) are generated from these
declarations; the admin API validates request bodies against the same schemas (``admin/validation.py``);
the Anthropic and Responses request bodies *are* the pydantic models their routes parse with. The
OpenAI and Ollama bodies keep their hand-written validation on the hot path (``wire/``): schemathesis
runs the whole document against a real server in CI and keeps the two aligned. A unit test fails for any
registered route without a declaration and any declaration without a route.
"""

from __future__ import annotations

from superollama.contract import (
    admin,
    anthropic,
    batches,
    fine_tuning,
    nodes,
    ollama,
    openai,
    rag,
    rerank,
    responses,
    rollouts,
    system,
    webhooks,
)
from superollama.contract.document import openapi_document
from superollama.contract.model import Family, Operation, Param, Reply
from superollama.contract.routes import ContractRoutes

__all__ = ["OPERATIONS", "ContractRoutes", "Family", "Operation", "Param", "Reply", "openapi_document"]

OPERATIONS: tuple[Operation, ...] = (
    *openai.OPERATIONS,
    *ollama.OPERATIONS,
    *anthropic.OPERATIONS,
    *responses.OPERATIONS,
    *rerank.OPERATIONS,
    *rag.OPERATIONS,
    *batches.OPERATIONS,
    *fine_tuning.OPERATIONS,
    *admin.OPERATIONS,
    *rollouts.OPERATIONS,
    *webhooks.OPERATIONS,
    *nodes.OPERATIONS,
    *system.OPERATIONS,
)
