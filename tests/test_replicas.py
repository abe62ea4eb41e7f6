"""Many replicas, one model repository: object storage (moto's S3 server on loopback) and a shared folder.

Three real ``gateway serve`` processes follow one repository in poll mode while REST and gRPC traffic
runs against each of them; clients push versions through different replicas at once. The S3 server
is moto's standalone server (what s3fs's own tests use), in this process so that its buckets outlive
a stop and a restart of the server (the outage test).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import re
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fsspec
import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from gateway.errors import AlreadyExistsError
from gateway.repository.store import RepositoryStore, StoreError
from gateway.settings import GatewaySettings, StoreSettings
from tests.conftest import ADMIN_TOKEN, GatewayProcess, free_port, run_push, start_gateway

moto_server = pytest.importorskip("moto.server", reason="moto[server] (dev extra) runs the S3 server of these tests")

POLL_SECONDS = 0.5
#: Seconds a committed version may take to be served by every replica: a poll, the download and the
#: load, with room for a loaded 2-core machine running three gateways, the S3 server and the clients.
CONVERGENCE_SECONDS = POLL_SECONDS + 15
ACCESS_KEY_ID = "AKIAREPLICATESTKEY01"
SECRET_ACCESS_KEY = "replica-test-secret-0123456789abcdefSECRET"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SAMPLE = np.array([[1.0, 2.0]], dtype=np.float32)


class S3Server:
    """moto's S3 server on a loopback port, in this process: it can be stopped and started again, keeping its buckets."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: Any = None
        self.start()

    def start(self) -> None:
        self._server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def create_bucket(self, name: str) -> None:
        httpx.put(f"{self.endpoint}/{name}").raise_for_status()

    def set_authentication(self, enabled: bool) -> None:
        """Have the server check credentials (it knows none, so every request is refused), or stop checking."""
        httpx.post(f"{self.endpoint}/moto-api/reset-auth", content=b"0" if enabled else b"inf").raise_for_status()

    def environment(self, gateway_variables: bool = False) -> dict[str, str]:
        """The variables that reach this server: AWS's own, or the gateway's settings."""
        if gateway_variables:
            return {
                "GATEWAY_S3_ENDPOINT_URL": self.endpoint,
                "GATEWAY_S3_ACCESS_KEY_ID": ACCESS_KEY_ID,
                "GATEWAY_S3_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
                "GATEWAY_S3_REGION": "us-east-1",
            }
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": "us-east-1",
        }


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3Server]:
    server = S3Server()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class SharedRepository:
    """A repository every replica follows: its URI, and the environment that reaches it."""

    uri: str
    env: dict[str, str] = field(default_factory=dict)

    def store(self) -> RepositoryStore:
        settings = StoreSettings(
            s3_endpoint_url=self.env.get("AWS_ENDPOINT_URL", self.env.get("GATEWAY_S3_ENDPOINT_URL")),
            s3_access_key_id=ACCESS_KEY_ID,
            s3_secret_access_key=SECRET_ACCESS_KEY,
            s3_region="us-east-1",
        )
        return RepositoryStore(self.uri, settings)

    def filesystem(self) -> tuple[Any, str]:
        """The repository read with fsspec alone (not the gateway's code): the tests' own view of the store."""
        endpoint = self.env.get("AWS_ENDPOINT_URL", self.env.get("GATEWAY_S3_ENDPOINT_URL"))
        options = {"endpoint_url": endpoint} if self.uri.startswith("s3://") else {}
        fs, root = fsspec.core.url_to_fs(self.uri, skip_instance_cache=True, **options)
        return fs, root.rstrip("/")


