"""Warmup before ready, against real gateway processes (and the generated requests' shapes, in process).

Version ``n`` of the model answers ``y = x * n`` (tests/test_hot_reload.py), so each answer says
which version gave it. A version runs its warmup requests (the samples shipped in ``warmup/*.npz``,
else zeros generated from its signature) on every instance before it serves: a reload's new version
gets no traffic until its warmup is done, the old one serves meanwhile, and a sample that does not
fit fails the load.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from gateway.runtime.warmup import WarmupError, generated_requests, read_warmup_samples
from tests.conftest import ADMIN_HEADERS, start_gateway
from tests.test_hot_reload import Answer, assert_correct, infer_rest
from tests.test_overload import metric, wait_until, write_scaled_model

#: Layers of the version whose warmup the traffic must not see: 0.2 s (idle 2-core VM) to 0.8 s a run.
SLOW_LAYERS = 150


def write_samples(version_folder: Path, batches: list[int]) -> None:
    """One warmup sample per batch size, ``warmup/<n>.npz``, holding input ``x`` (FP32 [batch, 1])."""
    folder = version_folder / "warmup"
    folder.mkdir(parents=True)
    for number, batch in enumerate(batches):
        np.savez(folder / f"{number}.npz", x=np.ones((batch, 1), dtype=np.float32))


def test_a_new_version_gets_no_traffic_until_its_shipped_warmup_samples_have_run(tmp_path: Path):
    root = tmp_path / "repository"
    write_scaled_model(root / "scaled" / "1" / "model.onnx", 1.0, layers=10)
    gateway = start_gateway(root, tmp_path / "gateway.log", "--model-control-mode", "explicit")
    answers: list[tuple[float, Answer]] = []  # (when the request was sent, its answer)
    stop = threading.Event()

    def traffic() -> None:
        with httpx.Client(base_url=gateway.http_url) as client:
            calls = 0
            while not stop.is_set():
                calls += 1
                sent = time.monotonic()
                answers.append((sent, infer_rest(client, "scaled", float(calls))))

    try:
        assert gateway.http.post("/v2/repository/models/scaled/load", headers=ADMIN_HEADERS).status_code == 200
        # Version 1 had no samples: the requests generated from its signature ran (batch 1 and 64).
        assert "model scaled version 1 warmed up: 2 request(s) on 1 instance(s)" in gateway.logs()
        write_scaled_model(root / "scaled" / "2" / "model.onnx", 2.0, layers=SLOW_LAYERS)
        write_samples(root / "scaled" / "2", [1, 4, 2])
        thread = threading.Thread(target=traffic)
        thread.start()
        try:
            wait_until(lambda: len(answers) >= 5, what="traffic to version 1")
            load_sent = time.monotonic()
            response = gateway.http.post("/v2/repository/models/scaled/load", headers=ADMIN_HEADERS, timeout=120)
            assert response.status_code == 200, response.text
            wait_until(lambda: any(answer.version == 2 for _, answer in answers), what="version 2 to answer")
        finally:
            stop.set()
            thread.join(timeout=120)
        assert not thread.is_alive(), "a call hung"
        assert_correct([answer for _, answer in answers])
        assert "model scaled version 2 warmed up: 3 request(s) on 1 instance(s)" in gateway.logs()
        warmup_seconds = metric(gateway, "gateway_model_warmup_duration_seconds_sum", "scaled", version="2")
        assert warmup_seconds >= 0.3, warmup_seconds  # three runs of 0.2 s or more
        first_to_version_2 = min(sent for sent, answer in answers if answer.version == 2)
        assert first_to_version_2 - load_sent >= warmup_seconds, "version 2 took traffic before its warmup ended"
        served_during_warmup = [a for sent, a in answers if load_sent < sent < load_sent + warmup_seconds]
        assert served_during_warmup and all(answer.version == 1 for answer in served_during_warmup)
    finally:
        gateway.stop()


def test_a_warmup_sample_that_does_not_fit_fails_the_load_and_the_old_version_keeps_serving(tmp_path: Path):
    root = tmp_path / "repository"
    write_scaled_model(root / "scaled" / "1" / "model.onnx", 1.0, layers=10)
    gateway = start_gateway(root, tmp_path / "gateway.log", "--model-control-mode", "explicit")
    try:
        assert gateway.http.post("/v2/repository/models/scaled/load", headers=ADMIN_HEADERS).status_code == 200
        version_2 = root / "scaled" / "2"
        write_scaled_model(version_2 / "model.onnx", 2.0, layers=10)
        (version_2 / "warmup").mkdir()
        np.savez(version_2 / "warmup" / "a.npz", input=np.ones((1, 1), dtype=np.float32))
        response = gateway.http.post("/v2/repository/models/scaled/load", headers=ADMIN_HEADERS)
        assert response.status_code == 503, response.text
        reason = "warmup sample warmup/a.npz: missing input(s) x; unknown input(s) input (the model's inputs: x)"
        assert reason in response.json()["error"]
        np.savez(version_2 / "warmup" / "a.npz", x=np.ones((1, 1), dtype=np.float64))
        response = gateway.http.post("/v2/repository/models/scaled/load", headers=ADMIN_HEADERS)
        assert response.status_code == 503, response.text
        assert "warmup/a.npz: input x has dtype float64, the model takes FP32" in response.json()["error"]
        index = {entry["version"]: entry for entry in gateway.http.post("/v2/repository/index").json()}
        assert index["2"]["state"] == "UNAVAILABLE" and "warmup/a.npz" in index["2"]["reason"]
        with httpx.Client(base_url=gateway.http_url) as client:
            assert_correct([infer_rest(client, "scaled", 3.0)])
            assert infer_rest(client, "scaled", 3.0).version == 1
    finally:
        gateway.stop()


def test_warmup_none_in_the_config_runs_no_warmup(tmp_path: Path):
    root = tmp_path / "repository"
    write_scaled_model(root / "scaled" / "1" / "model.onnx", 1.0, layers=10)
    (root / "scaled" / "config.yaml").write_text("warmup: none\n")
    gateway = start_gateway(root, tmp_path / "gateway.log")
    try:
        assert "model scaled serving versions [1]" in gateway.logs()
        assert "warmed up" not in gateway.logs()
        assert metric(gateway, "gateway_model_warmup_duration_seconds_count", "scaled") == 0
    finally:
        gateway.stop()


def test_generated_requests_cover_batch_1_and_max_batch_size_with_variable_dims_at_1():
    signature = {"ids": ("INT64", (-1, -1, 3)), "text": ("BYTES", (-1, 2))}
    requests = generated_requests(signature, max_batch_size=8)
    assert [request.name for request in requests] == ["generated, batch 1", "generated, batch 8"]
    assert [request.inputs["ids"].shape for request in requests] == [(1, 1, 3), (8, 1, 3)]
    assert requests[1].inputs["ids"].dtype == np.int64 and not requests[1].inputs["ids"].any()
    assert requests[1].inputs["text"].dtype == object and requests[1].inputs["text"].shape == (8, 2)
    assert set(requests[1].inputs["text"].ravel()) == {b""}
    unbatched = generated_requests({"image": ("FP16", (3, -1))}, max_batch_size=0)
    assert [(r.name, r.inputs["image"].shape, r.inputs["image"].dtype) for r in unbatched] == [
        ("generated", (3, 1), np.float16)
    ]


def test_shipped_samples_are_read_in_file_name_order_and_bytes_become_objects(tmp_path: Path):
    signature = {"text": ("BYTES", (-1,)), "n": ("INT32", (-1, 2))}
    (tmp_path / "warmup").mkdir()
    np.savez(tmp_path / "warmup" / "b.npz", text=np.array([b"x"]), n=np.zeros((1, 2), dtype=np.int32))
    np.savez(tmp_path / "warmup" / "a.npz", text=np.array([b"hello", b""]), n=np.ones((2, 2), dtype=np.int32))
    requests = read_warmup_samples(tmp_path, signature)
    assert [request.name for request in requests] == ["warmup/a.npz", "warmup/b.npz"]
    assert requests[0].inputs["text"].dtype == object and list(requests[0].inputs["text"]) == [b"hello", b""]
    np.savez(tmp_path / "warmup" / "c.npz", text=np.array([b"x"]), n=np.zeros((1, 3), dtype=np.int32))
    with pytest.raises(WarmupError, match=r"warmup/c\.npz: input n has shape \[1, 3\], the model takes \[-1, 2\]"):
        read_warmup_samples(tmp_path, signature)
    (tmp_path / "warmup" / "c.npz").write_bytes(b"not a zip")
    with pytest.raises(WarmupError, match=r"warmup sample warmup/c\.npz cannot be read"):
        read_warmup_samples(tmp_path, signature)


TRITON_WARMUP_CONFIG = """\
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ {{ name: "x" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [ {{ name: "y" data_type: TYPE_FP32 dims: [ 1 ] }} ]
model_warmup [
  {{ name: "zeros" batch_size: 8 count: 2
    inputs {{ key: "x" value: {{ data_type: TYPE_FP32 dims: [ 1 ] zero_data: true }} }} }},
  {{ name: "{file_request}" batch_size: 1
    inputs {{ key: "x" value: {{ data_type: TYPE_FP32 dims: [ 1 ] input_data_file: "x.bin" }} }} }}
]
"""


def test_a_triton_model_warmup_runs_its_requests_and_a_bad_data_file_fails_the_load(tmp_path: Path):
    root = tmp_path / "repository"
    model = root / "scaled"
    write_scaled_model(model / "1" / "model.onnx", 1.0, layers=10)
    (model / "config.pbtxt").write_text(TRITON_WARMUP_CONFIG.format(file_request="from a file"))
    (model / "warmup").mkdir()
    (model / "warmup" / "x.bin").write_bytes(np.array([2.5], dtype=np.float32).tobytes())
    gateway = start_gateway(root, tmp_path / "gateway.log", "--model-control-mode", "explicit")
    try:
        assert gateway.http.post("/v2/repository/models/scaled/load", headers=ADMIN_HEADERS).status_code == 200
        # "zeros" twice (count 2), then the file's request: model_warmup's requests, not generated ones.
        assert "model scaled version 1 warmed up: 3 request(s) on 1 instance(s)" in gateway.logs()
        write_scaled_model(model / "2" / "model.onnx", 2.0, layers=10)
        (model / "warmup" / "x.bin").write_bytes(np.array([2.5, 1.0], dtype=np.float32).tobytes())
        response = gateway.http.post("/v2/repository/models/scaled/load", headers=ADMIN_HEADERS)
        assert response.status_code == 503, response.text
        assert (
            "warmup request 'from a file': warmup/x.bin: input 'x': shape [1] of FP32 needs 4 bytes"
            in (response.json()["error"])
        )
        (model / "warmup" / "x.bin").unlink()
        response = gateway.http.post("/v2/repository/models/scaled/load", headers=ADMIN_HEADERS)
        assert (
            "warmup request 'from a file': input x: warmup/x.bin: No such file or directory"
            in (response.json()["error"])
        )
        with httpx.Client(base_url=gateway.http_url) as client:
            assert infer_rest(client, "scaled", 3.0).version == 1
    finally:
        gateway.stop()


def test_configured_requests_repeat_the_item_batch_size_times_and_run_count_times(tmp_path: Path):
    from gateway.repository.config import WarmupRequestConfig
    from gateway.repository.warmup_config import configured_requests

    (tmp_path / "warmup").mkdir()
    text = b"".join(len(item).to_bytes(4, "little") + item for item in (b"ab", b""))
    (tmp_path / "warmup" / "text.bin").write_bytes(text)
    configured = [
        WarmupRequestConfig.model_validate(
            {
                "name": "mixed",
                "batch_size": 3,
                "count": 2,
                "inputs": {
                    "ids": {"datatype": "INT64", "dims": [2], "random_data": True},
                    "text": {"datatype": "BYTES", "dims": [2], "input_data_file": "text.bin"},
                },
            }
        ),
        WarmupRequestConfig.model_validate(
            {
                "name": "one",
                "batch_size": 0,
                "inputs": {
                    "ids": {"datatype": "INT64", "dims": [3, 2], "zero_data": True},
                    "text": {"datatype": "BYTES", "dims": [3, 2], "zero_data": True},
                },
            }
        ),
    ]
    signature = {"ids": ("INT64", (-1, 2)), "text": ("BYTES", (-1, 2))}
    requests = configured_requests(configured, tmp_path, signature)
    assert [request.name for request in requests] == ["warmup request 'mixed'"] * 2 + ["warmup request 'one'"]
    ids, text_array = requests[0].inputs["ids"], requests[0].inputs["text"]
    assert ids.shape == (3, 2) and ids.dtype == np.int64 and (ids == ids[0]).all()
    assert text_array.shape == (3, 2) and text_array.tolist() == [[b"ab", b""]] * 3
    assert requests[2].inputs["ids"].shape == (3, 2) and not requests[2].inputs["ids"].any()
    with pytest.raises(WarmupError, match=r"warmup request 'one': input ids has shape \[3, 2\], the model takes"):
        configured_requests(configured[1:], tmp_path, {"ids": ("INT64", (-1, 3)), "text": ("BYTES", (-1, 2))})
