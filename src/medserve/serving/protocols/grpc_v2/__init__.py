"""The Open Inference Protocol v2 over gRPC (``inference.GRPCInferenceService``, docs/grpc.md).

``grpc_predict_v2.proto`` is KServe's protocol definition (Copyright The KServe Authors,
Apache-2.0, its header kept), vendored unchanged; ``grpc_predict_v2_pb2*.py(i)`` are generated
from it by ``codegen.py`` and committed. ``codec`` maps messages to and from what the data plane
takes, ``status`` maps domain errors to gRPC statuses, ``service`` is the servicer (the transport
adapter in front of the one pipeline) and ``server`` builds a worker's ``grpc.aio`` server.
Importing this package does not import grpcio; its modules do.
"""
