"""The gateway's protobuf and gRPC definitions, independent of the protobuf and grpcio releases installed.

The ``.proto`` files here are the source of truth (``grpc_predict_v2.proto``: KServe v2 / Open
Inference Protocol with Triton's repository, model configuration, statistics and shared memory RPCs;
``triton/model_config.proto``: the part of Triton's ModelConfig the gateway honours; ``tfserving/``:
the part of TF Serving's and TensorFlow's protos its APIs and ``models.config`` use).
``python -m protos.generate`` compiles them into one serialized ``FileDescriptorSet``
(:mod:`protos.descriptor_set`, committed); :mod:`protos.messages` builds the messages from it at
import, in a private descriptor pool (no gRPC import), and :mod:`protos.pool` the service handlers;
:mod:`protos.inference` names the KServe v2 messages, :mod:`protos.model_config` Triton's
ModelConfig and :mod:`protos.tfserving` TF Serving's messages.
"""
