"""The gateway's protobuf and gRPC definitions, independent of the protobuf and grpcio releases installed.

The ``.proto`` files here are the source of truth (``grpc_predict_v2.proto``: KServe v2 / Open
Inference Protocol with Triton's repository RPCs). ``python -m protos.generate`` compiles them into
one serialized ``FileDescriptorSet`` (:mod:`protos.descriptor_set`, committed); :mod:`protos.pool`
builds the messages and service handlers from it at import, in a private descriptor pool; and
:mod:`protos.inference` names the KServe v2 messages.
"""