@pytest.fixture(params=["s3", "shared-folder"])
def shared_repository(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> SharedRepository:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    if request.param == "shared-folder":
        return SharedRepository(f"file://{tmp_path / 'shared'}")
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = f"models-{free_port()}"
    server.create_bucket(bucket)
    return SharedRepository(f"s3://{bucket}/prod", server.environment())


def write_offset_model(path: Path, offset: float) -> None:
    """An ONNX model ``output = input + offset``, FP32 [batch, 2]: the offset tells which push is served."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "offset"], ["output"])],
        "offset",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.array([offset], dtype=np.float32), "offset")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)


def offset_package(work: Path, offset: float) -> tuple[bytes, str]:
    """A model package (tar.gz of one version folder) of the offset model, and its model.onnx's SHA-256."""
    model = work / f"offset-{offset}" / "model.onnx"
    write_offset_model(model, offset)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(model, arcname="model.onnx")
    return buffer.getvalue(), hashlib.sha256(model.read_bytes()).hexdigest()


def push(replica: GatewayProcess, package: bytes, version: int | None = None) -> httpx.Response:
    url = "/v2/repository/models/m/versions" + (f"/{version}" if version is not None else "")
    send = replica.http.put if version is not None else replica.http.post
    return send(url, content=package, headers=AUTH, timeout=60)


def served_offset(replica: GatewayProcess, version: str | None = None) -> float | None:
    """The offset of the version serving ``m`` on ``replica`` (REST), or None when none answers."""
    url = "/v2/models/m/infer" if version is None else f"/v2/models/m/versions/{version}/infer"
    body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": SAMPLE.ravel().tolist()}]}
    response = replica.http.post(url, json=body)
    if response.status_code != 200:
        return None
    return float(response.json()["outputs"][0]["data"][0]) - float(SAMPLE[0, 0])


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``condition`` held; fails the test after ``timeout`` seconds."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{what}: not after {timeout} s")
        time.sleep(0.05)
    return time.monotonic() - started


def metric(replica: GatewayProcess, name: str, labels: str = "") -> float | None:
    pattern = re.compile(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", re.MULTILINE)
    found = pattern.search(replica.http.get("/metrics").text)
    return float(found.group(1)) if found else None


class Traffic:
    """Steady inference against each replica, REST and gRPC (tritonclient), one thread each; every failure kept."""

    def __init__(self, replicas: list[GatewayProcess]) -> None:
        self.failures: list[str] = []
        self.answered = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=target, args=(replica,), daemon=True)
            for replica in replicas
            for target in (self._rest, self._grpc)
        ]
        for thread in self._threads:
            thread.start()

    def _count(self, failure: str | None) -> None:
        with self._lock:
            if failure is None:
                self.answered += 1
            else:
                self.failures.append(failure)

    def _rest(self, replica: GatewayProcess) -> None:
        body = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2], "data": SAMPLE.ravel().tolist()}]}
        with httpx.Client(base_url=replica.http_url, timeout=30) as client:
            while not self._stop.is_set():
                try:
                    response = client.post("/v2/models/m/infer", json=body)
                    self._count(None if response.status_code == 200 else f"REST {response.status_code} {response.text}")
                except httpx.HTTPError as error:
                    self._count(f"REST {error!r}")
                time.sleep(0.01)

    def _grpc(self, replica: GatewayProcess) -> None:
        import tritonclient.grpc as triton_grpc

        client = triton_grpc.InferenceServerClient(url=replica.grpc_address)
        try:
            while not self._stop.is_set():
                tensor = triton_grpc.InferInput("input", [1, 2], "FP32")
                tensor.set_data_from_numpy(SAMPLE)
                try:
                    client.infer("m", [tensor])
                    self._count(None)
                except Exception as error:
                    self._count(f"gRPC {error}")
                time.sleep(0.01)
        finally:
            client.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


@pytest.fixture
def start_replicas(tmp_path: Path) -> Iterator[Callable[[SharedRepository, int], list[GatewayProcess]]]:
    started: list[GatewayProcess] = []

    def start(repository: SharedRepository, count: int = 3) -> list[GatewayProcess]:
        for index in range(count):
            started.append(
                start_gateway(
                    repository.uri,
                    tmp_path / f"replica-{index}.log",
                    "--repository-cache-dir",
                    str(tmp_path / f"cache-{index}"),
                    "--model-control-mode",
                    "poll",
                    "--repository-poll-seconds",
                    str(POLL_SECONDS),
                    env=repository.env,
                )
            )
        return started[-count:]

    yield start
    for replica in started:
        replica.stop()
        assert SECRET_ACCESS_KEY not in replica.logs()


