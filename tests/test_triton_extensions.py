"""Triton's statistics and system shared memory extensions, through tritonclient's HTTP and gRPC clients.

One real gateway serves two ONNX models made here. Shared memory: tritonclient's own utilities
(``tritonclient.utils.shared_memory``) create POSIX shared memory objects, the clients register
regions of them, inputs are read from a region and outputs written to one (at offsets), one input
in shared memory beside one sent in the request; every bounds and registration error is answered
with its reason, and CUDA shared memory is refused. Statistics: after a known series of requests
the counts and the per-batch-size entries are Triton's, over REST and gRPC alike.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

triton_http = pytest.importorskip("tritonclient.http")
triton_grpc = pytest.importorskip("tritonclient.grpc")

import tritonclient.utils.shared_memory as shared_memory  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.conftest import GatewayProcess, start_gateway, write_pair_model  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="POSIX shared memory lives in /dev/shm")

FLOAT = np.dtype(np.float32)


@pytest.fixture(scope="module")
def extensions_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    root = tmp_path_factory.mktemp("extensions-repository")
    write_pair_model(root / "pair" / "1" / "model.onnx", width=4)
    write_pair_model(root / "counted" / "1" / "model.onnx", width=4)
    server = start_gateway(root, tmp_path_factory.mktemp("extensions-logs") / "gateway.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def runners_gateway(
    extensions_gateway: GatewayProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """The same repository served by one front end whose models run in model runner processes."""
    log = tmp_path_factory.mktemp("runners-logs") / "gateway.log"
    server = start_gateway(extensions_gateway.repository, log, "--model-runners")
    yield server
    server.stop()


@pytest.fixture(params=["http", "grpc"])
def client(request: pytest.FixtureRequest, extensions_gateway: GatewayProcess) -> Iterator[tuple[Any, Any]]:
    """A tritonclient of each protocol, with its module (for InferInput...); no region is left registered."""
    if request.param == "http":
        module, connection = triton_http, triton_http.InferenceServerClient(extensions_gateway.http_url[7:])
    else:
        module, connection = triton_grpc, triton_grpc.InferenceServerClient(extensions_gateway.grpc_address)
    yield module, connection
    connection.unregister_system_shared_memory()
    connection.close()


@pytest.fixture
def region() -> Iterator[Any]:
    """A 256-byte POSIX shared memory object made by tritonclient's utilities, destroyed afterwards."""
    key = f"/gateway-test-{os.getpid()}-{time.monotonic_ns()}"
    handle = shared_memory.create_shared_memory_region("data", key, 256)
    handle.key = key
    yield handle
    shared_memory.destroy_shared_memory_region(handle)


def shm_input(module: Any, name: str, array: np.ndarray, region_name: str, offset: int) -> Any:
    tensor = module.InferInput(name, list(array.shape), "FP32")
    tensor.set_shared_memory(region_name, array.nbytes, offset=offset)
    return tensor


def sent_input(module: Any, name: str, array: np.ndarray) -> Any:
    tensor = module.InferInput(name, list(array.shape), "FP32")
    tensor.set_data_from_numpy(array)
    return tensor


def test_inputs_are_read_from_and_outputs_written_to_shared_memory(client: Any, region: Any) -> None:
    module, connection = client
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.full((2, 4), 3, dtype=np.float32)
    shared_memory.set_shared_memory_region(region, [a], offset=0)
    shared_memory.set_shared_memory_region(region, [b], offset=32)
    connection.register_system_shared_memory("data", region.key, 256)
    outputs = [module.InferRequestedOutput("sum"), module.InferRequestedOutput("product")]
    outputs[0].set_shared_memory("data", 32, offset=64)
    outputs[1].set_shared_memory("data", 64, offset=128)  # room to spare: the answer says what was written
    result = connection.infer(
        "pair", [shm_input(module, "a", a, "data", 0), shm_input(module, "b", b, "data", 32)], outputs=outputs
    )
    np.testing.assert_array_equal(shared_memory.get_contents_as_numpy(region, FLOAT, [2, 4], offset=64), a + b)
    np.testing.assert_array_equal(shared_memory.get_contents_as_numpy(region, FLOAT, [2, 4], offset=128), a * b)
    described = (
        result.get_output("product") if module is triton_http else result.get_response(as_json=True)["outputs"][1]
    )
    assert described["shape"] in ([2, 4], ["2", "4"])
    parameters = described["parameters"]
    if module is triton_grpc:  # the gRPC JSON wraps each value in its InferParameter field
        parameters = {key: next(iter(value.values())) for key, value in parameters.items()}
    assert parameters["shared_memory_region"] == "data"
    assert int(parameters["shared_memory_byte_size"]) == 32
    assert int(parameters["shared_memory_offset"]) == 128
    assert "data" not in described


