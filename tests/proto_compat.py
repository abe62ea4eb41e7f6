"""Wire compatibility of the gateway's own .proto files with a peer's: same full names, field numbers and types.

The gateway writes its own subset of each peer's protos (KServe/Triton's ``inference``, TF Serving's
``tensorflow.serving`` and TensorFlow's ``tensorflow``): :func:`assert_wire_compatible` checks that every
message, field, enum value and RPC we define is the peer's, with the same number, type, label, type name
and oneof, so that a numbering slip cannot pass.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import descriptor_pb2


def messages_by_name(fdp: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Map every message (nested ones included) to its full name, e.g. ``inference.A.B``."""
    out: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, messages: list[descriptor_pb2.DescriptorProto]) -> None:
        for msg in messages:
            full = f"{prefix}.{msg.name}"
            out[full] = msg
            walk(full, list(msg.nested_type))

    walk(fdp.package, list(fdp.message_type))
    return out


def enums_by_name(fdp: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    """Map every enum (top-level and nested in messages) to its full name."""
    found = {f"{fdp.package}.{enum.name}": enum for enum in fdp.enum_type}
    for full_name, message in messages_by_name(fdp).items():
        found.update({f"{full_name}.{enum.name}": enum for enum in message.enum_type})
    return found


def field_signature(
    msg: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto
) -> tuple[object, ...]:
    oneof = msg.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    return (field.number, field.type, field.label, field.type_name, oneof)


@dataclass
class Checked:
    """How much :func:`assert_wire_compatible` compared: messages, fields, enum values, RPC methods."""

    messages: int = 0
    fields: int = 0
    enum_values: int = 0
    methods: int = 0


def assert_wire_compatible(
    ours: list[descriptor_pb2.FileDescriptorProto], theirs: list[descriptor_pb2.FileDescriptorProto], peer: str
) -> Checked:
    """Assert that everything ``ours`` defines is in ``theirs`` with the same wire facts; say how much was checked."""
    their_messages = {name: msg for file in theirs for name, msg in messages_by_name(file).items()}
    their_enums = {name: enum for file in theirs for name, enum in enums_by_name(file).items()}
    their_methods = {
        f"/{file.package}.{svc.name}/{m.name}": m for file in theirs for svc in file.service for m in svc.method
    }
    checked = Checked()
    for file in ours:
        for full_name, msg in messages_by_name(file).items():
            assert full_name in their_messages, f"message {full_name} not in {peer}'s protos"
            their_msg = their_messages[full_name]
            assert msg.options.map_entry == their_msg.options.map_entry, full_name
            their_fields = {f.name: f for f in their_msg.field}
            for field in msg.field:
                assert field.name in their_fields, f"{full_name}.{field.name} not in {peer}'s protos"
                assert field_signature(msg, field) == field_signature(their_msg, their_fields[field.name]), (
                    f"{full_name}.{field.name}: (number, type, label, type_name, oneof) differs"
                )
                checked.fields += 1
            checked.messages += 1
        for full_name, enum in enums_by_name(file).items():
            assert full_name in their_enums, f"enum {full_name} not in {peer}'s protos"
            their_values = {value.name: value.number for value in their_enums[full_name].value}
            for value in enum.value:
                assert their_values.get(value.name) == value.number, f"{full_name}.{value.name}"
                checked.enum_values += 1
        for svc in file.service:
            for method in svc.method:
                path = f"/{file.package}.{svc.name}/{method.name}"
                assert path in their_methods, f"RPC {path} not in {peer}'s service"
                theirs_m = their_methods[path]
                assert (method.input_type, method.output_type) == (theirs_m.input_type, theirs_m.output_type), path
                assert (method.client_streaming, method.server_streaming) == (
                    theirs_m.client_streaming,
                    theirs_m.server_streaming,
                ), path
                checked.methods += 1
    return checked
