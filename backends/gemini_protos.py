"""Google's protos of the Gemini API (``google.cloud.aiplatform.v1``), without the SDK.

Config checks and the REST transport need only descriptors (field and JSON names, enum
spellings) to build a request in its proto3 JSON form. They are the SDK's, but importing any
part of ``google.cloud.aiplatform_v1`` runs its package ``__init__``, which loads every one
of its service clients (most of a second at start-up). So ``gemini_protos.binpb`` keeps the
descriptors of ``GenerateContentRequest`` and of every file it depends on: a
``FileDescriptorSet`` serialised from the installed SDK by ``python -m backends.gemini_protos``,
which a test compares with the SDK's own.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "google.cloud.aiplatform.v1"
SNAPSHOT = Path(__file__).with_name("gemini_protos.binpb")


@functools.cache
def _pool() -> Any:
    files = descriptor_pb2.FileDescriptorSet.FromString(SNAPSHOT.read_bytes())
    pool = descriptor_pool.DescriptorPool()  # its own: the SDK's, if loaded, stay apart
    for file in files.file:
        pool.Add(file)
    return pool


def message_class(name: str) -> Any:
    """The raw protobuf class of the package's message ``name`` (``GenerateContentRequest``)."""
    return message_factory.GetMessageClass(_pool().FindMessageTypeByName(f"{PACKAGE}.{name}"))


def enum_names(name: str) -> frozenset[str]:
    """The value names of the package's enum ``name`` (``SafetySetting.HarmBlockThreshold``)."""
    return frozenset(_pool().FindEnumTypeByName(f"{PACKAGE}.{name}").values_by_name)


def from_sdk() -> Any:
    """The ``FileDescriptorSet`` the installed SDK defines: what ``SNAPSHOT`` holds."""
    from google.cloud.aiplatform_v1 import GenerateContentRequest

    snapshot = descriptor_pb2.FileDescriptorSet()
    added: set[str] = set()

    def add(file: Any) -> None:  # dependencies first, as a pool takes them
        if file.name in added:
            return
        added.add(file.name)
        # proto-plus lists a file's dependencies in set order: sorted, the snapshot is stable.
        dependencies = sorted(file.dependencies, key=lambda dependency: dependency.name)
        for dependency in dependencies:
            add(dependency)
        proto = snapshot.file.add()
        file.CopyToProto(proto)
        proto.dependency[:] = [dependency.name for dependency in dependencies]

    add(GenerateContentRequest.pb().DESCRIPTOR.file)
    return snapshot


if __name__ == "__main__":
    SNAPSHOT.write_bytes(from_sdk().SerializeToString(deterministic=True))