def test_an_input_in_shared_memory_beside_one_sent_in_the_request(client: Any, region: Any) -> None:
    module, connection = client
    a = np.array([[1, 2, 3, 4]], dtype=np.float32)
    b = np.array([[10, 20, 30, 40]], dtype=np.float32)
    shared_memory.set_shared_memory_region(region, [b], offset=16)
    connection.register_system_shared_memory("data", region.key, 128, offset=16)  # the region starts 16 bytes in
    # The input in shared memory comes first: over gRPC, raw_input_contents holds only the other one.
    result = connection.infer("pair", [shm_input(module, "b", b, "data", 0), sent_input(module, "a", a)])
    np.testing.assert_array_equal(result.as_numpy("sum"), a + b)
    np.testing.assert_array_equal(result.as_numpy("product"), a * b)


def test_regions_are_listed_and_unregistered(client: Any, region: Any) -> None:
    _, connection = client
    connection.register_system_shared_memory("first", region.key, 64)
    connection.register_system_shared_memory("second", region.key, 128, offset=64)
    status = connection.get_system_shared_memory_status()
    if not isinstance(status, list):  # gRPC: a map of region name -> status
        status = [
            {"name": item.name, "key": item.key, "offset": item.offset, "byte_size": item.byte_size}
            for item in status.regions.values()
        ]
    assert sorted(status, key=lambda item: item["name"]) == [
        {"name": "first", "key": region.key, "offset": 0, "byte_size": 64},
        {"name": "second", "key": region.key, "offset": 64, "byte_size": 128},
    ]
    connection.unregister_system_shared_memory("first")
    connection.unregister_system_shared_memory("first")  # not registered any more: not an error, as in Triton
    remaining = connection.get_system_shared_memory_status("second")
    assert len(remaining) == 1 if isinstance(remaining, list) else list(remaining.regions) == ["second"]
    with pytest.raises(InferenceServerException, match=r"no shared memory region 'first' is registered"):
        connection.get_system_shared_memory_status("first")
    connection.unregister_system_shared_memory()
    status = connection.get_system_shared_memory_status()
    assert (status if isinstance(status, list) else list(status.regions)) == []


@pytest.mark.parametrize(
    ("name", "key_suffix", "byte_size", "offset", "expected"),
    [
        ("big", "", 512, 0, r"runs past the end of the object .* \(256 bytes\)"),
        ("shifted", "", 128, 200, r"runs past the end of the object"),
        ("missing", "-no-such-object", 16, 0, r"cannot open the shared memory object"),
    ],
)
def test_a_region_outside_its_object_is_refused(
    client: Any, region: Any, name: str, key_suffix: str, byte_size: int, offset: int, expected: str
) -> None:
    _, connection = client
    with pytest.raises(InferenceServerException, match=expected) as refused:
        connection.register_system_shared_memory(name, region.key + key_suffix, byte_size, offset=offset)
    assert "400" in str(refused.value) or "INVALID_ARGUMENT" in str(refused.value)


def test_a_region_name_is_registered_once(client: Any, region: Any) -> None:
    _, connection = client
    connection.register_system_shared_memory("data", region.key, 64)
    with pytest.raises(InferenceServerException, match=r"is registered already") as refused:
        connection.register_system_shared_memory("data", region.key, 64)
    assert "409" in str(refused.value) or "ALREADY_EXISTS" in str(refused.value)


def test_reads_and_writes_outside_a_region_are_refused(client: Any, region: Any) -> None:
    module, connection = client
    a = np.ones((1, 4), dtype=np.float32)
    connection.register_system_shared_memory("small", region.key, 24)
    with pytest.raises(
        InferenceServerException,
        match=r"16 bytes at offset 16 run past the end of shared memory region 'small' \(24 bytes\)",
    ):
        connection.infer("pair", [shm_input(module, "a", a, "small", 16), sent_input(module, "b", a)])
    output = module.InferRequestedOutput("sum")
    output.set_shared_memory("small", 8)
    with pytest.raises(InferenceServerException, match=r"output 'sum' is 16 bytes; the 8 bytes .* cannot hold it"):
        connection.infer("pair", [sent_input(module, "a", a), sent_input(module, "b", a)], outputs=[output])
    with pytest.raises(InferenceServerException, match=r"no shared memory region 'unknown' is registered"):
        connection.infer("pair", [shm_input(module, "a", a, "unknown", 0), sent_input(module, "b", a)])
    tensor = module.InferInput("a", [1, 4], "FP32")
    tensor.set_shared_memory("small", 8)  # the shape needs 16 bytes
    with pytest.raises(InferenceServerException, match=r"needs 16 bytes"):
        connection.infer("pair", [tensor, sent_input(module, "b", a)])