def test_three_replicas_follow_concurrent_pushes_under_traffic(
    shared_repository: SharedRepository, start_replicas: Callable[..., list[GatewayProcess]], tmp_path: Path
) -> None:
    replicas = start_replicas(shared_repository)
    first, first_digest = offset_package(tmp_path, 1000.0)
    assert push(replicas[0], first).json()["version"] == "1"
    wait_until(lambda: all(served_offset(r) == 1000.0 for r in replicas), CONVERGENCE_SECONDS, "version 1 everywhere")

    traffic = Traffic(replicas)
    # Three clients push ten versions at once, each through its own replica.
    packages = {offset: offset_package(tmp_path, offset) for offset in range(1, 11)}
    plan = {0: [1, 2, 3, 4], 1: [5, 6, 7], 2: [8, 9, 10]}

    def client(index: int) -> list[tuple[int, float]]:
        pushed = []
        for offset in plan[index]:
            response = push(replicas[index], packages[offset][0])
            assert response.status_code == 201, response.text
            pushed.append((int(response.json()["version"]), float(offset)))
        return pushed

    with ThreadPoolExecutor(3) as pool:
        pushed = [entry for result in pool.map(client, plan) for entry in result]
    last_answer = time.monotonic()
    numbers = sorted(number for number, _ in pushed)
    assert numbers == list(range(2, 12)), numbers  # ten distinct versions, none lost, none twice

    # The store holds exactly those eleven manifests, each naming the files its push sent.
    fs, root = shared_repository.filesystem()
    manifests = {
        int(Path(name).stem): json.loads(fs.cat_file(name)) for name in fs.ls(f"{root}/m/versions", detail=False)
    }
    assert sorted(manifests) == list(range(1, 12))
    assert manifests[1]["files"]["model.onnx"]["sha256"] == first_digest
    for number, offset in pushed:
        assert manifests[number]["files"]["model.onnx"]["sha256"] == packages[int(offset)][1]

    newest, newest_offset = max(pushed)
    wait_until(
        lambda: all(served_offset(r) == newest_offset for r in replicas), CONVERGENCE_SECONDS, "the newest everywhere"
    )
    converged = time.monotonic() - last_answer
    assert converged < CONVERGENCE_SECONDS
    for replica in replicas:
        assert metric(replica, "gateway_model_ready", f'{{backend="onnxruntime",model="m",version="{newest}"}}') == 1
        # Only what the version policy (latest 1) selected was downloaded, each version once at most.
        downloaded = metric(replica, "gateway_repository_downloaded_bytes_total")
        assert downloaded is not None and downloaded <= 11 * len(first)
        assert metric(replica, "gateway_repository_stale") == 0

    # Two clients ask for the same version number through two replicas: one gets it, the other 409.
    wanted = newest + 1
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda i: push(replicas[i], packages[i + 1][0], version=wanted).status_code, [1, 2]))
    assert sorted(answers) == [201, 409], answers
    winner_offset = float(answers.index(201) + 2)  # replica 1 pushed offset 2, replica 2 offset 3
    wait_until(
        lambda: all(served_offset(r) == winner_offset for r in replicas), CONVERGENCE_SECONDS, "the winner everywhere"
    )
    time.sleep(4 * POLL_SECONDS)  # the version before it leaves every cache (the policy serves the latest only)

    # A version deleted through one replica disappears from all: the one before it serves again.
    response = replicas[2].http.delete(f"/v2/repository/models/m/versions/{wanted}", headers=AUTH)
    assert response.status_code == 200, response.text
    assert served_offset(replicas[2]) == newest_offset  # the deleting replica: the previous version at once
    wait_until(
        lambda: all(served_offset(r) == newest_offset for r in replicas), CONVERGENCE_SECONDS, "the delete everywhere"
    )
    traffic.stop()
    assert traffic.failures == []
    assert traffic.answered > 100


