"""Tests for the ``protos`` package: committed generated code and Triton wire compatibility.

``protos.grpc_predict_v2_pb2`` and ``tritonclient.grpc`` both register ``inference.*`` symbols in
protobuf's process-wide default descriptor pool, so they cannot be imported into the same
process ("duplicate symbol 'inference.ServerLiveRequest'"). These tests therefore import
neither: our descriptor is read from the committed ``_pb2.py`` source, and tritonclient's is
dumped by a subprocess. That keeps this test module from breaking later tests (in the same
pytest process) that import ``protos.grpc_predict_v2_pb2``.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2

from protos.generate import GENERATED_FILES, REPO_ROOT, generate

PROTOS_DIR = REPO_ROOT / "protos"
PB2_PATH = PROTOS_DIR / "grpc_predict_v2_pb2.py"

# Prints tritonclient's gRPC FileDescriptorProto (serialized) to stdout. The module name
# changed across tritonclient releases (grpc_service_pb2 -> service_pb2), so try both.
_DUMP_TRITON_DESCRIPTOR = """
import importlib, sys
from google.protobuf import descriptor_pb2
for name in ("tritonclient.grpc.service_pb2", "tritonclient.grpc.grpc_service_pb2"):
    try:
        mod = importlib.import_module(name)
    except ImportError:
        continue
    proto = descriptor_pb2.FileDescriptorProto()
    mod.DESCRIPTOR.CopyToProto(proto)
    sys.stdout.buffer.write(proto.SerializeToString())
    break
else:
    sys.exit("tritonclient.grpc service_pb2 / grpc_service_pb2 not found")
"""


def test_generated_files_are_up_to_date(tmp_path: pathlib.Path) -> None:
    generated = generate(tmp_path)
    assert [p.name for p in generated] == list(GENERATED_FILES)
    for path in generated:
        committed = PROTOS_DIR / path.name
        assert committed.is_file(), f"{committed} is missing: run `python -m protos.generate`"
        assert path.read_bytes() == committed.read_bytes(), (
            f"{committed.relative_to(REPO_ROOT)} is stale: run `python -m protos.generate`"
        )


def _our_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    """Parse the serialized descriptor embedded in the committed ``_pb2.py`` without importing it."""
    tree = ast.parse(PB2_PATH.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "AddSerializedFile"
        ):
            serialized = ast.literal_eval(node.args[0])
            assert isinstance(serialized, bytes)
            return descriptor_pb2.FileDescriptorProto.FromString(serialized)
    raise AssertionError(f"no AddSerializedFile(...) call found in {PB2_PATH}")


def _triton_file_descriptor() -> descriptor_pb2.FileDescriptorProto:
    pytest.importorskip("tritonclient.grpc")
    proc = subprocess.run(
        [sys.executable, "-c", _DUMP_TRITON_DESCRIPTOR], capture_output=True, check=False, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return descriptor_pb2.FileDescriptorProto.FromString(proc.stdout)


def _messages_by_name(
    fdp: descriptor_pb2.FileDescriptorProto,
) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Map every message (nested ones included) to its full name, e.g. ``inference.A.B``."""
    out: dict[str, descriptor_pb2.DescriptorProto] = {}

    def walk(prefix: str, messages: list[descriptor_pb2.DescriptorProto]) -> None:
        for msg in messages:
            full = f"{prefix}.{msg.name}"
            out[full] = msg
            walk(full, list(msg.nested_type))

    walk(fdp.package, list(fdp.message_type))
    return out


def _field_signature(
    msg: descriptor_pb2.DescriptorProto, field: descriptor_pb2.FieldDescriptorProto
) -> tuple[object, ...]:
    oneof = msg.oneof_decl[field.oneof_index].name if field.HasField("oneof_index") else None
    return (field.number, field.type, field.label, field.type_name, oneof)


def test_wire_compatible_with_tritonclient() -> None:
    ours = _our_file_descriptor()
    theirs = _triton_file_descriptor()
    assert ours.package == theirs.package == "inference"

    our_messages = _messages_by_name(ours)
    their_messages = _messages_by_name(theirs)
    assert "inference.ModelInferRequest.InferInputTensor" in our_messages  # sanity: nesting walked
    for full_name, msg in our_messages.items():
        assert full_name in their_messages, f"message {full_name} not in tritonclient's proto"
        their_msg = their_messages[full_name]
        assert msg.options.map_entry == their_msg.options.map_entry, full_name
        their_fields = {f.name: f for f in their_msg.field}
        for field in msg.field:
            assert field.name in their_fields, f"{full_name}.{field.name} not in tritonclient's proto"
            assert _field_signature(msg, field) == _field_signature(their_msg, their_fields[field.name]), (
                f"{full_name}.{field.name}: (number, type, label, type_name, oneof) differs"
            )

    their_methods = {f"/{theirs.package}.{svc.name}/{m.name}": m for svc in theirs.service for m in svc.method}
    our_methods = {f"/{ours.package}.{svc.name}/{m.name}": m for svc in ours.service for m in svc.method}
    assert len(our_methods) == 9
    for path, method in our_methods.items():
        assert path in their_methods, f"RPC {path} not in tritonclient's service"
        theirs_m = their_methods[path]
        assert (method.input_type, method.output_type) == (theirs_m.input_type, theirs_m.output_type), path
        assert (method.client_streaming, method.server_streaming) == (
            theirs_m.client_streaming,
            theirs_m.server_streaming,
        ), path
