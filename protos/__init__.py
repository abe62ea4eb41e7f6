"""Open Inference Protocol (KServe v2) gRPC definitions and generated Python modules.

``grpc_predict_v2.proto`` is the source of truth; the ``*_pb2*`` modules next to it are
generated from it and committed. Regenerate them with ``python -m protos.generate``.
"""
