"""Shared fixtures: real gateway processes on free loopback ports, and real models.

The server always runs in its own process: our generated ``inference`` protobuf module and
tritonclient's register the same message names, so they cannot share one interpreter. Tests use
tritonclient's generated stubs as their raw gRPC stubs.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gateway.runtime.memory_budget import process_tree

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The admin token every test gateway is started with (unless a test gives its own environment).
ADMIN_TOKEN = "test-admin-token"
ADMIN_HEADERS = {"authorization": f"Bearer {ADMIN_TOKEN}"}  # lower case: also valid gRPC metadata

#: v2 datatype -> ONNX element type, for the identity models.
ONNX_TYPES = {
    "BOOL": TensorProto.BOOL,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


#: One sample tensor per v2 datatype, with the extremes of its range, for the identity models.
SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True]]),
    "INT8": np.array([[-128, 0, 127]], dtype=np.int8),
    "INT16": np.array([[-32768, 1, 32767]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 2, 2**31 - 1]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 3, 2**63 - 1]], dtype=np.int64),
    "UINT8": np.array([[0, 1, 255]], dtype=np.uint8),
    "UINT16": np.array([[0, 1, 65535]], dtype=np.uint16),
    "UINT32": np.array([[0, 1, 2**32 - 1]], dtype=np.uint32),
    "UINT64": np.array([[0, 1, 2**64 - 1]], dtype=np.uint64),
    "FP16": np.array([[-1.5, 0.0, 65504.0]], dtype=np.float16),
    "FP32": np.array([[-1.25, 3.0e38, 1e-30]], dtype=np.float32),
    "FP64": np.array([[-1.25, 1.7e308, 1e-300]], dtype=np.float64),
    "BYTES": np.array([[b"hello", "wörld".encode(), b""]], dtype=np.object_),
}
assert set(SAMPLES) == set(ONNX_TYPES)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> set[int]:
    """The processes under ``pid`` (children, their children...)."""
    return set(process_tree(pid)) - {pid}


def children_named(gateway: GatewayProcess, started: str) -> list[int]:
    """The live child processes of a supervisor whose start its log tells with the pattern ``started``.

    ``started`` has one group, the pid (e.g. ``worker \\d+ started \\(pid (\\d+)\\)``); a pid is kept while
    it is still a process under the gateway process (the supervisor's fork server forks them) and has not
    exited (a process killed but not yet reaped by its parent is not live).
    """
    alive = {pid for pid in descendants(gateway.process.pid) if not has_exited(pid)}
    pids = re.findall(started, gateway.log_path.read_text(errors="replace"))
    return [int(pid) for pid in dict.fromkeys(pids) if int(pid) in alive]


def has_exited(pid: int) -> bool:
    """Whether process ``pid`` has exited: gone, or a zombie waiting for its parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # reaped meanwhile
        return True
    return stat[stat.rindex(")") + 2] == "Z"  # the state follows the command name in parentheses


class GatewayProcess:
    """A ``gateway serve`` process on free loopback ports; stopped with SIGTERM by its own PID."""

    def __init__(
        self,
        repository: Path | str,
        log_path: Path,
        *extra_args: str,
        env: dict[str, str] | None = None,
        admin_token: str | None = ADMIN_TOKEN,
    ) -> None:
        self.repository = repository
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.http_url = f"http://127.0.0.1:{self.http_port}"
        self.grpc_address = f"127.0.0.1:{self.grpc_port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--model-repository",
                str(repository),
                "--http-port",
                str(self.http_port),
                "--grpc-port",
                str(self.grpc_port),
                *extra_args,
            ],
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_environment(env, admin_token),
        )
        self.http = httpx.Client(base_url=self.http_url, timeout=30)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gateway exited with {self.process.returncode}:\n{self.logs()}")
            try:
                if self.http.get("/v2/health/ready").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"gateway not ready after {timeout}s:\n{self.logs()}")

    def logs(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        self.http.close()
        terminate(self.process)
        self._log.close()


def terminate(process: subprocess.Popen[bytes]) -> None:
    """Stop a process this test session started: SIGTERM by its PID, SIGKILL after 20 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_push(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run `gateway push` in its own process; the admin token comes from --token unless ``env`` says otherwise."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    environment.pop("GATEWAY_ADMIN_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "push", *args],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=240,
    )


def snapshot(root: Path) -> dict[str, int]:
    """Every file under a repository (staging excluded) with its size: what a refused push must not change."""
    return {
        str(path.relative_to(root)): path.stat().st_size
        for path in root.rglob("*")
        if path.is_file() and ".staging" not in path.parts
    }


def metadata(server: GatewayProcess, model: str, version: str | None = None) -> dict[str, Any]:
    url = f"/v2/models/{model}" if version is None else f"/v2/models/{model}/versions/{version}"
    response = server.http.get(url)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def served(
    server: GatewayProcess, model: str, version: str, inputs: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The model's outputs for ``inputs`` (by input name), over REST (JSON) and over gRPC (tritonclient)."""
    datatypes = {tensor["name"]: tensor["datatype"] for tensor in metadata(server, model, version)["inputs"]}
    assert sorted(datatypes) == sorted(inputs)
    body = {
        "inputs": [
            {"name": name, "datatype": datatypes[name], "shape": list(array.shape), "data": array.ravel().tolist()}
            for name, array in inputs.items()
        ]
    }
    response = server.http.post(f"/v2/models/{model}/versions/{version}/infer", json=body)
    assert response.status_code == 200, response.text
    rest = {
        output["name"]: np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        for output in response.json()["outputs"]
    }
    import tritonclient.grpc as triton_grpc

    client = triton_grpc.InferenceServerClient(url=server.grpc_address)
    try:
        tensors = []
        for name, array in inputs.items():
            tensor = triton_grpc.InferInput(name, list(array.shape), datatypes[name])
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = client.infer(model, tensors, model_version=version)
        grpc_outputs = {name: result.as_numpy(name) for name in rest}
    finally:
        client.close()
    return rest, grpc_outputs


def _environment(extra: dict[str, str] | None, admin_token: str | None) -> dict[str, str]:
    """The test process's environment plus ``extra``, with GATEWAY_ADMIN_TOKEN set to ``admin_token`` or unset."""
    environment = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra or {})}
    environment.pop("GATEWAY_ADMIN_TOKEN", None)
    if admin_token is not None:
        environment["GATEWAY_ADMIN_TOKEN"] = admin_token
    return environment