def test_store_outage_under_traffic(
    s3_server: S3Server, start_replicas: Callable[..., list[GatewayProcess]], tmp_path: Path
) -> None:
    bucket = f"outage-{free_port()}"
    s3_server.create_bucket(bucket)
    repository = SharedRepository(f"s3://{bucket}/prod", s3_server.environment(gateway_variables=True))
    replicas = start_replicas(repository)
    first, _ = offset_package(tmp_path, 1.0)
    assert push(replicas[0], first).status_code == 201
    wait_until(lambda: all(served_offset(r) == 1.0 for r in replicas), CONVERGENCE_SECONDS, "version 1 everywhere")
    traffic = Traffic(replicas)
    second, _ = offset_package(tmp_path, 2.0)

    s3_server.stop()
    stopped = time.monotonic()
    try:
        wait_until(
            lambda: all(metric(r, "gateway_repository_stale") == 1 for r in replicas), 20, "every replica says stale"
        )
        last_sync = [metric(r, "gateway_repository_last_sync_timestamp_seconds") or 0.0 for r in replicas]
        refused = push(replicas[1], second)
        assert refused.status_code == 503, refused.text
        assert repository.uri in refused.json()["error"]
        time.sleep(max(0.0, 30 - (time.monotonic() - stopped)))
        assert all(served_offset(r) == 1.0 for r in replicas)  # each replica serves what it has
        assert [metric(r, "gateway_repository_last_sync_timestamp_seconds") for r in replicas] == last_sync
    finally:
        s3_server.start()
    wait_until(lambda: all(metric(r, "gateway_repository_stale") == 0 for r in replicas), 20, "the store is back")
    assert all((metric(r, "gateway_repository_last_sync_timestamp_seconds") or 0) > time.time() - 20 for r in replicas)
    assert push(replicas[2], second).json()["version"] == "2"
    wait_until(lambda: all(served_offset(r) == 2.0 for r in replicas), CONVERGENCE_SECONDS, "version 2 everywhere")
    traffic.stop()
    assert traffic.failures == []
    for replica in replicas:
        logs = replica.logs()
        assert f"cannot poll the model repository {repository.uri}" in logs
        assert f"the model repository {repository.uri} can be polled again" in logs


