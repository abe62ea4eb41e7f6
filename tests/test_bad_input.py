"""Bad-input battery against a real gateway process, over REST and gRPC (issue 7, "Hardening").

Hypothesis generates inference requests for identity models, good and bad: datatypes inside and
outside the v2 table, shapes with zero, negative, huge and int64-overflowing dims, data lengths that
do not match the shape, NaN and Inf, values of the wrong kind, too many inputs and outputs. For each
case an oracle computes the answer the server must give from the case alone (the order of the
server's checks is part of the contract: limits on counts, then each tensor's decoding in order,
then the checks against the model), and the test asserts exactly that status: 200 with the identity
of the input, 400 / INVALID_ARGUMENT or 413 / RESOURCE_EXHAUSTED; never a 5xx or INTERNAL/UNKNOWN.
Hand-written cases cover the body-level limits: size (Content-Length and chunked), gzip (good,
bomb, truncated, unknown encoding), JSON nesting around our limit and the parsers' own, wrong
content types, garbage bytes and the binary tensor extension's sizes.

The gateway runs with small limits (given as flags and as an environment variable) so that every
limit can be passed cheaply; after the run, the process must be alive and answer correctly.
"""

from __future__ import annotations

import gzip
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.grpc import service_pb2, service_pb2_grpc

from tests.conftest import GatewayProcess, start_gateway, write_identity_model

MAX_REQUEST_BYTES = 1024 * 1024
MAX_ELEMENTS = 4096
MAX_DEPTH = 32
MAX_INPUTS = 8
MAX_BATCH = 64  # the server's default max_batch_size: the identity models' dims are all variable
INT64_MAX = 2**63 - 1

