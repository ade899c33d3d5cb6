"""Domain types and seams. Imports nothing of ours but ``errors``-free plain Python."""

from superollama.core.names import DEFAULT_TAG, ModelRef, NameError_
from superollama.core.seams import InstanceHandle, Provider, Runtime
from superollama.core.types import (
    MEDIA_MODEL,
    MEDIA_TEMPLATE,
    Artifact,
    ConnectionRecord,
    Endpoint,
    EventRecord,
    InstanceRecord,
    InstanceSpec,
    InstanceState,
    JobRecord,
    JobState,
    Layer,
    Manifest,
    NodeRecord,
    Progress,
    RequestRecord,
    VersionRecord,
)

__all__ = [
    "DEFAULT_TAG",
    "MEDIA_MODEL",
    "MEDIA_TEMPLATE",
    "Artifact",
    "ConnectionRecord",
    "Endpoint",
    "EventRecord",
    "InstanceHandle",
    "InstanceRecord",
    "InstanceSpec",
    "InstanceState",
    "JobRecord",
    "JobState",
    "Layer",
    "Manifest",
    "ModelRef",
    "NameError_",
    "NodeRecord",
    "Progress",
    "Provider",
    "RequestRecord",
    "Runtime",
    "VersionRecord",
]
