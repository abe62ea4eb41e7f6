"""TorchServe archives (``.mar``) made by the real ``torch-model-archiver``, served unchanged.

Archives of TorchScript (base handler, a config.yaml among the extra files), ONNX (no handler) and a
``torch.export`` program (image_classifier handler) are dropped into a repository watched in poll
mode, or pushed with ``gateway push model.mar``; they answer TorchServe's routes and the v2 API
(REST and gRPC) with what torch computes in this process. Archives that need code of their own (a
custom handler, an eager ``model.py``) or that hold unsafe members are refused with the reason, and
the code they carry never runs: the sentinel file it would write is never written.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from gateway.repository.config import ModelConfig
from gateway.repository.mar import ArchiveError, read_archive, served_version
from tests.conftest import GatewayProcess, run_push, served, snapshot, start_gateway
from tests.torch_models import DigitsCNN, DigitsMLP

ARCHIVER = Path(sys.executable).parent / "torch-model-archiver"
#: The TorchScript model's signature, as its archive's config.yaml gives it (output named by the config).
SIGNATURE_YAML = """max_batch_size: 16
inputs:
  - {name: input, datatype: FP32, dims: [64]}
outputs:
  - {name: logits, datatype: FP32, dims: [10]}
"""
#: Upload limit of the gateway: an archive unpacking past it is refused with 413.
UPLOAD_LIMIT = 4_000_000


class Archiver:
    """Runs ``torch-model-archiver`` (its scratch folder is TMPDIR/<model name>: one of our own)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.scratch = root / "archiver-scratch"
        self.scratch.mkdir(parents=True)

    def __call__(
        self,
        name: str,
        serialized: Path,
        handler: str,
        *extra: str,
        version: str = "1.0",
    ) -> Path:
        command = [str(ARCHIVER), "--model-name", name, "--version", version, "--serialized-file", str(serialized)]
        command += ["--handler", handler, "--export-path", str(self.root), "--force", *extra]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(self.scratch)}
        )
        assert done.returncode == 0, done.stderr
        return self.root / f"{name}.mar"


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {"mlp": DigitsMLP().eval(), "cnn": DigitsCNN().eval()}


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory, models: dict[str, torch.nn.Module]) -> dict[str, Path]:
    """Every archive of the module, made by torch-model-archiver from files written here."""
    root = tmp_path_factory.mktemp("archives")
    make = Archiver(root)
    files = root / "files"
    files.mkdir()
    example = torch.zeros(2, 64)
    torch.jit.save(torch.jit.script(models["mlp"]), files / "mlp.pt")
    torch.onnx.export(
        models["mlp"],
        (example,),
        str(files / "mlp.onnx"),
        dynamo=False,
        input_names=["input"],
        output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
    )
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(models["cnn"], (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, files / "cnn.pt2")
    (files / "config.yaml").write_text(SIGNATURE_YAML)
    sentinel = root / "SENTINEL"
    # Code that would leave a sentinel file if anything imported it.
    (files / "sentinel_handler.py").write_text(
        f"from pathlib import Path\nPath({str(sentinel)!r}).write_text('handler ran')\n\n"
        "def handle(data, context):\n    return data\n"
    )
    (files / "model.py").write_text(
        f"from pathlib import Path\nimport torch\nPath({str(sentinel)!r}).write_text('model.py ran')\n\n"
        "class Net(torch.nn.Linear):\n    def __init__(self):\n        super().__init__(64, 10)\n"
    )
    torch.save(torch.nn.Linear(64, 10).state_dict(), files / "weights.pth")
    (files / "requirements.txt").write_text("nothing-is-installed==1.0\n")
    built = {
        "mlp_ts": make(
            "mlp_ts",
            files / "mlp.pt",
            "base_handler",
            "--extra-files",
            f"{files / 'config.yaml'},{files / 'sentinel_handler.py'}",
            "--requirements-file",
            str(files / "requirements.txt"),
        ),
        "mlp_onnx": make("mlp_onnx", files / "mlp.onnx", ""),
        "cnn": make("cnn", files / "cnn.pt2", "image_classifier", version="2.5"),
        "mlp_nosig": make("mlp_nosig", files / "mlp.pt", "base_handler"),
        # with its signature: the handler alone is why it is refused
        "custom": make(
            "custom",
            files / "mlp.pt",
            str(files / "sentinel_handler.py"),
            "--extra-files",
            str(files / "config.yaml"),
        ),
        "eager": make("eager", files / "weights.pth", "base_handler", "--model-file", str(files / "model.py")),
    }
    built["traversal"] = _with_member(built["mlp_onnx"], root / "traversal.mar", "../escaped.txt", b"outside")
    built["bomb"] = _with_member(built["mlp_onnx"], root / "bomb.mar", "zeros.bin", bytes(2 * UPLOAD_LIMIT))
    return built


def _with_member(archive: Path, target: Path, name: str, data: bytes, mode: int | None = None) -> Path:
    """A copy of ``archive`` with one more member (any name: zipfile writes '..' as it is)."""
    shutil.copyfile(archive, target)
    with warnings.catch_warnings(), zipfile.ZipFile(target, "a", zipfile.ZIP_DEFLATED) as archive_file:
        warnings.simplefilter("ignore")  # zipfile warns of a name written twice, which one case wants
        info = zipfile.ZipInfo(name)
        info.compress_type = zipfile.ZIP_DEFLATED
        if mode is not None:
            info.external_attr = mode << 16
        archive_file.writestr(info, data)
    return target


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory, archives: dict[str, Path]) -> Path:
    """Archives dropped into version folders; the ONNX model's folder has a config.yaml of its own."""
    root = tmp_path_factory.mktemp("mar-repository")
    for name in ("mlp_ts", "mlp_onnx", "custom", "eager", "traversal"):
        (root / name / "1").mkdir(parents=True)
        shutil.copy(archives[name], root / name / "1")
    (root / "mlp_onnx" / "config.yaml").write_text(
        "instance_count: 2\ndynamic_batching: {max_queue_delay_microseconds: 2000}\n"
    )
    return root


