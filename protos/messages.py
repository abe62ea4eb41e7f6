"""The gateway's protobuf messages, built at import from :mod:`protos.descriptor_set` (no gRPC here).

The descriptors live in a private ``DescriptorPool``, not protobuf's process-wide default pool, so
they never clash with another package that registers the same names (tritonclient registers
``inference.*``, tensorflow-serving-api ``tensorflow.serving.*``), and no generated ``_pb2`` code ties
the gateway to one protobuf release: message classes come from
``google.protobuf.message_factory.GetMessageClass``, which protobuf 5 to 7 provide. This module imports
no gRPC, so that file formats built on these messages (TF Serving's ``models.config``) can be read below
the transports; :mod:`protos.pool` adds the gRPC service handlers.
"""

from __future__ import annotations

from typing import Any, TypeAlias

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from protos.descriptor_set import SERIALIZED

__all__ = ["POOL", "ProtoMessage", "message_class"]

#: The static type of a message built here: its class is made at run time, so its fields are unknown to
#: type checkers.
ProtoMessage: TypeAlias = Any


def _load_pool() -> descriptor_pool.DescriptorPool:
    """A new pool holding every file of the serialized set (they are in dependency order, as protoc writes them)."""
    pool = descriptor_pool.DescriptorPool()
    for file in descriptor_pb2.FileDescriptorSet.FromString(SERIALIZED).file:
        pool.AddSerializedFile(file.SerializeToString())
    return pool


#: The gateway's own descriptor pool.
POOL = _load_pool()


def message_class(full_name: str) -> type[ProtoMessage]:
    """The message class of ``full_name`` (e.g. ``inference.ModelInferRequest``) in :data:`POOL`.

    Typed ``Any``: the classes are made at run time, so static checkers cannot know their fields.

    Raises:
        KeyError: no such message in the gateway's protos.
    """
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))