def start_gateway(
    repository: Path | str,
    log_path: Path,
    *extra_args: str,
    env: dict[str, str] | None = None,
    admin_token: str | None = ADMIN_TOKEN,
) -> GatewayProcess:
    gateway = GatewayProcess(repository, log_path, *extra_args, env=env, admin_token=admin_token)
    try:
        gateway.wait_ready()
    except Exception:
        gateway.stop()
        raise
    return gateway


def write_identity_model(path: Path, datatype: str) -> None:
    """An ONNX model ``output = Identity(input)`` of one datatype, shape [batch, -1]."""
    element_type = ONNX_TYPES[datatype]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        f"identity_{datatype.lower()}",
        [helper.make_tensor_value_info("input", element_type, ["batch", "width"])],
        [helper.make_tensor_value_info("output", element_type, ["batch", "width"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def write_pair_model(path: Path, width: int = 2) -> None:
    """An ONNX model with two inputs a, b FP32 [batch, width] and two outputs: sum = a + b, product = a * b."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["sum"]), helper.make_node("Mul", ["a", "b"], ["product"])],
        "pair",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width]) for name in ("a", "b")],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width]) for name in ("sum", "product")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def write_slow_model(path: Path, layers: int = 160, width: int = 1024) -> None:
    """An ONNX model that takes a [1, 1] FP32 input and spends about a second or more computing:
    the input is expanded to [width, width] and goes through ``layers`` MatMul+Tanh layers."""
    nodes = [helper.make_node("Expand", ["x", "shape"], ["h0"])]
    for layer in range(layers):
        nodes.append(helper.make_node("MatMul", [f"h{layer}", "w"], [f"m{layer}"]))
        nodes.append(helper.make_node("Tanh", [f"m{layer}"], [f"h{layer + 1}"]))
    nodes.append(helper.make_node("ReduceMean", [f"h{layers}"], ["y"], keepdims=1))
    weights = (np.random.default_rng(0).standard_normal((width, width)) / 32).astype(np.float32)
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.array([width, width]), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


@pytest.fixture(scope="session")
def digits_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository holding the example digits classifier, trained and exported once per session."""
    from examples.digits import build_example_repository

    root = tmp_path_factory.mktemp("digits-source")
    build_example_repository(root)
    return root / "digits"


@pytest.fixture(scope="session")
def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from examples.digits import load_digits_split

    return load_digits_split()


@pytest.fixture(scope="session")
def serving_repository(tmp_path_factory: pytest.TempPathFactory, digits_source: Path) -> Path:
    """The repository of the shared server: good, config-less, broken and corrupt models."""
    root = tmp_path_factory.mktemp("repository")
    shutil.copytree(digits_source, root / "digits")
    # The same graph with no config.yaml at all: completed from the ONNX graph.
    (root / "digits_noconfig" / "1").mkdir(parents=True)
    shutil.copy(digits_source / "1" / "model.onnx", root / "digits_noconfig" / "1" / "model.onnx")
    # A config.yaml with a misspelt field and a bad value.
    shutil.copytree(root / "digits_noconfig", root / "broken_config")
    (root / "broken_config" / "config.yaml").write_text("max_batch_size: -3\ninstance_cnt: 2\n")
    # A model.onnx that is not ONNX.
    (root / "corrupt" / "1").mkdir(parents=True)
    (root / "corrupt" / "1" / "model.onnx").write_bytes(b"this is not an onnx model")
    # Execution providers in order, CUDA first: falls back to CPU where there is no GPU.
    shutil.copytree(digits_source, root / "digits_cuda_first")
    with (root / "digits_cuda_first" / "config.yaml").open("a") as config:
        config.write("onnxruntime:\n  execution_providers: [CUDA, CPU]\n")
    for datatype in ONNX_TYPES:
        write_identity_model(root / f"identity_{datatype.lower()}" / "1" / "model.onnx", datatype)
    write_slow_model(root / "slow" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="session")
def gateway(serving_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    """A gateway serving :func:`serving_repository` in model control mode none."""
    server = start_gateway(serving_repository, tmp_path_factory.mktemp("logs") / "gateway.log")
    yield server
    server.stop()