def test_cuda_shared_memory_is_refused_with_the_reason(client: Any) -> None:
    module, connection = client
    for call in (
        lambda: connection.register_cuda_shared_memory("gpu", b"aGFuZGxl", 0, 16),
        lambda: connection.get_cuda_shared_memory_status(),
        lambda: connection.unregister_cuda_shared_memory(),
    ):
        with pytest.raises(InferenceServerException, match=r"CUDA shared memory is not supported") as refused:
            call()
        assert ("400" if module is triton_http else "UNIMPLEMENTED") in str(refused.value)


def _normalized(model_stats: dict[str, Any]) -> dict[str, Any]:
    """A ModelStatistics as JSON with every number an int (gRPC's JSON writes uint64 as strings, omits zeros)."""

    def duration(value: dict[str, Any] | None) -> tuple[int, int]:
        value = value or {}
        return int(value.get("count", 0)), int(value.get("ns", 0))

    stats = model_stats["inference_stats"]
    return {
        "name": model_stats["name"],
        "version": model_stats["version"],
        "last_inference": int(model_stats.get("last_inference", 0)),
        "inference_count": int(model_stats.get("inference_count", 0)),
        "execution_count": int(model_stats.get("execution_count", 0)),
        **{
            key: duration(stats.get(key))
            for key in (
                "success",
                "fail",
                "queue",
                "compute_input",
                "compute_infer",
                "compute_output",
                "cache_hit",
                "cache_miss",
            )
        },
        "batches": {
            int(batch["batch_size"]): {
                key: duration(batch.get(key)) for key in ("compute_input", "compute_infer", "compute_output")
            }
            for batch in model_stats.get("batch_stats", [])
        },
    }


@pytest.mark.parametrize("where", ["in process", "model runners"])
def test_statistics_count_what_was_asked(where: str, request: pytest.FixtureRequest) -> None:
    # With model runners, the runner tells the front end each request's part in its run.
    extensions_gateway = request.getfixturevalue("extensions_gateway" if where == "in process" else "runners_gateway")
    http = triton_http.InferenceServerClient(extensions_gateway.http_url[7:])
    grpc = triton_grpc.InferenceServerClient(extensions_gateway.grpc_address)
    started_ms = time.time_ns() // 1_000_000
    try:
        batch_sizes = [1, 2, 3, 2]  # two over each protocol
        for index, size in enumerate(batch_sizes):
            module, connection = (triton_http, http) if index % 2 else (triton_grpc, grpc)
            array = np.ones((size, 4), dtype=np.float32)
            connection.infer("counted", [sent_input(module, "a", array), sent_input(module, "b", array)])
        bad = {"inputs": [{"name": "a", "datatype": "FP32", "shape": [1, 3], "data": [1, 2, 3]}]}
        assert extensions_gateway.http.post("/v2/models/counted/infer", json=bad).status_code == 400

        over_rest = extensions_gateway.http.get("/v2/models/counted/stats").json()["model_stats"]
        assert extensions_gateway.http.get("/v2/models/counted/versions/1/stats").json()["model_stats"] == over_rest
        everything = extensions_gateway.http.get("/v2/models/stats").json()["model_stats"]
        assert [entry for entry in everything if entry["name"] == "counted"] == over_rest
        assert {entry["name"] for entry in everything} == {"pair", "counted"}
        over_grpc = grpc.get_inference_statistics("counted", as_json=True)["model_stats"]
        assert [_normalized(entry) for entry in over_grpc] == [_normalized(entry) for entry in over_rest]

        stats = _normalized(over_rest[0])
        assert (stats["name"], stats["version"]) == ("counted", "1")
        assert stats["inference_count"] == sum(batch_sizes)
        assert stats["execution_count"] == len(batch_sizes)
        assert stats["success"][0] == len(batch_sizes) and stats["success"][1] > 0
        assert stats["fail"][0] == 1  # the bad shape: refused by the version's checks
        for key in ("queue", "compute_input", "compute_infer", "compute_output"):
            assert stats[key][0] == len(batch_sizes), key
        assert stats["compute_infer"][1] > 0
        assert stats["cache_hit"] == stats["cache_miss"] == (0, 0)
        assert {size: batch["compute_infer"][0] for size, batch in stats["batches"].items()} == {1: 1, 2: 2, 3: 1}
        assert started_ms <= stats["last_inference"] <= time.time_ns() // 1_000_000
        assert extensions_gateway.http.get("/v2/models/nope/stats").status_code == 404
        with pytest.raises(InferenceServerException, match=r"NOT_FOUND|unknown model"):
            grpc.get_inference_statistics("nope")
    finally:
        http.close()
        grpc.close()


def test_the_extensions_are_listed(extensions_gateway: GatewayProcess) -> None:
    extensions = extensions_gateway.http.get("/v2").json()["extensions"]
    assert {"statistics", "system_shared_memory", "model_configuration"} <= set(extensions)
    assert "cuda_shared_memory" not in extensions