MODEL_DATATYPES = ["FP32", "FP16", "FP64", "INT32", "INT8", "UINT8", "BOOL", "BYTES"]
V2_DATATYPES = ["BOOL", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "FP16", "FP32", "FP64", "BYTES"]  # fmt: skip
BOGUS_DATATYPES = ["FLOAT", "fp32", "STRING", "", "INT128", "BF16"]
NUMPY = {"BOOL": np.bool_, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
         "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
         "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}  # fmt: skip
CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
    "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents", "UINT32": "uint_contents",
    "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip
# Which kinds of JSON values each datatype accepts (homogeneous data; empty data always fits).
ACCEPTS = {"BOOL": {"bool"}, "BYTES": {"str"}}
for _name in V2_DATATYPES:
    if _name.startswith(("INT", "UINT")):
        ACCEPTS[_name] = {"int"}
    elif _name.startswith("FP"):
        ACCEPTS[_name] = {"int", "float", "nonfinite"}


@pytest.fixture(scope="module")
def limited_gateway(tmp_path_factory: pytest.TempPathFactory) -> GatewayProcess:
    root = tmp_path_factory.mktemp("bad-input-repository")
    for datatype in MODEL_DATATYPES:
        write_identity_model(root / f"identity_{datatype.lower()}" / "1" / "model.onnx", datatype)
    server = start_gateway(
        root,
        tmp_path_factory.mktemp("bad-input-logs") / "gateway.log",
        "--max-request-bytes", str(MAX_REQUEST_BYTES),
        "--max-tensor-elements", str(MAX_ELEMENTS),
        "--max-json-depth", str(MAX_DEPTH),
        env={"GATEWAY_MAX_INPUTS": str(MAX_INPUTS)},
    )  # fmt: skip
    yield server
    assert server.process.poll() is None, f"the gateway died:\n{server.logs()}"
    server.stop()


@pytest.fixture(scope="module")
def stub(limited_gateway: GatewayProcess) -> service_pb2_grpc.GRPCInferenceServiceStub:
    channel = grpc.insecure_channel(limited_gateway.grpc_address)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


# ----------------------------------------------------------------------------- generated cases


@dataclass
class Tensor:
    """One input as generated: declared name, datatype and shape; the values sent (flat)."""

    name: str
    datatype: str
    shape: list[int]
    kind: str  # kind of the values: int, float, nonfinite, bool, str
    delta: int  # values sent minus the shape's element count (when that count is small enough to send)

    def extent(self) -> int:
        """The element count the server checks: the product of the dims, or of the non-zero ones."""
        count = math.prod(self.shape)
        return count or math.prod(dim for dim in self.shape if dim)

    def values(self) -> list[Any]:
        count = max(0, math.prod(self.shape) + self.delta) if self.sendable() else 1
        pool = {"int": [0, 1, 7, 100], "float": [0.5, -1.25, 3.0e3], "nonfinite": [math.nan, math.inf, -math.inf],
                "bool": [True, False], "str": ["a", "wörld", ""]}[self.kind]  # fmt: skip
        return [pool[index % len(pool)] for index in range(count)]

    def sendable(self) -> bool:
        return all(dim >= 0 for dim in self.shape) and math.prod(self.shape) <= 2 * MAX_ELEMENTS


@dataclass
class Case:
    model: str
    inputs: list[Tensor]
    outputs: list[str] = field(default_factory=list)


def _dims() -> st.SearchStrategy[int]:
    return st.one_of(
        st.integers(0, 4),
        st.integers(0, 4),
        st.sampled_from([-1, -3, 64, 65, 4096, 4097, 2**20, 2**31, 2**32, 2**62, INT64_MAX]),
    )


def _tensor(model_datatype: str) -> st.SearchStrategy[Tensor]:
    return st.builds(
        Tensor,
        name=st.sampled_from(["input", "input", "input", "extra"]),
        datatype=st.one_of(
            st.just(model_datatype), st.just(model_datatype), st.sampled_from(V2_DATATYPES + BOGUS_DATATYPES)
        ),
        shape=st.one_of(st.lists(st.integers(0, 3), min_size=2, max_size=2), st.lists(_dims(), max_size=4)),
        kind=st.sampled_from(["int", "float", "nonfinite", "bool", "str"]),
        delta=st.sampled_from([0, 0, 0, 1, -1]),
    )


@st.composite
def cases(draw: st.DrawFn) -> Case:
    datatype = draw(st.sampled_from(MODEL_DATATYPES))
    inputs = draw(st.lists(_tensor(datatype), max_size=MAX_INPUTS + 2))
    outputs = draw(
        st.one_of(st.just([]), st.lists(st.sampled_from(["output", "output", "nope"]), max_size=MAX_INPUTS + 2))
    )
    return Case(f"identity_{datatype.lower()}", inputs, outputs)


def expected_status(case: Case, transport: str) -> int:
    """The HTTP status the server must answer ``case`` with (gRPC: the matching code); see the module docstring.

    ``transport``: ``json`` (REST JSON data), ``raw`` (gRPC raw_input_contents) or ``typed`` (gRPC contents).
    """
    model_datatype = case.model.removeprefix("identity_").upper()
    if len(case.inputs) > MAX_INPUTS or len(case.outputs) > MAX_INPUTS:
        return 413
    for tensor in case.inputs:  # decoding, in order
        if transport == "typed" and (tensor.datatype not in CONTENTS_FIELD):
            return 400  # unknown datatype, or FP16: no typed contents field
        if tensor.datatype not in V2_DATATYPES:
            return 400
        if any(dim < 0 for dim in tensor.shape):
            return 400
        extent = tensor.extent()
        if extent > INT64_MAX:
            return 400
        if extent > MAX_ELEMENTS:
            return 413
        if tensor.delta:
            return 400
        if transport == "json" and math.prod(tensor.shape) and tensor.kind not in ACCEPTS[tensor.datatype]:
            return 400
    seen: set[str] = set()
    for tensor in case.inputs:  # against the model: input [-1, -1] of the model's datatype, max_batch_size 64
        if tensor.name != "input" or tensor.name in seen or tensor.datatype != model_datatype:
            return 400
        if len(tensor.shape) != 2 or tensor.shape[0] > MAX_BATCH:
            return 400
        seen.add(tensor.name)
    if not seen or any(name != "output" for name in case.outputs):
        return 400
    return 200


def _typed_values(tensor: Tensor) -> list[Any]:
    """Values of the kind the typed contents field of the tensor's datatype holds."""
    count = len(tensor.values())
    if tensor.datatype == "BYTES":
        return [b"x%d" % index for index in range(count)]
    if tensor.datatype == "BOOL":
        return [index % 2 == 0 for index in range(count)]
    if tensor.datatype.startswith(("INT", "UINT")):
        return [index % 100 for index in range(count)]
    return [[0.5, math.nan, math.inf, -2.0][index % 4] for index in range(count)]


def _raw_bytes(tensor: Tensor) -> bytes:
    count = len(tensor.values())
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", 2) + b"ab" for _ in range(count))
    dtype = NUMPY.get(tensor.datatype, np.float32)
    return np.arange(count).astype(dtype).tobytes()


def rest_body(case: Case) -> bytes:
    body: dict[str, Any] = {
        "inputs": [{"name": t.name, "datatype": t.datatype, "shape": t.shape, "data": t.values()} for t in case.inputs]
    }
    if case.outputs:
        body["outputs"] = [{"name": name} for name in case.outputs]
    return json.dumps(body).encode()  # NaN and Infinity as JSON extensions, as clients send them


def grpc_request(case: Case, raw: bool) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=case.model)
    for tensor in case.inputs:
        message = request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        if raw:
            request.raw_input_contents.append(_raw_bytes(tensor))
        elif tensor.datatype in CONTENTS_FIELD:
            getattr(message.contents, CONTENTS_FIELD[tensor.datatype]).extend(_typed_values(tensor))
    for name in case.outputs:
        request.outputs.add(name=name)
    return request


