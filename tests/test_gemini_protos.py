"""``backends/gemini_protos.binpb`` holds the installed SDK's own descriptors of Gemini's
request (after an SDK update: ``python -m backends.gemini_protos``)."""

from __future__ import annotations

from google.protobuf import descriptor_pb2

from backends import gemini_protos


def test_snapshot_is_the_sdks_descriptors() -> None:
    snapshot = descriptor_pb2.FileDescriptorSet.FromString(gemini_protos.SNAPSHOT.read_bytes())
    sdk = gemini_protos.from_sdk()
    assert [file.name for file in snapshot.file] == [file.name for file in sdk.file]
    assert snapshot == sdk, "the SDK's protos changed: run python -m backends.gemini_protos"