def test_store_unreachable_or_credentials_refused_at_start(s3_server: S3Server, tmp_path: Path) -> None:
    bucket = f"start-{free_port()}"
    s3_server.create_bucket(bucket)
    uri = f"s3://{bucket}/prod"
    environment = s3_server.environment()

    # Nothing listens: the server does not start, and says which repository it could not reach.
    closed = {**environment, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"}
    gateway = GatewayProcess(
        uri, tmp_path / "unreachable.log", "--repository-cache-dir", str(tmp_path / "c"), env=closed
    )
    try:
        assert gateway.process.wait(timeout=120) == 1
        assert f"error: cannot open the model repository {uri}" in gateway.logs()
    finally:
        gateway.stop()

    s3_server.set_authentication(True)
    try:
        gateway = GatewayProcess(  # the keys as the gateway's settings, handed to s3fs; every log line kept
            uri,
            tmp_path / "refused.log",
            "--repository-cache-dir",
            str(tmp_path / "c"),
            "--log-level",
            "debug",
            env=s3_server.environment(gateway_variables=True),
        )
        try:
            assert gateway.process.wait(timeout=120) == 1
            logs = gateway.logs()
        finally:
            gateway.stop()
        assert f"error: cannot open the model repository {uri}: access denied, check the credentials" in logs
        assert SECRET_ACCESS_KEY not in logs

        model = tmp_path / "model.onnx"
        write_offset_model(model, 1.0)
        pushed = run_push(str(model), "--name", "m", "--repository", uri, env=environment)
        assert pushed.returncode != 0
        assert f"cannot open the model repository {uri}: access denied" in pushed.stderr
        assert SECRET_ACCESS_KEY not in pushed.stdout + pushed.stderr
    finally:
        s3_server.set_authentication(False)


def test_push_straight_to_the_store_is_served_by_replicas(
    s3_server: S3Server, start_replicas: Callable[..., list[GatewayProcess]], tmp_path: Path
) -> None:
    bucket = f"push-{free_port()}"
    s3_server.create_bucket(bucket)
    repository = SharedRepository(f"s3://{bucket}/prod", s3_server.environment())
    replicas = start_replicas(repository, 2)
    model = tmp_path / "model.onnx"
    write_offset_model(model, 7.0)
    pushed = run_push(str(model), "--name", "m", "--repository", repository.uri, env=repository.env)
    assert pushed.returncode == 0, pushed.stderr
    wait_until(lambda: all(served_offset(r) == 7.0 for r in replicas), CONVERGENCE_SECONDS, "the push everywhere")
    again = run_push(str(model), "--name", "m", "--version", "1", "--repository", repository.uri, env=repository.env)
    assert again.returncode != 0
    assert "version 1 exists already" in again.stderr


def test_concurrent_commits_never_share_a_number(shared_repository: SharedRepository, tmp_path: Path) -> None:
    """The store's conditional write: eight commits of "the next version" at once get eight numbers."""
    store = shared_repository.store()
    store.check()
    folders = []
    for index in range(8):
        folder = tmp_path / f"v{index}"
        write_offset_model(folder / "model.onnx", float(index))
        folders.append(folder)
    start = threading.Barrier(len(folders))

    def commit(folder: Path) -> int:
        start.wait()
        return store.commit_version("m", None, folder)[0]

    with ThreadPoolExecutor(len(folders)) as pool:
        numbers = list(pool.map(commit, folders))
    assert sorted(numbers) == list(range(1, 9)), numbers
    with pytest.raises(AlreadyExistsError):
        store.commit_version("m", 3, folders[0])


def test_a_push_that_died_leaves_no_version(shared_repository: SharedRepository, tmp_path: Path) -> None:
    """Files without a manifest are no version; a later push removes them once they are old enough."""
    store = shared_repository.store()
    store.check()
    fs, root = shared_repository.filesystem()
    old_upload = f"{int(time.time()) - 7200}-{'a' * 32}"
    recent_upload = f"{int(time.time())}-{'b' * 32}"
    for upload in (old_upload, recent_upload):
        fs.makedirs(f"{root}/m/uploads/{upload}", exist_ok=True)
        fs.pipe_file(f"{root}/m/uploads/{upload}/model.onnx", b"half a model")
    assert store.version_tags("m") == {}

    folder = tmp_path / "v"
    write_offset_model(folder / "model.onnx", 1.0)
    assert store.commit_version("m", None, folder)[0] == 1
    uploads = {Path(name).name for name in fs.ls(f"{root}/m/uploads", detail=False)}
    assert old_upload not in uploads
    assert recent_upload in uploads
    assert len(uploads) == 2  # the recent leftover and the committed version's files


def test_a_file_that_does_not_match_its_manifest_is_refused(
    shared_repository: SharedRepository, tmp_path: Path
) -> None:
    store = shared_repository.store()
    store.check()
    folder = tmp_path / "v"
    write_offset_model(folder / "model.onnx", 1.0)
    number, _ = store.commit_version("m", None, folder)
    store.download_version("m", number, tmp_path / "good")
    assert (tmp_path / "good" / "model.onnx").read_bytes() == (folder / "model.onnx").read_bytes()
    fs, root = shared_repository.filesystem()
    upload = json.loads(fs.cat_file(f"{root}/m/versions/{number}.json"))["upload"]
    fs.pipe_file(f"{root}/m/uploads/{upload}/model.onnx", b"x" * (folder / "model.onnx").stat().st_size)
    with pytest.raises(StoreError, match="does not match the digest"):
        store.download_version("m", number, tmp_path / "bad")


def test_a_replica_refuses_a_damaged_version_once_and_keeps_serving(
    shared_repository: SharedRepository,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The follower in this process: a version whose file does not match its digest is not served, not retried."""
    from gateway.metrics import Metrics
    from gateway.repository.model_repository import ModelRepository
    from gateway.repository.store import RepositoryFollower

    store = shared_repository.store()
    store.check()
    for offset in (1.0, 2.0):
        write_offset_model(tmp_path / f"v{offset}" / "model.onnx", offset)
    store.commit_version("m", None, tmp_path / "v1.0")
    metrics = Metrics()
    repository = ModelRepository(tmp_path / "cache", default_max_batch_size=8, metrics=metrics)
    follower = RepositoryFollower(store, repository, metrics)
    follower.prepare_cache()

    def no_file_read(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"a poll with nothing new read a file: {args}")

    async def follow() -> None:
        assert await follower.sync()
        assert repository.ready_versions("m") == [1]
        # Polls that find nothing new list the store and read no file (manifest or model).
        with monkeypatch.context() as patch:
            patch.setattr(store.fs, "cat_file", no_file_read)
            patch.setattr(store.fs, "get_file", no_file_read)
            for _ in range(2):
                assert await follower.sync()
        number, _ = store.commit_version("m", None, tmp_path / "v2.0")
        fs, root = shared_repository.filesystem()
        upload = json.loads(fs.cat_file(f"{root}/m/versions/{number}.json"))["upload"]
        fs.pipe_file(f"{root}/m/uploads/{upload}/model.onnx", b"damaged")
        for _ in range(3):
            assert await follower.sync()
        assert repository.ready_versions("m") == [1]

    with caplog.at_level(logging.ERROR, logger="gateway.repository.store"):
        asyncio.run(follow())
    refusals = [record for record in caplog.records if "does not match the digest" in record.getMessage()]
    assert len(refusals) == 1
    assert not (tmp_path / "cache" / "m" / "2").exists()
    model_size = (tmp_path / "v1.0" / "model.onnx").stat().st_size
    # Only what went into the cache counts: the first version, once.
    assert metrics.registry.get_sample_value("gateway_repository_downloaded_bytes_total") == model_size

    # A restart over the same cache downloads nothing: the cached version is unchanged in the store.
    restarted_metrics = Metrics()
    restarted = ModelRepository(tmp_path / "cache", default_max_batch_size=8, metrics=restarted_metrics)
    again = RepositoryFollower(store, restarted, restarted_metrics)
    again.prepare_cache()

    async def restart() -> None:
        assert await again.sync()
        assert restarted.ready_versions("m") == [1]

    asyncio.run(restart())
    assert restarted_metrics.registry.get_sample_value("gateway_repository_downloaded_bytes_total") == 0


def test_settings_of_a_shared_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    local = GatewaySettings(model_repository=tmp_path / "models")
    assert (local.store_uri, local.repository_folder) == (None, tmp_path / "models")
    shared = GatewaySettings(model_repository="s3://bucket/prod")
    assert shared.store_uri == "s3://bucket/prod"
    assert shared.repository_folder == tmp_path / "model-gateway" / "s3_bucket_prod"
    cached = GatewaySettings(model_repository="file:///mnt/models", repository_cache_dir=tmp_path / "cache")
    assert cached.repository_folder == tmp_path / "cache"
    with pytest.raises(ValueError, match="one worker per replica"):
        GatewaySettings(model_repository="s3://bucket/prod", workers=2, http_port=8000, grpc_port=8001)
    with pytest.raises(StoreError, match="give both"):
        RepositoryStore("s3://bucket/prod", StoreSettings(s3_access_key_id=ACCESS_KEY_ID))


@pytest.mark.parametrize(
    ("held_write", "uploads_left"),
    [("/versions/", 2), ("/uploads/", 1)],
    ids=["killed-writing-its-manifest", "killed-writing-its-files"],
)
def test_a_replica_killed_mid_push_leaves_no_version(
    held_write: str,
    uploads_left: int,
    s3_server: S3Server,
    start_replicas: Callable[..., list[GatewayProcess]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SIGKILL a replica while it writes its push to the bucket: its files, or its manifest (the files are there)."""
    from moto.s3.models import S3Backend

    for variable, value in s3_server.environment().items():
        monkeypatch.setenv(variable, value)
    bucket = f"killed-{free_port()}"
    s3_server.create_bucket(bucket)
    repository = SharedRepository(f"s3://{bucket}/prod", s3_server.environment())
    pusher, observer = start_replicas(repository, 2)
    first, _ = offset_package(tmp_path, 1.0)
    assert push(observer, first).status_code == 201
    wait_until(lambda: served_offset(pusher) == served_offset(observer) == 1.0, CONVERGENCE_SECONDS, "version 1")

    # The S3 server holds the next write of a manifest (or of a file) until the pushing replica is dead, then fails it.
    armed, reached, released = threading.Event(), threading.Event(), threading.Event()
    put_object = S3Backend.put_object

    def held_put_object(backend: Any, bucket_name: str, key_name: str, *args: Any, **kwargs: Any) -> Any:
        if bucket_name == bucket and held_write in key_name and armed.is_set() and not released.is_set():
            reached.set()
            released.wait(60)
            raise RuntimeError("the replica that wrote this manifest was killed")
        return put_object(backend, bucket_name, key_name, *args, **kwargs)

    monkeypatch.setattr(S3Backend, "put_object", held_put_object)
    traffic = Traffic([observer])
    second, _ = offset_package(tmp_path, 2.0)
    armed.set()

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the replica dies meanwhile
            push(pusher, second)

    sender = threading.Thread(target=send)
    sender.start()
    try:
        assert reached.wait(60), f"the push never wrote under {held_write}"
        pusher.process.kill()  # SIGKILL, by the PID of the process this test started
        pusher.process.wait(timeout=30)
    finally:
        released.set()
    sender.join(timeout=60)

    fs, root = repository.filesystem()
    assert [Path(name).name for name in fs.ls(f"{root}/m/versions", detail=False)] == ["1.json"]
    assert len(fs.ls(f"{root}/m/uploads", detail=False)) == uploads_left  # version 1's, and the dead push's files
    time.sleep(4 * POLL_SECONDS)
    assert served_offset(observer) == 1.0
    assert [entry["version"] for entry in observer.http.post("/v2/repository/index").json()] == ["1"]

    # The number the dead push never committed is free; a restarted replica serves the new version.
    assert push(observer, second).json()["version"] == "2"
    restarted = start_gateway(
        repository.uri,
        tmp_path / "restarted.log",
        "--repository-cache-dir",
        str(tmp_path / "cache-0"),
        "--model-control-mode",
        "poll",
        "--repository-poll-seconds",
        str(POLL_SECONDS),
        env=repository.env,
    )
    try:
        wait_until(lambda: served_offset(restarted) == 2.0, CONVERGENCE_SECONDS, "the restarted replica")
    finally:
        restarted.stop()
    traffic.stop()
    assert traffic.failures == []


def test_a_traffic_policy_set_through_one_replica_is_followed_by_all(
    shared_repository: SharedRepository, start_replicas: Callable[..., list[GatewayProcess]], tmp_path: Path
) -> None:
    fs, root = shared_repository.filesystem()
    fs.makedirs(f"{root}/m", exist_ok=True)
    fs.pipe_file(f"{root}/m/config.yaml", b"version_policy: {all: {}}\n")
    replicas = start_replicas(shared_repository, 2)
    for offset in (1.0, 2.0):
        package, _ = offset_package(tmp_path, offset)
        response = push(replicas[0], package)
        assert response.status_code == 201, response.text

    def both_versions_everywhere() -> bool:
        return all(served_offset(r, "1") == 1.0 and served_offset(r, "2") == 2.0 for r in replicas)

    wait_until(both_versions_everywhere, CONVERGENCE_SECONDS, "both versions on both replicas")
    assert [served_offset(r) for r in replicas] == [2.0, 2.0]  # no policy yet: the highest version
    policy = {"version_labels": {"stable": 1, "canary": 2}, "routing": {"weights": {"stable": 1, "canary": 0}}}
    answer = replicas[1].http.put("/v2/repository/models/m/traffic", json=policy, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert served_offset(replicas[1]) == 1.0  # in force where it was set before the answer
    wait_until(lambda: served_offset(replicas[0]) == 1.0, CONVERGENCE_SECONDS, "the policy on the other replica")
    assert fs.cat_file(f"{root}/m/traffic.json")  # in the store: a new replica starts with it
    assert served_offset(start_replicas(shared_repository, 1)[0]) == 1.0
    promoted = replicas[0].http.post("/v2/repository/models/m/promote", json={}, headers=AUTH)
    assert promoted.status_code == 200, promoted.text
    wait_until(lambda: served_offset(replicas[1]) == 2.0, CONVERGENCE_SECONDS, "the promote on the other replica")