GRPC_CODES = {200: grpc.StatusCode.OK, 400: grpc.StatusCode.INVALID_ARGUMENT, 413: grpc.StatusCode.RESOURCE_EXHAUSTED}
BATTERY = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip


def assert_identity(output_json: dict[str, Any], tensor: Tensor) -> None:
    assert output_json["shape"] == tensor.shape and output_json["datatype"] == tensor.datatype
    sent = tensor.values()
    if tensor.datatype == "BYTES":
        assert output_json["data"] == sent
    else:
        expected = np.asarray(sent, dtype=NUMPY[tensor.datatype]).astype(np.float64)
        got = np.asarray([math.nan if value is None else value for value in output_json["data"]], dtype=np.float64)
        if tensor.datatype.startswith("FP"):
            expected[np.isnan(expected)] = math.nan  # orjson writes NaN as null
        np.testing.assert_array_equal(got, expected)


@BATTERY
@given(case=cases())
def test_generated_rest_json_requests_get_the_right_status(limited_gateway, case):
    response = limited_gateway.http.post(f"/v2/models/{case.model}/infer", content=rest_body(case))
    expected = expected_status(case, "json")
    assert response.status_code == expected, (response.status_code, response.text, case)
    if expected == 200:
        outputs = response.json()["outputs"]
        assert len(outputs) == 1
        assert_identity(outputs[0], case.inputs[0])
    else:
        assert set(response.json()) == {"error"}


@BATTERY
@given(case=cases(), raw=st.booleans())
def test_generated_grpc_requests_get_the_right_code(stub, case, raw):
    expected = GRPC_CODES[expected_status(case, "raw" if raw else "typed")]
    try:
        reply = stub.ModelInfer(grpc_request(case, raw))
    except grpc.RpcError as error:
        assert error.code() == expected, (error.code(), error.details(), case)
        return
    assert expected == grpc.StatusCode.OK, (reply, case)
    assert list(reply.outputs[0].shape) == case.inputs[0].shape


# ----------------------------------------------------------------------------- element count, shapes


