"""OpenAI's fine-tuning API (``/v1/fine_tuning/jobs``): create, list, retrieve, cancel, events,
checkpoints — as the ``openai`` SDK's ``client.fine_tuning.jobs`` calls it. LoRA's own knobs (``rank``,
``alpha``, ``target_modules``) ride in ``hyperparameters`` beside OpenAI's."""

from __future__ import annotations

from superollama.contract.model import (
    JSON,
    Family,
    Operation,
    Param,
    Reply,
    Schema,
    array,
    integer,
    nullable,
    number,
    obj,
    string,
)

__all__ = ["OPERATIONS"]

TAG = "Fine-tuning"
_JOBS = "/v1/fine_tuning/jobs"
_AUTO_INT = {"anyOf": [string(const="auto"), integer(minimum=1)]}
_HYPERPARAMETERS = obj(
    n_epochs=_AUTO_INT,
    batch_size=_AUTO_INT,
    learning_rate_multiplier={"anyOf": [string(const="auto"), number(exclusiveMinimum=0)]},
    rank=integer(minimum=1, maximum=256),
    alpha=integer(minimum=1),
    target_modules=array(string(minLength=1), minItems=1),
    max_seq_len=integer(minimum=8, maximum=8192),
    checkpoint_every=integer(minimum=1),
)
_JOB = obj(
    ("id", "object", "model", "status", "created_at"),
    id=string(),
    object=string(const="fine_tuning.job"),
    model=string(),
    status=string(enum=["validating_files", "queued", "running", "succeeded", "failed", "cancelled"]),
    created_at=integer(),
    finished_at=nullable(integer()),
    fine_tuned_model=nullable(string()),
    trained_tokens=nullable(integer()),
    training_file=string(),
    validation_file=nullable(string()),
    hyperparameters=obj(),
    error=nullable(obj()),
    result_files=array(string()),
    seed=integer(),
    method=obj(),
)
_EVENT = obj(
    ("id", "object", "created_at", "level", "message"),
    id=string(),
    object=string(const="fine_tuning.job.event"),
    created_at=integer(),
    level=string(enum=["info", "warn", "error"]),
    message=string(),
    type=string(enum=["message", "metrics"]),
    data=nullable(obj()),
)
_CHECKPOINT = obj(
    ("id", "object", "step_number", "fine_tuning_job_id"),
    id=string(),
    object=string(const="fine_tuning.job.checkpoint"),
    created_at=integer(),
    step_number=integer(),
    fine_tuning_job_id=string(),
    fine_tuned_model_checkpoint=string(),
    metrics=obj(),
)


def _list(item: Schema) -> Schema:
    return obj(("object", "data", "has_more"), object=string(const="list"), data=array(item), has_more={})


_JOB_ID = Param("id", "path", string(minLength=1), "the job's id (ftjob-…)", required=True)
_PAGE = (
    Param("after", "query", string(), "the id of the last item of the previous page"),
    Param("limit", "query", integer(minimum=1, maximum=1000), "items per page"),
)

OPERATIONS = (
    Operation(
        "POST",
        _JOBS,
        "Create a fine-tuning job (LoRA, trained by the reconciler leader in a worker process)",
        TAG,
        Family.OPENAI,
        {200: Reply("The job, validating its files", {JSON: _JOB})},
        body=obj(
            ("model", "training_file"),
            model=string(minLength=1, description="the base version, e.g. smollm2:135m"),
            training_file=string(minLength=1),
            validation_file=nullable(string()),
            suffix=nullable(string(maxLength=64)),
            seed=nullable(integer(minimum=0)),
            hyperparameters=_HYPERPARAMETERS,
            method=obj(
                ("type",),
                type=string(enum=["supervised"]),
                supervised=obj(hyperparameters=_HYPERPARAMETERS),
            ),
            metadata=nullable(obj()),
        ),
    ),
    Operation(
        "GET",
        _JOBS,
        "List fine-tuning jobs, newest first",
        TAG,
        Family.OPENAI,
        {200: Reply("A page of jobs", {JSON: _list(_JOB)})},
        params=_PAGE,
    ),
    Operation(
        "GET",
        f"{_JOBS}/{{id}}",
        "One fine-tuning job",
        TAG,
        Family.OPENAI,
        {200: Reply("The job", {JSON: _JOB})},
        params=(_JOB_ID,),
    ),
    Operation(
        "POST",
        f"{_JOBS}/{{id}}/cancel",
        "Cancel a fine-tuning job (its worker is stopped)",
        TAG,
        Family.OPENAI,
        {200: Reply("The job, cancelled", {JSON: _JOB})},
        body_required=False,
        params=(_JOB_ID,),
    ),
    Operation(
        "GET",
        f"{_JOBS}/{{id}}/events",
        "A job's events, newest first (type metrics: the loss of each step)",
        TAG,
        Family.OPENAI,
        {200: Reply("A page of events", {JSON: _list(_EVENT)})},
        params=(_JOB_ID, *_PAGE),
    ),
    Operation(
        "GET",
        f"{_JOBS}/{{id}}/checkpoints",
        "A job's checkpoints, newest first",
        TAG,
        Family.OPENAI,
        {200: Reply("A page of checkpoints", {JSON: _list(_CHECKPOINT)})},
        params=(_JOB_ID, *_PAGE),
    ),
)
