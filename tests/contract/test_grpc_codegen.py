"""The committed gRPC modules are what the vendored proto generates (grpcio-tools, pinned in the
dev extra): regenerated into a temporary folder and compared byte for byte."""

from __future__ import annotations

from medserve.serving.protocols.grpc_v2 import codegen


def test_generated_modules_match_the_vendored_proto() -> None:
    assert codegen.differences() == [], (
        "run: python -m medserve.serving.protocols.grpc_v2.codegen (and commit the result)"
    )


def test_the_descriptor_is_the_kserve_sdk_s_so_both_modules_share_a_process() -> None:
    from kserve.protocol.grpc import grpc_predict_v2_pb2 as theirs

    from medserve.serving.protocols.grpc_v2 import grpc_predict_v2_pb2 as ours

    assert ours.DESCRIPTOR.serialized_pb == theirs.DESCRIPTOR.serialized_pb
    assert ours.DESCRIPTOR.name == "grpc_predict_v2.proto"