@pytest.mark.parametrize(
    ("shape", "status", "message"),
    [
        ([1, MAX_ELEMENTS], 200, ""),
        ([1, MAX_ELEMENTS + 1], 413, "--max-tensor-elements"),
        ([2**31, 2**31], 413, "declares 4611686018427387904 elements"),
        ([2**32, 2**32], 400, "overflows int64"),
        ([2**80, 1], 400, "overflows int64"),
        ([0, 2**62], 413, "--max-tensor-elements"),  # numpy could not even reshape an empty array to this
        ([0, 3], 200, ""),
        ([-1, 3], 400, "non-negative"),
    ],
)
def test_shapes_are_checked_before_anything_is_allocated(limited_gateway, stub, shape, status, message):
    count = math.prod(shape) if status == 200 else 3
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": [1.0] * count}]}
    response = limited_gateway.http.post("/v2/models/identity_fp32/infer", json=body)
    assert response.status_code == status, response.text
    assert message in response.text
    if max(shape) <= INT64_MAX:
        request = service_pb2.ModelInferRequest(model_name="identity_fp32")
        request.inputs.add(name="input", datatype="FP32", shape=shape)
        request.raw_input_contents.append(np.ones(count, dtype=np.float32).tobytes())
        try:
            stub.ModelInfer(request)
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            assert message in error.details()
        assert code == GRPC_CODES[status]


def test_too_many_inputs_and_outputs_are_413(limited_gateway, stub):
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 1], "data": [1.0]}
    for body in (
        {"inputs": [tensor] * (MAX_INPUTS + 1)},
        {"inputs": [tensor], "outputs": [{"name": "output"}] * (MAX_INPUTS + 1)},
    ):
        response = limited_gateway.http.post("/v2/models/identity_fp32/infer", json=body)
        assert response.status_code == 413 and f"at most {MAX_INPUTS}" in response.json()["error"]
    request = service_pb2.ModelInferRequest(model_name="identity_fp32")
    for _ in range(MAX_INPUTS + 1):
        request.inputs.add(name="input", datatype="FP32", shape=[1, 1]).contents.fp32_contents.append(1.0)
    with pytest.raises(grpc.RpcError) as error:
        stub.ModelInfer(request)
    assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    # Exactly the limit of outputs is fine (repeats count once).
    response = limited_gateway.http.post(
        "/v2/models/identity_fp32/infer", json={"inputs": [tensor], "outputs": [{"name": "output"}] * MAX_INPUTS}
    )
    assert response.status_code == 200, response.text


# ----------------------------------------------------------------------------- body size and encoding


def _valid_body(width: int = 3) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, width], "data": [0.5] * width}]}
    ).encode()


def _padded_body(size: int) -> bytes:
    """A valid request of exactly ``size`` bytes (JSON whitespace after the object)."""
    body = _valid_body()
    return body + b" " * (size - len(body))


def test_body_size_limit_applies_with_and_without_content_length(limited_gateway):
    http = limited_gateway.http
    assert http.post("/v2/models/identity_fp32/infer", content=_padded_body(MAX_REQUEST_BYTES)).status_code == 200
    response = http.post("/v2/models/identity_fp32/infer", content=_padded_body(MAX_REQUEST_BYTES + 1))
    assert response.status_code == 413 and "--max-request-bytes" in response.json()["error"]

    def chunks(size: int, chunk: int = 64 * 1024):  # no Content-Length: chunked transfer encoding
        body = _padded_body(size)
        for start in range(0, len(body), chunk):
            yield body[start : start + chunk]

    assert http.post("/v2/models/identity_fp32/infer", content=chunks(MAX_REQUEST_BYTES)).status_code == 200
    response = http.post("/v2/models/identity_fp32/infer", content=chunks(4 * MAX_REQUEST_BYTES))
    assert response.status_code == 413
    # The other routes too: the TF Serving and TorchServe routes (in their own error shapes) and the repository index.
    big = b"[" + b" " * MAX_REQUEST_BYTES + b"]"
    response = http.post("/v1/models/identity_fp32:predict", content=big)
    assert response.status_code == 413 and set(response.json()) == {"error"}
    response = http.post("/predictions/identity_fp32", content=big)
    assert response.status_code == 413 and response.json()["code"] == 413
    assert http.post("/v2/repository/index", content=big).status_code == 413
    assert http.post("/v2/repository/index", content=chunks(2 * MAX_REQUEST_BYTES)).status_code == 413