@pytest.fixture(scope="module")
def mar_gateway(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    server = start_gateway(
        repository,
        tmp_path_factory.mktemp("mar-logs") / "gateway.log",
        "--model-control-mode",
        "poll",
        "--repository-poll-seconds",
        "0.2",
        "--max-upload-bytes",
        str(UPLOAD_LIMIT),
    )
    yield server
    server.stop()


def torch_logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def predictions(server: GatewayProcess, path: str, x: np.ndarray) -> np.ndarray:
    """TorchServe's route: a JSON list of rows in, a list of predictions out."""
    response = server.http.post(path, json=x.tolist())
    assert response.status_code == 200, response.text
    return np.asarray(response.json(), dtype=np.float32)


def index_entry(server: GatewayProcess, name: str) -> dict[str, str]:
    (entry,) = [entry for entry in server.http.post("/v2/repository/index", json={}).json() if entry["name"] == name]
    return dict(entry)


def wait_for(server: GatewayProcess, name: str, state: str, timeout: float = 60) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        entries = [e for e in server.http.post("/v2/repository/index", json={}).json() if e["name"] == name]
        if entries and entries[0]["state"] == state:
            return dict(entries[0])
        time.sleep(0.2)
    raise TimeoutError(f"{name} not {state}:\n{server.logs()}")


def test_dropped_archives_answer_torchserve_and_v2_routes_as_torch_does(mar_gateway, models, archives):
    x = np.random.default_rng(1).uniform(0, 16, size=(5, 64)).astype(np.float32)
    expected = torch_logits(models["mlp"], x)
    for name, output, platform in (
        ("mlp_ts", "logits", "pytorch_libtorch"),  # the output named by the archive's config.yaml
        ("mlp_onnx", "output", "onnxruntime_onnx"),
    ):
        np.testing.assert_allclose(predictions(mar_gateway, f"/predictions/{name}", x), expected, atol=1e-4)
        rest, grpc = served(mar_gateway, name, "1", {"input": x})
        np.testing.assert_allclose(rest[output], expected, atol=1e-4)
        np.testing.assert_allclose(grpc[output], expected, atol=1e-4)
        described = mar_gateway.http.get(f"/v2/models/{name}").json()
        assert described["platform"] == platform
        assert described["parameters"]["torchserve"]["archive"] == f"{name}.mar"
    archive = mar_gateway.http.get("/v2/models/mlp_ts").json()["parameters"]["torchserve"]
    assert archive == {
        "archive": "mlp_ts.mar",
        "model_name": "mlp_ts",
        "model_version": "1.0",
        "serialized_file": "mlp.pt",
        "handler": "base_handler",
        "runtime": "python",
    }
    # max_batch_size comes from the archive's config.yaml too
    config = mar_gateway.http.get("/v2/models/mlp_ts/config").json()
    assert config["max_batch_size"] == 16 and config["output"] == [
        {"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}
    ]
    # TorchServe's own version string addresses the version it names
    np.testing.assert_allclose(predictions(mar_gateway, "/predictions/mlp_ts/1.0", x[:1]), expected[:1], atol=1e-4)
    # nothing from the archive ran: its handler file was among the extra files, and requirements were not installed
    assert not (archives["mlp_ts"].parent / "SENTINEL").exists()


def test_archives_that_need_their_own_code_or_are_unsafe_are_refused(mar_gateway, archives, repository):
    reasons = {
        "custom": "needs its own handler code: handler 'sentinel_handler.py'",
        "eager": "holds an eager model: modelFile model.py",
        "traversal": "archive member '../escaped.txt' has '..' in its path; refused",
    }
    for name, reason in reasons.items():
        entry = index_entry(mar_gateway, name)
        assert entry["state"] == "UNAVAILABLE" and reason in entry["reason"], entry
        answer = mar_gateway.http.post(f"/predictions/{name}", json=[[0.0] * 64])
        assert answer.status_code == 503 and answer.json()["type"] == "ServiceUnavailableException"
    assert "gateway push model.pt2" in index_entry(mar_gateway, "eager")["reason"]  # what to do instead
    assert "--handler base_handler" in index_entry(mar_gateway, "custom")["reason"]
    # the code they carry never ran, and nothing was written outside a version folder
    assert not (archives["custom"].parent / "SENTINEL").exists()
    assert not (repository / "traversal" / "escaped.txt").exists() and not (repository / "escaped.txt").exists()
    assert mar_gateway.http.get("/ping").json() == {"status": "Healthy"}


def test_an_archive_dropped_while_polling_is_served_and_replaced(mar_gateway, repository, archives, models):
    folder = repository / "late" / "1"
    folder.mkdir(parents=True)
    shutil.copy(archives["mlp_onnx"], folder / "late.mar.part")
    os.rename(folder / "late.mar.part", folder / "late.mar")  # dropped whole, as a copy tool would rename it
    wait_for(mar_gateway, "late", "READY")
    x = np.random.default_rng(2).uniform(0, 16, size=(3, 64)).astype(np.float32)
    np.testing.assert_allclose(
        predictions(mar_gateway, "/predictions/late", x), torch_logits(models["mlp"], x), atol=1e-4
    )
    # a second version in poll mode: the TorchScript archive, which takes over as the latest
    (repository / "late" / "2").mkdir()
    shutil.copy(archives["mlp_ts"], repository / "late" / "2" / "late.mar")
    deadline = time.monotonic() + 60
    while mar_gateway.http.get("/v2/models/late").json().get("versions") != ["2"]:
        assert time.monotonic() < deadline, mar_gateway.logs()
        time.sleep(0.2)
    assert mar_gateway.http.get("/v2/models/late").json()["platform"] == "pytorch_libtorch"
    np.testing.assert_allclose(
        predictions(mar_gateway, "/predictions/late", x), torch_logits(models["mlp"], x), atol=1e-4
    )


def test_push_an_archive_as_it_is_and_refusals_change_nothing(mar_gateway, archives, repository, models, tmp_path):
    # no --name: the archive's own name; the version folder holds the archive as it was made
    pushed = run_push(str(archives["cnn"]), "--server", mar_gateway.http_url, "--token", "test-admin-token")
    assert pushed.returncode == 0, pushed.stderr
    assert "model cnn version 1 is ready" in pushed.stdout and "served by: torch backend" in pushed.stdout
    assert (repository / "cnn" / "1" / "cnn.mar").read_bytes() == archives["cnn"].read_bytes()
    x = np.random.default_rng(3).uniform(0, 16, size=(4, 64)).astype(np.float32)
    expected = torch_logits(models["cnn"], x)
    np.testing.assert_allclose(predictions(mar_gateway, "/predictions/cnn", x), expected, atol=1e-4)
    np.testing.assert_allclose(predictions(mar_gateway, "/predictions/cnn/2.5", x), expected, atol=1e-4)
    rest, grpc = served(mar_gateway, "cnn", "1", {"input": x})
    np.testing.assert_allclose(rest["output"], expected, atol=1e-4)
    np.testing.assert_allclose(grpc["output"], expected, atol=1e-4)

    before = snapshot(repository)
    server = ("--server", mar_gateway.http_url, "--token", "test-admin-token")
    refusals = {
        "custom": ("needs its own handler code", ()),
        "eager": ("holds an eager model", ()),
        "traversal": ("has '..' in its path", ()),
        "mlp_nosig": ("give --input-spec", ()),
        "bomb": ("unpacks to more than the upload limit", ("--name", "bomb")),
    }
    for name, (message, extra) in refusals.items():
        refused = run_push(str(archives[name]), *server, *extra)
        assert refused.returncode == 1 and message in refused.stderr, (name, refused.stderr)
    assert snapshot(repository) == before
    assert not (archives["custom"].parent / "SENTINEL").exists()

    # TorchScript without a signature: with --input-spec its model is converted to ONNX, parity checked
    converted = run_push(str(archives["mlp_nosig"]), *server, "--input-spec", "input:FP32:-1,64", "--json")
    assert converted.returncode == 0, converted.stderr
    assert '"backend": "onnxruntime"' in converted.stdout and '"within_tolerance": true' in converted.stdout
    np.testing.assert_allclose(
        predictions(mar_gateway, "/predictions/mlp_nosig", x), torch_logits(models["mlp"], x), atol=1e-4
    )


def test_torchserve_list_and_describe(mar_gateway):
    listed = mar_gateway.http.get("/models").json()["models"]
    assert {"modelName": "mlp_ts", "modelUrl": "mlp_ts.mar"} in listed
    assert all(model["modelName"] not in ("custom", "eager", "traversal") for model in listed)
    page = mar_gateway.http.get("/models", params={"limit": 1}).json()
    assert len(page["models"]) == 1 and page["nextPageToken"] == "1"
    following = mar_gateway.http.get("/models", params={"limit": 1, "next_page_token": 1}).json()
    assert following["models"][0] == listed[1]
    bad = mar_gateway.http.get("/models", params={"limit": "0"})
    assert bad.status_code == 400 and bad.json()["type"] == "BadRequestException"
    (described,) = mar_gateway.http.get("/models/mlp_onnx").json()
    assert described == {
        "modelName": "mlp_onnx",
        "modelVersion": "1.0",
        "modelUrl": "mlp_onnx.mar",
        "runtime": "python",
        "minWorkers": 2,  # the model folder's config.yaml applies to an archive's version
        "maxWorkers": 2,
        "batchSize": 64,
        "maxBatchDelay": 2,
        "workers": [{"id": "1", "status": "READY", "gpu": False}, {"id": "2", "status": "READY", "gpu": False}],
    }
    assert mar_gateway.http.get("/models/mlp_onnx/1.0").json() == [described]
    assert mar_gateway.http.get("/models/mlp_onnx/all").json() == [described]
    missing = mar_gateway.http.get("/models/nope")
    assert missing.status_code == 404 and missing.json()["type"] == "ModelNotFoundException"
    # '²' is a digit to str.isdigit but not to int(): a bad version, not a server error
    for path in ("/models/mlp_onnx/²", "/v2/models/mlp_onnx/versions/²"):
        assert mar_gateway.http.get(path).status_code == 400, path
    assert mar_gateway.http.post("/predictions/mlp_onnx/²", json=[[0.0] * 64]).status_code == 400


# ----------------------------------------------------------------------------- the archive reader alone


def test_unsafe_members_are_refused_before_anything_is_read(archives, tmp_path):
    base = archives["mlp_onnx"]
    cases = {
        "/etc/absolute": (None, "has an absolute path"),
        "..\\windows\\escape": (None, "has '..' in its path"),
        "link": (stat.S_IFLNK | 0o777, "is a link"),
        "fifo": (stat.S_IFIFO | 0o644, "is not a regular file or folder"),
        "MAR-INF/MANIFEST.json": (None, "appears twice"),
    }
    for index, (member, (mode, message)) in enumerate(cases.items()):
        crafted = _with_member(base, tmp_path / f"case{index}.mar", member, b"x", mode)
        with pytest.raises(ArchiveError, match=message):
            read_archive(crafted)
    (tmp_path / "plain.mar").write_bytes(b"not a zip")
    with pytest.raises(ArchiveError, match="not a TorchServe model archive"):
        read_archive(tmp_path / "plain.mar")


def test_a_torchscript_signature_comes_from_one_config(archives, tmp_path):
    version = tmp_path / "model" / "1"
    version.mkdir(parents=True)
    shutil.copy(archives["mlp_nosig"], version)
    with (
        pytest.raises(ArchiveError, match=r"neither a config\.yaml among its extra files nor the model folder's"),
        served_version(version, ModelConfig()),
    ):
        pass
    # the model folder's config.yaml lists the inputs and outputs: the archive needs none
    listed = ModelConfig.model_validate(
        {
            "inputs": [{"name": "input", "datatype": "FP32", "dims": [64]}],
            "outputs": [{"name": "y", "datatype": "FP32", "dims": [10]}],
        }
    )
    with served_version(version, listed) as served_files:
        assert served_files.config is listed and (served_files.path / "model.pt").is_file()
    extracted = served_files.path
    assert not extracted.exists()  # the temporary folder went with the block
    # an archive's config.yaml gives the signature only
    crafted = _with_member(
        archives["mlp_nosig"],
        tmp_path / "batching.mar",
        "config.yaml",
        (SIGNATURE_YAML + "instance_count: 3\n").encode(),
    )
    (version / "mlp_nosig.mar").unlink()
    shutil.copy(crafted, version)
    with (
        pytest.raises(ArchiveError, match=r"sets instance_count; an archive's config\.yaml gives the model's"),
        served_version(version, ModelConfig()),
    ):
        pass
    # two archives in one version folder: which to serve would be a guess
    shutil.copy(archives["mlp_onnx"], version)
    with pytest.raises(ArchiveError, match="holds several TorchServe archives"), served_version(version, ModelConfig()):
        pass
