"""Triton's model configuration messages (``protos/triton/model_config.proto``), from :mod:`protos.messages`.

``inference.ModelConfig`` and the messages it holds, the subset of Triton's ``model_config.proto``
the gateway honours: :mod:`gateway.repository.triton_config` parses ``config.pbtxt`` (protobuf text
format) and the JSON of a load's config override into :data:`ModelConfig`, and the model
configuration extension answers with it. Imports no grpc, so the repository layer may use it.
"""

from __future__ import annotations

from protos.messages import ProtoMessage, message_class

__all__ = ["ModelConfig"]

#: Triton's ``inference.ModelConfig`` (only the fields the gateway honours are declared).
ModelConfig: type[ProtoMessage] = message_class("inference.ModelConfig")
