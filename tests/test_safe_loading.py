"""Safe model loading: unsafe packages and files are refused with a clear reason and write nothing.

Every case runs against a real gateway process. What must never happen is checked directly: a
sentinel folder beside the repository (holding the "secret" an escaping external-data reference
would read, and where a pickle's ``__reduce__`` or a Keras Lambda would write) and the repository
itself are snapshotted before and after, and the gateway keeps answering inferences.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
import shutil
import signal
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import ADMIN_HEADERS, ADMIN_TOKEN, GatewayProcess, run_push, snapshot, start_gateway

pytestmark = [
    pytest.mark.filterwarnings(r"ignore:`torch\.jit\.(script|save)` is deprecated:DeprecationWarning"),
]

#: The weights of the external-data models: y = x @ W.
WEIGHTS = np.arange(8, dtype=np.float32).reshape(2, 4)

TORCHSCRIPT_CONFIG = """\
max_batch_size: 8
inputs:
  - {name: x, datatype: FP32, dims: [4]}
outputs:
  - {name: output, datatype: FP32, dims: [4]}
torch: {threads: 1, device: cpu}
"""


# ----------------------------------------------------------------------------- building the artifacts


def external_data_model(location: str, *, in_constant: bool = False) -> bytes:
    """An ONNX model ``y = x @ W`` whose W lives in external data at ``location``.

    With ``in_constant`` W is the value of a ``Constant`` node instead of an initializer.
    """
    weights = numpy_helper.from_array(WEIGHTS, "W")
    weights.ClearField("raw_data")
    weights.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": "0", "length": str(WEIGHTS.nbytes)}.items():
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
    initializers = [weights]
    if in_constant:
        nodes.insert(0, helper.make_node("Constant", [], ["W"], value=weights))
        initializers = []
    graph = helper.make_graph(
        nodes,
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


def tar_package(
    files: dict[str, bytes], special: list[tarfile.TarInfo] | None = None, *, folders: tuple[str, ...] = ()
) -> bytes:
    """An uncompressed tar of regular files and folders, plus hand-made members (links, devices...)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name in folders:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
            archive.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in special or []:
            archive.addfile(info)
    return buffer.getvalue()


def member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.devmajor, info.devminor = 1, 3  # /dev/null's numbers, for the device member
    return info


def code_that_writes(sentinel: Path) -> str:
    """Python source that writes ``sentinel``: what the malicious payloads below would run."""
    return f"open({str(sentinel)!r}, 'w').write('code ran')"


class WritesSentinel:
    """Unpickling this runs ``exec`` on code that writes the sentinel file."""

    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (code_that_writes(self.sentinel),))


