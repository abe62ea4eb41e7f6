"""The wire protocols: decode a request, call the core, encode the answer.

- :mod:`gateway.transports.rest`: HTTP/REST (FastAPI, uvicorn): KServe v2 with Triton's binary tensor
  extension, and the TF Serving and TorchServe REST dialects.
- :mod:`gateway.transports.grpc`: gRPC (grpcio): KServe v2 ``GRPCInferenceService`` and ``grpc.health.v1``.

The two transports never import each other; no inference logic lives in a route or an RPC method.
"""
