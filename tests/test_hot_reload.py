"""Hot reload and unload under traffic, against real gateway processes.

Version ``n`` of the model answers ``y = x * SCALES[n]``, so every answer says which version gave it
and whether it is right. Traffic runs over REST and gRPC from several threads, each call with a
client timeout, while versions come and go: a new version takes over without a request dropped, a
version that fails to load leaves the old one serving, and an unloaded model finishes what it
holds, then answers 404 / NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import io
import shutil
import tarfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.conftest import ADMIN_HEADERS, GatewayProcess, start_gateway
from tests.test_overload import CLIENT_TIMEOUT, grpc_inputs, inflight, rest_body, wait_until, write_scaled_model

#: What each version multiplies its input by.
SCALES = {1: 1.0, 2: 2.0, 3: 3.0}


@dataclass(frozen=True)
class Answer:
    """One call: its protocol, status (HTTP code or gRPC status name), the version that answered, x and y."""

    protocol: str
    status: str
    version: int | None = None
    x: float = 0.0
    y: float | None = None


def infer_rest(client: httpx.Client, model: str, x: float) -> Answer:
    response = client.post(f"/v2/models/{model}/infer", json=rest_body(x), timeout=CLIENT_TIMEOUT)
    if response.status_code != 200:
        return Answer("rest", str(response.status_code), x=x)
    body = response.json()
    return Answer("rest", "200", int(body["model_version"]), x, body["outputs"][0]["data"][0])


def infer_grpc(client: triton_grpc.InferenceServerClient, model: str, x: float) -> Answer:
    try:
        result = client.infer(model, grpc_inputs(x), client_timeout=CLIENT_TIMEOUT)
    except InferenceServerException as error:
        return Answer("grpc", str(error.status()), x=x)
    version = int(result.get_response().model_version)
    return Answer("grpc", "200", version, x, float(result.as_numpy("y")[0, 0]))


class Traffic:
    """Requests to ``model`` without a pause from REST and gRPC threads, until :meth:`stop`."""

    def __init__(self, gateway: GatewayProcess, model: str, rest_threads: int = 3, grpc_threads: int = 2) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.answers: list[Answer] = []
        self._threads = [
            threading.Thread(target=self._rest, args=(gateway, model, number)) for number in range(rest_threads)
        ] + [threading.Thread(target=self._grpc, args=(gateway, model, number)) for number in range(grpc_threads)]
        for thread in self._threads:
            thread.start()

    def _record(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)

    def _rest(self, gateway: GatewayProcess, model: str, number: int) -> None:
        with httpx.Client(base_url=gateway.http_url) as client:
            calls = 0
            while not self._stop.is_set():
                calls += 1
                self._record(infer_rest(client, model, float(number * 10_000 + calls)))

    def _grpc(self, gateway: GatewayProcess, model: str, number: int) -> None:
        client = triton_grpc.InferenceServerClient(gateway.grpc_address)
        try:
            calls = 0
            while not self._stop.is_set():
                calls += 1
                self._record(infer_grpc(client, model, -float(number * 10_000 + calls)))
        finally:
            client.close()

    def count(self, version: int) -> int:
        """Answers from ``version`` so far."""
        with self._lock:
            return sum(1 for answer in self.answers if answer.version == version)

    def stop(self) -> list[Answer]:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2 * CLIENT_TIMEOUT)
            assert not thread.is_alive(), "a call hung"
        return self.answers


def assert_correct(answers: list[Answer]) -> None:
    """Every answer is a 200 with the answer of the version that gave it."""
    failed = [answer for answer in answers if answer.status != "200"]
    assert not failed, f"{len(failed)} of {len(answers)} requests failed, e.g. {failed[:3]}"
    for answer in answers:
        assert answer.version is not None and answer.y == answer.x * SCALES[answer.version], answer


def package(model_file: Path) -> bytes:
    """A model package (gzip tar of one version folder's files) holding ``model_file`` as model.onnx."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        archive.add(model_file, arcname="model.onnx")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Per version, a model file ``y = x * SCALES[version]`` taking 13 ms (idle 2-core VM) to 50 ms (busy) a run."""
    root = tmp_path_factory.mktemp("scaled-models")
    files = {version: root / str(version) / "model.onnx" for version in SCALES}
    for version, path in files.items():
        write_scaled_model(path, SCALES[version], layers=10)
    return files


def served_versions(gateway: GatewayProcess, model: str) -> list[str]:
    versions: list[str] = gateway.http.get(f"/v2/models/{model}").json().get("versions", [])
    return versions


@pytest.fixture
def repository(tmp_path: Path, models: dict[int, Path]) -> Path:
    """A repository serving version 1 of ``scaled``, one instance."""
    root = tmp_path / "repository"
    (root / "scaled" / "1").mkdir(parents=True)
    shutil.copy(models[1], root / "scaled" / "1" / "model.onnx")
    return root


@pytest.fixture
def poll_gateway(repository: Path, tmp_path: Path) -> Iterator[GatewayProcess]:
    gateway = start_gateway(
        repository, tmp_path / "gateway.log", "--model-control-mode", "poll", "--repository-poll-seconds", "0.2"
    )
    yield gateway
    gateway.stop()


def test_a_new_version_takes_over_under_traffic_and_no_request_is_dropped(
    poll_gateway: GatewayProcess, models: dict[int, Path]
):
    gateway = poll_gateway
    traffic = Traffic(gateway, "scaled")
    try:
        wait_until(lambda: traffic.count(1) >= 20, what="traffic on version 1")
        response = gateway.http.put(
            "/v2/repository/models/scaled/versions/2", content=package(models[2]), headers=ADMIN_HEADERS
        )
        assert response.status_code == 201 and response.json()["ready"] is True, response.text
        wait_until(lambda: traffic.count(2) >= 20, what="traffic on version 2")
    finally:
        answers = traffic.stop()
    assert_correct(answers)
    assert served_versions(gateway, "scaled") == ["2"]
    # Version 1 finished what it held, then was released.
    wait_until(lambda: "model scaled version 1 released" in gateway.logs(), what="version 1 to be released")
    assert "Traceback" not in gateway.logs()


def test_a_version_that_fails_to_load_leaves_the_old_one_serving_until_the_model_goes(
    poll_gateway: GatewayProcess, repository: Path, models: dict[int, Path]
):
    gateway = poll_gateway
    traffic = Traffic(gateway, "scaled")
    try:
        wait_until(lambda: traffic.count(1) >= 10, what="traffic on version 1")
        # A broken version 2 appears on disk (moved in whole): the policy (latest 1) would retire 1 for it.
        staging = repository / ".broken"
        staging.mkdir()
        (staging / "model.onnx").write_bytes(b"not an onnx model")
        staging.rename(repository / "scaled" / "2")
        index = lambda: {(e["name"], e["version"]): e for e in gateway.http.post("/v2/repository/index").json()}  # noqa: E731
        wait_until(lambda: index().get(("scaled", "2"), {}).get("state") == "UNAVAILABLE", what="the failed load")
        assert index()[("scaled", "1")]["state"] == "READY"
        # A broken upload is refused before it reaches the repository.
        response = gateway.http.put(
            "/v2/repository/models/scaled/versions/3",
            content=package(repository / "scaled" / "2" / "model.onnx"),
            headers=ADMIN_HEADERS,
        )
        assert response.status_code == 400, response.text
        served = traffic.count(1)
        wait_until(lambda: traffic.count(1) >= served + 10, what="more traffic on version 1")
    finally:
        answers = traffic.stop()
    assert_correct(answers)
    assert {answer.version for answer in answers} == {1}

    # The model folder goes (poll mode unloads it): requests in flight finish, the next get 404 / NOT_FOUND.
    traffic = Traffic(gateway, "scaled")
    try:
        wait_until(lambda: traffic.count(1) >= 10, what="traffic on version 1")
        (repository / "scaled").rename(repository.parent / "removed-scaled")  # gone in one step
        wait_until(lambda: len([a for a in traffic.answers if a.status != "200"]) >= 10, what="the model to go")
    finally:
        answers = traffic.stop()
    assert_ends_with_not_found(answers)
    wait_until(lambda: "model scaled version 1 released" in gateway.logs(), what="version 1 to be released")


def assert_ends_with_not_found(answers: list[Answer]) -> None:
    """Per protocol, correct 200s, then only 404 / NOT_FOUND (each thread sees the model go once)."""
    assert_correct([answer for answer in answers if answer.status == "200"])
    statuses = {answer.status for answer in answers}
    assert statuses <= {"200", "404", "StatusCode.NOT_FOUND"}, statuses
    assert "200" in statuses and statuses - {"200"}


def test_unload_lets_requests_in_flight_finish_then_answers_404(tmp_path: Path, models: dict[int, Path]):
    root = tmp_path / "repository"
    write_scaled_model(
        root / "scaled" / "1" / "model.onnx", SCALES[1], layers=150
    )  # 0.2 s (idle 2-core VM) to 0.8 s (busy) a run
    gateway = start_gateway(root, tmp_path / "gateway.log", "--model-control-mode", "explicit")
    grpc_client = triton_grpc.InferenceServerClient(gateway.grpc_address)
    try:
        assert gateway.http.post("/v2/repository/models/scaled/load", headers=ADMIN_HEADERS).status_code == 200
        rest_client = httpx.Client(base_url=gateway.http_url)
        with ThreadPoolExecutor(max_workers=6) as pool:
            in_flight = [pool.submit(infer_rest, rest_client, "scaled", float(x)) for x in range(1, 5)]
            in_flight += [pool.submit(infer_grpc, grpc_client, "scaled", -float(x)) for x in range(1, 3)]
            wait_until(lambda: inflight(gateway, "scaled") == 6, what="six requests in flight")
            response = gateway.http.post("/v2/repository/models/scaled/unload", headers=ADMIN_HEADERS)
            assert response.status_code == 200, response.text
            # From now on: 404 / NOT_FOUND, while the six already taken finish.
            response = gateway.http.post("/v2/models/scaled/infer", json=rest_body(1.0))
            assert response.status_code == 404 and "not loaded" in response.json()["error"]
            assert infer_grpc(grpc_client, "scaled", 1.0).status == "StatusCode.NOT_FOUND"
            still_running = inflight(gateway, "scaled") > 0
            answers = [future.result(timeout=2 * CLIENT_TIMEOUT) for future in in_flight]
        rest_client.close()
        assert still_running, "the requests finished before the unload: make the model slower"
        assert_correct(answers)
        wait_until(lambda: "model scaled version 1 released" in gateway.logs(), what="version 1 to be released")
        assert gateway.http.post("/v2/models/scaled/infer", json=rest_body(1.0)).status_code == 404
    finally:
        grpc_client.close()
        gateway.stop()


def test_a_poll_leaves_loaded_a_model_uploaded_while_it_looked_at_the_repository(
    repository: Path, models: dict[int, Path], monkeypatch: pytest.MonkeyPatch
):
    """A poll lists the model folders, then takes each one's fingerprint: a model uploaded in between is not in
    its listing but is on disk, and the poll must not unload it (the next poll would load it again, and its
    requests meanwhile get 503 "loading")."""
    from gateway.repository import model_repository

    served = model_repository.ModelRepository(repository, default_max_batch_size=8)
    listed, uploaded = threading.Event(), threading.Event()
    fingerprint = model_repository._fingerprint

    def fingerprint_once_the_upload_is_in(path: Path) -> model_repository.Fingerprint:
        if path.name == "scaled" and not uploaded.is_set():
            listed.set()
            uploaded.wait(30)
        return fingerprint(path)

    async def scenario() -> None:
        await served.load_all()
        monkeypatch.setattr(model_repository, "_fingerprint", fingerprint_once_the_upload_is_in)
        poll = asyncio.create_task(served.poll())
        assert await asyncio.to_thread(listed.wait, 30)
        async with served.staging_folder() as staging:
            shutil.copy(models[2], staging / "model.onnx")
            assert await served.install_version("uploaded", None, staging) == 1
        uploaded.set()
        await poll
        assert served.ready_versions("uploaded") == [1]
        await served.unload("scaled")
        await served.unload("uploaded")

    asyncio.run(scenario())