class Doubler(torch.nn.Module):
    """y = 2 x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


def torch_artifacts(folder: Path, sentinel: Path) -> dict[str, tuple[str, bytes]]:
    """Unsafe torch artifacts by case name: (file name in the version folder, bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(Doubler(), buffer)  # a pickled nn.Module, as torch.save(model) writes it
    pickled_module = buffer.getvalue()
    buffer = io.BytesIO()
    torch.save(WritesSentinel(sentinel), buffer)
    torch_save_reduce = buffer.getvalue()
    plain_reduce = pickle.dumps(WritesSentinel(sentinel))

    # A genuine ExportedProgram, then two crafted variants of it.
    program = torch.export.export(Doubler(), (torch.zeros(2, 4),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(program, folder / "good.pt2")
    good = zipfile.ZipFile(folder / "good.pt2")

    def variant(replace: Any) -> bytes:
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
            for info in good.infolist():
                archive.writestr(info.filename, replace(info.filename, good.read(info.filename)))
        return out.getvalue()

    def evil_sample_inputs(name: str, data: bytes) -> bytes:
        # torch.export.load unpickles these with weights_only=True, then retries with weights_only=False.
        return torch_save_reduce if name.endswith("data/sample_inputs/model.pt") else data

    def evil_shape_expression(name: str, data: bytes) -> bytes:
        # torch.export.load parses shape expressions with sympy.sympify, an eval.
        if not name.endswith("models/model.json"):
            return data
        payload = json.dumps(f"__import__('builtins').exec({code_that_writes(sentinel)!r})")
        return re.sub(rb'"expr_str": "[^"]*"', b'"expr_str": ' + payload.encode(), data, count=1)

    # A TorchScript archive whose data.pkl is the reducing pickle (read by torch's C++ unpickler).
    torch.jit.save(torch.jit.script(Doubler()), str(folder / "good.pt"))
    script = zipfile.ZipFile(folder / "good.pt")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for info in script.infolist():
            data = script.read(info.filename)
            archive.writestr(
                info,
                pickle.dumps(WritesSentinel(sentinel), protocol=2) if info.filename.endswith("/data.pkl") else data,
            )
    return {
        "pickled nn.Module as model.pt": ("model.pt", pickled_module),
        "torch.save'd reducing pickle as model.pt": ("model.pt", torch_save_reduce),
        "plain reducing pickle as model.pt": ("model.pt", plain_reduce),
        "TorchScript whose data.pkl reduces": ("model.pt", out.getvalue()),
        "reducing pickle as model.pt2": ("model.pt2", torch_save_reduce),
        "ExportedProgram whose sample inputs reduce": ("model.pt2", variant(evil_sample_inputs)),
        "ExportedProgram whose shape expression is code": ("model.pt2", variant(evil_shape_expression)),
    }


# ----------------------------------------------------------------------------- the gateway under test


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory, digits_source: Path) -> Iterator[dict[str, Any]]:
    """A gateway whose repository holds the digits model, a TorchScript model, and operator-dropped
    ONNX folders whose external data stays inside (ext_good) or escapes (ext_link, ext_dotdot)."""
    base = tmp_path_factory.mktemp("safe-loading")
    root, sentinel_dir = base / "repository", base / "sentinel"
    sentinel_dir.mkdir()
    (sentinel_dir / "secret.bin").write_bytes(WEIGHTS.tobytes())  # what an escape would read
    shutil.copytree(digits_source, root / "digits")

    good = root / "ext_good" / "1"
    good.mkdir(parents=True)
    (good / "model.onnx").write_bytes(external_data_model("weights/W.bin", in_constant=True))
    (good / "weights").mkdir()
    (good / "weights" / "W.bin").write_bytes(WEIGHTS.tobytes())

    link = root / "ext_link" / "1"
    link.mkdir(parents=True)
    (link / "model.onnx").write_bytes(external_data_model("W.bin"))
    os.symlink(sentinel_dir / "secret.bin", link / "W.bin")

    linked_folder = root / "ext_linked_folder" / "1"
    linked_folder.mkdir(parents=True)
    (linked_folder / "model.onnx").write_bytes(external_data_model("data/secret.bin"))
    os.symlink(sentinel_dir, linked_folder / "data")

    dotdot = root / "ext_dotdot" / "1"
    dotdot.mkdir(parents=True)
    (dotdot / "model.onnx").write_bytes(external_data_model("../../../sentinel/secret.bin"))

    (root / "doubler" / "1").mkdir(parents=True)
    torch.jit.save(torch.jit.script(Doubler()), str(root / "doubler" / "1" / "model.pt"))
    (root / "doubler" / "config.yaml").write_text(TORCHSCRIPT_CONFIG)

    server = start_gateway(root, base / "gateway.log")
    yield {"server": server, "root": root, "sentinel_dir": sentinel_dir, "base": base}
    server.stop()


def infer_external(server: GatewayProcess, model: str) -> np.ndarray:
    x = np.array([[1.0, 2.0], [3.0, -1.0]], dtype=np.float32)
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, 2], "data": x.ravel().tolist()}]}
    response = server.http.post(f"/v2/models/{model}/infer", json=body)
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    result = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
    np.testing.assert_allclose(result, x @ WEIGHTS)
    return result