def _rss(http: httpx.Client) -> float:
    metrics = http.get("/metrics").text
    return float(
        next(line.split()[1] for line in metrics.splitlines() if line.startswith("process_resident_memory_bytes"))
    )


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "GZip"])
def test_compressed_bodies_are_decompressed_within_the_limit(limited_gateway, encoding):
    http = limited_gateway.http
    body = _padded_body(MAX_REQUEST_BYTES)
    compressed = gzip.compress(body) if encoding.lower() == "gzip" else zlib.compress(body)
    response = http.post("/v2/models/identity_fp32/infer", content=compressed, headers={"content-encoding": encoding})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [0.5] * 3
    # One byte more once decompressed: refused, though the compressed body is a few kB.
    larger = _padded_body(MAX_REQUEST_BYTES + 1)
    compressed = gzip.compress(larger) if encoding.lower() == "gzip" else zlib.compress(larger)
    assert len(compressed) < MAX_REQUEST_BYTES // 100
    response = http.post("/v2/models/identity_fp32/infer", content=compressed, headers={"content-encoding": encoding})
    assert response.status_code == 413 and "decompressed" in response.json()["error"]


def test_a_gzip_bomb_costs_nothing(limited_gateway):
    http = limited_gateway.http
    bomb = gzip.compress(b"[" + b" " * (1024**3), compresslevel=9)  # 1 GiB of JSON whitespace, ~1 MiB gzip
    assert len(bomb) < MAX_REQUEST_BYTES
    before = _rss(http)
    response = http.post("/v2/models/identity_fp32/infer", content=bomb, headers={"content-encoding": "gzip"})
    assert response.status_code == 413
    assert _rss(http) - before < 64 * 1024**2, "decompressing the bomb grew the server by 64 MiB or more"


@pytest.mark.parametrize(
    ("content", "headers", "status", "message"),
    [
        (_valid_body(), {"content-encoding": "br"}, 415, "unsupported Content-Encoding 'br'"),
        (_valid_body(), {"content-encoding": "gzip, gzip"}, 415, "unsupported Content-Encoding"),
        (_valid_body(), {"content-encoding": "gzip"}, 400, "does not decompress"),
        (gzip.compress(_valid_body())[:-12], {"content-encoding": "gzip"}, 400, "truncated"),
        (
            gzip.compress(_valid_body()) * 2,
            {"content-encoding": "gzip"},
            400,
            "malformed JSON",
        ),  # two members: body twice
        (gzip.compress(_valid_body()), {"content-encoding": "identity"}, 400, "malformed JSON"),
        (b"\x00\xff\xfe garbage \x80", {}, 400, "malformed JSON"),
        (b"", {}, 400, "malformed JSON"),
        (_valid_body(), {"content-type": "text/plain"}, 200, ""),  # the body decides, as in Triton
        (_valid_body(), {"content-type": "multipart/form-data; boundary=x"}, 200, ""),
        (_valid_body(), {"content-type": "application/octet-stream"}, 200, ""),
    ],
)
def test_encodings_content_types_and_garbage(limited_gateway, content, headers, status, message):
    response = limited_gateway.http.post("/v2/models/identity_fp32/infer", content=content, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.text


@given(
    garbage=st.binary(max_size=2048),
    header=st.one_of(
        st.none(),
        st.integers(-5, 4096).map(str),
        st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=8),
    ),
)
@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_garbage_bodies_and_binary_headers_are_400(limited_gateway, garbage, header):
    headers = {}
    if header is not None:
        headers["Inference-Header-Content-Length"] = header or "x"
    response = limited_gateway.http.post("/v2/models/identity_fp32/infer", content=garbage, headers=headers)
    assert response.status_code == 400, (response.status_code, response.text)