def assert_digits_still_served(server: GatewayProcess) -> None:
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}]}
    response = server.http.post("/v2/models/digits/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["shape"] == [1, 10]


def index_of(server: GatewayProcess) -> dict[tuple[str, str], dict[str, str]]:
    entries = server.http.post("/v2/repository/index").json()
    return {(entry["name"], entry["version"]): entry for entry in entries}


def upload(server: GatewayProcess, name: str, version: str, body: bytes) -> httpx.Response:
    return server.http.put(f"/v2/repository/models/{name}/versions/{version}", content=body, headers=ADMIN_HEADERS)


# ----------------------------------------------------------------------------- ONNX external data


def test_external_data_inside_the_version_folder_loads_and_serves(sandbox: dict[str, Any]) -> None:
    server = sandbox["server"]
    assert index_of(server)[("ext_good", "1")]["state"] == "READY"
    infer_external(server, "ext_good")
    # The same over the upload API: an initializer in external data, in a sub-folder of the package.
    package = tar_package(
        {"model.onnx": external_data_model("data/W.bin"), "data/W.bin": WEIGHTS.tobytes()}, folders=("data",)
    )
    response = upload(server, "ext_uploaded", "1", package)
    assert response.status_code == 201, response.text
    infer_external(server, "ext_uploaded")


def test_operator_folders_whose_external_data_escapes_do_not_load(sandbox: dict[str, Any]) -> None:
    """Folders dropped into the repository (never checked by an upload) are checked at load time."""
    server = sandbox["server"]
    index = index_of(server)
    expected = {
        "ext_link": ["tensor 'W'", "location 'W.bin'", "is a symbolic link"],
        "ext_linked_folder": ["tensor 'W'", "location 'data/secret.bin'", "passes through the symbolic link 'data'"],
        "ext_dotdot": ["tensor 'W'", "location '../../../sentinel/secret.bin'", "contains '..'"],
    }
    for model, fragments in expected.items():
        entry = index[(model, "1")]
        assert entry["state"] == "UNAVAILABLE", entry
        for fragment in [*fragments, "must be a regular file inside the model's version folder"]:
            assert fragment in entry["reason"], (model, fragment, entry["reason"])
        response = server.http.post(
            f"/v2/models/{model}/infer",
            json={"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1, 2]}]},
        )
        assert response.status_code == 503 and "external data" in response.json()["error"], response.text
    assert_digits_still_served(server)
    infer_external(server, "ext_good")


# ----------------------------------------------------------------------------- the unsafe package battery


def test_unsafe_packages_are_refused_and_write_nothing_outside_staging(sandbox: dict[str, Any]) -> None:
    server, root, sentinel_dir = sandbox["server"], sandbox["root"], sandbox["sentinel_dir"]
    sentinel = sentinel_dir / "code-ran"
    model = (root / "digits" / "1" / "model.onnx").read_bytes()
    secret = sentinel_dir / "secret.bin"
    onnx_cases: dict[str, tuple[str, bytes, str]] = {
        "absolute path": (
            "pkg",
            tar_package({"model.onnx": model, str(sentinel_dir / "abs.txt"): b"x"}),
            "absolute path",
        ),
        "'..' traversal": ("pkg", tar_package({"model.onnx": model, "../../sentinel/up.txt": b"x"}), "'..'"),
        "symbolic link": (
            "pkg",
            tar_package({"model.onnx": model}, [member("W.bin", tarfile.SYMTYPE, str(secret))]),
            "is a link",
        ),
        "hard link": (
            "pkg",
            tar_package({"model.onnx": model}, [member("copy.onnx", tarfile.LNKTYPE, "model.onnx")]),
            "is a link",
        ),
        "character device": (
            "pkg",
            tar_package({"model.onnx": model}, [member("null", tarfile.CHRTYPE)]),
            "not a regular file or folder",
        ),
        "FIFO": ("pkg", tar_package({"model.onnx": model}, [member("pipe", tarfile.FIFOTYPE)]), "not a regular file"),
        "external data with '..'": (
            "pkg",
            tar_package({"model.onnx": external_data_model("../../../sentinel/secret.bin")}),
            "location '../../../sentinel/secret.bin', which contains '..'",
        ),
        "external data at an absolute path": (
            "pkg",
            tar_package({"model.onnx": external_data_model(str(secret), in_constant=True)}),
            f"location '{secret}', which is an absolute path",
        ),
        "external data that is a folder": (
            "pkg",
            tar_package({"model.onnx": external_data_model("data")}, folders=("data",)),
            "location 'data', which is not a regular file",
        ),
        "external data that is missing": (
            "pkg",
            tar_package({"model.onnx": external_data_model("W.bin")}),
            "location 'W.bin', which does not exist",
        ),
        "model name '..'": ("%2E%2E", tar_package({"model.onnx": model}), "invalid model name"),
        "model name '.hidden'": (".hidden", tar_package({"model.onnx": model}), "invalid model name"),
        "model name with a space": ("a%20b", tar_package({"model.onnx": model}), "invalid model name"),
    }
    torch_cases = {
        case: ("doubler", tar_package({file_name: data}), "")
        for case, (file_name, data) in torch_artifacts(sandbox["base"] / "torch-artifacts", sentinel).items()
    }
    assert not sentinel.exists()
    before, sentinels_before = snapshot(root), snapshot(sentinel_dir)

    for case, (name, body, message) in {**onnx_cases, **torch_cases}.items():
        response = upload(server, name, "2" if name == "doubler" else "1", body)
        assert response.status_code == 400, (case, response.status_code, response.text)
        error = response.json()["error"]
        assert message in error, (case, error)
        assert "Traceback" not in error
        assert not sentinel.exists(), f"{case}: the payload's code ran"
    torch_errors = {
        case: upload(server, "doubler", "2", body).json()["error"] for case, (_, body, _) in torch_cases.items()
    }
    assert "cannot be loaded as TorchScript" in torch_errors["pickled nn.Module as model.pt"]
    assert "Unknown type name '__builtin__.exec'" in torch_errors["TorchScript whose data.pkl reduces"]
    assert "is not an ExportedProgram archive" in torch_errors["reducing pickle as model.pt2"]
    assert (
        "sample inputs (data/sample_inputs/model.pt) are not plain tensors"
        in (torch_errors["ExportedProgram whose sample inputs reduce"])
    )
    assert (
        "calls something other than sympy's classes" in (torch_errors["ExportedProgram whose shape expression is code"])
    )

    assert snapshot(root) == before
    assert snapshot(sentinel_dir) == sentinels_before
    assert not sentinel.exists()
    assert list((root / ".staging").iterdir()) == []  # nothing left in staging either
    assert_digits_still_served(server)
    assert server.http.get("/v2/models/doubler").json()["versions"] == ["1"]


def test_a_very_long_model_name_is_a_clear_400(sandbox: dict[str, Any]) -> None:
    server, root = sandbox["server"], sandbox["root"]
    before = snapshot(root)
    model = (root / "digits" / "1" / "model.onnx").read_bytes()
    response = upload(server, "m" * 300, "1", tar_package({"model.onnx": model}))
    assert response.status_code == 400 and "model name" in response.json()["error"], response.text
    assert snapshot(root) == before
    assert_digits_still_served(server)


def test_a_slash_in_a_model_name_never_reaches_the_repository(sandbox: dict[str, Any]) -> None:
    server, root = sandbox["server"], sandbox["root"]
    before = snapshot(root)
    model = (root / "digits" / "1" / "model.onnx").read_bytes()
    for name in ("a/b", "a%2Fb", "digits%2F..%2F..%2Fsentinel"):
        response = upload(server, name, "1", tar_package({"model.onnx": model}))
        assert response.status_code in (400, 404), (name, response.text)  # no route, or an invalid name
        assert response.status_code != 201
    assert snapshot(root) == before
    assert not (sandbox["sentinel_dir"] / "1").exists()
    assert_digits_still_served(server)


# ----------------------------------------------------------------------------- Keras Lambda through the CLI


def test_keras_lambda_push_is_refused_and_its_code_never_runs(sandbox: dict[str, Any], tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    server, root = sandbox["server"], sandbox["root"]
    sentinel = sandbox["sentinel_dir"] / "lambda-ran"
    # The lambda writes the sentinel whenever it runs: when the model is built, and when Keras
    # rebuilds the model from the file (which it would only do outside safe mode).
    writes = eval(f"lambda t: (open({str(sentinel)!r}, 'w').write('lambda ran'), t)[1]")
    pixels = keras.Input((64,), name="pixels")
    model = keras.Model(pixels, keras.layers.Dense(10)(keras.layers.Lambda(writes)(pixels)))
    model.save(str(tmp_path / "lambda.keras"))
    assert sentinel.exists()  # the lambda did run while building: the file really holds that code
    sentinel.unlink()
    before = snapshot(root)

    pushed = run_push(
        str(tmp_path / "lambda.keras"), "--name", "lambda_model", "--server", server.http_url, "--token", ADMIN_TOKEN
    )
    assert pushed.returncode == 1, (pushed.stdout, pushed.stderr)
    assert "Lambda layer" in pushed.stderr and "safe mode" in pushed.stderr, pushed.stderr
    assert "Traceback" not in pushed.stderr
    assert not sentinel.exists(), "the Lambda layer's code ran"
    assert snapshot(root) == before
    assert server.http.get("/v2/models/lambda_model").status_code == 404


# ----------------------------------------------------------------------------- kill -9 in the middle of a push


def big_model(path: Path, width: int = 2048, layers: int = 3) -> None:
    """A valid ONNX MLP of ``layers`` width x width FP32 layers (16 MiB each at width 2048)."""
    rng = np.random.default_rng(0)
    nodes, initializers = [], []
    for layer in range(layers):
        initializers.append(
            numpy_helper.from_array((rng.standard_normal((width, width)) / 64).astype(np.float32), f"w{layer}")
        )
        nodes.append(helper.make_node("MatMul", [f"h{layer}", f"w{layer}"], [f"h{layer + 1}"]))
    nodes[0].input[0] = "x"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, path)


def kill_9(server: GatewayProcess) -> None:
    """SIGKILL the gateway this test started, by its PID, and reap it."""
    server.process.send_signal(signal.SIGKILL)
    server.process.wait(timeout=20)
    server.stop()


def test_kill_9_during_a_push_leaves_the_old_state_or_the_new_one(tmp_path: Path, digits_source: Path) -> None:
    root = tmp_path / "repository"
    shutil.copytree(digits_source, root / "digits")
    big_model(tmp_path / "big.onnx")
    package = tar_package({"model.onnx": (tmp_path / "big.onnx").read_bytes()})
    expected_files = {"big/1/model.onnx": (tmp_path / "big.onnx").stat().st_size}
    old_state = snapshot(root)
    logs = tmp_path / "logs"
    logs.mkdir()

    def check_restart(attempt: str) -> str:
        """Restart on the same repository: every model loads; the repository is old or new, never partial."""
        server = start_gateway(root, logs / f"after-{attempt}.log")
        try:
            index = index_of(server)
            assert all(entry["state"] == "READY" for entry in index.values()), (attempt, index)
            state = snapshot(root)
            if state == old_state:
                assert ("big", "1") not in index
                outcome = "old"
            else:
                assert state == {**old_state, **expected_files}, (attempt, state)
                assert (root / "big" / "1" / "model.onnx").read_bytes() == (tmp_path / "big.onnx").read_bytes()
                assert index[("big", "1")]["state"] == "READY"
                outcome = "new"
            assert_digits_still_served(server)
        finally:
            server.stop()
        if outcome == "new":  # back to the old state for the next attempt
            shutil.rmtree(root / "big")
        return outcome

    # 1. Killed in the middle of the body: the client has sent a third of the package, slowly.
    server = start_gateway(root, logs / "mid-body.log")
    sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        third = len(package) // 3
        yield package[:third]
        sent.set()
        time.sleep(30)  # the server is killed meanwhile
        yield package[third:]

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the server dies meanwhile
            httpx.put(
                f"{server.http_url}/v2/repository/models/big/versions/1",
                content=slow_body(),
                headers=ADMIN_HEADERS,
                timeout=60,
            )

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert sent.wait(30)
    deadline = time.monotonic() + 10
    while not any(path.name == "package" for path in (root / ".staging").rglob("package")):
        assert time.monotonic() < deadline, "the upload never reached the staging folder"
        time.sleep(0.05)
    time.sleep(0.3)
    dead_pid = server.process.pid
    kill_9(server)
    leftovers = list((root / ".staging").iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith("upload-")  # the dead process's folder
    assert check_restart("mid-body") == "old"

    # 2. Killed after the whole body arrived: while unpacking, checking, trial-loading, installing
    # or loading, at increasing delays. Each restart finds the old state or the complete new one.
    outcomes = []
    for delay in (0.0, 0.3, 2.0):
        server = start_gateway(root, logs / f"after-body-{delay}.log")
        sender = threading.Thread(
            target=lambda url=server.http_url: _put_quietly(f"{url}/v2/repository/models/big/versions/1", package),
            daemon=True,
        )
        sender.start()
        deadline = time.monotonic() + 20
        while not any((root / ".staging").rglob("version")) and not (root / "big").exists():
            assert time.monotonic() < deadline, "the upload was never unpacked"
            time.sleep(0.005)
        time.sleep(delay)
        kill_9(server)
        outcomes.append(check_restart(f"after-body-{delay}"))
    print("outcomes of the kills after the body:", outcomes)

    # 3. Leftover staging folders break nothing, and the next upload removes those of dead
    # processes of this host only: never one whose process is alive (another worker's).
    staging = root / ".staging"
    host = re.sub(r"[^A-Za-z0-9.]", "_", os.uname().nodename)[:64]
    alive = staging / f"upload-{host}-{os.getpid()}-live0000"
    other_host = staging / "upload-otherhost-1-abcd1234"
    dead = staging / f"upload-{host}-{dead_pid}-dead0000"  # as the first killed gateway left it
    for folder in (alive, other_host, dead):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "package").write_bytes(b"in use")
    server = start_gateway(root, logs / "final.log")
    try:
        response = upload(server, "big", "1", package) if not (root / "big").exists() else None
        if response is not None:
            assert response.status_code == 201, response.text
        response = upload(
            server, "digits", "7", tar_package({"model.onnx": (root / "digits" / "1" / "model.onnx").read_bytes()})
        )
        assert response.status_code == 201, response.text
        assert sorted(staging.iterdir()) == sorted([alive, other_host])
        assert (alive / "package").read_bytes() == b"in use"
        assert all(entry["state"] == "READY" for entry in index_of(server).values())
    finally:
        server.stop()


def _put_quietly(url: str, body: bytes) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the server is killed meanwhile
        httpx.put(url, content=body, headers=ADMIN_HEADERS, timeout=60)