@pytest.mark.parametrize(
    ("sizes", "binary", "status"),
    [
        ([12], 12, 200),
        ([12], 11, 400),  # runs past the end
        ([12], 13, 400),  # a byte no input claims
        ([8], 8, 400),  # not the 12 bytes the shape needs
        ([-4], 0, 400),
        ([2**62], 12, 400),
        (["12"], 12, 400),
        ([True], 12, 400),
    ],
)
def test_binary_extension_sizes(limited_gateway, sizes, binary, status):
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3],
                                     "parameters": {"binary_data_size": size}} for size in sizes]}).encode()  # fmt: skip
    response = limited_gateway.http.post(
        "/v2/models/identity_fp32/infer",
        content=header + np.ones(binary // 4 + 1, dtype=np.float32).tobytes()[:binary],
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == status, response.text


# ----------------------------------------------------------------------------- JSON nesting


def _nested_parameters(depth: int) -> bytes:
    """A valid request whose whole body nests ``depth`` levels (the extra levels in request parameters)."""
    tensor = b'{"name": "input", "datatype": "FP32", "shape": [1, 1], "data": [2.5]}'
    inner = depth - 2  # the body's object and the parameters object are two levels
    nested = b'{"a": ' * (inner - 1) + b"{}" + b"}" * (inner - 1) if inner > 0 else b"1"
    return b'{"inputs": [' + tensor + b'], "parameters": {"x": ' + nested + b"}}"


@pytest.mark.parametrize(
    ("depth", "status"),
    [(MAX_DEPTH - 1, 200), (MAX_DEPTH, 200), (MAX_DEPTH + 1, 400), (199, 400), (201, 400), (1025, 400), (100_000, 400)],
)
def test_json_nesting_around_our_limit_and_the_parsers_own(limited_gateway, depth, status):
    """Ours is 32; pydantic's parser stops at 200 levels, orjson's at 1024, Python's json module near 1000."""
    body = _nested_parameters(depth)
    response = limited_gateway.http.post("/v2/models/identity_fp32/infer", content=body)
    assert response.status_code == status, response.text[:300]
    if status == 200:
        assert response.json()["outputs"][0]["data"] == [2.5]
    else:
        assert f"deeper than {MAX_DEPTH} levels" in response.json()["error"]


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1200, 100_000])
@pytest.mark.parametrize("route", ["/v1/models/identity_fp32:predict", "/predictions/identity_fp32"])
def test_deep_json_on_the_compat_routes_is_400_not_a_recursion_error(limited_gateway, route, depth):
    body = b'{"instances": ' + b"[" * depth + b"1.0" + b"]" * depth + b"}"
    response = limited_gateway.http.post(route, content=body)
    assert response.status_code == 400, response.text[:300]
    assert "deeper than" in response.text


def test_unbalanced_deep_json_is_400(limited_gateway):
    for body in (b"[" * 100_000, b'{"inputs": ' + b"[" * 40, b"]" * 50 + b"[" * 50):
        response = limited_gateway.http.post("/v2/models/identity_fp32/infer", content=body)
        assert response.status_code == 400, response.text


def test_strings_that_look_deep_are_not_nesting(limited_gateway):
    body = {
        "id": "[" * 100 + '\\"[{' * 20,
        "inputs": [{"name": "input", "datatype": "BYTES", "shape": [1, 2], "data": ["[" * 200, '"]]]\\[[[']}],
    }
    response = limited_gateway.http.post("/v2/models/identity_bytes/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == body["inputs"][0]["data"]


# ----------------------------------------------------------------------------- after everything


def test_the_gateway_still_answers_correctly(limited_gateway, stub):
    """Last in the file: after the battery, the process is alive and answers REST and gRPC correctly."""
    assert limited_gateway.process.poll() is None
    data = [1.5, -2.0, math.pi]
    response = limited_gateway.http.post(
        "/v2/models/identity_fp32/infer",
        json={"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3], "data": data}]},
    )
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"] == np.asarray(data, dtype=np.float32).tolist()
    request = service_pb2.ModelInferRequest(model_name="identity_int8")
    request.inputs.add(name="input", datatype="INT8", shape=[1, 3]).contents.int_contents.extend([-128, 0, 127])
    assert list(stub.ModelInfer(request).outputs[0].contents.int_contents) == [-128, 0, 127]
    assert "Traceback" not in limited_gateway.logs()


@pytest.mark.parametrize("header", [b"\xb2", b"1\xb9"])  # '²', '1¹' in latin-1: digits to str.isdigit, not to int()
def test_a_binary_header_of_non_ascii_digits_is_400(limited_gateway, header):
    response = limited_gateway.http.post(
        "/v2/models/identity_fp32/infer", content=b"{}", headers={b"Inference-Header-Content-Length": header}
    )
    assert response.status_code == 400, (response.status_code, response.text)
    assert "Inference-Header-Content-Length" in response.text
